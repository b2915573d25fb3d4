"""What Parcel reads from inbound events about files: the upload's parts, reaction keys, sides.

Everything here is pure and reads untrusted content defensively.
"""

from __future__ import annotations

from typing import Any

from bot.attachments.model import Direction
from bot.store import Side

FILE_MSGTYPES = frozenset({"m.image", "m.file", "m.video", "m.audio"})


def normalize_key(key: object) -> str:
    """A reaction key without emoji variation selectors, for comparison."""
    return str(key).replace("\ufe0f", "").strip() if isinstance(key, str) else ""


def direction_from(side: Side) -> Direction:
    """The direction of a file sent from ``side``'s room."""
    return Direction.CUSTOMER_TO_AGENT if side is Side.CUSTOMER else Direction.AGENT_TO_CUSTOMER


def sender_side(direction: Direction) -> Side:
    """The side that sent a file travelling in ``direction``."""
    return Side.CUSTOMER if direction is Direction.CUSTOMER_TO_AGENT else Side.AGENT


class UploadEvent:
    """The parts of a file message Parcel needs, read defensively from untrusted content."""

    def __init__(self, content: dict[str, Any]) -> None:
        self.msgtype = str(content.get("msgtype"))
        info = content.get("info")
        info = info if isinstance(info, dict) else {}
        filename = content.get("filename")
        if not isinstance(filename, str) or not filename.strip():
            filename = content.get("body")
        self.filename = filename if isinstance(filename, str) else ""
        mimetype = info.get("mimetype")
        self.declared_mimetype = mimetype if isinstance(mimetype, str) else None
        size = info.get("size")
        self.declared_size = size if isinstance(size, int) and not isinstance(size, bool) else None
        file_block = content.get("file")
        self.encrypted_file = file_block if isinstance(file_block, dict) else None
        url = self.encrypted_file.get("url") if self.encrypted_file else content.get("url")
        self.url = url if isinstance(url, str) else None
