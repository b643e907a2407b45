"""The Trio layer over in-memory streams: real code, no sockets, no real time."""
