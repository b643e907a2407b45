"""Headless Firefox (Debian's firefox-esr) driven over WebDriver BiDi, without geckodriver.

Firefox speaks WebDriver BiDi itself on ``--remote-debugging-port``; Debian has no
geckodriver, and Selenium needs one, so this small client sends the few BiDi
commands the inspector's test needs over a WebSocket (the ``websockets`` test
dependency). It is synchronous, for a worker thread, like Selenium. Waits are
conditions evaluated in the page until true (`wait_for`), never fixed sleeps.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import subprocess
import threading
from typing import TYPE_CHECKING, Any, Final

from websockets.sync.client import ClientConnection, connect

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

FIREFOX: Final = "/usr/bin/firefox-esr"
# Firefox reaches for the network on its own (updates, telemetry, experiments,
# captive-portal checks): none of it in a test that must stay on loopback.
PREFS: Final = {
    "app.normandy.enabled": False,
    "app.update.auto": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "dom.push.connection.enabled": False,
    "extensions.update.enabled": False,
    "messaging-system.rsexperimentloader.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "services.settings.server": "http://127.0.0.1:9/",
    "toolkit.telemetry.enabled": False,
}
# Runs in the page: resolves once the condition (a function's source) is true.
_WAIT_JS: Final = """(condition, timeoutMs) => new Promise((resolve, reject) => {
  const started = performance.now();
  const check = () => {
    let value;
    try { value = condition(); } catch (error) { value = undefined; }
    if (value) { resolve(value); return; }
    if (performance.now() - started > timeoutMs) {
      reject(new Error("condition never held: " + condition)); return;
    }
    setTimeout(check, 20);
  };
  check();
})"""


class BidiError(AssertionError):
    """A command failed, or a script threw (its message says what)."""


class Firefox:
    """One browsing context of a headless Firefox, driven by BiDi commands."""

    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self._ids = itertools.count(1)
        self.send("session.new", {"capabilities": {}})
        tree = self.send("browsingContext.getTree", {})
        self.context: str = tree["contexts"][0]["context"]

    def send(self, method: str, params: dict[str, Any]) -> Any:
        """One command and its result (events that arrive meanwhile are skipped)."""
        command_id = next(self._ids)
        self._socket.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self._socket.recv())
            if answer.get("id") != command_id:
                continue
            if answer.get("type") != "success":
                raise BidiError(f"{method}: {answer.get('error')}: {answer.get('message')}")
            return answer["result"]

    def navigate(self, url: str) -> None:
        self.send(
            "browsingContext.navigate", {"context": self.context, "url": url, "wait": "complete"}
        )

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        result = self.send(
            "script.evaluate",
            {
                "expression": expression,
                "target": {"context": self.context},
                "awaitPromise": True,
                "resultOwnership": "none",
            },
        )
        if result["type"] != "success":
            raise BidiError(result["exceptionDetails"]["text"])
        return _value(result["result"])

    def wait_for(self, condition: str, timeout_s: float = 15) -> Any:
        """Wait until the JavaScript expression ``condition`` is truthy in the page."""
        return self.evaluate(f"({_WAIT_JS})(() => ({condition}), {timeout_s * 1000})")

    def screenshot(self) -> bytes:
        shot = self.send("browsingContext.captureScreenshot", {"context": self.context})
        return base64.b64decode(shot["data"])


def _value(remote: dict[str, Any]) -> Any:
    """A BiDi remote value as Python (the primitives and arrays the tests use)."""
    kind = remote["type"]
    if kind in ("undefined", "null"):
        return None
    if kind == "array":
        return [_value(item) for item in remote["value"]]
    return remote.get("value")


@contextlib.contextmanager
def open_firefox(profile: Path) -> Iterator[Firefox]:
    """Start headless Firefox with a fresh profile; stop it when the block ends."""
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(
        "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    )
    drain: threading.Thread | None = None
    process = subprocess.Popen(
        [
            FIREFOX,
            "--headless",
            "--no-remote",
            "--profile",
            str(profile),
            "--remote-debugging-port",
            "0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:  # ends when Firefox exits: no endless wait
            found = re.search(r"WebDriver BiDi listening on (ws://\S+)", line)
            if found:
                break
        else:
            raise BidiError(f"Firefox exited ({process.wait()}) without a BiDi port")
        # Keep reading what it says, so a full pipe never stalls it.
        drain = threading.Thread(target=process.stderr.read, daemon=True)
        drain.start()
        with connect(found.group(1) + "/session", proxy=None, max_size=None) as socket:
            yield Firefox(socket)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if drain is not None:
            drain.join(timeout=10)  # Firefox has exited: its stderr is at its end
        if process.stderr is not None:
            process.stderr.close()
