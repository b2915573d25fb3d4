"""Relayed text: fitting it into events (ordered parts), reply fallbacks, transaction ids.

Pure: no homeserver, no store. The relay code in the router calls :func:`relayed_messages`
and sends what it returns in order.

Size: the homeserver refuses an event whose whole serialized form is over 64 KiB
(``M_TOO_LARGE``), envelope (ids, hashes, signatures, auth events) included, and in an
encrypted room the content travels as base64 ciphertext, a third larger. A content of at most
:data:`MAX_CONTENT_BYTES`, measured as ASCII-escaped JSON (never smaller than what is sent,
whether a client escapes non-ASCII or not), stays under the limit in both cases.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from html.parser import HTMLParser
from typing import Any, Protocol

from bot import render
from bot.attachments.cards import mask_html, mask_text
from bot.attachments.text import strip_reply_fallback

# 40 000 × 4/3 (base64 of the encrypted payload) + the encrypted envelope (≈ 2 KB) < 65 536.
MAX_CONTENT_BYTES = 40_000
# A single customer event is at most 64 KiB, so even text that grows fourfold when escaped
# (every character an astral emoji) needs fewer parts than this.
MAX_PARTS = 12

RELAY_PREFIX = "relay-"
_PART_TXN = re.compile(r"^part(\d+)-(\$.+)$")


# -- transaction ids ----------------------------------------------------------------------


def relay_txn(event_id: str, part: int = 1) -> str:
    """The transaction id of the relayed copy (or its k-th part) of ``event_id``.

    Part 1 keeps the plain ``relay-<event id>`` form, so a reply to a long message lands on
    its first part. Event ids begin with "$", which keeps the two forms apart.
    """
    return f"{RELAY_PREFIX}{event_id}" if part == 1 else f"{RELAY_PREFIX}part{part}-{event_id}"


def original_of(txn_id: str) -> str | None:
    """The original event id a relay transaction id was made for, or None for other sends."""
    if not txn_id.startswith(RELAY_PREFIX):
        return None
    rest = txn_id[len(RELAY_PREFIX):]
    if rest.startswith("$"):
        return rest
    match = _PART_TXN.match(rest)
    return match.group(2) if match else None


def reply_target(content: dict[str, Any]) -> str | None:
    """The event a message replies to (``m.relates_to.m.in_reply_to.event_id``), if any."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict):
        return None
    in_reply_to = relates.get("m.in_reply_to")
    if not isinstance(in_reply_to, dict):
        return None
    target = in_reply_to.get("event_id")
    return target if isinstance(target, str) and target.startswith("$") else None


def strip_fallbacks(body: str, formatted: str | None, is_reply: bool) -> tuple[str, str | None]:
    """Body and HTML without reply fallbacks.

    The HTML one (``<mx-reply>`` and its content) is removed by the sanitiser in
    :func:`render.relayed_text`; here it goes early too, so sizes are measured on what is sent.
    """
    body = strip_reply_fallback(body, is_reply)
    if formatted is not None:
        formatted = render.sanitize_html(formatted)
    return body, formatted


# -- sizes ------------------------------------------------------------------------------------


def content_size(content: dict[str, Any]) -> int:
    """The size that counts against the event limit (ASCII-escaped JSON, an upper bound)."""
    return len(json.dumps(content, ensure_ascii=True, separators=(",", ":")))


@lru_cache(maxsize=4096)
def _json_cost(text: str) -> int:
    """Bytes ``text`` adds inside a JSON string (escaping is per character, so costs add up)."""
    return len(json.dumps(text, ensure_ascii=True)) - 2


# -- splitting plain text -----------------------------------------------------------------


def _cut_points(costs: list[int], breakable: list[bool], budget: int) -> list[int] | None:
    """Greedy cuts so each part's cost is within ``budget``, preferring breakable spots.

    ``costs[i]`` is unit i's cost, ``breakable[i]`` whether a part may end right after it
    without cutting a word. Returns the start index of every part after the first, or None
    when a single unit is over the budget.
    """
    cuts: list[int] = []
    start, used, last_break = 0, 0, -1
    for index, cost in enumerate(costs):
        if cost > budget:
            return None
        if used + cost > budget:
            cut = index
            # Cut after the last word break in the second half of the part, if the rest fits.
            if last_break >= start and last_break + 1 - start > (index - start) // 2:
                candidate = last_break + 1
                if sum(costs[candidate:index]) + cost <= budget:
                    cut = candidate
            cuts.append(cut)
            used = sum(costs[cut:index])
            start = cut
            last_break = max((i for i in range(cut, index) if breakable[i]), default=-1)
        used += cost
        if breakable[index]:
            last_break = index
    return cuts


def split_plain(text: str, budget: int) -> list[str] | None:
    """``text`` in consecutive pieces, each costing at most ``budget`` as body plus HTML.

    The pieces join back to ``text`` exactly; cuts fall after whitespace where possible.
    """
    costs = [_json_cost(ch) + _json_cost(render.plain_to_html(ch)) for ch in text]
    cuts = _cut_points(costs, [ch.isspace() for ch in text], budget)
    if cuts is None:
        return None
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


