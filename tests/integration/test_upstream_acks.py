"""No stall behind upstreams that write a response in pieces (Nagle against delayed ACK).

Python's `http.server` with HTTP/1.1 writes a response's head in one send and its
body in a second, without TCP_NODELAY, and so do many frameworks. Its kernel holds
the body back (Nagle's algorithm) until the head is acknowledged, and ours would
delay that acknowledgement by ~40 ms, since the agent sends nothing back until the
response is whole: every request on a pooled keep-alive connection would wait out
the delayed-ACK timer. The kernel counts each time that timer fires (TcpExt
DelayedACKs), so the test counts stalls, not milliseconds; the probe runs in a
network namespace of its own (``unshare --net``, as root), where that counter sees
its connections alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import trio

REQUESTS = 40
ROOT = Path(__file__).resolve().parents[2]


async def test_a_split_write_upstream_on_a_pooled_connection_does_not_stall() -> None:
    unshare = shutil.which("unshare")
    assert unshare is not None, "util-linux's unshare is needed"
    assert os.geteuid() == 0, "a network namespace of its own needs root"
    command = [
        unshare,
        "--net",
        "sh",
        "-c",
        'ip link set lo up && exec "$0" -m tests.integration.split_write_probe "$1"',
        sys.executable,
        str(REQUESTS),
    ]
    done = await trio.run_process(command, cwd=ROOT, capture_stdout=True, check=True)
    result = json.loads(done.stdout)
    assert result["answers_ok"]
    assert result["reused"]  # one pooled upstream connection served them all
    # Each request would wait out the timer once; none should.
    assert result["stalls"] < REQUESTS // 10, result
