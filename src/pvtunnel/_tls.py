"""Loading a listener's certificate and key, the same way wherever it is done."""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import ssl
    from pathlib import Path

from pvtunnel._errors import EncryptedKeyError

ENCRYPTED_KEY = EncryptedKeyError.MESSAGE


def load_cert_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str | None) -> None:
    """`ssl.SSLContext.load_cert_chain`, refusing an encrypted key at once.

    Without a password callback OpenSSL asks for the passphrase on the terminal,
    which blocks a process started by hand and prints stray prompts and a bare
    "Invalid argument" under systemd or Docker.

    Raises:
        ssl.SSLError: the files are no usable certificate and key;
            `EncryptedKeyError` for a key that is encrypted.
        OSError: a file cannot be read.
    """
    context.load_cert_chain(str(cert), None if key is None else str(key), password=_no_passphrase)


def _no_passphrase() -> NoReturn:
    raise EncryptedKeyError
