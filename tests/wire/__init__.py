"""Synchronous, fast tests of the sans-I/O wire layer (no trio, no sockets)."""
