"""The request inspector: what the agent replayed, kept in memory and shown on a page.

``capture`` holds the exchanges (bounded by count and bytes) and renders them as
the JSON the page and scripts read; ``edits`` reads a replay's overrides;
``static/`` is the page itself, shipped as package data (no CDN, no build step).
The Trio side, which records streams and serves the page, is
`pvtunnel._trio.inspector` and `pvtunnel._trio.inspect_http`.
"""
