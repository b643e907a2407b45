"""Certificates for TLS tests: a private CA (trustme) and PEM files of one it issued."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trustme

from tests.integration.harness import server_config

if TYPE_CHECKING:
    from pvtunnel._config import ServerConfig


@attrs.frozen
class Pki:
    """A CA and the PEM files of a certificate it issued for 127.0.0.1 and localhost."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path


def issue(tmp_path: Path, name: str, *identities: str) -> Pki:
    """A new CA and a certificate for ``identities``, written under ``tmp_path``."""
    ca = trustme.CA()
    cert = ca.issue_cert(*identities)
    ca_file = tmp_path / f"{name}-ca.pem"
    cert_file = tmp_path / f"{name}-cert.pem"
    key_file = tmp_path / f"{name}-key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return Pki(ca=ca, ca_file=ca_file, cert_file=cert_file, key_file=key_file)


def tls_server_config(
    pki: Pki, *, internal: bool = True, external: bool = False, internal_port: int = 0
) -> ServerConfig:
    """A test server with TLS on its internal listener, its external one, or both."""
    files = {"tls_cert": pki.cert_file, "tls_key": pki.key_file}
    return server_config(
        internal={"port": internal_port, **(files if internal else {})},
        external=files if external else None,
    )
