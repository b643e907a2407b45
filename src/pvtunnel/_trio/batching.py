"""How a connection batches its frames into WebSocket messages: the sizes it goes by.

The `Tunnel`'s writer and a stream's early send make messages of these sizes, and
a stream's task (`Channel.send_data`) waits while the connection holds too much
to send. Both sides go by the same sizes, so they stand here, below both:
`stream`, which `tunnel` imports, takes them without importing `tunnel`.
"""

from __future__ import annotations

from typing import Final

# Messages of up to 256 KiB. Each message costs a fixed amount on both sides
# (wsproto's framing, trio-websocket's reader task and channel, our reader), so
# bulk transfers want few of them; a 2 MiB window still fills in eight.
MAX_MESSAGE_BYTES: Final = 256 * 1024
# Frames queued (a DATA frame counts twice) at which a stream's task sends the batch
# itself instead of leaving it for the writer after the scheduler's pass. Without it,
# under load one process parses a whole pass of requests while the other waits, then
# the other way round: the two take turns and the machine idles (a quarter of it at
# 64 connections). 24 to 48 measured alike; 8 and 16 made messages too small.
EARLY_SEND_PIECES: Final = 24
# Body bytes queued to send, beyond which a stream's task waits for the writer. The
# peer's window is no bound on what this side holds: a peer that announces a huge
# window and then reads nothing would have every body sent to it pile up here. Four
# messages keep the writer busy; the count of pieces is checked first, as it is free.
SEND_BACKLOG_BYTES: Final = 4 * MAX_MESSAGE_BYTES
SEND_BACKLOG_PIECES: Final = 16
