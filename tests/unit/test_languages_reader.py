"""Which language each room's readers get (bot.sessions.language.reader)."""

from __future__ import annotations

import pytest

from bot.config import parse
from bot.sessions.language import reader
from bot.store import Session, SessionState, Side

CONFIG = parse({"homeserver": "http://127.0.0.1:8008", "user_id": "@parcel:example.org",
                "password": "pw", "language": "de", "languages": ["de", "en", "es"],
                "agents": {"language": "fr"}, "timezone": "Europe/Berlin"}, env={})


def session(language: str | None) -> Session:
    return Session(id=1, customer_room="!c:x", agent_room="!a:x", customer_id="@c:x",
                   customer_name="Carol", state=SessionState.OPEN, created_at=0.0,
                   closed_at=None, close_reason=None, language=language)


@pytest.mark.parametrize(
    ("chosen", "side", "code"),
    [
        (None, Side.CUSTOMER, "de"),  # the configured language
        ("es", Side.CUSTOMER, "es"),  # the customer's choice
        ("it", Side.CUSTOMER, "de"),  # a choice the configuration no longer allows
        (None, Side.AGENT, "fr"),
        ("es", Side.AGENT, "fr"),  # a customer's choice never reaches the agents
    ],
)
def test_reader(chosen: str | None, side: Side, code: str) -> None:
    """Customer rooms: the chat's choice while allowed, else language; agent rooms:
    agents.language. Both in the configured time zone."""
    t = reader(CONFIG, session(chosen), side)
    assert (t.code, t.timezone) == (code, "Europe/Berlin")
