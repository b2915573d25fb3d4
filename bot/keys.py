"""The bot's encryption key: where it comes from, and the keys derived from it.

One secret protects what the bot keeps encrypted at rest: the Olm/Megolm pickles of
matrix-nio's crypto store (instead of nio's well-known default pickle key) and the
cross-signing seeds. :func:`encryption_key` is the one place that decides where it comes
from, first match wins:

1. ``PARCEL_ENCRYPTION_KEY`` in the environment;
2. ``encryption_key`` in the config file;
3. ``data_dir/encryption.key``, generated (32 random bytes, mode 0600) at the first start, so
   the demo and small installs need nothing.

Each use gets its own key, derived with HKDF-SHA256 under a distinct label, so no two uses
ever share key material.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from bot.config import ENV_ENCRYPTION_KEY, MIN_ENCRYPTION_KEY_LENGTH, Config, ConfigError

logger = logging.getLogger(__name__)

KEY_FILE = "encryption.key"
"""Name of the generated key file in the data directory."""

NIO_DEFAULT_PICKLE_KEY = "DEFAULT_KEY"
"""matrix-nio's default ``AsyncClientConfig.pickle_key``: public, so it protects nothing."""

_PICKLE_LABEL = b"parcel/v1/nio-pickle-key"
_SEEDS_LABEL = b"parcel/v1/cross-signing-seeds"


@dataclass(frozen=True)
class EncryptionKey:
    """The secret and where it came from (``source`` is fit for ``check-config``)."""

    secret: bytes = field(repr=False)
    source: str

    def _derive(self, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
            self.secret
        )

    @property
    def pickle_key(self) -> str:
        """The passphrase for matrix-nio's crypto store (``AsyncClientConfig.pickle_key``)."""
        return base64.b64encode(self._derive(_PICKLE_LABEL)).decode("ascii")

    @property
    def seeds_key(self) -> bytes:
        """The AES-256-GCM key of the cross-signing seeds file."""
        return self._derive(_SEEDS_LABEL)


def key_file(config: Config) -> Path:
    """Where the generated key lives."""
    return config.data_dir / KEY_FILE


def describe_source(config: Config) -> str:
    """Which key source is in use, in words, without reading or creating anything secret."""
    if config.encryption_key_source == ENV_ENCRYPTION_KEY:
        return f"from the environment ({ENV_ENCRYPTION_KEY})"
    if config.encryption_key_source is not None:
        return "from the config file (encryption_key)"
    path = key_file(config)
    if path.exists():
        return f"generated, in {path}"
    return f"none configured: one will be generated at the first start into {path}"


def encryption_key(config: Config) -> EncryptionKey:
    """The bot's encryption key from the environment, the config or the generated file.

    With neither ``PARCEL_ENCRYPTION_KEY`` nor ``encryption_key`` set, the key is read from
    ``data_dir/encryption.key``, which is created (0600, atomically) when it does not exist.
    A damaged key file raises :class:`ConfigError` and is never replaced: a new key could not
    open what the old one protects. With PostgreSQL the configuration already refuses to
    load without an explicit key (see ``bot.config``), so the file is never generated then.
    """
    if config.encryption_key is not None:
        source = config.encryption_key_source or "encryption_key"
        return EncryptionKey(config.encryption_key.strip().encode("utf-8"), source)
    path = key_file(config)
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        text = _generate(path)
        # INFO, not WARNING: a generated key is the normal first start of a small install.
        logger.info(
            "no encryption_key configured: generated %s; back it up with data_dir (or set %s "
            "to its content), since the crypto store cannot be opened without it",
            path, ENV_ENCRYPTION_KEY,
        )
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(os.fspath(path), f"cannot read the encryption key ({exc})") from None
    if len(text) < MIN_ENCRYPTION_KEY_LENGTH:
        raise ConfigError(
            os.fspath(path),
            "the encryption key file is damaged (empty or too short); restore it from a "
            "backup, it protects the crypto store and the cross-signing seeds",
        )
    return EncryptionKey(text.encode("ascii"), f"generated file {path}")


def _generate(path: Path) -> str:
    """Write a new random key to ``path`` (0600, atomically); returns it."""
    text = base64.urlsafe_b64encode(os.urandom(32)).decode("ascii").rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:  # mkstemp creates it 0600
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link, not replace: two starts racing must not end up with different keys.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return path.read_text(encoding="ascii").strip()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return text
