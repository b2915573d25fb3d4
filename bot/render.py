"""Every string and HTML fragment a person sees, escaped in one place.

Functions here are pure: they take facts and return message contents. User-controlled text
(names, file names, message bodies) only ever reaches HTML through :func:`html.escape` or the
``nh3`` sanitiser.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import nh3

from bot.attachments.inspect import describe_mimetype
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.text import display_filename, human_size, safe_filename, strip_invisible

OFFER_KEY = "io.parcel.offer"

# Tags Matrix clients render (client-server spec, "m.room.message msgtypes").
_ALLOWED_TAGS = {
    "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
    "sup", "sub", "li", "b", "i", "u", "strong", "em", "strike", "code", "hr", "br", "div",
    "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "details", "summary",
}  # fmt: skip
_ALLOWED_ATTRIBUTES = {
    "a": {"href", "target"},
    "span": {"data-mx-color", "data-mx-bg-color", "data-mx-spoiler"},
    "font": {"data-mx-color", "data-mx-bg-color", "color"},
    "code": {"class"},
    "ol": {"start"},
}
_URL_SCHEMES = {"https", "http", "ftp", "mailto", "magnet"}
# Removed together with everything inside them: a reply fallback (<mx-reply>) only quotes what
# the sender claims the other message said (client-server spec, "Rich replies").
_DROPPED_WITH_CONTENT = {"mx-reply", "script", "style"}


@dataclass(frozen=True)
class Message:
    """A message body in plain text and, optionally, HTML."""

    body: str
    html: str | None = None

    def content(self, msgtype: str = "m.notice", **extra: Any) -> dict[str, Any]:
        """The ``m.room.message`` content, with mentions disabled so nobody is pinged."""
        content: dict[str, Any] = {"msgtype": msgtype, "body": self.body, "m.mentions": {}}
        if self.html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = self.html
        content.update(extra)
        return content


def sanitize_html(fragment: str) -> str:
    """Keep only the HTML Matrix clients render; drop scripts, handlers and odd URLs."""
    return nh3.clean(
        fragment,
        tags=_ALLOWED_TAGS,
        attributes=_ALLOWED_ATTRIBUTES,
        url_schemes=_URL_SCHEMES,
        link_rel="noopener noreferrer",
        clean_content_tags=_DROPPED_WITH_CONTENT,
    )


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _plain(text: str) -> str:
    """Single-line text for places where a newline would break the layout."""
    return " ".join(strip_invisible(text).split())


# -- text relay -----------------------------------------------------------------------------


def relayed_text(
    sender_label: str,
    msgtype: str,
    body: str,
    formatted_body: str | None,
    *,
    reply_to: str | None = None,
    part: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """A relayed m.text/m.notice/m.emote, attributed to ``sender_label``.

    ``reply_to`` makes it a reply (without fallback quote) to that event in the room it is
    sent to; ``part`` = (k, n) marks the k-th of n parts of a message too long for one event.
    """
    sender_label = _plain(sender_label)
    if part is not None:
        sender_label = f"{sender_label} ({part[0]}/{part[1]})"
    if msgtype == "m.emote":
        text = f"* {sender_label} {body}"
        rich = f"* <b>{_e(sender_label)}</b> "
    else:
        text = f"{sender_label}: {body}"
        rich = f"<b>{_e(sender_label)}</b>: "
    if formatted_body is not None:
        rich += sanitize_html(formatted_body)
    else:
        rich += plain_to_html(body)
    out_type = "m.notice" if msgtype == "m.notice" else "m.text"
    extra: dict[str, Any] = {}
    if reply_to is not None:
        extra["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
    return Message(text, rich).content(out_type, **extra)


def plain_to_html(text: str) -> str:
    """Plain text as HTML: escaped, newlines as line breaks."""
    return _e(text).replace("\n", "<br>")


def message_too_long(size: int) -> Message:
    """Tells the sender a message was too long to relay even in parts; nothing was sent."""
    return Message(
        f"⚠️ Your last message was not relayed: at {human_size(size)} it is too long to send "
        "even in parts. Please send it as several shorter messages, or as a file."
    )


def agent_label(name: str, label: str) -> str:
    """How an agent is named toward the customer: "Alice (support)"."""
    return f"{name} ({label})" if label else name


# -- sessions -------------------------------------------------------------------------------


def session_opened_for_agents(customer_name: str, customer_id: str, session_id: int,
                              also_open: Sequence[int] = ()) -> Message:
    """The first message in a new agent room; ``also_open`` numbers the customer's other
    chats still open (a second DM is a chat of its own: agents see that they belong together).
    """
    text = (
        f"New chat #{session_id} with {customer_name} ({customer_id}). What you write here "
        "is relayed to the customer; files are offered to them first. Type !help for commands."
    )
    rich = (
        f"New chat <b>#{session_id}</b> with <b>{_e(customer_name)}</b> ({_e(customer_id)}). "
        "What you write here is relayed to the customer; files are offered to them first. "
        "Type <code>!help</code> for commands."
    )
    if also_open:
        numbers = ", ".join(f"#{number}" for number in also_open)
        chats = "another chat" if len(also_open) == 1 else "other chats"
        note = f"This customer also has {chats} open: {numbers}."
        text += f"\n{note}"
        rich += f"<br>{_e(note)}"
    return Message(text, rich)


def welcome(text: str) -> Message:
    """The greeting the customer sees when the session opens (configured wording)."""
    return Message(text)


def session_closed(
    reason: str,
    closer: str | None,
    *,
    you: bool,
    pending: int,
    bot_id: str | None = None,
) -> Message:
    """The closing notice for one room of a session.

    ``reason`` is ``ended`` (someone typed !end; ``closer`` is their name, ``you`` is true in
    their own room), ``customer_left``, ``bot_removed`` or ``bot_removed_from_agents`` (the
    bot was removed from the customer's or the agents' room). ``pending`` is how many offers the
    end left undelivered (the sentence is left out when there were none). With ``bot_id`` (the
    customer's room) it says how to start a new chat.
    """
    if reason == "customer_left":
        lines = ["The customer left the chat. This session is closed."]
    elif reason == "bot_removed":
        lines = ["The bot was removed from the customer's chat (or that room was shut down), "
                 "so nothing more can reach the customer. This session is closed."]
    elif reason == "bot_removed_from_agents":
        lines = ["The support team's room for this chat was closed, so no agent can read "
                 "what you write here any more. This chat is closed."]
    elif you:
        lines = ["You ended the chat."]
    elif closer:
        lines = [f"{_plain(closer)} ended the chat."]
    else:
        lines = ["This chat is closed."]
    if pending:
        files = "1 pending file was" if pending == 1 else f"{pending} pending files were"
        lines.append(f"{files} not delivered.")
    if bot_id:
        lines.append(f"To talk to us again, start a new chat with {bot_id}.")
    return Message(" ".join(lines))


def closed_room_name(name: str) -> str:
    """The name of an agent room once its chat has ended: "[closed] Chat with Carol (#12)"."""
    prefix = "[closed] "
    return name if name.startswith(prefix) else prefix + name


def session_closed_already() -> Message:
    """Reply to a message in a room whose session has ended."""
    return Message("This chat is closed; nothing you write here is relayed any more.")


def not_delivered(reason: str) -> Message:
    """A message could not be relayed to the other side."""
    return Message(f"⚠️ Your last message could not be relayed: {reason}")


# Plain words for the permanent failures a person may be told about, by error code.
FAILURE_CAUSES = {
    "M_FORBIDDEN": "the bot is not allowed to post there",
    "M_TOO_LARGE": "the file is larger than the homeserver allows",
    "M_NOT_FOUND": "the room no longer exists",
}


def failure_cause(code: str, detail: str) -> str:
    """A permanent failure in plain words: the known cause for ``code``, else ``detail``."""
    return FAILURE_CAUSES.get(code, detail)


def offer_failed(filename: str, reason: str, accepted: bool) -> Message:
    """Tells the sender that their file will not arrive although nobody declined it."""
    name = display_filename(filename)
    if accepted:
        return Message(f"⚠️ {name} was accepted but could not be delivered: {reason}")
    return Message(f"⚠️ {name} could not be offered: {reason}")


def chat_not_opened(reason: str) -> Message:
    """Tells the customer that no agent can be reached through this chat."""
    return Message(f"⚠️ Sorry, the chat with support could not be opened: {reason}")


def not_relayable(what: str) -> Message:
    """Reply to an event that is neither text nor a file ("location", "poll", "call")."""
    return Message(f"That {what} could not be relayed: only text and files are supported.")


def card_numbers_hidden_in_text(count: int, recipient: str) -> Message:
    """Tells the sender their message went out with its card number(s) masked."""
    numbers = "1 card number" if count == 1 else f"{count} card numbers"
    verb = "was" if count == 1 else "were"
    return Message(f"🔒 {numbers} in your message {verb} hidden from {recipient} (only the "
                   "last four digits were shown). Please never share card numbers in chat; "
                   "use the payment page instead.")


def card_numbers_refused_in_text(recipient: str) -> Message:
    """Tells the sender their message was not relayed because it holds a card number."""
    return Message(f"⛔ Your message was not sent to {recipient}: it contains a payment card "
                   "number. Please never share card numbers in chat; use the payment page "
                   "instead.")


def sticker_name(description: str) -> str:
    """The name an offered sticker goes by: "sticker (thumbs up)", or "sticker"."""
    return f"sticker ({description})" if description else "sticker"


def undecryptable() -> Message:
    """Asks the sender to resend what the bot could not decrypt."""
    return Message(
        "⚠️ Your last message could not be read (it was encrypted with keys this bot did not "
        "receive). Please send it again."
    )


# -- commands -------------------------------------------------------------------------------

HELP_LINES = (
    ("!help", "show this help"),
    ("!attachments", "list the files sent and received in this chat"),
    ("!accept N", "accept offer number N (same as reacting ✅)"),
    ("!decline N", "decline offer number N (same as reacting ❌)"),
    ("!end", "close this chat"),
)


def help_text() -> Message:
    """The command list."""
    text = "Commands:\n" + "\n".join(f"{cmd} — {what}" for cmd, what in HELP_LINES)
    rich = "<b>Commands</b><ul>" + "".join(
        f"<li><code>{_e(cmd)}</code> — {_e(what)}</li>" for cmd, what in HELP_LINES
    ) + "</ul>"
    return Message(text, rich)


def unknown_command(word: str) -> Message:
    """Reply to a command Parcel does not know."""
    shown = _plain(word)[:40]
    return Message(f"Unknown command {shown}. Commands: " + ", ".join(c for c, _ in HELP_LINES))


def command_error(text: str) -> Message:
    """A short answer to a command that could not be carried out."""
    return Message(text)


# -- offers ---------------------------------------------------------------------------------


def side_name(direction: Direction, recipient: bool) -> str:
    """"the agent" or "the customer", for the recipient or the sender of an offer."""
    to_agent = direction is Direction.CUSTOMER_TO_AGENT
    return "the agent" if to_agent == recipient else "the customer"


def offer_block(offer: Offer, session_id: int) -> dict[str, Any]:
    """The machine-readable ``io.parcel.offer`` block."""
    return {
        "id": offer.id,
        "number": offer.shown_number,
        "session": session_id,
        "state": offer.state.value,
        "filename": safe_filename(offer.filename),
        "mimetype": offer.mimetype,
        "size": offer.size,
        "sha256": offer.sha256,
        "direction": offer.direction.value,
        # How many payment card numbers were hidden in the delivered copy (when searched).
        **({"redacted": offer.redacted} if offer.redacted is not None else {}),
    }


def describe(offer: Offer) -> str:
    """The kind of file in plain words ("PNG image"), from the detected type."""
    return describe_mimetype(offer.mimetype) if offer.mimetype else "file"


def latest_offer_state(events: Iterable[dict[str, Any]], offer_id: int) -> str | None:
    """An offer's state as a client sees it: the newest of its messages and their edits.

    Reads only the machine-readable block (in ``m.new_content`` for edits), never the text.
    """
    state = None
    for event in events:
        content = event.get("content")
        if not isinstance(content, dict):
            continue
        new_content = content.get("m.new_content")
        block = (new_content if isinstance(new_content, dict) else content).get(OFFER_KEY)
        if isinstance(block, dict) and block.get("id") == offer_id:
            state = block.get("state")
    return state


def _facts(offer: Offer) -> list[str]:
    parts = [describe(offer)]
    if offer.size is not None:
        parts.append(human_size(offer.size))
    if offer.width and offer.height:
        parts.append(f"{offer.width}×{offer.height}")
    if offer.redacted:
        parts.append(cards_hidden(offer.redacted))
    elif offer.unchecked:
        parts.append("not checked for card numbers")
    return parts


def cards_hidden(count: int) -> str:
    """"1 card number was hidden", "2 card numbers were hidden"."""
    return "1 card number was hidden" if count == 1 else f"{count} card numbers were hidden"


def _decision(offer: Offer, decider: str | None) -> str:
    """"by Alice (support), 2026-11-24 21:05 UTC" for a decided offer, as far as it is known."""
    parts = []
    if decider:
        parts.append(f"by {_plain(decider)}")
    if offer.decided_at is not None:
        parts.append(f"{format_time(offer.decided_at)} UTC")
    return " " + ", ".join(parts) if parts else ""


def offer_card(
    offer: Offer, accept_key: str, decline_key: str, decider: str | None = None,
    as_file: bool = False,
) -> dict[str, Any]:
    """The recipient's message for an offer, in its current state.

    An open card starts with the question and its own icon (📥), never with the 📎 of a
    finished status line: Element groups the bot's messages under one header, and an open
    question must not look done. A decided card names who decided and when (``decider`` is
    the display name of ``offer.decided_by``). ``as_file``: an image too large to show
    in-line, which will arrive as a plain file.
    """
    name = display_filename(offer.filename)
    sender = _plain(offer.sender_name)
    facts = " · ".join(_facts(offer) + ([LARGE_IMAGE_NOTE] if as_file else []))
    scanned = " · scanned: clean" if offer.scanned else ""
    number = offer.shown_number
    state = offer.state
    if state is OfferState.OFFERED:
        text = (
            f"📥 Accept {name} from {sender}?\n"
            f"{facts}{scanned} · offer #{number}\n"
            f"React {accept_key} to accept or {decline_key} to decline "
            f"(or type !accept {number} / !decline {number})."
        )
        rich = (
            f"📥 <b>Accept {_e(name)} from {_e(sender)}?</b><br>"
            f"{_e(facts)}{_e(scanned)} · offer #{number}<br>"
            f"React {_e(accept_key)} to accept or {_e(decline_key)} to decline "
            f"(or type <code>!accept {number}</code> / <code>!decline {number}</code>)."
        )
        return Message(text, rich).content("m.notice")
    decided = _decision(offer, decider)
    icon, outcome = {
        OfferState.ACCEPTED: ("✅", f"accepted{decided}; the file is below"),
        OfferState.DECLINED: ("🚫", f"declined{decided}; it was not delivered"),
        OfferState.WITHDRAWN: ("↩️", "withdrawn by the sender"),
        OfferState.EXPIRED: ("⌛", "expired; it was not delivered"),
        OfferState.FAILED: ("⚠️", "accepted, but it could not be delivered"),
    }.get(state, ("", state.value))
    lead = f"{icon} " if icon else ""
    text = f"{lead}{name} from {sender} (offer #{number}) — {outcome}"
    rich = f"{lead}<b>{_e(name)}</b> from {_e(sender)} (offer #{number}) — {_e(outcome)}"
    return Message(text, rich).content("m.notice")


LARGE_IMAGE_NOTE = "too large to show in-line: it will arrive as a file"


def status_line(offer: Offer) -> dict[str, Any]:
    """The sender's status line for an offer, in its current state.

    It is posted as a reply to the sender's own upload (see :func:`reply_to`), so clients show
    it attached to that file.
    """
    name = display_filename(offer.filename)
    recipient = side_name(offer.direction, recipient=True)
    state = offer.state
    if state is OfferState.OFFERED:
        facts = " · ".join(_facts(offer))
        text = (f"⬆️ {name} · {facts} — waiting for {recipient} to accept "
                f"(offer #{offer.shown_number})")
    elif state is OfferState.ACCEPTED:
        text = f"📎 {name} — received by {recipient}"
        if offer.redacted:
            text += f" ({cards_hidden(offer.redacted)})"
    elif state is OfferState.DECLINED:
        text = f"🚫 {name} — declined by {recipient}"
    elif state is OfferState.WITHDRAWN:
        text = f"↩️ {name} — withdrawn; {recipient} did not receive it"
    elif state is OfferState.EXPIRED:
        text = f"⌛ {name} — expired; {recipient} did not accept it in time"
    elif state is OfferState.FAILED:
        text = f"⚠️ {name} — could not be delivered: {offer.reason or 'unknown error'}"
    else:
        text = f"{name} — {state.value}"
    return Message(text).content("m.notice")


def reply_to(content: dict[str, Any], event_id: str) -> dict[str, Any]:
    """``content`` as a reply to ``event_id`` (``m.in_reply_to``; no quoted fallback, which
    Matrix 1.13 dropped and clients build themselves)."""
    content["m.relates_to"] = {"m.in_reply_to": {"event_id": event_id}}
    return content


def rejection_notice(filename: str, reason: str) -> Message:
    """Tells the sender a file was refused and why; nothing reached the recipient."""
    return Message(f"⛔ {display_filename(filename)} was not sent: {reason}")


def refusal_notice_for_agents(customer: str, filename: str, reason: str) -> Message:
    """Tells the agents that a customer's file was refused, so "did you get it?" has an answer."""
    return Message(f"⛔ {_plain(customer)} tried to send {display_filename(filename)}: "
                   f"refused — {reason}")


# -- the attachment log -----------------------------------------------------------------------

STATE_WORDS = {
    OfferState.INSPECTING: "checking",
    OfferState.OFFERED: "waiting",
    OfferState.ACCEPTED: "accepted",
    OfferState.DECLINED: "declined",
    OfferState.WITHDRAWN: "withdrawn",
    OfferState.EXPIRED: "expired",
    OfferState.REJECTED: "rejected",
    OfferState.FAILED: "failed",
}


def format_time(ts: float) -> str:
    """UTC time as shown in logs: 2026-11-24 21:05."""
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def _one_line(text: str) -> str:
    """Spaces and hyphens made non-breaking, so a time ("2026-11-24 21:05") stays on one line
    in HTML (Element wraps narrow cells at spaces and after hyphens)."""
    return text.replace(" ", NBSP).replace("-", NB_HYPHEN)


NBSP = "\u00a0"
NB_HYPHEN = "\u2011"
# Two columns, so the table fits Element's timeline from a phone's width up (Element Web leaves
# a message about 390 px at 1024 px, about 200 px in a phone-wide window): the number, name
# and facts in one cell, the state and time in the other, every cell free to wrap at its
# spaces (only the day and month stay together). The plain-text body keeps each file's facts
# on one line.
LOG_HEADER = ("File", "State (UTC)")
# Names in the table are cut shorter than elsewhere: a name without spaces or hyphens cannot
# wrap, and it sets the width of its column. The text body shows names as cards do.
LOG_TABLE_NAME_LIMIT = 20


def short_time(ts: float) -> str:
    """UTC day and time for a narrow table cell: "24 Nov 21:05"."""
    when = time.gmtime(ts)
    return f"{when.tm_mday} {time.strftime('%b %H:%M', when)}"


def attachment_log(offers: Sequence[Offer], viewpoint: Direction) -> Message:
    """The session's attachment log as a table; ``viewpoint`` is the direction called "sent"."""
    if not offers:
        return Message("No files have been sent in this chat yet.")
    text_lines = [f"Attachments ({len(offers)}):"]
    rows = []
    for offer in offers:
        way = "sent" if offer.direction is viewpoint else "received"
        size = human_size(offer.size) if offer.size is not None else "—"
        state = STATE_WORDS[offer.state] + (
            f" ({offer.reason})" if offer.reason and offer.state is OfferState.REJECTED else "")
        sender = _plain(offer.sender_name)
        text_lines.append(
            f"#{offer.shown_number} {way}: {display_filename(offer.filename)} · "
            f"{describe(offer)} · {size} · from {sender} · {state} · "
            f"{format_time(offer.updated_at)}")
        name = display_filename(offer.filename, limit=LOG_TABLE_NAME_LIMIT)
        facts = f"{way} · {describe(offer)} · {size} · from {sender}"
        rows.append(
            f"<tr><td><b>#{offer.shown_number}</b> {_e(name)}<br>{_e(facts)}</td>"
            f"<td>{_e(state)}<br>{_e(short_time(offer.updated_at).replace(' ', NBSP, 1))}"
            "</td></tr>")
    # The heading also in HTML: Element shows only the formatted body.
    rich = (f"<b>Attachments ({len(offers)})</b><table><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in LOG_HEADER)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return Message("\n".join(text_lines), rich)


# -- the live activity panel ---------------------------------------------------------------------

# The icon beside each file: ⬆️ while it waits, 📎 once it has been received.
PANEL_ICONS = {
    OfferState.INSPECTING: "⏳",
    OfferState.OFFERED: "⬆️",
    OfferState.ACCEPTED: "📎",
    OfferState.DECLINED: "🚫",
    OfferState.WITHDRAWN: "↩️",
    OfferState.EXPIRED: "⌛",
    OfferState.REJECTED: "⛔",
    OfferState.FAILED: "⚠️",
}


def activity_panel(offers: Sequence[Offer], viewpoint: Direction) -> Message:
    """The pinned panel of one room: every attachment of the chat with its state.

    ``viewpoint`` is the direction this room calls "sent". The first line is what Element's
    pinned-message banner shows, so it carries the counts.
    """
    if not offers:
        return Message("📋 Files in this chat: none yet. Each file sent here is listed with its "
                       "state.")
    waiting = sum(1 for offer in offers if offer.is_pending)
    head = f"📋 Files in this chat: {len(offers)}"
    if waiting:
        head += f" ({waiting} waiting)"
    text_lines = [head]
    items = []
    for offer in offers:
        way = "sent" if offer.direction is viewpoint else "received"
        size = human_size(offer.size) if offer.size is not None else "—"
        facts = f"{describe(offer)} · {size} · {way} · {STATE_WORDS[offer.state]}"
        when = format_time(offer.updated_at)
        icon, name = PANEL_ICONS[offer.state], display_filename(offer.filename, limit=48)
        number = offer.shown_number
        text_lines.append(f"{icon} #{number} {name} · {facts} · {when}")
        items.append(f"<li>{icon} <b>#{number} {_e(name)}</b> · {_e(facts)} · "
                     f"{_e(_one_line(when))}</li>")
    # Newlines between the parts: Element's pinned banner shows the text on one line, and
    # without them "… (1 waiting)📎 #1 …" would run together.
    rich = f"<b>{_e(head)}</b>\n<ul>\n" + "\n".join(items) + "\n</ul>"
    return Message("\n".join(text_lines), rich)