# -- splitting HTML, each part well-formed ------------------------------------------------

_VOID = frozenset({"br", "hr", "img", "wbr"})
# Elements whose end (or, for <br>, whose presence) is a line break in the plain-text body.
_LINE_ENDS = frozenset(
    {"p", "div", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table",
     "ul", "ol", "details", "summary", "caption", "hr"}
)  # fmt: skip


@dataclass(frozen=True)
class _Unit:
    """One indivisible piece of HTML: a tag, or one character of text."""

    kind: str  # "start", "end", "void" or "text"
    html: str  # as serialized
    text: str  # what it contributes to the plain body
    tag: str = ""


class _Tokens(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.units: list[_Unit] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = "".join(
            f' {name}="{html.escape(value or "", quote=True)}"' for name, value in attrs
        )
        if tag in _VOID:
            text = "\n" if tag in ("br", "hr") else ""
            self.units.append(_Unit("void", f"<{tag}{attributes}>", text, tag))
        else:
            self.units.append(_Unit("start", f"<{tag}{attributes}>", "", tag))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID:
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        self.units.append(_Unit("end", f"</{tag}>", "\n" if tag in _LINE_ENDS else "", tag))

    def handle_data(self, data: str) -> None:
        for ch in data:
            self.units.append(_Unit("text", html.escape(ch, quote=False), ch))


def _html_units(fragment: str) -> list[_Unit]:
    parser = _Tokens()
    parser.feed(fragment)
    parser.close()
    return parser.units


def split_html(fragment: str, budget: int) -> list[tuple[str, str]] | None:
    """Sanitised HTML in consecutive well-formed parts: (plain text, HTML) per part.

    Each part costs at most ``budget`` (its body plus its HTML, JSON-escaped). Elements open
    at a cut are closed at the end of the part and opened again at the start of the next, so
    a list or a code block continues across parts. Returns None when one tag alone is over the
    budget (the caller then falls back to plain-text parts).
    """
    units = _html_units(fragment)
    parts: list[tuple[str, str]] = []
    stack: list[_Unit] = []  # open elements, outermost first
    html_out: list[str] = []
    text_out: list[str] = []
    used = 0

    def closing_cost(open_elements: list[_Unit]) -> int:
        return sum(_json_cost(f"</{u.tag}>") for u in open_elements)

    def start_part() -> None:
        nonlocal used
        html_out.clear()
        text_out.clear()
        used = 0
        for opened in stack:
            html_out.append(opened.html)
            used += _json_cost(opened.html)

    def end_part() -> None:
        closing = "".join(f"</{u.tag}>" for u in reversed(stack))
        parts.append(("".join(text_out), "".join(html_out) + closing))

    start_part()
    content_in_part = False
    for unit in units:
        after = stack + [unit] if unit.kind == "start" else (
            stack[:-1] if unit.kind == "end" and stack and stack[-1].tag == unit.tag else stack
        )
        cost = _json_cost(unit.html) + _json_cost(unit.text)
        if used + cost + closing_cost(after) > budget and content_in_part:
            end_part()
            start_part()
            content_in_part = False
        if used + cost + closing_cost(after) > budget:
            return None  # one unit (with the elements around it) does not fit any part
        html_out.append(unit.html)
        text_out.append(unit.text)
        used += cost
        content_in_part = content_in_part or unit.kind in ("text", "void")
        if unit.kind == "start":
            stack.append(unit)
        elif unit.kind == "end" and stack and stack[-1].tag == unit.tag:
            stack.pop()
    if content_in_part or not parts:
        end_part()
    return parts


# -- the relay --------------------------------------------------------------------------------


def _render_parts(
    label: str, msgtype: str, pieces: list[tuple[str, str | None]], reply_to: str | None
) -> Iterator[dict[str, Any]]:
    total = len(pieces)
    for index, (text, rich) in enumerate(pieces, start=1):
        yield render.relayed_text(label, msgtype, text, rich,
                                  reply_to=reply_to if index == 1 else None,
                                  part=(index, total))


def _fits(contents: list[dict[str, Any]], limit: int, max_parts: int) -> bool:
    return len(contents) <= max_parts and all(content_size(c) <= limit for c in contents)


def relayed_messages(
    label: str,
    msgtype: str,
    body: str,
    formatted: str | None,
    reply_to: str | None = None,
    limit: int = MAX_CONTENT_BYTES,
    max_parts: int = MAX_PARTS,
) -> list[dict[str, Any]] | None:
    """The relayed message as one event or as ordered parts "(1/3)" …, or None if impossible.

    Formatted messages are split as HTML, every part well-formed, with a plain body made from
    each part's text; when the HTML cannot be split (one tag alone too large) the parts are
    plain text from the sender's body. None means even ``max_parts`` parts would not do.
    """
    whole = render.relayed_text(label, msgtype, body, formatted, reply_to=reply_to)
    if content_size(whole) <= limit:
        return [whole]
    # What a part costs with no text at all, with the widest marker and the reply relation.
    empty = render.relayed_text(label, msgtype, "", "" if formatted is not None else None,
                                reply_to=reply_to, part=(max_parts, max_parts))
    budget = limit - content_size(empty)
    if budget <= 0:
        return None
    if formatted is not None:
        html_parts = split_html(render.sanitize_html(formatted), budget)
        if html_parts is not None:
            pieces: list[tuple[str, str | None]] = list(html_parts)
            contents = list(_render_parts(label, msgtype, pieces, reply_to))
            if _fits(contents, limit, max_parts):
                return contents
    plain_parts = split_plain(body, budget)
    if plain_parts is None:
        return None
    contents = list(_render_parts(label, msgtype, [(p, None) for p in plain_parts], reply_to))
    return contents if _fits(contents, limit, max_parts) else None


@dataclass(frozen=True)
class CardScreen:
    """Relayed text after ``policy.card_numbers_in_text``: what may go out, how many card
    numbers were found, and whether the message must not be relayed at all."""

    body: str
    formatted: str | None
    found: int = 0
    refused: bool = False


def screen_card_numbers(body: str, formatted: str | None, mode: str) -> CardScreen:
    """Apply ``policy.card_numbers_in_text`` (``allow``, ``mask`` or ``refuse``) to a message.

    Body and formatted body are searched apart (a client may put the number in only one of
    them); ``found`` is the larger count. With ``refuse`` a message holding any number is
    refused as a whole; with ``mask`` both forms go out masked. ``allow`` does not search.
    """
    if mode == "allow":
        return CardScreen(body, formatted)
    masked_body, in_body = mask_text(body)
    masked_html, in_html = mask_html(formatted) if formatted is not None else (None, 0)
    found = max(in_body, in_html)
    if not found:
        return CardScreen(body, formatted)
    if mode == "refuse":
        return CardScreen(body, formatted, found, refused=True)
    return CardScreen(masked_body, masked_html, found)


class _Outbox(Protocol):
    """What :func:`counterpart` needs from the store (see ``Outbox.sent_txn``/``sent_in_room``)."""

    async def sent_txn(self, room_id: str, event_id: str) -> str | None:
        """The txn id that produced an event in a room."""

    async def sent_in_room(self, txn_id: str) -> tuple[str, str] | None:
        """(room, event id) a txn id produced."""


async def counterpart(outbox: _Outbox, room_id: str, event_id: str, other_room: str) -> str | None:
    """The event in ``other_room`` that ``event_id`` in ``room_id`` stands for across the relay.

    An original message maps to its relayed copy (first part), a relayed copy to the original
    it copies; anything else (a bot notice, an offer card, an unknown id) to None.
    """
    copy = await outbox.sent_in_room(relay_txn(event_id))
    if copy is not None:
        return copy[1] if copy[0] == other_room else None
    txn = await outbox.sent_txn(room_id, event_id)
    return original_of(txn) if txn is not None else None


# -- events that are neither text nor files -----------------------------------------------

# Sent by clients as part of something else (a call's signalling, a poll's votes, device
# verification, live-location updates): answering each would flood the chat, and the event
# that starts the thing (the call invite, the poll) already got its answer.
_SILENT_PREFIXES = ("m.call.", "m.key.verification.", "org.matrix.msc3401.")
_SILENT_TYPES = frozenset(
    {
        "m.room.encrypted", "m.poll.response", "m.poll.end", "org.matrix.msc3381.poll.response",
        "org.matrix.msc3381.poll.end", "org.matrix.msc3381.v2.poll.response",
        "org.matrix.msc3381.v2.poll.end", "m.beacon", "org.matrix.msc3672.beacon",
    }
)  # fmt: skip
_NAMED_TYPES = {
    "m.call.invite": "call",
    "m.poll.start": "poll",
    "org.matrix.msc3381.poll.start": "poll",
    "org.matrix.msc3381.v2.poll.start": "poll",
}


def unsupported_event(event_type: str) -> str | None:
    """What to call a non-state event that is neither text nor a file, or None to stay silent.

    Every such event a person sends is answered, except the follow-ups listed above.
    """
    if event_type in _NAMED_TYPES:
        return _NAMED_TYPES[event_type]
    if event_type in _SILENT_TYPES or event_type.startswith(_SILENT_PREFIXES):
        return None
    return "message"


def sticker_as_image(content: dict[str, Any]) -> dict[str, Any]:
    """An ``m.sticker`` event's content as the ``m.image`` message it amounts to.

    Its ``body`` describes the sticker ("thumbs up") rather than naming a file, so the offer is
    named "sticker (thumbs up)"; ``url``/``file`` and ``info`` stay as sent.
    """
    image: dict[str, Any] = {k: content[k] for k in ("url", "file", "info") if k in content}
    description = content.get("body")
    description = " ".join(description.split())[:80] if isinstance(description, str) else ""
    image["msgtype"] = "m.image"
    image["body"] = render.sticker_name(description)
    return image
