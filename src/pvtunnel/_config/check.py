"""``pvtunnel check``: a config file validated without being told its kind.

A module of its own because it stands above both loaders: it loads the file as the
kind its tables say (``loading.detect_kind``), or as either kind where they say
neither, and reports what ``pvtunnel serve`` or ``pvtunnel agent`` would.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pvtunnel._errors import ConfigError

from .agent import CA_FILE_UNUSED
from .loading import ConfigKind, detect_kind, load_agent_config, load_server_config, read_toml

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path


def _check_either(path: Path, environ: Mapping[str, str]) -> tuple[ConfigKind, list[str]]:
    """`check_file` for a file whose table names do not say its kind.

    Tables both kinds have (``[timeouts]``, ``[admin]``) say it by their keys, if at
    all (``idle_s`` is the server's, ``upstream_idle_s`` the agent's): the file is
    the kind that loads it. One both kinds load is good for either (``"unknown"``,
    no problems); one neither loads gets both kinds' problems.
    """
    as_server = _problems_loading(load_server_config, path, environ)
    as_agent = _problems_loading(load_agent_config, path, environ)
    if not as_server and as_agent:
        return "server", []
    if as_server and not as_agent:
        return "agent", []
    if not as_server:
        return "unknown", []
    if as_server == as_agent:
        return "unknown", as_server  # wrong alike for either kind: said once
    return "unknown", [
        f"{path}: cannot tell a server config from an agent config: expected "
        "[internal]/[external] (server) or client_id, [server], [[routes]] (agent)",
        *(f"as a server: {problem}" for problem in as_server),
        *(f"as an agent: {problem}" for problem in as_agent),
    ]


def _problems_loading(
    load: Callable[..., object], path: Path, environ: Mapping[str, str]
) -> list[str]:
    """What ``load`` finds wrong with the file at ``path`` (nothing: an empty list)."""
    try:
        load(path, environ=environ)
    except ConfigError as exc:
        return exc.problems
    return []


def check_file(path: Path, *, environ: Mapping[str, str]) -> tuple[ConfigKind, list[str]]:
    """Validate a config file without knowing which kind it is (``pvtunnel check``).

    Args:
        path: A server.toml or agent.toml, whatever its name.
        environ: The environment the file would run with; its tokens are checked too.

    Returns:
        ``"server"`` or ``"agent"`` (``"unknown"`` when the file cannot be read, or
        is good or bad for either kind alike) and the problem lines, empty when the
        file is good.
    """
    try:
        raw = read_toml(path)
    except ConfigError as exc:
        return "unknown", exc.problems
    kind = detect_kind(raw)
    if kind == "unknown":
        return _check_either(path, environ)
    try:
        if kind == "server":
            load_server_config(path, environ=environ)
        else:
            agent = load_agent_config(path, environ=environ)
            # `pvtunnel agent` checks this once its flags are applied (a --server
            # wss://... replaces the file's URLs); the file alone is checked here.
            if agent.server.ca_file_unused():
                return kind, [f"{path}: {CA_FILE_UNUSED}"]
    except ConfigError as exc:
        return kind, exc.problems
    return kind, []
