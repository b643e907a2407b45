"""The inspector's page in a real browser: headless Chromium from Debian, driven by Selenium.

Requests go through a real tunnel while the page is open; the test sees them
arrive without a reload (server-sent events), opens one and reads its bodies
(JSON pretty-printed, an image shown, binary as hex), reveals a masked header,
filters the list, presses Replay, and edits a request before replaying it.

Selenium is synchronous, so the browser runs in a worker thread while the tunnel
serves from the test's Trio loop. Every wait is on a condition of the page
(`WebDriverWait`), never a fixed sleep. Nothing is downloaded: the Debian
``chromium`` binary and ``chromedriver`` are named explicitly (``.ci/run``
installs them). Set ``PVTUNNEL_INSPECTOR_SCREENSHOT`` to a path to keep the
screenshot the test takes (README's ``docs/inspector.png`` comes from it).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import os
import shutil
import socket
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from pvtunnel._config import InspectConfig
from pvtunnel._trio.inspect_http import MAX_EVENT_STREAMS, answer_inspect
from tests.integration.showcase import WAIT_S, send, start_inspected_tunnel

if TYPE_CHECKING:
    from collections.abc import Callable

    import h11
    import pytest
    from selenium.webdriver.remote.webelement import WebElement

    from pvtunnel._config import Secret
    from pvtunnel._http.admin import AdminResponse
    from pvtunnel._trio.http11 import H11Stream
    from pvtunnel._trio.inspector import Inspector

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
LIMIT_S = 120


def open_browser(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1360,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def rows(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#requests tbody tr")


def row_texts(driver: webdriver.Chrome) -> list[str]:
    return [row.text for row in rows(driver)]


def session(page: str, tunnel_port: int, profile: Path, screenshot: Path) -> None:
    """The whole browser session (runs in a worker thread)."""
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        assert rows(driver) == []

        # Requests appear live, newest first, without a reload.
        send(tunnel_port, "GET", "/api/users")
        send(tunnel_port, "GET", "/pixel.png")
        sent = json.dumps({"order": 7, "items": ["tea"]}).encode()
        send(
            tunnel_port,
            "POST",
            "/echo",
            sent,
            **{"Content-Type": "application/json", "Authorization": "Bearer secret-from-client"},
        )
        send(tunnel_port, "PUT", "/echo", bytes(range(40)), **{"Content-Type": "application/x-raw"})
        wait.until(lambda d: len(rows(d)) == 4 and all(" 200 " in t for t in row_texts(d)))
        assert [t.split()[1:3] for t in row_texts(driver)] == [
            ["PUT", "/echo"],
            ["POST", "/echo"],
            ["GET", "/pixel.png"],
            ["GET", "/api/users"],
        ]

        # The filter box: method, status and path text.
        search = driver.find_element(By.ID, "filter")
        search.send_keys("GET")
        wait.until(lambda d: len(rows(d)) == 2)
        search.clear()
        search.send_keys("pixel")
        wait.until(lambda d: len(rows(d)) == 1)
        search.clear()
        search.send_keys("5xx")
        wait.until(lambda d: len(rows(d)) == 0)
        search.clear()
        search.send_keys(" ", Keys.BACKSPACE)  # clear() fires no input event; keys do
        wait.until(lambda d: len(rows(d)) == 4)

        # JSON is pretty-printed.
        rows(driver)[3].click()
        wait.until(ec.visibility_of_element_located((By.ID, "detail")))
        assert not driver.find_element(By.ID, "edit-form").is_displayed()
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, "#response-body pre"), '"name": "Grace"'
            )
        )
        # An image is shown as one.
        rows(driver)[2].click()
        image = wait.until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "#response-body img"))
        )
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", image) == 16)
        # Binary data as hex.
        rows(driver)[0].click()
        wait.until(
            ec.text_to_be_present_in_element(
                (By.CSS_SELECTOR, "#request-body pre.hex"), "00000000  00 01 02 03"
            )
        )

        # The POST: its body, and its Authorization masked until clicked.
        rows(driver)[1].click()
        wait.until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#request-body pre"), '"order": 7')
        )
        head = driver.find_element(By.ID, "request-head")
        assert "secret-from-client" not in head.text
        driver.save_screenshot(str(screenshot))
        masked = head.find_element(By.CSS_SELECTOR, ".masked")
        masked.click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "request-head"), "secret-from-client"))
        assert driver.find_element(By.ID, "detail-title").text == "#3 POST /echo"

        # Replay: a new exchange, marked as a replay of #3, with its response.
        driver.find_element(By.ID, "replay").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "detail-title"), "#5 POST /echo"))
        wait.until(ec.text_to_be_present_in_element((By.ID, "detail-meta"), "replay of #3"))
        wait.until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#response-body pre"), '"order": 7')
        )
        wait.until(lambda d: "replay of #3" in row_texts(d)[0])

        # Edit, then replay: the upstream answers the edited body.
        driver.find_element(By.ID, "edit-replay").click()
        body = wait.until(ec.visibility_of_element_located((By.ID, "edit-body")))
        body.clear()
        body.send_keys('{"order": 8}')
        target = driver.find_element(By.ID, "edit-target")
        target.clear()
        target.send_keys("/echo?edited=1")
        driver.find_element(By.ID, "edit-send").click()
        wait.until(
            ec.text_to_be_present_in_element((By.ID, "detail-title"), "#6 POST /echo?edited=1")
        )
        wait.until(
            ec.text_to_be_present_in_element((By.CSS_SELECTOR, "#response-body pre"), '"order": 8')
        )
        wait.until(lambda d: len(rows(d)) == 6)
        # Nothing failed in the page: no script error, no refused request.
        log = driver.get_log("browser")  # type: ignore[no-untyped-call]  # untyped in selenium
        assert [entry for entry in log if entry["level"] == "SEVERE"] == []
    finally:
        driver.quit()


async def test_the_page_shows_requests_live_and_replays_them(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    assert shutil.which(CHROMEDRIVER), ".ci/run installs chromium-driver"
    screenshot = Path(os.environ.get("PVTUNNEL_INSPECTOR_SCREENSHOT", tmp_path / "inspector.png"))
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            await trio.to_thread.run_sync(
                session, page, tunnel_port, tmp_path / "profile", screenshot
            )
            assert screenshot.read_bytes().startswith(b"\x89PNG")
            nursery.cancel_scope.cancel()


def late_list_session(
    page: str, tunnel_port: int, profile: Path, release: Callable[[], None]
) -> int:
    """Open the page, send two requests while its list is held back, release the list;
    the rows left once the page has taken it in."""
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        send(tunnel_port, "GET", "/api/users")
        send(tunnel_port, "GET", "/pixel.png")
        wait.until(lambda d: len(rows(d)) == 2)  # from the event stream
        release()
        # The held list is an empty one: wait until the page has drawn it.
        wait.until(
            lambda d: d.execute_script("return Number(document.body.dataset.lists || 0)") >= 1
        )
        return len(rows(driver))
    finally:
        driver.quit()


async def test_a_list_that_comes_after_live_events_keeps_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page asks for the list when its event stream opens. A list taken before two
    requests but delivered after their events is older than them: it must not wipe
    their rows (a user saw them vanish right after the page opened)."""
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    held = trio.Event()

    async def hold_the_list(
        http: H11Stream[trio.abc.Stream],
        request: h11.Request,
        inspector: Inspector | None,
        token: Secret | None,
    ) -> AdminResponse | None:
        answer = await answer_inspect(http, request, inspector, token)  # taken now...
        if request.target == b"/inspect/api/requests":
            await held.wait()  # ...delivered once the requests' events are in
        return answer

    monkeypatch.setattr("pvtunnel._trio.admin.answer_inspect", hold_the_list)
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            token = trio.lowlevel.current_trio_token()
            left = await trio.to_thread.run_sync(
                late_list_session,
                page,
                tunnel_port,
                tmp_path / "profile",
                lambda: trio.from_thread.run_sync(held.set, trio_token=token),
            )
            assert left == 2
            nursery.cancel_scope.cancel()


