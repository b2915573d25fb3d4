"""The relay's pure parts: message parts within the event limit, reply fallbacks, txn ids."""

from __future__ import annotations

import re
from typing import Any

import pytest

from bot.attachments.text import strip_reply_fallback
from bot.sessions import relay
from bot.sessions.relay import (
    content_size,
    counterpart,
    original_of,
    relay_txn,
    relayed_messages,
    reply_target,
    split_html,
    split_plain,
    sticker_as_image,
    unsupported_event,
)

EVENT = "$abc-DEF_123"


@pytest.mark.parametrize(
    ("event_id", "part", "txn"),
    [
        (EVENT, 1, "relay-$abc-DEF_123"),
        (EVENT, 2, "relay-part2-$abc-DEF_123"),
        ("$x:hs.example", 11, "relay-part11-$x:hs.example"),
    ],
)
def test_relay_txn_round_trips(event_id: str, part: int, txn: str) -> None:
    """Each part of a relayed message has its own txn id, and every one leads back."""
    assert relay_txn(event_id, part) == txn
    assert original_of(txn) == event_id


@pytest.mark.parametrize(
    "txn", ["reply-$abc", "offer-12-card", "relay-", "relay-partx-$a", "relay-part2-abc", "relay-x"]
)
def test_other_txn_ids_have_no_original(txn: str) -> None:
    """Transaction ids of anything but a relayed copy map to no original."""
    assert original_of(txn) is None


@pytest.mark.parametrize(
    ("content", "target"),
    [
        ({"m.relates_to": {"m.in_reply_to": {"event_id": "$a"}}}, "$a"),
        ({"m.relates_to": {"m.in_reply_to": {"event_id": "a"}}}, None),
        ({"m.relates_to": {"m.in_reply_to": {"event_id": 7}}}, None),
        ({"m.relates_to": {"m.in_reply_to": "$a"}}, None),
        ({"m.relates_to": "$a"}, None),
        ({"m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}}, None),
        ({}, None),
    ],
)
def test_reply_target(content: dict[str, Any], target: str | None) -> None:
    """Only a well-formed m.in_reply_to with an event id counts as a reply."""
    assert reply_target(content) == target


@pytest.mark.parametrize(
    ("body", "is_reply", "expected"),
    [
        ("> <@alice:hs> refund\n\nthanks", True, "thanks"),
        ("> <@alice:hs> refund\n> today\n\nthanks", False, "thanks"),
        ("> * <@alice:hs> waves\n\nhi", False, "hi"),
        ("> <@alice:hs> refund\nthanks", True, "thanks"),
        ("> quoted by me\n\nmy words", True, "my words"),
        ("> quoted by me\n\nmy words", False, "> quoted by me\n\nmy words"),
        (">\n> <@a:hs> x\n\ny", True, "y"),
        ("> <@alice:hs> only a quote", True, ""),
        ("plain text", True, "plain text"),
        ("a\n> not leading", True, "a\n> not leading"),
    ],
)
def test_strip_reply_fallback(body: str, is_reply: bool, expected: str) -> None:
    """Leading quote lines go for replies and for fallback-shaped quotes; others stay."""
    assert strip_reply_fallback(body, is_reply) == expected


@pytest.mark.parametrize(
    ("formatted", "expected"),
    [
        ("<mx-reply><blockquote>In reply to @alice: refund</blockquote></mx-reply>thanks",
         "thanks"),
        ("<MX-REPLY>fake</MX-REPLY><b>ok</b>", "<b>ok</b>"),
        ("<mx-reply>unclosed fake quote", ""),
        ("<blockquote>my own quote</blockquote>", "<blockquote>my own quote</blockquote>"),
    ],
)
def test_html_reply_fallback_goes_with_its_content(formatted: str, expected: str) -> None:
    """<mx-reply> and everything in it are dropped; ordinary quotes stay."""
    assert relay.strip_fallbacks("x", formatted, is_reply=True)[1] == expected


def test_relayed_reply_carries_the_relation_and_no_fallback() -> None:
    """A relayed reply points at the counterpart event and quotes nothing itself."""
    [content] = relayed_messages("Carol", "m.text", "thanks", None, reply_to="$copy")
    assert content["m.relates_to"] == {"m.in_reply_to": {"event_id": "$copy"}}
    assert content["body"] == "Carol: thanks"


def test_short_message_is_one_event() -> None:
    """A message within the limit is relayed as it is, without a part marker."""
    [content] = relayed_messages("Carol", "m.text", "hello", None)
    assert content["body"] == "Carol: hello"


PART = re.compile(r"^Carol \((\d+)/(\d+)\): ")


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("<td>&nbsp;</td>\n" * 2000, 40_000),  # markup that grows fourfold as HTML
        ("word " * 3000, 5_000),
        ("\U0001f600" * 4000, 20_000),  # astral characters: 12 bytes each when escaped
        ("x" * 9000, 3_000),  # no word breaks at all
    ],
)
def test_long_plain_text_is_split_into_ordered_parts_within_the_limit(
    text: str, limit: int
) -> None:
    """Parts are numbered 1..n, each fits the limit, and together they are the whole text."""
    contents = relayed_messages("Carol", "m.text", text, None, limit=limit)
    assert contents is not None and len(contents) >= 2
    numbers = [PART.match(c["body"]).groups() for c in contents]  # type: ignore[union-attr]
    assert numbers == [(str(k), str(len(contents))) for k in range(1, len(contents) + 1)]
    assert all(content_size(c) <= limit for c in contents)
    assert "".join(PART.sub("", c["body"]) for c in contents) == text


