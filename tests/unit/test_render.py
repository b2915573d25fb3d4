"""Every user-facing string: attribution, escaping, offer cards, status lines, the log, help."""

from __future__ import annotations

import html
import unicodedata
from html.parser import HTMLParser
from typing import Any

import pytest

from bot import render
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.text import safe_filename

S = OfferState
C2A = Direction.CUSTOMER_TO_AGENT
A2C = Direction.AGENT_TO_CUSTOMER

# The tags and attributes Parcel's own HTML uses (user HTML only ever arrives escaped).
OWN_TAGS = {"b", "br", "code", "ul", "li", "table", "thead", "tbody", "tr", "th", "td"}


def make_offer(**overrides: Any) -> Offer:
    base: dict[str, Any] = dict(
        id=7, session_id=3, direction=C2A, sender="@carol:hs", sender_name="Carol",
        source_room="!c:hs", source_event_id="$up", msgtype="m.file", filename="report.pdf",
        declared_mimetype="application/pdf", declared_size=1_234_567, state=S.OFFERED,
        created_at=1_700_000_000.0, updated_at=1_700_000_000.0, mimetype="application/pdf",
        size=1_234_567, sha256="ab" * 32,
    )
    base.update(overrides)
    return Offer(**base)


class _Tags(HTMLParser):
    """Collects start tags and their attributes, and the text, of an HTML fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(fragment: str) -> _Tags:
    parser = _Tags()
    parser.feed(fragment)
    parser.close()
    return parser


def assert_only_own_markup(fragment: str) -> None:
    """The fragment's tags are Parcel's own, without any attribute."""
    for tag, attrs in parse(fragment).tags:
        assert tag in OWN_TAGS, f"unexpected <{tag}> in {fragment!r}"
        assert attrs == [], f"unexpected attributes {attrs} on <{tag}> in {fragment!r}"


def invisible(text: str) -> set[str]:
    """Control, format and surrogate characters in ``text`` (a newline is allowed)."""
    return {ch for ch in text
            if ch != "\n" and unicodedata.category(ch) in {"Cc", "Cf", "Cs"}}


# -- text relay ---------------------------------------------------------------------------------

RELAY_CASES = [
    # (label, msgtype, body, expected body, expected out msgtype)
    ("Alice (support)", "m.text", "hello", "Alice (support): hello", "m.text"),
    ("Carol", "m.notice", "fyi", "Carol: fyi", "m.notice"),
    ("Carol", "m.emote", "waves", "* Carol waves", "m.text"),
    ("Carol", "m.text", "two\nlines", "Carol: two\nlines", "m.text"),
]


@pytest.mark.parametrize(("label", "msgtype", "body", "expected", "out_type"), RELAY_CASES)
def test_relayed_text_attribution(
    label: str, msgtype: str, body: str, expected: str, out_type: str
) -> None:
    """A relayed message names its sender ("Name: text", or "* Name text" for an emote)."""
    content = render.relayed_text(label, msgtype, body, None)
    assert content["body"] == expected
    assert content["msgtype"] == out_type
    assert content["m.mentions"] == {}
    assert content["format"] == "org.matrix.custom.html"
    prefix = f"* <b>{html.escape(label)}</b> " if msgtype == "m.emote" else \
        f"<b>{html.escape(label)}</b>: "
    assert content["formatted_body"].startswith(prefix)


@pytest.mark.parametrize(
    ("label", "body", "expected_html"),
    [
        ("<img src=x onerror=alert(1)>", "hi",
         "<b>&lt;img src=x onerror=alert(1)&gt;</b>: hi"),
        ("Tom & \"Jerry\"", "hi", "<b>Tom &amp; &quot;Jerry&quot;</b>: hi"),
        ("Carol", "<script>alert(1)</script>",
         "<b>Carol</b>: &lt;script&gt;alert(1)&lt;/script&gt;"),
        ("Carol", "a & b < c", "<b>Carol</b>: a &amp; b &lt; c"),
        ("Carol", "line1\nline2", "<b>Carol</b>: line1<br>line2"),
        ("Carol", "it's \"q\"", "<b>Carol</b>: it&#x27;s &quot;q&quot;"),
    ],
    ids=["html-name", "quote-name", "script-body", "amp-body", "newline-body", "quotes-body"],
)
def test_relayed_text_escapes_names_and_plain_bodies(
    label: str, body: str, expected_html: str
) -> None:
    """Names and plain bodies reach formatted_body only HTML-escaped; newlines become <br>."""
    content = render.relayed_text(label, "m.text", body, None)
    assert content["formatted_body"] == expected_html
    assert content["body"] == f"{label}: {body}"


SANITISE_CASES = [
    # (formatted body, substrings that must be gone, substrings that must remain)
    ("<script>alert(1)</script>ok", ["<script", "alert(1)"], ["ok"]),
    ("<img src=x onerror=alert(1)>", ["<img", "onerror"], []),
    ('<b onclick="steal()">bold</b>', ["onclick", "steal"], ["<b>bold</b>"]),
    ('<a href="javascript:alert(1)">x</a>', ["javascript:"], [">x</a>"]),
    ('<a href="JaVaScRiPt:alert(1)">x</a>', ["javascript", "JaVaScRiPt"], [">x</a>"]),
    ('<a href="data:text/html,<script>1</script>">x</a>', ["data:", "<script"], [">x</a>"]),
    ('<a href="https://example.org/">link</a>', [], ['href="https://example.org/"', "link"]),
    ("<iframe src=https://evil></iframe>", ["<iframe"], []),
    ("<style>body{display:none}</style>t", ["<style", "display"], ["t"]),
    ('<p style="color:red">p</p>', ["style="], ["<p>p</p>"]),
    ("<i>i</i><em>e</em><strong>s</strong><u>u</u>", [],
     ["<i>i</i>", "<em>e</em>", "<strong>s</strong>", "<u>u</u>"]),
    ('<code class="language-python">x = 1</code>', [],
     ['<code class="language-python">x = 1</code>']),
    ("<ul><li>one</li></ul><blockquote>q</blockquote>", [],
     ["<ul><li>one</li></ul>", "<blockquote>q</blockquote>"]),
    ("<pre>pre</pre><del>d</del>", [], ["<pre>pre</pre>", "<del>d</del>"]),
    ('<span data-mx-spoiler="">s</span>', [], ["data-mx-spoiler", ">s</span>"]),
    ('<font color="red" face="x">f</font>', ["face="], ['color="red"', ">f</font>"]),
    ("<form action=x><input name=p></form>", ["<form", "<input"], []),
]


@pytest.mark.parametrize(("formatted", "gone", "kept"), SANITISE_CASES)
def test_relayed_text_sanitises_formatted_bodies(
    formatted: str, gone: list[str], kept: list[str]
) -> None:
    """A formatted body keeps the tags clients render and loses scripts, handlers and bad URLs."""
    content = render.relayed_text("Carol", "m.text", "plain", formatted)
    rich = content["formatted_body"]
    assert rich.startswith("<b>Carol</b>: ")
    for bad in gone:
        assert bad not in rich
    for good in kept:
        assert good in rich
    assert content["body"] == "Carol: plain"
    assert content["m.mentions"] == {}


@pytest.mark.parametrize("msgtype", ["m.text", "m.notice", "m.emote"])
def test_relayed_text_never_pings(msgtype: str) -> None:
    """Relayed text disables mentions even when the body names a user or @room."""
    mention = '<a href="https://matrix.to/#/@alice:hs">Alice</a>'
    content = render.relayed_text("Carol", msgtype, "@room @alice:hs", mention)
    assert content["m.mentions"] == {}


@pytest.mark.parametrize(
    ("name", "label", "expected"),
    [("Alice", "support", "Alice (support)"), ("Alice", "", "Alice")],
)
def test_agent_label(name: str, label: str, expected: str) -> None:
    """Agents are shown with the configured label in parentheses, or bare without one."""
    assert render.agent_label(name, label) == expected


# -- offer cards and status lines --------------------------------------------------------------

CARD_OUTCOMES = {
    S.ACCEPTED: ("✅", "accepted; the file is below"),
    S.DECLINED: ("🚫", "declined; it was not delivered"),
    S.WITHDRAWN: ("↩️", "withdrawn by the sender"),
    S.EXPIRED: ("⌛", "expired; it was not delivered"),
    S.FAILED: ("⚠️", "accepted, but it could not be delivered"),
}


def test_offer_card_offered() -> None:
    """An open offer names sender, file, kind and size, and how to accept or decline it."""
    content = render.offer_card(make_offer(number=2), "✅", "❌")
    assert content["msgtype"] == "m.notice" and content["m.mentions"] == {}
    assert content["body"] == (
        "📥 Accept report.pdf from Carol?\n"
        "PDF document · 1.2 MB · offer #2\n"
        "React ✅ to accept or ❌ to decline (or type !accept 2 / !decline 2)."
    )
    assert content["formatted_body"].startswith("📥 <b>Accept report.pdf from Carol?</b><br>")
    assert "<code>!accept 2</code>" in content["formatted_body"]
    assert_only_own_markup(content["formatted_body"])


@pytest.mark.parametrize(
    ("overrides", "facts"),
    [
        ({}, "PDF document · 1.2 MB"),
        ({"mimetype": "image/png", "size": 2048, "width": 640, "height": 480},
         "PNG image · 2 KB · 640×480"),
        ({"mimetype": None, "size": None}, "file"),
        ({"mimetype": "image/png", "size": 1, "width": 640, "height": None}, "PNG image · 1 byte"),
        ({"scanned": True}, "PDF document · 1.2 MB · scanned: clean"),
        ({"mimetype": "text/plain", "size": 10, "redacted": 1},
         "text file · 10 bytes · 1 card number was hidden"),
        ({"mimetype": "text/plain", "size": 10, "redacted": 3},
         "text file · 10 bytes · 3 card numbers were hidden"),
        ({"mimetype": "text/plain", "size": 10, "redacted": 0}, "text file · 10 bytes"),
        ({"unchecked": "PDF documents are not searched for card numbers"},
         "PDF document · 1.2 MB · not checked for card numbers"),
    ],
    ids=["pdf", "image-dimensions", "unknown", "partial-dimensions", "scanned", "one-hidden",
         "three-hidden", "none-hidden", "unchecked"],
)
def test_offer_card_facts(overrides: dict[str, Any], facts: str) -> None:
    """The card shows the detected kind, size, dimensions when both are known, and a clean scan."""
    content = render.offer_card(make_offer(**overrides), "✅", "❌")
    assert content["body"].splitlines()[1] == f"{facts} · offer #7"


@pytest.mark.parametrize("state", list(OfferState), ids=lambda s: s.value)
def test_no_card_starts_like_a_received_status_line(state: OfferState) -> None:
    """No card, open or settled, starts with the 📎 of a received status line."""
    assert not render.offer_card(make_offer(state=state), "✅", "❌")["body"].startswith("📎")


@pytest.mark.parametrize("state", list(CARD_OUTCOMES), ids=lambda s: s.value)
def test_offer_card_final_states(state: OfferState) -> None:
    """A settled offer's card names the file, sender, offer number and outcome."""
    icon, outcome = CARD_OUTCOMES[state]
    content = render.offer_card(make_offer(state=state), "✅", "❌")
    assert content["body"] == f"{icon} report.pdf from Carol (offer #7) — {outcome}"
    assert content["formatted_body"] == (
        f"{icon} <b>report.pdf</b> from Carol (offer #7) — {html.escape(outcome)}")
    assert content["m.mentions"] == {}