def crowded_session(page: str, tunnel_port: int, profile: Path) -> tuple[bytes, bytes]:
    """Open the page while every event-stream place is taken, then free them; replay a
    CRLF body without edits. Returns the body sent and the body the replay sent."""
    base = page.rsplit("/inspect", 1)[0]
    host, port = base.removeprefix("http://").rsplit(":", 1)
    holders = []
    request = f"GET /inspect/api/events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    for _ in range(MAX_EVENT_STREAMS):
        holder = socket.create_connection((host, int(port)), timeout=WAIT_S)
        holder.sendall(request)
        assert holder.recv(65536).startswith(b"HTTP/1.1 200 ")
        holders.append(holder)
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        # Its stream was refused (503): a browser gives such a stream up for good.
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "reconnecting"))
        for holder in holders:
            holder.close()
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        form = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\none\r\n--b--\r\n'
        multipart = {"Content-Type": "multipart/form-data; boundary=b"}
        send(tunnel_port, "POST", "/echo", form, **multipart)
        wait.until(lambda d: len(rows(d)) == 1)
        rows(driver)[0].click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "detail-title"), "#1 POST /echo"))
        driver.find_element(By.ID, "edit-replay").click()
        wait.until(ec.visibility_of_element_located((By.ID, "edit-body")))
        driver.find_element(By.ID, "edit-send").click()  # no edit at all
        wait.until(ec.text_to_be_present_in_element((By.ID, "detail-title"), "#2 POST /echo"))
        with urllib.request.urlopen(f"{base}/inspect/api/requests/2", timeout=WAIT_S) as answer:
            replayed = json.load(answer)["request"]["body"]["base64"]
        return form, base64.b64decode(replayed)
    finally:
        driver.quit()
        for holder in holders:
            holder.close()


