"""Where the bot keeps the few documents that make it the same device on every start.

The access token and device id (``credentials.json``) and the cross-signing seeds
(``cross_signing.json``) are small JSON documents. With the embedded SQLite store they are
files in ``data_dir`` (mode 0600, written atomically); with PostgreSQL they are rows in the
store's key-value table, so a replacement container with an empty disk is the same device.
Callers see one interface, :class:`Documents`, and never which one it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

logger = logging.getLogger(__name__)


class Documents(Protocol):
    """Named text documents that survive restarts."""

    def where(self, name: str) -> str:
        """Where ``name`` lives, for messages to the admin (a path, or "the database")."""
        ...

    async def read(self, name: str) -> str | None:
        """The document's text, or None if it was never written."""
        ...

    async def write(self, name: str, text: str) -> None:
        """Replace the document, atomically: a crash leaves the old text or the new one."""
        ...


class KeyValues(Protocol):
    """The part of the store that :class:`StoreDocuments` needs."""

    async def get_value(self, key: str) -> str | None: ...

    async def set_value(self, key: str, value: str) -> None: ...


class FileDocuments:
    """Documents as private files in one directory (the embedded default)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def where(self, name: str) -> str:
        return str(self.directory / name)

    async def read(self, name: str) -> str | None:
        return await asyncio.to_thread(self._read, self.directory / name)

    async def write(self, name: str, text: str) -> None:
        await asyncio.to_thread(write_private, self.directory / name, text)

    @staticmethod
    def _read(path: Path) -> str | None:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            logger.warning("%s had mode %o; narrowing it to 600", path, mode)
            path.chmod(0o600)
        return text


class StoreDocuments:
    """Documents as rows of the store's key-value table (with PostgreSQL)."""

    PREFIX = "document:"

    def __init__(self, values: KeyValues) -> None:
        self._values = values

    def where(self, name: str) -> str:
        return f"{name} in the database"

    async def read(self, name: str) -> str | None:
        return await self._values.get_value(self.PREFIX + name)

    async def write(self, name: str, text: str) -> None:
        await self._values.set_value(self.PREFIX + name, text)


def write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically with mode 0600: temp file, fsync, rename, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:  # mkstemp creates it as 0600
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