@pytest.mark.parametrize(
    ("state", "decider", "expected"),
    [
        (S.ACCEPTED, "Alice (support)",
         "✅ report.pdf from Carol (offer #3) — accepted by Alice (support), "
         "2023-11-14 22:15 UTC; the file is below"),
        (S.DECLINED, "Carol\u202e",
         "🚫 report.pdf from Carol (offer #3) — declined by Carol, 2023-11-14 22:15 UTC; "
         "it was not delivered"),
        (S.ACCEPTED, None,
         "✅ report.pdf from Carol (offer #3) — accepted 2023-11-14 22:15 UTC; "
         "the file is below"),
    ],
    ids=["accepted", "declined-hostile-name", "no-name"],
)
def test_decided_card_names_who_and_when(state: OfferState, decider: str | None,
                                         expected: str) -> None:
    """A decided card says who decided (cleaned) and when, in UTC."""
    offer = make_offer(state=state, number=3, decided_by="@x:hs", decided_at=1_700_000_100.0)
    assert render.offer_card(offer, "✅", "❌", decider)["body"] == expected


@pytest.mark.parametrize("state", list(OfferState), ids=lambda s: s.value)
def test_offer_card_renders_every_state(state: OfferState) -> None:
    """offer_card produces a notice mentioning the offer number for any state."""
    content = render.offer_card(make_offer(state=state), "✅", "❌")
    assert content["msgtype"] == "m.notice"
    assert "#7" in content["body"] and "report.pdf" in content["body"]


