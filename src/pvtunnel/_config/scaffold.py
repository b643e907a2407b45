"""``pvtunnel init``: a working pair of config files in one command.

The files hold a token, so they are created mode 0600 and never silently
replaced; they are written with tomli-w from plain tables and load back through
the same loaders as any hand-written file (a test holds us to that).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Final

import tomli_w

from pvtunnel._errors import ConfigError

from .secret import generate_token

if TYPE_CHECKING:
    from pathlib import Path

SERVER_FILE: Final = "server.toml"
AGENT_FILE: Final = "agent.toml"
FILE_MODE: Final = 0o600

_SERVER_HEADER: Final = """\
# pvtunnel server configuration, written by `pvtunnel init`.
# Keep this file private: it holds the token agents authenticate with.
# Run: pvtunnel serve --config server.toml
# Optional: [external] token = "..." makes HTTP clients present a token too;
# [external] whitelisted_ips = ["10.0.0.0/8"] limits who may connect.

"""

_AGENT_HEADER: Final = """\
# pvtunnel agent configuration, written by `pvtunnel init`.
# Keep this file private: its token equals the server's [internal] token.
# Run: pvtunnel agent --config agent.toml
# Then: curl -H "Host: app" http://127.0.0.1:8080/

"""


def _tables(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    server = {
        "host": "0.0.0.0",
        "internal": {"port": 8081, "token": token},
        "external": {"port": 8080},
    }
    agent = {
        "client_id": "agent-1",
        "server": {"url": "ws://127.0.0.1:8081", "token": token},
        "routes": [{"name": "app", "value": "127.0.0.1", "port": 3000, "type": "ip"}],
    }
    return server, agent


def _write_private(path: Path, text: str, *, force: bool) -> None:
    # O_NOFOLLOW as well: a link made between the check and here fails (ELOOP).
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | nofollow | (0 if force else os.O_EXCL)
    try:
        descriptor = os.open(path, flags, FILE_MODE)
    except FileExistsError:
        raise ConfigError([f"{path}: already exists; pass --force to overwrite it"]) from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot write: {exc.strerror or exc}"]) from None
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        # The mode given to open() is reduced by the umask and ignored for an
        # existing file; the token must never be readable by others.
        os.fchmod(file.fileno(), FILE_MODE)
        file.write(text)


def write_init_files(directory: Path, *, force: bool) -> tuple[Path, Path]:
    """Write server.toml and agent.toml sharing a fresh random agent token.

    Args:
        directory: Where to write; created if missing.
        force: Overwrite existing files instead of refusing.

    Returns:
        The paths of server.toml and agent.toml.

    Raises:
        ConfigError: A file exists and ``force`` is false (nothing is written
            then), or the directory or a file cannot be written.
    """
    server_path, agent_path = directory / SERVER_FILE, directory / AGENT_FILE
    # Never through a symbolic link, even with --force: it could have us truncate a
    # file elsewhere, fill it with a token and change its mode. Checked for both
    # before either is written.
    links = [path for path in (server_path, agent_path) if path.is_symlink()]
    if force and links:
        raise ConfigError(
            [f"{path}: is a symbolic link; remove it or write elsewhere" for path in links]
        )
    if not force:
        # is_symlink() too: a dangling link "does not exist" yet O_EXCL refuses it,
        # which would leave server.toml written and agent.toml not.
        existing = [p for p in (server_path, agent_path) if p.exists() or p.is_symlink()]
        if existing:
            raise ConfigError(
                [f"{path}: already exists; pass --force to overwrite it" for path in existing]
            )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            [f"{directory}: cannot create the directory: {exc.strerror or exc}"]
        ) from None
    server, agent = _tables(generate_token())
    _write_private(server_path, _SERVER_HEADER + tomli_w.dumps(server), force=force)
    _write_private(agent_path, _AGENT_HEADER + tomli_w.dumps(agent), force=force)
    return server_path, agent_path