async def test_a_page_refused_for_want_of_places_goes_live_later_and_replays_crlf_as_is(
    tmp_path: Path,
) -> None:
    """Two page defects: a page refused (503, every place taken) stayed on
    "reconnecting…" for good, and an unedited text body lost its CRLFs to the
    textarea (a multipart body then no longer parsed)."""
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            sent, replayed = await trio.to_thread.run_sync(
                crowded_session, page, tunnel_port, tmp_path / "profile"
            )
            assert replayed == sent
            nursery.cancel_scope.cancel()


# A busy capture: the rows the page holds, and a burst of requests on top.
BUSY_ROWS = 2000
BURST = 300


def send_many(port: int, first: int, count: int, senders: int = 4) -> None:
    """``count`` requests through the tunnel, ``GET /n/<i>``, over kept-alive connections."""

    def sender(offset: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        try:
            for index in range(first + offset, first + count, senders):
                connection.request("GET", f"/n/{index}", headers={"Host": "app"})
                response = connection.getresponse()
                response.read()
                assert response.status == 200, response.status
        finally:
            connection.close()

    threads = [threading.Thread(target=sender, args=(offset,)) for offset in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def newest_row(driver: webdriver.Chrome) -> int:
    newest: int = driver.execute_script(
        "const row = document.querySelector('#requests tbody tr');"
        "return row ? Number(row.dataset.id) : 0;"
    )
    return newest


def busy_session(page: str, tunnel_port: int, profile: Path) -> None:
    """Open the page on a full capture, then send a burst: the page must keep up."""
    send_many(tunnel_port, 1, BUSY_ROWS)
    driver = open_browser(profile)
    try:
        driver.get(page)
        WebDriverWait(driver, WAIT_S).until(lambda d: len(rows(d)) == BUSY_ROWS)
        send_many(tunnel_port, BUSY_ROWS + 1, BURST)
        sent = time.monotonic()
        # Each request is three events (opened, answered, ended): one redraw of
        # 2,000 rows apiece kept the page a minute behind the tunnel. (A busy page
        # also answers each look late, so the wait alone would not notice.)
        WebDriverWait(driver, WAIT_S).until(lambda d: newest_row(d) == BUSY_ROWS + BURST)
        assert time.monotonic() - sent < WAIT_S
        assert len(rows(driver)) == BUSY_ROWS
        method, target = rows(driver)[0].text.split()[1:3]
        assert (method, target.startswith("/n/")) == ("GET", True)
    finally:
        driver.quit()


async def test_the_page_keeps_up_with_a_burst_over_thousands_of_rows(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, port = await start_inspected_tunnel(
                nursery, InspectConfig(enabled=True, max_requests=BUSY_ROWS)
            )
            await trio.to_thread.run_sync(busy_session, page, port, tmp_path / "profile")
            nursery.cancel_scope.cancel()


# Would set window.pwned or the title if any of it ran or rendered as markup.
RUN = "window.pwned=1;document.title='pwned'"
MARKUP = f'<img src=x onerror="{RUN}"><script>{RUN}</script>'
SVG = f'<svg xmlns="http://www.w3.org/2000/svg" onload="{RUN}"><script>{RUN}</script></svg>'
HOSTILE = [
    # (target, content type, body); the showcase's /echo answers the body with its type
    (f"/echo?q=<img/src=x/onerror={RUN}>", "text/html", f"<html><title>pwned</title>{MARKUP}"),
    ("/echo", "image/svg+xml", SVG),
    ("/echo", "application/json", json.dumps({"a": f"</script>{MARKUP}"})),
    ("/echo", "text/plain", f"javascript:{RUN}"),
    ("/echo", "text/plain", "invoice \u202egnp.exe\u202c and \u2067isolated\u2069 ok"),
]


def hostile_session(page: str, tunnel_port: int, profile: Path) -> list[str]:
    """Open every hostile exchange; returns the request bodies as the page shows them."""
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        for target, content_type, body in HOSTILE:
            send(
                tunnel_port,
                "POST",
                target,
                body.encode(),
                **{"Content-Type": content_type, "X-Markup": MARKUP, "Cookie": MARKUP},
            )
        wait.until(lambda d: len(rows(d)) == len(HOSTILE))
        shown = []
        for number in range(1, len(HOSTILE) + 1):
            rows(driver)[len(HOSTILE) - number].click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "detail-title"), f"#{number} "))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#response-body pre"))
            head = driver.find_element(By.ID, "request-head")
            head.find_element(By.CSS_SELECTOR, ".masked").click()  # the Cookie, revealed
            assert head.text.count(MARKUP) == 2
            shown.append(driver.find_element(By.CSS_SELECTOR, "#request-body pre").text)
        assert driver.execute_script("return window.pwned") is None
        assert driver.title == "pvtunnel inspector"
        assert (
            driver.find_elements(By.CSS_SELECTOR, "#detail img, #detail svg, #detail script") == []
        )
        return shown
    finally:
        driver.quit()