STATUS_CASES = [
    # (state, direction, overrides, expected body)
    (S.OFFERED, C2A, {},
     "⬆️ report.pdf · PDF document · 1.2 MB — waiting for the agent to accept (offer #7)"),
    (S.OFFERED, C2A, {"number": 1},
     "⬆️ report.pdf · PDF document · 1.2 MB — waiting for the agent to accept (offer #1)"),
    (S.OFFERED, A2C, {"mimetype": "image/jpeg", "size": 3_400_000, "width": 1024, "height": 768},
     "⬆️ report.pdf · JPEG image · 3.4 MB · 1024×768 — waiting for the customer to accept "
     "(offer #7)"),
    (S.ACCEPTED, C2A, {}, "📎 report.pdf — received by the agent"),
    (S.ACCEPTED, A2C, {}, "📎 report.pdf — received by the customer"),
    (S.ACCEPTED, C2A, {"redacted": 1},
     "📎 report.pdf — received by the agent (1 card number was hidden)"),
    (S.DECLINED, C2A, {}, "🚫 report.pdf — declined by the agent"),
    (S.DECLINED, A2C, {}, "🚫 report.pdf — declined by the customer"),
    (S.WITHDRAWN, A2C, {}, "↩️ report.pdf — withdrawn; the customer did not receive it"),
    (S.EXPIRED, C2A, {}, "⌛ report.pdf — expired; the agent did not accept it in time"),
    (S.FAILED, A2C, {"reason": "upload refused"},
     "⚠️ report.pdf — could not be delivered: upload refused"),
    (S.FAILED, A2C, {}, "⚠️ report.pdf — could not be delivered: unknown error"),
    (S.INSPECTING, C2A, {}, "report.pdf — inspecting"),
    (S.REJECTED, C2A, {}, "report.pdf — rejected"),
]


@pytest.mark.parametrize(("state", "direction", "overrides", "expected"), STATUS_CASES,
                         ids=lambda v: getattr(v, "value", None))
def test_status_line_for_every_state(
    state: OfferState, direction: Direction, overrides: dict[str, Any], expected: str
) -> None:
    """The sender's status line shows ⬆️ while waiting, 📎 once received, and each other outcome."""
    offer = make_offer(state=state, direction=direction, **overrides)
    content = render.status_line(offer)
    assert content["body"] == expected
    assert content["msgtype"] == "m.notice" and content["m.mentions"] == {}
    assert "formatted_body" not in content


def test_status_line_covers_every_state() -> None:
    """STATUS_CASES exercise every OfferState."""
    assert {case[0] for case in STATUS_CASES} == set(OfferState)


