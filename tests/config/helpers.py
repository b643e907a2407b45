"""Writing config files and collecting the problems a loader reports."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from pvtunnel._config import load_agent_config, load_server_config
from pvtunnel._errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

TOKEN = "tok-Very-Secret-4711"


def write(directory: Path, name: str, text: str) -> Path:
    """Write a dedented file under ``directory``, creating folders on the way."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def write_tls_files(directory: Path, cert: str, key: str, ca: str | None = None) -> None:
    """A certificate and its key (and their CA), real PEM files: the loaders load them."""
    authority = trustme.CA()
    issued = authority.issue_cert("proxy.example")
    (directory / cert).parent.mkdir(parents=True, exist_ok=True)
    (directory / cert).write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(directory / key))
    if ca is not None:
        authority.cert_pem.write_to_path(str(directory / ca))


def encrypt_key(path: Path, passphrase: bytes = b"passphrase") -> None:
    """Rewrite the PEM private key at ``path`` encrypted, as ``openssl -aes256`` would."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )
    )


def server_problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The lines of the ConfigError that loading this server config must raise."""
    with pytest.raises(ConfigError) as caught:
        load_server_config(path, environ=environ or {})
    return caught.value.problems


def agent_problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    """The lines of the ConfigError that loading this agent config must raise."""
    with pytest.raises(ConfigError) as caught:
        load_agent_config(path, environ=environ or {})
    return caught.value.problems
