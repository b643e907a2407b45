"""pvtunnel: a reverse HTTP tunnel built on Trio."""

__version__ = "0.1.0"