@pytest.mark.parametrize(
    ("direction", "recipient", "name"),
    [(C2A, True, "the agent"), (C2A, False, "the customer"),
     (A2C, True, "the customer"), (A2C, False, "the agent")],
)
def test_side_name(direction: Direction, recipient: bool, name: str) -> None:
    """side_name names the recipient or the sender of an offer by its side."""
    assert render.side_name(direction, recipient) == name


# -- hostile file names ---------------------------------------------------------------------

HOSTILE_NAMES = [
    pytest.param("<img src=x onerror=alert(1)>.png", id="html-img"),
    pytest.param("<script>alert(1)</script>.pdf", id="html-script"),
    pytest.param('"><b>bold</b>&amp;.txt', id="html-quote-entity"),
    pytest.param("invoice\u202efdp.exe", id="bidi-rlo"),
    pytest.param("\u2066x\u2069\u200f\u200b.pdf", id="bidi-isolates-zero-width"),
    pytest.param("nul\x00bell\x07esc\x1b[31m.txt", id="control-chars"),
    pytest.param("new\nline\r\n.txt", id="newlines"),
    pytest.param("a" * 1000 + ".pdf", id="1000-chars"),
    pytest.param("../../etc/passwd", id="path"),
    pytest.param("\u202e" * 3, id="only-invisible"),
]


def _hostile_outputs(name: str) -> list[tuple[str, str, str | None]]:
    """(what, body, formatted_body) for every place a file name is shown."""
    out: list[tuple[str, str, str | None]] = []
    for state in OfferState:
        offer = make_offer(filename=name, state=state)
        card = render.offer_card(offer, "✅", "❌")
        out.append((f"card-{state.value}", card["body"], card["formatted_body"]))
        status = render.status_line(offer)
        out.append((f"status-{state.value}", status["body"], status.get("formatted_body")))
    log = render.attachment_log([make_offer(filename=name)], C2A)
    out.append(("log", log.body, log.html))
    rejected = render.rejection_notice(name, "too big")
    out.append(("rejection", rejected.body, rejected.html))
    return out


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_filenames_never_appear_raw(name: str) -> None:
    """A hostile file name reaches no message raw: no markup, no invisible characters, bounded."""
    for what, body, rich in _hostile_outputs(name):
        assert invisible(body) == set(), what
        if any(ch in name for ch in "\x00\x07\x1b\u202e\u200b\n") or len(name) > 200:
            assert name not in body, what
        assert "a" * 81 not in body, what
        if rich is not None:
            assert invisible(rich) == set(), what
            assert_only_own_markup(rich)
            assert name not in rich or not any(ch in name for ch in "<>&\"'"), what
            assert "a" * 81 not in rich, what
            assert "a" * 81 not in "".join(parse(rich).text), what


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("<img src=x onerror=alert(1)>.png", "&lt;img src=x onerror=alert(1)&gt;.png"),
        ("invoice\u202efdp.exe", "invoicefdp.exe"),
        ("../../etc/passwd", "etc_passwd"),
        ("\u202e\u202e", "unnamed file"),
    ],
)
def test_hostile_filename_is_shown_cleaned_and_escaped(name: str, shown: str) -> None:
    """The card shows the cleaned name, escaped in the HTML."""
    rich = render.offer_card(make_offer(filename=name), "✅", "❌")["formatted_body"]
    assert f"<b>Accept {shown} from Carol?</b>" in rich


def test_long_filename_is_cut_keeping_the_extension() -> None:
    """A 1000-character name is cut in the middle to 80 characters and keeps its extension."""
    body = render.status_line(make_offer(filename="a" * 1000 + ".pdf"))["body"]
    shown = body.split(" · ", 1)[0].removeprefix("⬆️ ")
    assert len(shown) == 80 and shown.endswith(".pdf")
    assert shown.startswith("a" * 50 + "…")


def _sender_surfaces(sender_name: str) -> list[str]:
    offer = make_offer(sender_name=sender_name)
    card = render.offer_card(offer, "✅", "❌")
    log = render.attachment_log([offer], C2A)
    relayed = render.relayed_text(sender_name, "m.text", "hello", None)
    return [card["body"], card["formatted_body"], log.body, log.html or "", relayed["body"],
            relayed["formatted_body"]]


@pytest.mark.parametrize(
    "sender_name",
    ["Bob\u202e", "Bob\u2067", "Bo\u200bb", "Bob\x1b[31m"],
    ids=["rlo", "rli", "zero-width", "escape"],
)
def test_hostile_sender_names_lose_invisible_characters(sender_name: str) -> None:
    """Invisible characters in a sender's display name reach no card, log row or relayed text."""
    for text in _sender_surfaces(sender_name):
        assert invisible(text) == set()


@pytest.mark.parametrize("sender_name", ["Bob", "<b>Bob</b>", "Bob  the\tBuilder"])
def test_ordinary_sender_names_render_on_one_line(sender_name: str) -> None:
    """Sender names are shown on one line and escaped in HTML."""
    card = render.offer_card(make_offer(sender_name=sender_name), "✅", "❌")
    first = card["body"].splitlines()[0]
    assert first == f"📥 Accept report.pdf from {' '.join(sender_name.split())}?"
    assert_only_own_markup(card["formatted_body"])


# -- the io.parcel.offer block ---------------------------------------------------------------

