"""pvtunnel as a separate process, as users run it: launched, read, signalled, reaped."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

PVTUNNEL = [sys.executable, "-m", "pvtunnel"]


async def pvtunnel(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the command without blocking the event loop the server under test runs in."""
    environ = {k: v for k, v in os.environ.items() if k != "PVTUNNEL_ADMIN_TOKEN"}
    return await trio.run_process(
        [*PVTUNNEL, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**environ, **(env or {})},
    )


class Process:
    """A pvtunnel process whose stderr is read line by line."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._buffer = b""

    @classmethod
    async def launch(cls, *args: str, env: Mapping[str, str]) -> Process:
        return await cls.spawn([*PVTUNNEL, *args], env=env)

    @classmethod
    async def spawn(cls, argv: Sequence[str], *, env: Mapping[str, str]) -> Process:
        """Any command (``launch`` runs pvtunnel), its stderr read as lines."""
        process = await trio.lowlevel.open_process(
            list(argv),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
        return cls(process)

    async def wait_for(self, pattern: str, *, start: int = 0) -> re.Match[str]:
        """The first line from ``lines[start]`` on that matches, reading more as needed."""
        stream = self.process.stderr
        assert stream is not None
        while True:
            for line in self.lines[start:]:
                if match := re.search(pattern, line):
                    return match
            chunk = await stream.receive_some(4096)
            if not chunk:
                raise AssertionError(f"process ended without {pattern!r}: {self.lines}")
            self._buffer += chunk
            *complete, self._buffer = self._buffer.split(b"\n")
            self.lines.extend(line.decode() for line in complete)

    async def drain_output(self) -> str:
        """Everything the process wrote to stderr, once it has ended."""
        stream = self.process.stderr
        assert stream is not None
        while chunk := await stream.receive_some(4096):
            self._buffer += chunk
        return "\n".join([*self.lines, self._buffer.decode()])

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()
        assert self.process.stderr is not None
        await self.process.stderr.aclose()
