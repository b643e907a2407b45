"""The sans-I/O wire protocol: frames and the stream multiplexer (protocol.md)."""