BLOCK_CASES = [
    ({"number": 2}, {"id": 7, "number": 2, "session": 3, "state": "offered",
                     "filename": "report.pdf",
          "mimetype": "application/pdf", "size": 1_234_567, "sha256": "ab" * 32,
          "direction": "customer_to_agent"}),
    ({"state": S.INSPECTING, "mimetype": None, "size": None, "sha256": None,
      "direction": A2C, "filename": "../x/<b>\u202e.txt"},
     {"id": 7, "number": 7, "session": 3, "state": "inspecting",
      "filename": "x_<b>.txt",
      "mimetype": None, "size": None, "sha256": None, "direction": "agent_to_customer"}),
    ({"state": S.DECLINED, "filename": "b" * 500 + ".pdf"},
     {"id": 7, "number": 7, "session": 3, "state": "declined",
      "filename": safe_filename("b" * 500 + ".pdf"),
      "mimetype": "application/pdf", "size": 1_234_567, "sha256": "ab" * 32,
      "direction": "customer_to_agent"}),
    ({"redacted": 2},
     {"id": 7, "number": 7, "session": 3, "state": "offered", "filename": "report.pdf",
      "mimetype": "application/pdf", "size": 1_234_567, "sha256": "ab" * 32,
      "direction": "customer_to_agent", "redacted": 2}),
]


@pytest.mark.parametrize(("overrides", "expected"), BLOCK_CASES, ids=["offered", "hostile",
                                                                      "long", "redacted"])
def test_offer_block_fields(overrides: dict[str, Any], expected: dict[str, Any]) -> None:
    """The io.parcel.offer block has exactly the documented keys, with a cleaned file name."""
    block = render.offer_block(make_offer(**overrides), 3)
    assert block == expected
    assert len(block["filename"]) <= 200


def test_offer_key() -> None:
    """The machine-readable block lives under the documented content key."""
    assert render.OFFER_KEY == "io.parcel.offer"


# -- the attachment log --------------------------------------------------------------------------


def test_attachment_log_empty() -> None:
    """An empty log says so in one plain line."""
    message = render.attachment_log([], C2A)
    assert message == render.Message("No files have been sent in this chat yet.")


@pytest.mark.parametrize(
    ("viewpoint", "first", "second"),
    [(C2A, "sent", "received"), (A2C, "received", "sent")],
    ids=["customer-view", "agent-view"],
)
def test_attachment_log_sent_vs_received_by_viewpoint(
    viewpoint: Direction, first: str, second: str
) -> None:
    """Offers in the viewpoint's direction are "sent", the others "received"."""
    offers = [
        make_offer(id=1, direction=C2A, state=S.ACCEPTED),
        make_offer(id=2, direction=A2C, sender_name="Alice (support)", filename="fix.zip",
                   mimetype="application/zip", size=None, state=S.OFFERED,
                   updated_at=1_700_000_600.0),
    ]
    message = render.attachment_log(offers, viewpoint)
    lines = message.body.splitlines()
    assert lines[0] == "Attachments (2):"
    assert lines[1] == (f"#1 {first}: report.pdf · PDF document · 1.2 MB · from Carol · "
                        "accepted · 2023-11-14 22:13")
    assert lines[2].startswith(f"#2 {second}: fix.zip · ")
    assert lines[2].endswith("· — · from Alice (support) · waiting · 2023-11-14 22:23")
    assert message.html is not None
    facts = [c.split(" · ", 1)[0] for c in parse(message.html).text if " · " in c]
    assert facts == [first, second]


@pytest.mark.parametrize(
    ("state", "reason", "word"),
    [(S.INSPECTING, None, "checking"), (S.OFFERED, None, "waiting"),
     (S.ACCEPTED, None, "accepted"), (S.DECLINED, "no", "declined"),
     (S.WITHDRAWN, None, "withdrawn"), (S.EXPIRED, "session ended", "expired"),
     (S.REJECTED, "too big", "rejected (too big)"), (S.REJECTED, None, "rejected"),
     (S.FAILED, "boom", "failed")],
    ids=lambda v: getattr(v, "value", None),
)
def test_attachment_log_state_words(state: OfferState, reason: str | None, word: str) -> None:
    """Each state has a plain word in the log; only a rejection shows its reason."""
    body = render.attachment_log([make_offer(state=state, reason=reason)], C2A).body
    assert f" · {word} · " in body


def test_attachment_log_html_table_is_escaped() -> None:
    """The HTML table escapes names and file names and has the documented header."""
    offer = make_offer(filename="<img src=x>.png", sender_name="<b>Eve</b>",
                       state=S.REJECTED, reason="<script>x</script>")
    message = render.attachment_log([offer], A2C)
    assert message.html is not None
    assert_only_own_markup(message.html)
    assert "&lt;img src=x&gt;.png" in message.html
    assert "&lt;b&gt;Eve&lt;/b&gt;" in message.html
    assert "rejected (&lt;script&gt;x&lt;/script&gt;)" in message.html
    parsed = parse(message.html)
    assert [t for t, _ in parsed.tags].count("th") == 2
    assert parsed.text[0] == "Attachments (1)"  # a heading Element shows above the table
    assert parsed.text[1:3] == ["File", "State (UTC)"]


