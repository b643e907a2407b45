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


def _open_private(path: Path, *, force: bool) -> tuple[int, bool]:
    """A descriptor to write ``path`` through, and whether this call created the file.

    Nothing is truncated here: both files are opened before either is written, so a
    second one that cannot be opened leaves the first as it was (and its token with
    it), and one created only for this is removed again.
    """
    # O_NOFOLLOW as well: a link made between the check and here fails (ELOOP).
    flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, FILE_MODE), True
        except FileExistsError:
            if not force:
                raise ConfigError(
                    [f"{path}: already exists; pass --force to overwrite it"]
                ) from None
            return os.open(path, flags), False
    except OSError as exc:
        raise ConfigError([f"{path}: cannot write: {exc.strerror or exc}"]) from None


def _write_private(descriptor: int, text: str) -> None:
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.truncate()
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
        ConfigError: A file exists and ``force`` is false, or the directory or a
            file cannot be written; either way neither file is changed.
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
    # --force cannot replace a directory: said so, without advising it.
    folders = [path for path in (server_path, agent_path) if path.is_dir() and path not in links]
    if folders:
        raise ConfigError([f"{path}: cannot write: Is a directory" for path in folders])
    if not force:
        # is_symlink() too: a dangling link "does not exist" yet O_EXCL refuses it.
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
    server_file, created = _open_private(server_path, force=force)
    try:
        agent_file, _ = _open_private(agent_path, force=force)
    except ConfigError:
        os.close(server_file)
        if created:
            server_path.unlink()
        raise
    server, agent = _tables(generate_token())
    _write_private(server_file, _SERVER_HEADER + tomli_w.dumps(server))
    _write_private(agent_file, _AGENT_HEADER + tomli_w.dumps(agent))
    return server_path, agent_path