async def test_hostile_captures_are_shown_as_text_and_never_run(tmp_path: Path) -> None:
    """Markup in a target, headers and bodies (HTML, SVG, JSON holding </script>) is
    shown as text and runs nothing. Bidi controls in a body were applied, so it read
    "invoice exe.png": they are now shown as marks."""
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            shown = await trio.to_thread.run_sync(
                hostile_session, page, tunnel_port, tmp_path / "profile"
            )
            assert shown[0] == f"<html><title>pwned</title>{MARKUP}"
            assert shown[1] == SVG
            assert json.loads(shown[2]) == {"a": f"</script>{MARKUP}"}
            assert shown[3] == f"javascript:{RUN}"
            assert shown[4] == "invoice <U+202E>gnp.exe<U+202C> and <U+2067>isolated<U+2069> ok"
            nursery.cancel_scope.cancel()


LARGE = 1024 * 1024  # a binary body, recorded whole (max_body_bytes)


def hex_lines(driver: webdriver.Chrome, box: str) -> int:
    lines: int = driver.execute_script(
        f"return document.querySelector('#{box} pre.hex').textContent.split('\\n').length"
    )
    return lines


def large_session(page: str, tunnel_port: int, profile: Path) -> None:
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        body = bytes(range(256)) * (LARGE // 256)
        send(tunnel_port, "POST", "/echo", body, **{"Content-Type": "application/octet-stream"})
        wait.until(lambda d: len(rows(d)) == 1)
        rows(driver)[0].click()
        # 4,096 lines of hex are drawn, not 65,536 (which held the page for seconds).
        note = wait.until(
            ec.visibility_of_element_located((By.CSS_SELECTOR, "#request-body .drawn"))
        )
        assert note.text == "the first 65,536 of 1,048,576 bytes are drawn draw all"
        assert hex_lines(driver, "request-body") == 4096
        assert hex_lines(driver, "response-body") == 4096
        # The rest on request.
        note.find_element(By.CSS_SELECTOR, "button").click()
        wait.until(lambda d: hex_lines(d, "request-body") == LARGE // 16)
        assert driver.find_elements(By.CSS_SELECTOR, "#request-body .drawn") == []
        assert hex_lines(driver, "response-body") == 4096
    finally:
        driver.quit()


async def test_a_large_body_is_drawn_in_part_until_asked_for_all(tmp_path: Path) -> None:
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, port = await start_inspected_tunnel(
                nursery, InspectConfig(enabled=True, max_body_bytes=LARGE)
            )
            await trio.to_thread.run_sync(large_session, page, port, tmp_path / "profile")
            nursery.cancel_scope.cancel()


def gzip_session(page: str, tunnel_port: int, profile: Path) -> list[list[str]]:
    """Send gzip-encoded bodies; returns each one's texts as the page draws them."""
    driver = open_browser(profile)
    wait = WebDriverWait(driver, WAIT_S)
    try:
        driver.get(page)
        wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
        encoded = {"Content-Encoding": "gzip"}
        document = gzip.compress(json.dumps({"order": 9, "items": ["tea"] * 40}).encode())
        send(
            tunnel_port,
            "POST",
            "/echo",
            document,
            **encoded,
            **{"Content-Type": "application/json"},
        )
        # 32 MiB of text in 32 KiB: its decoding stops at 4 MiB.
        bomb = gzip.compress(b"A" * (32 * 1024 * 1024), 9)
        send(tunnel_port, "POST", "/echo", bomb, **encoded, **{"Content-Type": "text/plain"})
        send(tunnel_port, "POST", "/echo", b"not gzip at all", **encoded)
        wait.until(lambda d: len(rows(d)) == 3)
        drawn = []
        for number in (1, 2, 3):
            rows(driver)[3 - number].click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "detail-title"), f"#{number} "))
            wait.until(
                lambda d: (
                    d.find_elements(By.CSS_SELECTOR, "#request-body pre")
                    and not d.find_elements(By.CSS_SELECTOR, "#request-body .decoding")
                )
            )
            box = driver.find_element(By.ID, "request-body")
            texts = [part.text for part in box.find_elements(By.CSS_SELECTOR, "pre, p")]
            drawn.append([texts[0][:40], *texts[1:]])
        return drawn
    finally:
        driver.quit()


async def test_gzip_bodies_are_drawn_decoded_and_bounded(tmp_path: Path) -> None:
    """A gzip-encoded body was drawn as a hex dump of its compressed bytes; it is
    now decoded, at most 4 MiB of it (a 32 KiB preview may inflate to gigabytes)."""
    assert shutil.which(CHROMIUM), ".ci/run installs chromium"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            document, bomb, broken = await trio.to_thread.run_sync(
                gzip_session, page, tunnel_port, tmp_path / "profile"
            )
            assert document[0] == '{\n  "order": 9,\n  "items": [\n    "tea",\n'
            assert document[1].startswith("gzip: ")
            assert document[1].endswith(" decoded to 303 B")  # the JSON as sent
            assert bomb == [
                "A" * 40,
                "the first 262,144 of 4,194,304 characters are drawn draw all",
                bomb[2],
            ]
            assert bomb[2].startswith("gzip: ")
            assert bomb[2].endswith(" decoded to 4.0 MiB (decoding stops at 4.0 MiB)")
            assert broken == ["not gzip at all", "not valid gzip: drawn as it came"]
            nursery.cancel_scope.cancel()