def test_attachment_log_table_has_two_narrow_columns() -> None:
    """Each row is two cells: number, name and facts; state and a short time (the table must
    fit Element's timeline on a phone; the browser test measures it)."""
    message = render.attachment_log([make_offer(id=40, number=1, state=S.ACCEPTED)], C2A)
    assert message.html is not None
    row = message.html.split("<tbody>", 1)[1]
    assert row == ("<tr><td><b>#1</b> report.pdf<br>sent · PDF document · 1.2 MB · from Carol"
                   "</td><td>accepted<br>14\u00a0Nov 22:13</td></tr></tbody></table>")


def test_attachment_log_numbers_offers_per_chat() -> None:
    """Rows show the chat's own offer number, never the store's id."""
    message = render.attachment_log([make_offer(id=40, number=1)], C2A)
    assert message.body.splitlines()[1].startswith("#1 sent: report.pdf")
    assert message.html is not None
    assert "<b>#1</b>" in message.html and "40" not in message.html


@pytest.mark.parametrize(("ts", "shown"), [
    (1_700_000_000.0, "14 Nov 22:13"), (1_704_067_199.0, "31 Dec 23:59"),
    (1_704_067_200.0, "1 Jan 00:00"),
])
def test_short_time_is_day_month_and_utc_time(ts: float, shown: str) -> None:
    """The table's time: day, month and UTC time, without the year."""
    assert render.short_time(ts) == shown


def test_attachment_log_cuts_long_names_in_the_table_not_in_the_text() -> None:
    """A long name is cut to 20 characters in the table (it cannot wrap) and to 80 in the
    text, both keeping the extension."""
    message = render.attachment_log([make_offer(filename="z" * 300 + ".pdf")], C2A)
    shown = message.body.splitlines()[1].split(": ", 1)[1].split(" · ", 1)[0]
    assert len(shown) == 80 and shown.endswith(".pdf")
    assert message.html is not None
    cell = parse(message.html).text[4]
    assert cell.startswith(" ") and len(cell.strip()) == 20 and cell.endswith(".pdf")


@pytest.mark.parametrize(
    ("ts", "shown"),
    [(0.0, "1970-01-01 00:00"), (1_700_000_000.0, "2023-11-14 22:13")],
)
def test_format_time_is_utc(ts: float, shown: str) -> None:
    """Log times are UTC, to the minute."""
    assert render.format_time(ts) == shown


# -- commands ------------------------------------------------------------------------------------


def test_help_text_lists_every_command() -> None:
    """!help lists each command with its meaning, in plain text and as an HTML list."""
    message = render.help_text()
    assert message.body.splitlines()[0] == "Commands:"
    for command in ("!help", "!attachments", "!accept N", "!decline N", "!end"):
        assert any(line.startswith(f"{command} — ") for line in message.body.splitlines())
        assert f"<li><code>{command}</code> — " in (message.html or "")
    assert_only_own_markup(message.html or "")
    assert message.content()["m.mentions"] == {}


@pytest.mark.parametrize(
    ("word", "shown"),
    [
        ("!foo", "!foo"),
        ("!" + "x" * 100, "!" + "x" * 39),
        ("!a   b\n\tc", "!a b c"),
        ("!" + "y" * 39, "!" + "y" * 39),
        ("!" + "y" * 40, "!" + "y" * 39),
    ],
    ids=["short", "long", "whitespace", "exactly-40", "41"],
)
def test_unknown_command_is_truncated(word: str, shown: str) -> None:
    """Unknown commands are echoed on one line, cut to 40 characters, with the command list."""
    message = render.unknown_command(word)
    assert message.body == (
        f"Unknown command {shown}. Commands: !help, !attachments, !accept N, !decline N, !end")
    assert message.html is None


@pytest.mark.parametrize("word", ["!\u202eboo", "!x\x1b[2J", "!\u200bhelp"],
                         ids=["rlo", "escape", "zero-width"])
def test_unknown_command_drops_invisible_characters(word: str) -> None:
    """The echoed command carries no bidi, zero-width or control characters."""
    assert invisible(render.unknown_command(word).body) == set()


# -- messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "extra", "expected"),
    [
        (render.Message("hi"), {}, {"msgtype": "m.notice", "body": "hi", "m.mentions": {}}),
        (render.Message("hi", "<b>hi</b>"), {"x": 1},
         {"msgtype": "m.notice", "body": "hi", "m.mentions": {}, "x": 1,
          "format": "org.matrix.custom.html", "formatted_body": "<b>hi</b>"}),
    ],
    ids=["plain", "html"],
)
def test_message_content(message: render.Message, extra: dict[str, Any],
                         expected: dict[str, Any]) -> None:
    """Message.content builds a notice with mentions disabled, and the HTML format when present."""
    assert message.content(**extra) == expected


