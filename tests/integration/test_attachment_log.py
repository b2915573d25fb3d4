"""The attachment log: `!attachments` in either room and the admin's `python -m bot log`."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tests import samples
from tests.chat import OFFER_KEY, config_yaml
from tests.conftest import Chat

ACCEPT, DECLINE = "\u2705", "\u274c"
REPO = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^#(?P<id>\d+) (?P<way>sent|received): (?P<name>.+?) · (?P<kind>.+?) · (?P<size>.+?) · "
    r"from (?P<sender>.+?) · (?P<state>[a-z]+) · \d{4}-\d\d-\d\d \d\d:\d\d$"
)


@dataclass(frozen=True)
class Exchange:
    """One file each way: the customer's image accepted, the agent's PDF declined."""

    image_id: int
    image: bytes
    pdf_id: int
    pdf: bytes


async def accepted_and_declined(chat: Chat) -> Exchange:
    """Run the two offers to their final states, as both sides see them."""
    agent, customer = chat.agent, chat.customer
    image, pdf = samples.png(32, 24, "green"), samples.pdf()

    await customer.send_file(chat.customer_room, image, "router.png", "image/png", "m.image")
    await agent.until(lambda: agent.offers(chat.agent_room), "the image's card")
    card = agent.offers(chat.agent_room)[0]
    image_id = card["content"][OFFER_KEY]["id"]
    await agent.react(chat.agent_room, card["event_id"], ACCEPT)
    await customer.until(lambda: customer.offer_state(chat.customer_room, image_id) == "accepted",
                         "the image received")

    await agent.send_file(chat.agent_room, pdf, "terms.pdf", "application/pdf")
    await customer.until(lambda: any(e["content"][OFFER_KEY]["filename"] == "terms.pdf"
                                     for e in customer.offers(chat.customer_room)),
                         "the PDF's card")
    card = [e for e in customer.offers(chat.customer_room)
            if e["content"][OFFER_KEY]["filename"] == "terms.pdf"][0]
    pdf_id = card["content"][OFFER_KEY]["id"]
    await customer.react(chat.customer_room, card["event_id"], DECLINE)
    await agent.until(lambda: agent.offer_state(chat.agent_room, pdf_id) == "declined",
                      "the PDF declined")
    return Exchange(image_id, image, pdf_id, pdf)


class _Cells(HTMLParser):
    """Collects the text of every table row as a list of cells (a <br> as a newline)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: object) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table_rows(formatted_body: str) -> list[list[str]]:
    """The rows (header first) of the HTML table in a message."""
    parser = _Cells()
    parser.feed(formatted_body)
    return parser.rows


async def log_reply(chat: Chat, side: str) -> dict[str, object]:
    """Type `!attachments` in one side's room and return the bot's answer."""
    person = chat.customer if side == "customer" else chat.agent
    room = chat.customer_room if side == "customer" else chat.agent_room
    bot = chat.bot_user.user_id
    await person.say(room, "!attachments")
    await person.until(lambda: person.replies(room, bot, "Attachments ("), f"the {side}'s log")
    return person.replies(room, bot, "Attachments (")[-1]["content"]


async def test_attachments_command_lists_states_from_each_rooms_viewpoint(start_chat) -> None:
    """`!attachments` lists both offers with states, "sent"/"received" as seen from that room."""
    chat: Chat = await start_chat()
    await chat.open_session()
    bot = chat.bot_user.user_id
    await chat.agent.say(chat.agent_room, "!attachments")
    await chat.agent.until(lambda: chat.agent.replies(chat.agent_room, bot, "No files"),
                           "the empty log")
    exchange = await accepted_and_declined(chat)
    image, pdf = str(exchange.image_id), str(exchange.pdf_id)

    views = {"customer": {image: "sent", pdf: "received"},
             "agent": {image: "received", pdf: "sent"}}
    for side, ways in views.items():
        content = await log_reply(chat, side)
        body = str(content["body"])
        lines = body.splitlines()
        assert lines[0] == "Attachments (2):"
        parsed = {m["id"]: m for m in (LINE.match(line) for line in lines[1:]) if m}
        assert set(parsed) == {image, pdf}, body
        assert parsed[image]["way"] == ways[image] and parsed[pdf]["way"] == ways[pdf], side
        assert parsed[image]["name"] == "router.png" and parsed[pdf]["name"] == "terms.pdf"
        assert parsed[image]["kind"] == "PNG image"
        assert parsed[image]["state"] == "accepted" and parsed[pdf]["state"] == "declined"
        assert parsed[image]["sender"] == "Carol"
        assert parsed[pdf]["sender"] == "Alice (support)"
        assert parsed[image]["size"] == f"{len(exchange.image)} bytes"

        rows = table_rows(str(content["formatted_body"]))
        assert rows[0] == ["File", "State (UTC)"]
        by_id = {row[0].split()[0].removeprefix("#"): row for row in rows[1:]}
        assert set(by_id) == {image, pdf}
        name, facts = by_id[image][0].split("\n")
        assert name == f"#{image} router.png"
        assert facts.split(" · ")[:2] == [ways[image], "PNG image"]
        assert by_id[pdf][0].split("\n")[0] == f"#{pdf} terms.pdf"
        assert by_id[pdf][0].split("\n")[1].startswith(f"{ways[pdf]} · ")
        state, when = by_id[image][1].split("\n")
        assert state == "accepted" and by_id[pdf][1].startswith("declined\n")
        assert re.fullmatch(r"\d{1,2}\u00a0[A-Z][a-z]{2} \d\d:\d\d", when), "day and month together"


async def run_log(config_file: Path, *args: str) -> str:
    """Run `python -m bot log --config FILE ARGS…` and return its standard output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "log", "--config", str(config_file), *args,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_admin_log_command_prints_both_offers_as_json_and_csv(
    start_chat, tmp_path: Path
) -> None:
    """`python -m bot log` prints every offer with direction, state and SHA-256, as JSON and CSV."""
    chat: Chat = await start_chat()
    await chat.open_session()
    exchange = await accepted_and_declined(chat)
    config_file = tmp_path / "parcel.yaml"
    config_file.write_text(config_yaml(chat.bot.config), encoding="utf-8")
    expected = {
        exchange.image_id: ("customer_to_agent", "agent", "router.png", "image/png",
                            exchange.image, "accepted"),
        exchange.pdf_id: ("agent_to_customer", "customer", "terms.pdf", "application/pdf",
                          exchange.pdf, "declined"),
    }

    rows = json.loads(await run_log(config_file, "--format", "json"))
    assert sorted(row["offer"] for row in rows) == sorted(expected)
    for row in rows:
        direction, recipient, name, mimetype, data, state = expected[row["offer"]]
        assert row["session"] == 1
        assert (row["direction"], row["recipient_side"], row["filename"]) == (
            direction, recipient, name)
        assert (row["mimetype"], row["size"], row["state"]) == (mimetype, len(data), state)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert [t["state"] for t in row["transitions"]] == ["inspecting", "offered", state]
        assert row["transitions"][-1]["actor"] == (
            chat.agent.user_id if state == "accepted" else chat.customer.user_id)

    table = list(csv.DictReader(io.StringIO(await run_log(config_file, "--format", "csv"))))
    assert sorted(int(row["offer"]) for row in table) == sorted(expected)
    for row in table:
        direction, recipient, name, mimetype, data, state = expected[int(row["offer"])]
        assert (row["direction"], row["filename"], row["state"]) == (direction, name, state)
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert int(row["size"]) == len(data)
        assert f"{state}@" in row["transitions"]

    assert json.loads(await run_log(config_file, "--format", "json", "--session", "99")) == []