def test_plain_parts_end_after_whitespace_where_possible() -> None:
    """A cut falls after a space rather than inside a word."""
    pieces = split_plain("alpha beta gamma delta", 2 * 13)
    assert pieces is not None and "".join(pieces) == "alpha beta gamma delta"
    assert all(piece.endswith(" ") for piece in pieces[:-1])


def test_html_is_split_into_well_formed_parts_that_continue_open_elements() -> None:
    """Elements open at a cut are closed and reopened, so each part is well-formed."""
    fragment = "<ol>" + "".join(f"<li><b>step {i}</b> do it</li>" for i in range(40)) + "</ol>"
    parts = split_html(fragment, 400)
    assert parts is not None and len(parts) > 2
    for _text, rich in parts:
        assert rich.startswith("<ol>") and rich.endswith("</ol>")
        assert rich.count("<li>") == rich.count("</li>")
        assert rich.count("<b>") == rich.count("</b>")
    joined = "".join(text for text, _ in parts)
    assert "step 0 do it" in joined and "step 39 do it" in joined


def test_html_part_bodies_are_plain_text_with_line_breaks() -> None:
    """A part's body is its HTML's text, with entities decoded and blocks on their own lines."""
    [(text, rich)] = split_html("<p>a &amp; b</p><p>c<br>d</p>", 10_000)  # type: ignore[misc]
    assert text == "a & b\nc\nd\n"
    assert rich == "<p>a &amp; b</p><p>c<br>d</p>"


def test_formatted_message_is_split_as_html() -> None:
    """A long formatted message becomes formatted parts, each within the limit."""
    fragment = "<ul>" + "".join(f"<li><code>line {i}</code></li>" for i in range(2000)) + "</ul>"
    contents = relayed_messages("Carol", "m.text", "plain", fragment, limit=20_000)
    assert contents is not None and len(contents) >= 2
    for content in contents:
        assert content_size(content) <= 20_000
        assert content["formatted_body"].count("<ul>") == 1
        assert content["formatted_body"].count("</ul>") == 1


def test_one_huge_tag_falls_back_to_plain_text_parts() -> None:
    """When HTML cannot be split (one link alone is over the limit), parts are plain text."""
    fragment = f'<a href="https://example.org/{"x" * 30_000}">link</a>'
    contents = relayed_messages("Carol", "m.text", "see " * 3000, fragment, limit=8_000)
    assert contents is not None and len(contents) >= 2
    assert all("<a " not in c["formatted_body"] for c in contents)
    assert "".join(PART.sub("", c["body"]) for c in contents) == "see " * 3000


def test_too_many_parts_means_the_sender_is_told() -> None:
    """A message that would need more than the most parts allowed is not split at all."""
    assert relayed_messages("Carol", "m.text", "y" * 50_000, None, limit=2_000,
                            max_parts=3) is None


def test_only_the_first_part_is_a_reply() -> None:
    """The reply relation rides on part 1, so the quote shows once."""
    contents = relayed_messages("Carol", "m.text", "z " * 5_000, None, reply_to="$t",
                                limit=4_000)
    assert contents is not None
    assert "m.relates_to" in contents[0]
    assert all("m.relates_to" not in c for c in contents[1:])


def test_emote_parts_keep_the_emote_form() -> None:
    """Each part of a long emote reads "* Carol (k/n) …"."""
    contents = relayed_messages("Carol", "m.emote", "waves " * 2000, None, limit=4_000)
    assert contents is not None
    assert all(re.match(r"^\* Carol \(\d+/\d+\) ", c["body"]) for c in contents)


class FakeOutbox:
    """An outbox of (txn id, room, event id) rows, like the store's."""

    def __init__(self, rows: list[tuple[str, str, str]]) -> None:
        self.rows = rows

    async def sent_txn(self, room_id: str, event_id: str) -> str | None:
        return next((t for t, r, e in self.rows if r == room_id and e == event_id), None)

    async def sent_in_room(self, txn_id: str) -> tuple[str, str] | None:
        return next(((r, e) for t, r, e in self.rows if t == txn_id), None)