@pytest.mark.parametrize(
    ("reason", "closer", "you", "pending", "bot_id", "body"),
    [
        ("customer_left", None, False, 0, None,
         "The customer left the chat. This session is closed."),
        ("customer_left", None, False, 2, None,
         "The customer left the chat. This session is closed. 2 pending files were not "
         "delivered."),
        ("bot_removed", None, False, 1, None,
         "The bot was removed from the customer's chat (or that room was shut down), so nothing "
         "more can reach the customer. This session is closed. 1 pending file was not "
         "delivered."),
        ("bot_removed_from_agents", None, False, 1, "@parcel:hs",
         "The support team's room for this chat was closed, so no agent can read what you write "
         "here any more. This chat is closed. 1 pending file was not delivered. To talk to us "
         "again, start a new chat with @parcel:hs."),
        ("ended", "Alice (support)", True, 0, None, "You ended the chat."),
        ("ended", "Carol", True, 1, "@parcel:hs",
         "You ended the chat. 1 pending file was not delivered. To talk to us again, start a "
         "new chat with @parcel:hs."),
        ("ended", "Alice (support)", False, 0, "@parcel:hs",
         "Alice (support) ended the chat. To talk to us again, start a new chat with "
         "@parcel:hs."),
        ("ended", "Carol\u202e", False, 3, None,
         "Carol ended the chat. 3 pending files were not delivered."),
        ("ended", None, False, 0, None, "This chat is closed."),
    ],
    ids=["left", "left-pending", "bot-removed", "bot-removed-from-agents",
         "you", "you-customer-pending",
         "agent-ended-to-customer", "customer-ended-to-agents", "nobody"],
)
def test_session_closed(reason: str, closer: str | None, you: bool, pending: int,
                        bot_id: str | None, body: str) -> None:
    """The closing notice: "You ended" for the closer, pending files only when there were any,
    and for the customer how to start again."""
    assert render.session_closed(reason, closer, you=you, pending=pending,
                                 bot_id=bot_id).body == body


@pytest.mark.parametrize(
    ("name", "closed"),
    [("Chat with Carol (#12)", "[closed] Chat with Carol (#12)"),
     ("[closed] Chat with Carol (#12)", "[closed] Chat with Carol (#12)")],
)
def test_closed_room_name(name: str, closed: str) -> None:
    """A closed agent room's name gets the "[closed] " prefix once."""
    assert render.closed_room_name(name) == closed


def test_refusal_notice_for_agents() -> None:
    """Agents hear which customer tried to send which (cleaned) file and why it was refused."""
    assert render.refusal_notice_for_agents("Carol", "../setup.exe", "it is a program").body == (
        "⛔ Carol tried to send setup.exe: refused — it is a program")


def test_reply_to_adds_the_reply_relation() -> None:
    """A reply carries m.relates_to.m.in_reply_to with the replied-to event id."""
    content = render.reply_to({"body": "x"}, "$upload")
    assert content == {"body": "x", "m.relates_to": {"m.in_reply_to": {"event_id": "$upload"}}}


@pytest.mark.parametrize(("also_open", "note"), [
    ((), None),
    ((3,), "This customer also has another chat open: #3."),
    ((3, 5), "This customer also has other chats open: #3, #5."),
])
def test_session_opened_for_agents_names_the_customers_other_open_chats(
    also_open: tuple[int, ...], note: str | None
) -> None:
    """A customer's second chat tells the agents which of their chats are still open."""
    message = render.session_opened_for_agents("Carol", "@carol:hs", 6, also_open)
    lines = message.body.splitlines()
    assert lines[0].startswith("New chat #6 with Carol (@carol:hs).")
    assert lines[1:] == ([note] if note else [])
    assert message.html is not None and (note is None or message.html.endswith(f"<br>{note}"))


def test_session_opened_for_agents_escapes_the_customer_name() -> None:
    """The first agent-room message escapes the customer's name and id in HTML."""
    message = render.session_opened_for_agents("<i>Eve</i>", "@eve:hs", 4)
    assert message.html is not None
    assert "&lt;i&gt;Eve&lt;/i&gt;" in message.html
    assert_only_own_markup(message.html)
    assert message.body.startswith("New chat #4 with <i>Eve</i> (@eve:hs).")


def test_rejection_notice() -> None:
    """A rejection names the cleaned file and the reason."""
    assert render.rejection_notice("../a\u202e.exe", "blocked type").body == (
        "⛔ a.exe was not sent: blocked type")


def test_latest_offer_state_follows_edits_of_one_offer_only() -> None:
    """The newest block for the offer wins, edits read from m.new_content, others ignored."""
    events = [
        {"content": {render.OFFER_KEY: {"id": 1, "state": "offered"}}},
        {"content": {render.OFFER_KEY: {"id": 2, "state": "offered"}}},
        {"content": {"body": "hello"}},
        {"content": "not a dict"},
        {"content": {"m.new_content": {render.OFFER_KEY: {"id": 1, "state": "accepted"}}}},
    ]
    assert render.latest_offer_state(events, 1) == "accepted"
    assert render.latest_offer_state(events, 2) == "offered"
    assert render.latest_offer_state(events, 3) is None


@pytest.mark.parametrize(
    ("what", "body"),
    [
        ("location", "That location could not be relayed: only text and files are supported."),
        ("poll", "That poll could not be relayed: only text and files are supported."),
        ("message", "That message could not be relayed: only text and files are supported."),
    ],
)
def test_not_relayable(what: str, body: str) -> None:
    """Events that are neither text nor files get a plain answer naming what they were."""
    assert render.not_relayable(what).body == body


def test_message_too_long_names_the_size() -> None:
    """A message too long even for parts is answered with its size and what to do instead."""
    assert render.message_too_long(812_000).body == (
        "⚠️ Your last message was not relayed: at 812 KB it is too long to send even in parts. "
        "Please send it as several shorter messages, or as a file."
    )


