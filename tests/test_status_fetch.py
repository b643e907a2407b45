"""`pvtunnel status` against admin endpoints that misbehave: a token it must not
leak, redirects and proxies it must not follow, answers too slow, too big or
lying. Each endpoint is a real HTTP server on loopback, in a thread."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pvtunnel import _cli, _status
from pvtunnel._config import generate_token, load_server_config
from pvtunnel._errors import ConfigError, StatusError
from pvtunnel._status import fetch_status, format_status

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TOKEN = "SuperSecretTok123"
AGENT: dict[str, Any] = {
    "kind": "agent",
    "client_id": "edge",
    "server": "ws://proxy:8081",
    "ready": True,
    "connected": True,
    "draining": False,
    "connected_since": None,
    "connected_for_s": None,
    "reconnects": 0,
    "in_flight": 0,
    "routes": [],
}


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers as the test's ``answer`` says; records each request's Authorization."""

    answer: Any = None
    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        type(self).answer(self)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def endpoint(answer: Any) -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("H", (Handler,), {"answer": staticmethod(answer), "seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/status", seen
    finally:
        server.shutdown()
        server.server_close()


def json_answer(document: object) -> Any:
    return body_answer(json.dumps(document).encode())


def body_answer(body: bytes) -> Any:
    def answer(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def test_a_fetch_sends_the_token_and_reads_the_document() -> None:
    with endpoint(json_answer(AGENT)) as (url, seen):
        assert fetch_status(url, TOKEN) == AGENT
    assert seen == [f"Bearer {TOKEN}"]


def test_a_token_no_header_can_carry_is_refused_without_being_shown() -> None:
    """http.client's own complaint about such a header quotes it whole."""
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(StatusError) as refused:
        fetch_status(url, f"old-{TOKEN}\nnew-{TOKEN}")
    assert TOKEN not in str(refused.value)
    assert seen == []


def test_the_token_never_follows_a_redirect() -> None:
    with endpoint(json_answer(AGENT)) as (elsewhere, seen_elsewhere):

        def redirect(handler: Handler) -> None:
            handler.send_response(302)
            handler.send_header("Location", elsewhere)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with endpoint(redirect) as (url, _), pytest.raises(StatusError, match="HTTP 302"):
            fetch_status(url, TOKEN)
    assert seen_elsewhere == []


def test_a_proxy_in_the_environment_is_not_used() -> None:
    """Run as a command, in a process of its own: urllib reads the proxy settings
    from the environment when it first opens a URL."""
    with endpoint(json_answer(AGENT)) as (proxy, seen_by_proxy):
        environ = {
            **os.environ,
            "http_proxy": proxy.removesuffix("/status"),
            "no_proxy": "",
            "PVTUNNEL_ADMIN_TOKEN": TOKEN,
        }
        with endpoint(json_answer(AGENT)) as (url, seen):
            status = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pvtunnel",
                    "status",
                    "--admin",
                    url.removesuffix("/status"),
                ],
                env=environ,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
    assert status.returncode == 0, status.stderr
    assert "pvtunnel agent" in status.stdout
    assert (seen_by_proxy, seen) == ([], [f"Bearer {TOKEN}"])


def test_an_answer_slower_than_the_limit_in_all_is_given_up_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The socket's timeout bounds each read; an answer that keeps a read going now
    and then (a byte every few seconds) is bounded by the limit on the whole. The
    test's clock moves ten seconds at every look, so the limit is over at the first
    read, however the pieces arrive."""
    ticks = iter(range(1000))
    monkeypatch.setattr(_status, "_now", lambda: 10.0 * next(ticks))

    def in_pieces(handler: Handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "100")
        handler.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(100):
                handler.wfile.write(b" ")
                handler.wfile.flush()

    with endpoint(in_pieces) as (url, _), pytest.raises(StatusError, match=r"took over 5s"):
        fetch_status(url, None)


def test_an_answer_too_big_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_status, "MAX_STATUS_BYTES", 1000)
    with (
        endpoint(json_answer({**AGENT, "client_id": "x" * 5000})) as (url, _),
        pytest.raises(StatusError, match="over 1000 bytes"),
    ):
        fetch_status(url, None)


@pytest.mark.parametrize(
    "document",
    [
        {"kind": "server"},
        {**AGENT, "connected_for_s": float("inf"), "connected_since": "now"},
        {**AGENT, "routes": "not a list"},
    ],
    ids=["missing-keys", "infinite-duration", "wrong-type"],
)
def test_a_lying_document_is_one_line_not_a_traceback(document: dict[str, Any]) -> None:
    with pytest.raises(StatusError, match="not a pvtunnel status document"):
        format_status(document, "http://127.0.0.1:8082")  # type: ignore[arg-type]


def test_json_nested_too_deep_is_not_json() -> None:
    deep = body_answer(b"[" * 200_000 + b"]" * 200_000)
    with endpoint(deep) as (url, _), pytest.raises(StatusError, match="not JSON"):
        fetch_status(url, None)


def raw_answer(answer: bytes) -> Any:
    """Write ``answer`` as it is, HTTP or not, then close the connection."""

    def write(handler: Handler) -> None:
        handler.wfile.write(answer)
        handler.close_connection = True

    return write


BROKEN_CHUNKS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + json.dumps(AGENT).encode()[:20]
)


@pytest.mark.parametrize(
    ("answer", "what"),
    [
        (
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
            "the answer was HTTP 500, not 200",
        ),
        # urllib takes every 2xx; only 200 carries the document.
        (b"HTTP/1.1 204 No Content\r\n\r\n", "the answer was HTTP 204, not 200"),
        # Another service on the port (sshd announces itself first).
        (
            b"SSH-2.0-OpenSSH_9.6\r\n",
            "the answer was not HTTP (its first line: 'SSH-2.0-OpenSSH_9.6')",
        ),
        (b"", "it closed the connection without an answer"),
        (BROKEN_CHUNKS, "the answer was cut short"),
    ],
    ids=["500", "204", "not-http", "no-answer", "chunks-cut-short"],
)
def test_a_listener_reached_that_answers_badly_is_not_called_unreachable(
    answer: bytes, what: str
) -> None:
    with endpoint(raw_answer(answer)) as (url, seen), pytest.raises(StatusError) as failed:
        fetch_status(url, None)
    assert len(seen) == 1
    assert str(failed.value) == f"{url}: reached, but {what}"


def test_a_body_shorter_than_its_content_length_is_a_broken_answer() -> None:
    """The whole document, but the head promised more: the connection closed
    mid-answer, and a document that happens to parse is no reason to trust it."""
    document = json.dumps(AGENT).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(document) + 100)
    with endpoint(raw_answer(head + document)) as (url, _), pytest.raises(StatusError) as failed:
        fetch_status(url, None)
    assert str(failed.value) == (
        f"{url}: reached, but the answer was cut short: {len(document)} of the "
        f"{len(document) + 100} bytes its Content-Length declares came"
    )


@pytest.mark.parametrize(
    "length", [b"+%d", b"%d, 1", b"x"], ids=["plus-sign", "two-values", "not-digits"]
)
def test_a_content_length_that_is_not_one_number_is_a_broken_answer(length: bytes) -> None:
    """http.client would read ``+N`` as N, and anything it cannot parse as no length
    at all (the body then runs to the close)."""
    document = json.dumps(AGENT).encode()
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Length: "
        + length.replace(b"%d", b"%d" % len(document))
        + b"\r\n\r\n"
    )
    with endpoint(raw_answer(head + document)) as (url, _), pytest.raises(StatusError) as failed:
        fetch_status(url, None)
    assert str(failed.value) == f"{url}: reached, but the answer's Content-Length is not one number"


def test_a_listener_that_never_answers_was_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    """It took the connection and the request: it was reached; its answer never came."""
    monkeypatch.setattr(_status, "FETCH_TIMEOUT_S", 0.2)
    released = threading.Event()
    try:
        with (
            endpoint(lambda _: released.wait(60)) as (url, _),
            pytest.raises(StatusError) as failed,
        ):
            fetch_status(url, None)
    finally:
        released.set()
    assert str(failed.value) == f"{url}: reached, but no answer came within 0.2s"


def test_a_plain_http_listener_asked_for_https_was_reached() -> None:
    with endpoint(json_answer(AGENT)) as (url, _), pytest.raises(StatusError) as failed:
        fetch_status(url.replace("http://", "https://"), None)
    assert str(failed.value).startswith(
        f"{url.replace('http://', 'https://')}: reached, but the TLS handshake failed: "
    )


def test_the_command_says_the_listener_was_reached_and_what_it_answered(
    capsys: pytest.CaptureFixture[str],
) -> None:
    answer = raw_answer(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    with endpoint(answer) as (url, _), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"pvtunnel status: {url}: reached, but the answer was HTTP 503, not 200\n"
    )


def test_a_listener_that_cannot_be_reached_is_called_so() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/status"
        with pytest.raises(StatusError) as failed:
            fetch_status(url, None)
    assert str(failed.value).startswith(f"cannot reach {url}: ")


def test_what_the_peer_wrote_cannot_drive_the_terminal() -> None:
    document = {**AGENT, "client_id": "a\x1b]0;pwned\x07", "server": "ws://x\nFORGED LINE"}
    text = format_status(document, "http://127.0.0.1:8082")  # type: ignore[arg-type]
    assert "\x1b" not in text
    assert "\nFORGED LINE" not in text
    assert "\\x1b]0;pwned\\x07" in text


def test_a_port_past_65535_is_refused_before_the_token_goes_anywhere(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Left to http.client, port P + 65536 wraps round to P: the listener there
    would get the token."""
    monkeypatch.setenv("PVTUNNEL_ADMIN_TOKEN", TOKEN)
    with endpoint(json_answer(AGENT)) as (url, seen):
        port = int(url.removesuffix("/status").rpartition(":")[2])
        with pytest.raises(SystemExit) as exited:
            _cli.main(["status", "--admin", f"127.0.0.1:{port + 65536}"])
    assert exited.value.code == 2
    assert seen == []
    assert capsys.readouterr().err.startswith("--admin: the port must be a number")


def test_a_token_file_as_windows_editors_write_it_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A byte order mark and a CRLF line end (Notepad and PowerShell write both)."""
    (tmp_path / "token").write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url, "--token-file", str(tmp_path / "token")])
    assert (exited.value.code, seen) == (0, [f"Bearer {TOKEN}"])
    assert capsys.readouterr().out.startswith("pvtunnel agent edge at ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        # It would also have hidden the environment's token: the request would go
        # out with none, for a 401 that names neither.
        (b"\n", "the token in {file} must not be empty"),
        # Read whole, an endless one (/dev/zero) would take all memory first.
        (b"a" * ((64 << 10) + 1), "{file} holds over 64 KiB, too much for a token"),
        (
            b"old-token new-token\n",
            "the token in {file} must be printable ASCII without spaces "
            "(it is sent in an HTTP header)",
        ),
    ],
)
def test_a_token_file_without_a_token_is_refused_before_anything_is_sent(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    problem: str,
) -> None:
    monkeypatch.setenv("PVTUNNEL_ADMIN_TOKEN", TOKEN)
    (tmp_path / "token").write_bytes(content)
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url, "--token-file", str(tmp_path / "token")])
    assert exited.value.code == 2
    assert seen == []
    assert capsys.readouterr().err == (f"--token-file: {problem.format(file=tmp_path / 'token')}\n")


@pytest.mark.parametrize("value", [f"old-{TOKEN}\nnew-{TOKEN}", f"{TOKEN}\u00e9"])
def test_an_environment_token_no_header_can_carry_is_a_usage_mistake(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """Exit 2 and the variable named, as `serve` and `agent` say it."""
    monkeypatch.setenv("PVTUNNEL_ADMIN_TOKEN", value)
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url])
    assert exited.value.code == 2
    assert seen == []
    assert capsys.readouterr().err == (
        "environment: PVTUNNEL_ADMIN_TOKEN: the token must be printable ASCII without "
        "spaces (it is sent in an HTTP header)\n"
    )


@pytest.mark.parametrize("value", ["", " \n"], ids=["empty", "blank"])
def test_an_empty_environment_token_is_a_usage_mistake_as_serve_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    """Set but empty is not "no token": the line and the exit status `serve` and
    `agent` give for it, before anything is sent."""
    monkeypatch.setenv("PVTUNNEL_ADMIN_TOKEN", value)
    with pytest.raises(ConfigError) as serve_refused:
        load_server_config(None, environ={"PVTUNNEL_ADMIN_TOKEN": value})
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url])
    assert exited.value.code == 2
    assert seen == []
    said = "environment: PVTUNNEL_ADMIN_TOKEN: the token must not be empty"
    assert serve_refused.value.problems == [said]
    assert capsys.readouterr().err == f"{said}\n"


def test_a_token_file_is_used_whatever_the_environment_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The flag names the token to send; the variable it overrides is not read."""
    monkeypatch.setenv("PVTUNNEL_ADMIN_TOKEN", "")
    (tmp_path / "token").write_text(TOKEN + "\n")
    with endpoint(json_answer(AGENT)) as (url, seen), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url, "--token-file", str(tmp_path / "token")])
    assert (exited.value.code, seen) == (0, [f"Bearer {TOKEN}"])