OUTBOX = FakeOutbox([
    ("relay-$cust1", "!agents", "$copy1"),  # customer's $cust1 relayed to the agents
    ("relay-$agent1", "!cust", "$copy2"),  # agent's $agent1 relayed to the customer
    ("relay-part2-$agent2", "!cust", "$copy3"),  # part 2 of the agent's $agent2
    ("offer-1-card", "!agents", "$card"),
    ("relay-$other", "!elsewhere", "$copy9"),  # another session's copy
])


@pytest.mark.parametrize(
    ("room", "event", "other", "expected"),
    [
        ("!cust", "$cust1", "!agents", "$copy1"),  # reply to one's own original
        ("!cust", "$copy2", "!agents", "$agent1"),  # reply to the copy of the agent's words
        ("!cust", "$copy3", "!agents", "$agent2"),  # reply to a later part
        ("!agents", "$copy1", "!cust", "$cust1"),
        ("!agents", "$agent1", "!cust", "$copy2"),
        ("!agents", "$card", "!cust", None),  # an offer card has no counterpart
        ("!cust", "$copy1", "!agents", None),  # that copy is not in this room
        ("!cust", "$other", "!agents", None),  # its copy is in another session's room
        ("!cust", "$unknown", "!agents", None),
    ],
)
async def test_counterpart_maps_replies_across_the_relay(
    room: str, event: str, other: str, expected: str | None
) -> None:
    """Originals map to their relayed copies and copies to their originals, in either room."""
    assert await counterpart(OUTBOX, room, event, other) == expected


@pytest.mark.parametrize(
    ("event_type", "answer"),
    [
        ("m.poll.start", "poll"),
        ("org.matrix.msc3381.poll.start", "poll"),
        ("m.call.invite", "call"),
        ("com.example.custom", "message"),
        ("m.call.candidates", None),
        ("m.call.hangup", None),
        ("org.matrix.msc3381.poll.response", None),
        ("m.key.verification.start", None),
        ("m.room.encrypted", None),
        ("m.beacon", None),
    ],
)
def test_unsupported_event(event_type: str, answer: str | None) -> None:
    """Events a person sends get an answer; protocol follow-ups do not."""
    assert unsupported_event(event_type) == answer


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"body": "thumbs up", "url": "mxc://hs/a", "info": {"mimetype": "image/png"}},
         {"msgtype": "m.image", "body": "sticker (thumbs up)", "url": "mxc://hs/a",
          "info": {"mimetype": "image/png"}}),
        ({"url": "mxc://hs/a"}, {"msgtype": "m.image", "body": "sticker", "url": "mxc://hs/a"}),
        ({"body": " a\n b ", "file": {"url": "mxc://hs/e"}, "extra": 1},
         {"msgtype": "m.image", "body": "sticker (a b)", "file": {"url": "mxc://hs/e"}}),
        ({"body": 5}, {"msgtype": "m.image", "body": "sticker"}),
    ],
)
def test_sticker_as_image(content: dict[str, Any], expected: dict[str, Any]) -> None:
    """A sticker's content becomes an m.image upload named after its description."""
    assert sticker_as_image(content) == expected


M = "\u2022\u2022\u2022\u2022 "


@pytest.mark.parametrize(
    ("body", "formatted", "mode", "expected"),
    [
        ("card 4111 1111 1111 1111", None, "allow",
         relay.CardScreen("card 4111 1111 1111 1111", None)),
        ("card 4111 1111 1111 1111", None, "mask", relay.CardScreen(f"card {M}1111", None, 1)),
        ("card 4111 1111 1111 1111", "card <b>4111</b> 1111 1111 1111", "mask",
         relay.CardScreen(f"card {M}1111", f"card <b>{M}1111</b>", 1)),
        # Only in the formatted body: still found, both forms go out masked.
        ("see below", "<p>4242424242424242</p>", "mask",
         relay.CardScreen("see below", f"<p>{M}4242</p>", 1)),
        ("card 4111 1111 1111 1111", None, "refuse",
         relay.CardScreen("card 4111 1111 1111 1111", None, 1, refused=True)),
        ("order 4111111111111112", "order <i>4111111111111112</i>", "refuse",
         relay.CardScreen("order 4111111111111112", "order <i>4111111111111112</i>")),
        ("a 4111111111111111 b 5555555555554444", None, "mask",
         relay.CardScreen(f"a {M}1111 b {M}4444", None, 2)),
    ],
)
def test_screen_card_numbers(body: str, formatted: str | None, mode: str,
                             expected: relay.CardScreen) -> None:
    """policy.card_numbers_in_text on body and formatted body: as is, masked or refused."""
    assert relay.screen_card_numbers(body, formatted, mode) == expected
