"""Every string and HTML fragment a person sees, escaped in one place.

Functions here are pure: they take facts and return message contents, in the language of
the reader's :class:`~bot.i18n.Translator` (the keyword argument ``t``; English by default).
Every sentence is a catalog message (``t._``/``t.pair``/``t.ngettext``) with named
placeholders; nothing rendered is ever stored. User-controlled text
(names, file names, message bodies) only ever reaches HTML through :func:`html.escape` or the
``nh3`` sanitiser.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import nh3

from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.reasons import describe_kind, stored_reason
from bot.attachments.text import display_filename, safe_filename, strip_invisible
from bot.i18n import ENGLISH, N_, Html, Rich, Translator, own_name

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


def message_too_long(size: int, *, t: Translator = ENGLISH) -> Message:
    """Tells the sender a message was too long to relay even in parts; nothing was sent."""
    return Message(t._(
        "⚠️ Your last message was not relayed: at {size} it is too long to send even in "
        "parts. Please send it as several shorter messages, or as a file.", size=t.size(size)
    ))


def agent_label(name: str, label: str) -> str:
    """How an agent is named toward the customer: "Alice (support)"."""
    return f"{name} ({label})" if label else name


# -- sessions -------------------------------------------------------------------------------


def session_opened_for_agents(
    customer_name: str, customer_id: str, session_id: int, also_open: Sequence[int] = (), *,
    t: Translator = ENGLISH,
) -> Message:
    """The first message in a new agent room; ``also_open`` numbers the customer's other
    chats still open (a second DM is a chat of its own: agents see that they belong together).
    """
    text, rich = t.pair(
        "New chat {chat} with {customer} ({customer_id}). What you write here is relayed to "
        "the customer; files are offered to them first. Type {help} for commands.",
        chat=Rich.bold(f"#{session_id}"), customer=Rich.bold(customer_name),
        customer_id=customer_id, help=Rich.code("!help"),
    )
    if also_open:
        note, note_html = t.npair(
            "This customer also has another chat open: {numbers}.",
            "This customer also has other chats open: {numbers}.", len(also_open),
            numbers=t.joined([f"#{number}" for number in also_open]))
        text += f"\n{note}"
        rich = Html(f"{rich}<br>{note_html}")
    return Message(text, rich)


def welcome(text: str, *, t: Translator = ENGLISH, choices: int = 1) -> Message:
    """The greeting the customer sees when the session opens (configured wording).

    With more than one language to ``choices`` from, a line says how to switch.
    """
    if choices > 1:
        text += "\n\n" + t._("Type {command} to choose another language.",
                             command="!language")
    return Message(text)


def session_closed(
    reason: str,
    closer: str | None,
    *,
    you: bool,
    pending: int,
    bot_id: str | None = None,
    t: Translator = ENGLISH,
) -> Message:
    """The closing notice for one room of a session.

    ``reason`` is ``ended`` (someone typed !end; ``closer`` is their name, ``you`` is true in
    their own room), ``customer_left``, ``bot_removed`` or ``bot_removed_from_agents`` (the
    bot was removed from the customer's or the agents' room). ``pending`` is how many offers the
    end left undelivered (the sentence is left out when there were none). With ``bot_id`` (the
    customer's room) it says how to start a new chat.
    """
    if reason == "customer_left":
        lines = [t._("The customer left the chat. This session is closed.")]
    elif reason == "bot_removed":
        lines = [t._("The bot was removed from the customer's chat (or that room was shut "
                     "down), so nothing more can reach the customer. This session is closed.")]
    elif reason == "bot_removed_from_agents":
        lines = [t._("The support team's room for this chat was closed, so no agent can read "
                     "what you write here any more. This chat is closed.")]
    elif you:
        lines = [t._("You ended the chat.")]
    elif closer:
        lines = [t._("{name} ended the chat.", name=_plain(closer))]
    else:
        lines = [t._("This chat is closed.")]
    if pending:
        lines.append(t.ngettext("{n} pending file was not delivered.",
                                "{n} pending files were not delivered.", pending))
    if bot_id:
        lines.append(t._("To talk to us again, start a new chat with {bot}.", bot=bot_id))
    return Message(" ".join(lines))


def closed_room_name(name: str, *, t: Translator = ENGLISH) -> str:
    """The name of an agent room once its chat has ended: "[closed] Chat with Carol (#12)"."""
    prefix = t._("[closed] {name}", name="")
    return name if name.startswith(prefix) else t._("[closed] {name}", name=name)


def session_closed_already(*, t: Translator = ENGLISH) -> Message:
    """Reply to a message in a room whose session has ended."""
    return Message(t._("This chat is closed; nothing you write here is relayed any more."))


def not_delivered(reason: str, *, t: Translator = ENGLISH) -> Message:
    """A message could not be relayed to the other side."""
    return Message(t._("⚠️ Your last message could not be relayed: {reason}", reason=reason))


# Plain words for the permanent failures a person may be told about, by error code.
FAILURE_CAUSES = {
    "M_FORBIDDEN": N_("the bot is not allowed to post there"),
    "M_TOO_LARGE": N_("the file is larger than the homeserver allows"),
    "M_NOT_FOUND": N_("the room no longer exists"),
}


# Reasons stored on an offer in English (for logs and the admin CLI) that are shown to people
# translated: t.known() finds them in the catalog. Keep them equal to the code that sets them
# (bot/attachments/offers.py, policy.py, sessions/service.py).
UNKNOWN_ERROR = N_("unknown error")
STORED_REASONS = (
    N_("the chat ended"),
    N_("nobody accepted it in time"),
    N_("the sender deleted the file"),
    N_("it was refused"),
    N_("the checked copy of the file is missing"),
    N_("the checked copy of the file was altered"),
    UNKNOWN_ERROR,
)


def failure_cause(code: str, detail: str, *, t: Translator = ENGLISH) -> str:
    """A permanent failure in plain words: the known cause for ``code``, else ``detail``."""
    return t.known(FAILURE_CAUSES[code]) if code in FAILURE_CAUSES else t.known(detail)


def offer_failed(filename: str, reason: str, accepted: bool, *,
                 t: Translator = ENGLISH) -> Message:
    """Tells the sender that their file will not arrive although nobody declined it."""
    name = display_filename(filename)
    reason = t.known(reason)
    if accepted:
        return Message(t._("⚠️ {filename} was accepted but could not be delivered: {reason}",
                           filename=name, reason=reason))
    return Message(t._("⚠️ {filename} could not be offered: {reason}", filename=name,
                       reason=reason))


def chat_not_opened(reason: str, *, t: Translator = ENGLISH) -> Message:
    """Tells the customer that no agent can be reached through this chat."""
    return Message(t._("⚠️ Sorry, the chat with support could not be opened: {reason}",
                       reason=reason))


_NOT_RELAYABLE = {
    "location": N_("That location could not be relayed: only text and files are supported."),
    "poll": N_("That poll could not be relayed: only text and files are supported."),
    "call": N_("That call could not be relayed: only text and files are supported."),
    "message": N_("That message could not be relayed: only text and files are supported."),
}


def not_relayable(what: str, *, t: Translator = ENGLISH) -> Message:
    """Reply to an event that is neither text nor a file ("location", "poll", "call")."""
    return Message(t._(_NOT_RELAYABLE.get(what, _NOT_RELAYABLE["message"])))


def card_numbers_hidden_in_text(count: int, recipient: str, *,
                                t: Translator = ENGLISH) -> Message:
    """Tells the sender their message went out with its card number(s) masked;
    ``recipient`` is "the agent" or "the customer"."""
    if recipient == "the customer":
        return Message(t.ngettext(
            "🔒 {n} card number in your message was hidden from the customer (only the last "
            "four digits were shown). Please never share card numbers in chat; use the payment "
            "page instead.",
            "🔒 {n} card numbers in your message were hidden from the customer (only the last "
            "four digits were shown). Please never share card numbers in chat; use the payment "
            "page instead.", count))
    return Message(t.ngettext(
        "🔒 {n} card number in your message was hidden from the agent (only the last four "
        "digits were shown). Please never share card numbers in chat; use the payment page "
        "instead.",
        "🔒 {n} card numbers in your message were hidden from the agent (only the last four "
        "digits were shown). Please never share card numbers in chat; use the payment page "
        "instead.", count))


def card_numbers_refused_in_text(recipient: str, *, t: Translator = ENGLISH) -> Message:
    """Tells the sender their message was not relayed because it holds a card number;
    ``recipient`` is "the agent" or "the customer"."""
    if recipient == "the customer":
        return Message(t._("⛔ Your message was not sent to the customer: it contains a payment "
                           "card number. Please never share card numbers in chat; use the "
                           "payment page instead."))
    return Message(t._("⛔ Your message was not sent to the agent: it contains a payment card "
                       "number. Please never share card numbers in chat; use the payment page "
                       "instead."))


def sticker_name(description: str) -> str:
    """The name an offered sticker goes by: "sticker (thumbs up)", or "sticker".

    It becomes the offer's file name (stored), so it stays in one language.
    """
    return f"sticker ({description})" if description else "sticker"


def undecryptable(*, t: Translator = ENGLISH) -> Message:
    """Asks the sender to resend what the bot could not decrypt."""
    return Message(t._(
        "⚠️ Your last message could not be read (it was encrypted with keys this bot did not "
        "receive). Please send it again."
    ))


# -- commands -------------------------------------------------------------------------------

# (English command, what it does); each language may add aliases (COMMAND_ALIASES).
HELP_LINES = (
    ("!help", N_("show this help")),
    ("!attachments", N_("list the files sent and received in this chat")),
    ("!accept N", N_("accept offer number N (same as reacting ✅)")),
    ("!decline N", N_("decline offer number N (same as reacting ❌)")),
    ("!end", N_("close this chat")),
)
# Shown in customer rooms only: the agents' language is configured.
LANGUAGE_HELP = ("!language", N_("list the languages of this chat, or switch: !language es"))

# Commands in other words, by language: alias → the English command word. English always works.
COMMAND_ALIASES: dict[str, dict[str, str]] = {
    "de": {"hilfe": "help", "anhänge": "attachments", "annehmen": "accept",
           "ablehnen": "decline", "ende": "end", "sprache": "language"},
    "fr": {"aide": "help", "fichiers": "attachments", "accepter": "accept",
           "refuser": "decline", "fin": "end", "langue": "language"},
    "es": {"ayuda": "help", "archivos": "attachments", "aceptar": "accept",
           "rechazar": "decline", "fin": "end", "idioma": "language"},
    "it": {"aiuto": "help", "allegati": "attachments", "accetta": "accept",
           "rifiuta": "decline", "fine": "end", "lingua": "language"},
    "nl": {"hulp": "help", "bijlagen": "attachments", "accepteren": "accept",
           "weigeren": "decline", "einde": "end", "taal": "language"},
    "pt": {"ajuda": "help", "anexos": "attachments", "aceitar": "accept",
           "recusar": "decline", "fim": "end", "idioma": "language"},
    "ar": {"مساعدة": "help", "مرفقات": "attachments", "قبول": "accept", "رفض": "decline",
           "إنهاء": "end", "لغة": "language"},
}


def command_word(word: str, language: str) -> str:
    """The English command a typed word stands for in ``language`` (the word if none)."""
    word = word.lower()
    return COMMAND_ALIASES.get(language, {}).get(word, word)


def _aliases_of(command: str, language: str) -> list[str]:
    return [f"!{alias}" for alias, english in COMMAND_ALIASES.get(language, {}).items()
            if english == command]


# What ends a heading in plain text but not in HTML (French puts a space before the colon).
_COLON = " :\u00a0\u202f"


def help_text(*, t: Translator = ENGLISH, language_command: bool = False) -> Message:
    """The command list, with this language's aliases (``!annehmen N``) beside the English."""
    lines = HELP_LINES + ((LANGUAGE_HELP,) if language_command else ())
    text_lines, items = [t._("Commands:")], []
    for cmd, what in lines:
        word, _, arg = cmd[1:].partition(" ")
        names = [cmd] + [f"{alias} {arg}".rstrip() for alias in _aliases_of(word, t.code)]
        shown = " / ".join(t.isolate(name) for name in names)
        text_lines.append(f"{shown} — {t.known(what)}")
        codes = " / ".join(f"<code>{_e(name)}</code>" for name in names)
        items.append(f"<li>{codes} — {_e(t.known(what))}</li>")
    rich = f"<b>{_e(text_lines[0].rstrip(_COLON))}</b><ul>" + "".join(items) + "</ul>"
    return Message("\n".join(text_lines), rich)


def unknown_command(word: str, *, t: Translator = ENGLISH) -> Message:
    """Reply to a command Parcel does not know."""
    shown = _plain(word)[:40]
    # Each command in the reader's own word where their language has one (English works too).
    names = []
    for cmd, _ in HELP_LINES:
        english, _, arg = cmd.partition(" ")
        word = (_aliases_of(english[1:], t.code) or [english])[0]
        names.append(f"{word} {arg}".rstrip())
    return Message(t._("Unknown command {command}. Commands: {commands}", command=shown,
                       commands=", ".join(names)))


def command_error(text: str) -> Message:
    """A short answer to a command that could not be carried out (already in its language)."""
    return Message(text)


def decision_done(accepted: bool, number: int, *, t: Translator = ENGLISH) -> Message:
    """The answer to a successful !accept / !decline."""
    if accepted:
        return Message(t._("Accepted offer #{number}.", number=number))
    return Message(t._("Declined offer #{number}.", number=number))


def offer_number_needed(word: str, *, t: Translator = ENGLISH) -> Message:
    """The answer to !accept / !decline without a usable number."""
    return Message(t._("{command} needs an offer number, like {example}.", command=f"!{word}",
                       example=f"!{word} 3"))


def language_choices(current: str, allowed: Sequence[str], *,
                     t: Translator = ENGLISH) -> Message:
    """The answer to a bare !language: the choices, each named in its own language."""
    lines = [t._("This chat is in {language}. To switch, type !language and a code:",
                 language=t.language_name(current))]
    lines += [f"!language {code} — {t.isolate(own_name(code))}" for code in allowed]
    return Message("\n".join(lines))


def language_switched(*, t: Translator) -> Message:
    """The confirmation of !language, in the language just chosen."""
    return Message(t._("This chat is now in {language}.", language=t.language_name(t.code)))


def language_unknown(code: str, allowed: Sequence[str], *, t: Translator = ENGLISH) -> Message:
    """The answer to !language with a code that is not among the choices."""
    return Message(t._("{code} is not one of this chat's languages. Choose one of: {choices}",
                       code=_plain(code)[:20], choices=t.list(list(allowed))))


def language_agents_fixed(*, t: Translator = ENGLISH) -> Message:
    """The answer to !language in the agent room (its language is configured)."""
    return Message(t._("The agents' language is set in the configuration (agents.language); "
                       "!language switches a customer's chat."))


# -- offers ---------------------------------------------------------------------------------


def side_name(direction: Direction, recipient: bool) -> str:
    """"the agent" or "the customer", for the recipient or the sender of an offer (English:
    for logs; messages use whole sentences per side)."""
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


def describe(offer: Offer, *, t: Translator = ENGLISH) -> str:
    """The kind of file in plain words ("PNG image"), from the detected type."""
    return describe_kind(offer.mimetype, t=t) if offer.mimetype else t._("file")


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


def _facts(offer: Offer, t: Translator) -> list[str]:
    parts = [describe(offer, t=t)]
    if offer.size is not None:
        parts.append(t.size(offer.size))
    if offer.width and offer.height:
        parts.append(t.isolate(f"{offer.width}×{offer.height}"))
    if offer.redacted:
        parts.append(cards_hidden(offer.redacted, t=t))
    elif offer.unchecked:
        parts.append(t._("not checked for card numbers"))
    return parts


def cards_hidden(count: int, *, t: Translator = ENGLISH) -> str:
    """"1 card number was hidden", "2 card numbers were hidden"."""
    return t.ngettext("{n} card number was hidden", "{n} card numbers were hidden", count)


def _decision(offer: Offer, decider: str | None, t: Translator) -> str:
    """"by Alice (support), 2026-11-24 21:05 UTC" for a decided offer, as far as it is known."""
    parts = []
    if decider:
        parts.append(t._("by {name}", name=_plain(decider)))
    if offer.decided_at is not None:
        parts.append(t.isolate(f"{t.datetime(offer.decided_at)} {t.zone(offer.decided_at)}"))
    return " " + t.joined(parts) if parts else ""


def offer_card(
    offer: Offer, accept_key: str, decline_key: str, decider: str | None = None,
    as_file: bool = False, *, t: Translator = ENGLISH,
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
    facts = " · ".join(_facts(offer, t) + ([t.known(LARGE_IMAGE_NOTE)] if as_file else []))
    scanned = " · " + t._("scanned: clean") if offer.scanned else ""
    number = offer.shown_number
    state = offer.state
    if state is OfferState.OFFERED:
        q_text, q_rich = t.pair("Accept {filename} from {sender}?", filename=name,
                                sender=sender)
        o_text, o_rich = t.pair("offer #{number}", number=number)
        r_text, r_rich = t.pair(
            "React {accept} to accept or {decline} to decline (or type {accept_command} / "
            "{decline_command}).", accept=accept_key, decline=decline_key,
            accept_command=Rich.code(f"!accept {number}"),
            decline_command=Rich.code(f"!decline {number}"),
        )
        text = f"📥 {q_text}\n{facts}{scanned} · {o_text}\n{r_text}"
        rich = f"📥 <b>{q_rich}</b><br>{_e(facts)}{_e(scanned)} · {o_rich}<br>{r_rich}"
        return Message(text, rich).content("m.notice")
    decided = _decision(offer, decider, t)
    icon, outcome = {
        OfferState.ACCEPTED: ("✅", t._("accepted{decided}; the file is below", decided=decided)),
        OfferState.DECLINED: ("🚫", t._("declined{decided}; it was not delivered",
                                       decided=decided)),
        OfferState.WITHDRAWN: ("↩️", t._("withdrawn by the sender")),
        OfferState.EXPIRED: ("⌛", t._("expired; it was not delivered")),
        OfferState.FAILED: ("⚠️", t._("accepted, but it could not be delivered")),
    }.get(state, ("", state.value))
    lead = f"{icon} " if icon else ""
    text, rich = t.pair("{filename} from {sender} (offer #{number}) — {outcome}",
                        filename=Rich.bold(name), sender=sender, number=number, outcome=outcome)
    return Message(f"{lead}{text}", f"{lead}{rich}").content("m.notice")


LARGE_IMAGE_NOTE = N_("too large to show in-line: it will arrive as a file")

# The sender's status line, by state and by who receives the file (whole sentences: the
# recipient's name changes the grammar in other languages).
_STATUS_TO_AGENT = {
    OfferState.OFFERED: N_("⬆️ {filename} · {facts} — waiting for the agent to accept "
                           "(offer #{number})"),
    OfferState.ACCEPTED: N_("📎 {filename} — received by the agent"),
    OfferState.DECLINED: N_("🚫 {filename} — declined by the agent"),
    OfferState.WITHDRAWN: N_("↩️ {filename} — withdrawn; the agent did not receive it"),
    OfferState.EXPIRED: N_("⌛ {filename} — expired; the agent did not accept it in time"),
}
_STATUS_TO_CUSTOMER = {
    OfferState.OFFERED: N_("⬆️ {filename} · {facts} — waiting for the customer to accept "
                           "(offer #{number})"),
    OfferState.ACCEPTED: N_("📎 {filename} — received by the customer"),
    OfferState.DECLINED: N_("🚫 {filename} — declined by the customer"),
    OfferState.WITHDRAWN: N_("↩️ {filename} — withdrawn; the customer did not receive it"),
    OfferState.EXPIRED: N_("⌛ {filename} — expired; the customer did not accept it in time"),
}


def status_line(offer: Offer, *, t: Translator = ENGLISH) -> dict[str, Any]:
    """The sender's status line for an offer, in its current state.

    It is posted as a reply to the sender's own upload (see :func:`reply_to`), so clients show
    it attached to that file.
    """
    name = display_filename(offer.filename)
    state = offer.state
    table = (_STATUS_TO_AGENT if offer.direction is Direction.CUSTOMER_TO_AGENT
             else _STATUS_TO_CUSTOMER)
    if state in table:
        text = t._(table[state], filename=name, facts=" · ".join(_facts(offer, t)),
                   number=offer.shown_number)
        if state is OfferState.ACCEPTED and offer.redacted:
            text += f" ({cards_hidden(offer.redacted, t=t)})"
    elif state is OfferState.FAILED:
        text = t._("⚠️ {filename} — could not be delivered: {reason}", filename=name,
                   reason=t.known(offer.reason or UNKNOWN_ERROR))
    else:
        text = f"{name} — {state.value}"
    return Message(text).content("m.notice")


def reply_to(content: dict[str, Any], event_id: str) -> dict[str, Any]:
    """``content`` as a reply to ``event_id`` (``m.in_reply_to``; no quoted fallback, which
    Matrix 1.13 dropped and clients build themselves)."""
    content["m.relates_to"] = {"m.in_reply_to": {"event_id": event_id}}
    return content


def rejection_notice(filename: str, reason: str, *, t: Translator = ENGLISH,
                     facts: str | None = None) -> Message:
    """Tells the sender a file was refused and why; nothing reached the recipient.

    ``facts`` (the offer's ``reason_facts``) give the reason in the reader's language;
    without them the English ``reason`` is translated if it is a catalog message.
    """
    return Message(t._("⛔ {filename} was not sent: {reason}",
                       filename=display_filename(filename),
                       reason=stored_reason(reason, facts, t)))


def refusal_notice_for_agents(customer: str, filename: str, reason: str, *,
                              t: Translator = ENGLISH, facts: str | None = None) -> Message:
    """Tells the agents that a customer's file was refused, so "did you get it?" has an answer."""
    return Message(t._("⛔ {customer} tried to send {filename}: refused — {reason}",
                       customer=_plain(customer), filename=display_filename(filename),
                       reason=stored_reason(reason, facts, t)))


# -- the attachment log -----------------------------------------------------------------------

STATE_WORDS = {
    OfferState.INSPECTING: N_("checking"),
    OfferState.OFFERED: N_("waiting"),
    OfferState.ACCEPTED: N_("accepted"),
    OfferState.DECLINED: N_("declined"),
    OfferState.WITHDRAWN: N_("withdrawn"),
    OfferState.EXPIRED: N_("expired"),
    OfferState.REJECTED: N_("rejected"),
    OfferState.FAILED: N_("failed"),
}


def state_word(state: OfferState, *, t: Translator = ENGLISH) -> str:
    """One word for an offer's state in the reader's language ("waiting", "wartet")."""
    return t.known(STATE_WORDS[state])


def format_time(ts: float, *, t: Translator = ENGLISH) -> str:
    """A time as shown in logs and cards: 2026-11-24 21:05 (UTC, or the configured zone)."""
    return t.datetime(ts)


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
LOG_HEADER = (N_("File"), N_("State ({zone})"))
# Names in the table are cut shorter than elsewhere: a name without spaces or hyphens cannot
# wrap, and it sets the width of its column. The text body shows names as cards do.
LOG_TABLE_NAME_LIMIT = 20


def short_time(ts: float, *, t: Translator = ENGLISH) -> str:
    """Day, month and time (no year) for a narrow table cell, in the reader's language and
    zone: "24 Nov 21:05" (en, UTC), "24. Nov. 22:05" (de, Europe/Berlin)."""
    return t.short_datetime(ts)


def _way(offer: Offer, viewpoint: Direction, t: Translator) -> str:
    return t._("sent") if offer.direction is viewpoint else t._("received")


def attachment_log(offers: Sequence[Offer], viewpoint: Direction, *,
                   t: Translator = ENGLISH) -> Message:
    """The session's attachment log as a table; ``viewpoint`` is the direction called "sent"."""
    if not offers:
        return Message(t._("No files have been sent in this chat yet."))
    heading = t._("Attachments ({count}):", count=t.number(len(offers)))
    text_lines = [heading]
    rows = []
    for offer in offers:
        number = str(offer.shown_number)
        way = _way(offer, viewpoint, t)
        kind = describe(offer, t=t)
        size = t.size(offer.size) if offer.size is not None else "—"
        sender = _plain(offer.sender_name)
        state = state_word(offer.state, t=t) + (
            f" ({stored_reason(offer.reason, offer.reason_facts, t)})"
            if offer.reason and offer.state is OfferState.REJECTED else "")
        text_lines.append(t._("#{number} {way}: {filename} · {kind} · {size} · from {sender} · "
                              "{state} · {time}", number=number, way=way,
                              filename=display_filename(offer.filename), kind=kind, size=size,
                              sender=sender, state=state,
                              time=format_time(offer.updated_at, t=t)))
        name = display_filename(offer.filename, limit=LOG_TABLE_NAME_LIMIT)
        facts = t._("{way} · {kind} · {size} · from {sender}", way=way, kind=kind, size=size,
                    sender=sender)
        when = short_time(offer.updated_at, t=t).replace(" ", NBSP, 1)
        rows.append(
            f"<tr><td><b>{_e(t.isolate(f'#{number}'))}</b> {_e(t.isolate(name))}<br>"
            f"{_e(facts)}</td><td>{_e(t.isolate(state))}<br>{_e(t.isolate(when))}</td></tr>")
    zone = t.zone(offers[-1].updated_at)
    header = [t._(h, zone=zone) if "{zone}" in h else t.known(h) for h in LOG_HEADER]
    # The heading also in HTML: Element shows only the formatted body.
    rich = (f"<b>{_e(heading.rstrip(_COLON))}</b><table><thead><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in header)
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


def activity_panel(offers: Sequence[Offer], viewpoint: Direction, *,
                   t: Translator = ENGLISH) -> Message:
    """The pinned panel of one room: every attachment of the chat with its state.

    ``viewpoint`` is the direction this room calls "sent". The first line is what Element's
    pinned-message banner shows, so it carries the counts.
    """
    if not offers:
        return Message(t._("📋 Files in this chat: none yet. Each file sent here is listed with "
                           "its state."))
    waiting = sum(1 for offer in offers if offer.is_pending)
    if waiting:
        head = t.ngettext("📋 Files in this chat: {total} ({n} waiting)",
                          "📋 Files in this chat: {total} ({n} waiting)", waiting,
                          total=t.number(len(offers)))
    else:
        head = t._("📋 Files in this chat: {total}", total=t.number(len(offers)))
    text_lines = [head]
    items = []
    for offer in offers:
        size = t.size(offer.size) if offer.size is not None else "—"
        facts = " · ".join(t.isolate(part) for part in (
            describe(offer, t=t), size, _way(offer, viewpoint, t), state_word(offer.state, t=t)
        ))
        when = t.isolate(format_time(offer.updated_at, t=t))
        icon, name = PANEL_ICONS[offer.state], display_filename(offer.filename, limit=48)
        number = f"#{offer.shown_number}"
        text_lines.append(f"{icon} {t.isolate(number)} {t.isolate(name)} · {facts} · {when}")
        items.append(f"<li>{icon} <b>{_e(t.isolate(number))} {_e(t.isolate(name))}</b> · "
                     f"{_e(facts)} · {_e(_one_line(when))}</li>")
    # Newlines between the parts: Element's pinned banner shows the text on one line, and
    # without them "… (1 waiting)📎 #1 …" would run together.
    rich = f"<b>{_e(head)}</b>\n<ul>\n" + "\n".join(items) + "\n</ul>"
    return Message("\n".join(text_lines), rich)