def test_a_token_given_as_token_file_is_not_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The token itself after ``--token-file`` names no file; the error says so
    without it (a path-like name is still named, once)."""
    monkeypatch.chdir(tmp_path)
    token = generate_token()
    with endpoint(json_answer(AGENT)) as (url, seen):
        for value in (token, "missing/admin.token"):
            with pytest.raises(SystemExit) as exited:
                _cli.main(["status", "--admin", url, "--token-file", value])
            assert exited.value.code == 2
    assert seen == []
    err = capsys.readouterr().err
    assert token not in err
    assert err == (
        "--token-file: no such file, and the value looks like a token rather than a path "
        "(not shown): put the token in a file and name that, or set PVTUNNEL_ADMIN_TOKEN\n"
        "--token-file: cannot read missing/admin.token: No such file or directory\n"
    )


def test_an_unusable_admin_url_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", "http://[::1"])
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("--admin: ")
    assert error.count("\n") == 1


def test_a_url_urllib_cannot_parse_is_a_status_error() -> None:
    with pytest.raises(StatusError, match=r"cannot reach http://\[::1/status"):
        fetch_status("http://[::1/status", None)


def test_an_admin_url_ending_in_status_reads_that_page(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def at_status_only(handler: Handler) -> None:
        if handler.path == "/status":
            json_answer(AGENT)(handler)
        else:
            handler.send_error(404)

    with endpoint(at_status_only) as (url, seen):
        with pytest.raises(SystemExit) as shown:
            _cli.main(["status", "--admin", url])
        assert (shown.value.code, len(seen)) == (0, 1)
        assert capsys.readouterr().out.startswith("pvtunnel agent edge at http://127.0.0.1:")
        with pytest.raises(SystemExit) as refused:
            _cli.main(["status", "--admin", f"{url}?verbose"])
        assert (refused.value.code, len(seen)) == (2, 1)
        assert capsys.readouterr().err.startswith("--admin: a query or fragment")


def test_a_document_nested_too_deep_to_escape_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As deep as json still parses (a depth that differs between Python versions:
    about 900 on 3.11, 1,400 on 3.12, 9,900 on 3.13), less a margin for the
    command's own frames: the escaping, which recurses, overruns the stack there."""
    depth = _deepest_json_nesting() - 200
    deep = body_answer(b'{"kind": "server", "x": ' + b"[" * depth + b"]" * depth + b"}")
    with endpoint(deep) as (url, _), pytest.raises(SystemExit) as exited:
        _cli.main(["status", "--admin", url])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert error.startswith("pvtunnel status: http://127.0.0.1:")
    assert "not a pvtunnel status document (RecursionError" in error, error
    assert error.count("\n") == 1


def _deepest_json_nesting() -> int:
    """The deepest array nesting ``json.loads`` takes at this depth of the stack."""
    depth = 100
    while True:
        try:
            json.loads("[" * (depth + 100) + "]" * (depth + 100))
        except RecursionError:
            return depth
        depth += 100


def test_ctrl_c_while_the_listener_keeps_silent_exits_130_without_a_traceback() -> None:
    """In a process of its own, so the SIGINT reaches the command only. It is sent once
    the whole request has arrived: the command is then waiting for the answer."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(60)
        argv = ["status", "--admin", f"127.0.0.1:{silent.getsockname()[1]}"]
        with subprocess.Popen(
            [sys.executable, "-m", "pvtunnel", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as command:
            try:
                connection, _ = silent.accept()
                with connection:
                    request = b""
                    while not request.endswith(b"\r\n\r\n"):
                        chunk = connection.recv(4096)
                        assert chunk, "the command closed before its request was whole"
                        request += chunk
                    command.send_signal(signal.SIGINT)
                    _, stderr = command.communicate(timeout=60)
            finally:
                command.kill()
    assert request.startswith(b"GET /status HTTP/1.1\r\n")
    assert command.returncode == 130, stderr
    assert stderr == "pvtunnel status: interrupted\n"
