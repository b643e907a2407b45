"""The Trio layer: tasks, sockets and WebSockets around the pure core."""
