"""Refusal reasons as facts: a catalog message and its values, rendered for each reader.

A policy verdict's reason is kept as a :class:`Reason` (its English text is stored beside it,
for logs and the admin CLI). Values are facts, not words: a size in bytes, a detected MIME
type, a pixel count, so each reader sees them in their language ("it is 30 MB, and the limit
is 25 MB" / "sie ist 30 MB groß, die Grenze liegt bei 25 MB").
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from babel.numbers import format_decimal

from bot.attachments.inspect import describe_mimetype
from bot.i18n import ENGLISH, N_, SOURCE_LANGUAGE, Translator

_QUALIFIED = re.compile(r"^(.+) \((\w+)\)$")


def with_article(description: str) -> str:
    """ "PNG image" → "a PNG image", "MP4 video" → "an MP4 video", "Excel…" → "an Excel…"."""
    word = description.split(" ", 1)[0]
    if (len(word) > 1 and word.isupper()) or word[:1].isdigit():
        vowel_sound = word[0] in "AEFHILMNORSX8"
    else:
        vowel_sound = word[:1].lower() in "aeiou"
    return ("an " if vowel_sound else "a ") + description


def inline(description: str) -> str:
    """ "program (Windows)" → "Windows program", so a MIME type can follow in parentheses."""
    match = _QUALIFIED.match(description)
    return f"{match.group(2)} {match.group(1)}" if match else description


def describe_kind(mimetype: str, *, t: Translator = ENGLISH) -> str:
    """:func:`describe_mimetype` in the reader's language ("PNG-Bild")."""
    english = describe_mimetype(mimetype)
    known = t.known(english)
    if known != english or t.code == SOURCE_LANGUAGE:
        return known
    # Named from the subtype ("JXL image"): the noun translated, the label kept.
    label, _, noun = english.rpartition(" ")
    if label and label.isupper() and noun in ("image", "video", "audio", "file"):
        return {"image": t._("{label} image", label=label),
                "video": t._("{label} video", label=label),
                "audio": t._("{label} audio", label=label),
                "file": t._("{label} file", label=label)}[noun]
    return english


def kind(mimetype: str, article: bool = False) -> dict[str, Any]:
    """A file kind as a value: its words come from the detected type, in the reader's
    language ("a Windows program" in English with ``article``, "Programm (Windows)" in
    German, whose sentences are written to need no article)."""
    return {"kind": mimetype, "article": article}


def size(n: int) -> dict[str, Any]:
    """A size in bytes as a value ("25 MB", "25 MB", "25 Mo")."""
    return {"size": n}


def known(text: str) -> dict[str, Any]:
    """A detail in English as a value: translated when the catalog has it (a fixed sentence
    such as "recordings are not searched for card numbers"), else shown as it is."""
    return {"known": text}


def megapixels(pixels: int) -> dict[str, Any]:
    """A pixel count as a value ("40 megapixels", "1,5 Megapixel")."""
    return {"megapixels": pixels}


@dataclass(frozen=True)
class Reason:
    """Why a file was refused: a catalog message (English, with named placeholders) and its
    values (plain strings and numbers, or the typed facts made by :func:`kind`,
    :func:`size` and :func:`megapixels`)."""

    message: str
    values: Mapping[str, Any] = field(default_factory=dict)

    def render(self, t: Translator = ENGLISH) -> str:
        """The reason in ``t``'s language."""
        return t._(self.message, **{name: _shown(value, t) for name, value in
                                    self.values.items()})

    def to_json(self) -> str:
        """The facts as stored with the offer (``offers.reason_facts``)."""
        return json.dumps({"message": self.message, "values": dict(self.values)},
                          sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> Reason | None:
        """The stored facts, or None when there are none (or they are unreadable)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["message"]), dict(data["values"]))
        except (ValueError, KeyError, TypeError):
            return None


def _shown(value: Any, t: Translator) -> str:
    if not isinstance(value, dict):
        return str(value)
    if "size" in value:
        return t.size(int(value["size"]))
    if "megapixels" in value:
        shown = format_decimal(round(int(value["megapixels"]) / 1_000_000, 1), "0.#",
                               locale=t.locale)
        return t._("{value} megapixels", value=shown)
    if "known" in value:
        return t.known(str(value["known"]))
    if "kind" in value:
        mimetype = str(value["kind"])
        if t.code == SOURCE_LANGUAGE:
            words = inline(describe_mimetype(mimetype))
            return with_article(words) if value.get("article") else words
        return describe_kind(mimetype, t=t)
    return str(value)


def stored_reason(reason: str | None, facts: str | None, t: Translator = ENGLISH,
                  fallback: str = N_("unknown error")) -> str:
    """An offer's reason for its reader: from the stored facts when there are some, else the
    stored English text (translated when it is a catalog message, such as "the chat ended")."""
    found = Reason.from_json(facts)
    if found is not None:
        return found.render(t)
    return t.known(reason or fallback)