@pytest.mark.parametrize(
    ("part", "msgtype", "body", "rich"),
    [
        ((1, 3), "m.text", "Carol (1/3): hi", "<b>Carol (1/3)</b>: hi"),
        ((3, 3), "m.emote", "* Carol (3/3) hi", "* <b>Carol (3/3)</b> hi"),
    ],
)
def test_relayed_parts_are_marked(
    part: tuple[int, int], msgtype: str, body: str, rich: str
) -> None:
    """Each part of a long message says which part it is and of how many."""
    content = render.relayed_text("Carol", msgtype, "hi", None, part=part)
    assert (content["body"], content["formatted_body"]) == (body, rich)


def test_relayed_text_drops_reply_fallback_html_with_its_content() -> None:
    """<mx-reply> never survives the sanitiser, quote and all."""
    content = render.relayed_text(
        "Carol", "m.text", "x",
        "<mx-reply><blockquote>@alice: refund</blockquote></mx-reply>thanks",
    )
    assert content["formatted_body"] == "<b>Carol</b>: thanks"


def test_large_image_card_says_it_arrives_as_a_file() -> None:
    """An image too large for in-line display is announced as a file on its card."""
    offer = make_offer(filename="photo.png", mimetype="image/png", size=17_000)
    card = render.offer_card(offer, "✅", "❌", as_file=True)
    assert card["body"].splitlines()[:2] == [
        "📥 Accept photo.png from Carol?",
        "PNG image · 17 KB · too large to show in-line: it will arrive as a file · offer #7",
    ]
    assert "too large to show in-line" not in render.offer_card(offer, "✅", "❌")["body"]


def test_sticker_name() -> None:
    """Stickers are named by their description."""
    assert render.sticker_name("thumbs up") == "sticker (thumbs up)"
    assert render.sticker_name("") == "sticker"
# -- the activity panel ----------------------------------------------------------------------

PANEL_CASES = [
    # (offers, viewpoint, expected body)
    ([], C2A,
     "📋 Files in this chat: none yet. Each file sent here is listed with its state."),
    ([make_offer(number=1, state=S.OFFERED)], C2A,
     "📋 Files in this chat: 1 (1 waiting)\n"
     "⬆️ #1 report.pdf · PDF document · 1.2 MB · sent · waiting · 2023-11-14 22:13"),
    ([make_offer(number=1, state=S.ACCEPTED),
      make_offer(id=9, number=2, direction=A2C, filename="fix.zip", mimetype="application/zip",
                 size=None, state=S.DECLINED, updated_at=1_700_000_600.0),
      make_offer(id=12, number=3, state=S.INSPECTING, mimetype=None, size=None)], C2A,
     "📋 Files in this chat: 3 (1 waiting)\n"
     "📎 #1 report.pdf · PDF document · 1.2 MB · sent · accepted · 2023-11-14 22:13\n"
     "🚫 #2 fix.zip · ZIP archive · — · received · declined · 2023-11-14 22:23\n"
     "⏳ #3 report.pdf · file · — · sent · checking · 2023-11-14 22:13"),
    ([make_offer(number=4, state=S.REJECTED, reason="too big")], A2C,
     "📋 Files in this chat: 1\n"
     "⛔ #4 report.pdf · PDF document · 1.2 MB · received · rejected · 2023-11-14 22:13"),
]


@pytest.mark.parametrize(("offers", "viewpoint", "expected"), PANEL_CASES,
                         ids=["empty", "waiting", "mixed", "agent-view-rejected"])
def test_activity_panel_lists_every_file_with_its_icon_and_state(
    offers: list[Offer], viewpoint: Direction, expected: str
) -> None:
    """The panel lists each file with the icon that turns ⬆️ → 📎, its kind, size, way, state
    and time; the first line (Element's pinned banner) counts the files and those waiting."""
    message = render.activity_panel(offers, viewpoint)
    assert message.body == expected
    assert message.content()["m.mentions"] == {}


@pytest.mark.parametrize(
    ("state", "icon"),
    [(S.INSPECTING, "⏳"), (S.OFFERED, "⬆️"), (S.ACCEPTED, "📎"), (S.DECLINED, "🚫"),
     (S.WITHDRAWN, "↩️"), (S.EXPIRED, "⌛"), (S.REJECTED, "⛔"), (S.FAILED, "⚠️")],
    ids=lambda v: getattr(v, "value", None),
)
def test_activity_panel_icon_for_every_state(state: OfferState, icon: str) -> None:
    """Every state has its own icon beside the file."""
    body = render.activity_panel([make_offer(number=1, state=state)], C2A).body
    assert body.splitlines()[1].startswith(f"{icon} #1 ")


def test_activity_panel_html_is_escaped_and_keeps_times_on_one_line() -> None:
    """Hostile names are escaped in the panel's HTML list; the time does not wrap."""
    offer = make_offer(number=1, filename="<img src=x onerror=alert(1)>.png")
    message = render.activity_panel([offer], C2A)
    assert message.html is not None
    assert_only_own_markup(message.html)
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in message.html
    assert "2023\u201111\u201114\u00a022:13</li>" in message.html
    assert message.html.startswith("<b>📋 Files in this chat: 1 (1 waiting)</b>\n<ul>\n<li>⬆️ ")
