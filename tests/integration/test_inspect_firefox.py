"""The inspector's page in Firefox too: headless firefox-esr from Debian, over WebDriver BiDi.

The same page as the Chromium test (`test_inspect_browser.py`), checked in the
other engine the page is meant for: requests appear live without a reload, JSON
is pretty-printed, a masked Authorization is revealed on a click, and Replay adds
the new exchange marked as a replay. ``.ci/run`` installs firefox-esr.
"""

from __future__ import annotations

import json
import shutil
from typing import TYPE_CHECKING

import trio

from tests.integration.firefox import FIREFOX, open_firefox
from tests.integration.showcase import send, start_inspected_tunnel

if TYPE_CHECKING:
    from pathlib import Path

LIMIT_S = 120
ROWS = "document.querySelectorAll('#requests tbody tr')"


def text_of(selector: str) -> str:
    """A JavaScript expression: the text of the first element matching ``selector``."""
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent || ''"


def session(page: str, tunnel_port: int, profile: Path) -> bytes:
    """The browser session (runs in a worker thread); returns a screenshot."""
    with open_firefox(profile) as firefox:
        firefox.navigate(page)
        firefox.wait_for(f"{text_of('#live')}.includes('live')")
        assert firefox.evaluate(f"{ROWS}.length") == 0

        send(tunnel_port, "GET", "/api/users")
        body = json.dumps({"order": 7}).encode()
        send(
            tunnel_port,
            "POST",
            "/echo",
            body,
            **{"Content-Type": "application/json", "Authorization": "Bearer secret-from-client"},
        )
        firefox.wait_for(f"{ROWS}.length === 2")
        texts = firefox.evaluate(f"Array.from({ROWS}, row => row.innerText)")
        assert texts[0].split()[1:3] == ["POST", "/echo"]
        assert texts[1].split()[1:3] == ["GET", "/api/users"]

        firefox.evaluate(f"{ROWS}[1].click()")
        firefox.wait_for(f'{text_of("#response-body pre")}.includes(\'"name": "Grace"\')')

        firefox.evaluate(f"{ROWS}[0].click()")
        firefox.wait_for(f"{text_of('#request-body pre')}.includes('\"order\": 7')")
        assert "secret-from-client" not in firefox.evaluate(text_of("#request-head"))
        firefox.evaluate("document.querySelector('#request-head .masked').click()")
        firefox.wait_for(f"{text_of('#request-head')}.includes('secret-from-client')")

        firefox.evaluate("document.getElementById('replay').click()")
        firefox.wait_for(f"{text_of('#detail-title')}.includes('#3 POST /echo')")
        firefox.wait_for(f"{text_of('#detail-meta')}.includes('replay of #2')")
        firefox.wait_for(f"{text_of('#response-body pre')}.includes('\"order\": 7')")
        firefox.wait_for(f"{ROWS}.length === 3 && {ROWS}[0].textContent.includes('replay of #2')")
        return firefox.screenshot()


async def test_the_page_works_in_firefox_too(tmp_path: Path) -> None:
    assert shutil.which(FIREFOX), ".ci/run installs firefox-esr"
    with trio.fail_after(LIMIT_S):
        async with trio.open_nursery() as nursery:
            page, tunnel_port = await start_inspected_tunnel(nursery)
            shot = await trio.to_thread.run_sync(session, page, tunnel_port, tmp_path / "profile")
            assert shot.startswith(b"\x89PNG")
            nursery.cancel_scope.cancel()
