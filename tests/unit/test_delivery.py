"""The delivered file's message: in-line images only when clients can afford to decode them."""

from __future__ import annotations

from typing import Any

import pytest

from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.delivery import delivery_content, shown_inline


def make_offer(**overrides: Any) -> Offer:
    base: dict[str, Any] = dict(
        id=7, session_id=3, direction=Direction.CUSTOMER_TO_AGENT, sender="@carol:hs",
        sender_name="Carol", source_room="!c:hs", source_event_id="$up", msgtype="m.image",
        filename="photo.png", declared_mimetype="image/png", declared_size=17_000,
        state=OfferState.ACCEPTED, created_at=1.0, updated_at=1.0, mimetype="image/png",
        size=17_000, sha256="ab" * 32,
    )
    base.update(overrides)
    return Offer(**base)


# (id, offer fields, limit, msgtype, info)
CASES: list[tuple[str, dict[str, Any], int, str, dict[str, Any]]] = [
    ("small png in-line", {"width": 64, "height": 48}, 40_000_000, "m.image",
     {"mimetype": "image/png", "size": 17_000, "w": 64, "h": 48}),
    ("bomb as file", {"width": 30000, "height": 30000}, 40_000_000, "m.file",
     {"mimetype": "image/png", "size": 17_000}),
    ("unmeasured png as file", {}, 40_000_000, "m.file",
     {"mimetype": "image/png", "size": 17_000}),
    ("at the limit in-line", {"width": 1000, "height": 1000}, 1_000_000, "m.image",
     {"mimetype": "image/png", "size": 17_000, "w": 1000, "h": 1000}),
    ("one pixel over as file", {"width": 1001, "height": 1000}, 1_000_000, "m.file",
     {"mimetype": "image/png", "size": 17_000}),
    ("pdf stays a file", {"mimetype": "application/pdf", "filename": "a.pdf"}, 40_000_000,
     "m.file", {"mimetype": "application/pdf", "size": 17_000}),
]


@pytest.mark.parametrize(
    ("fields", "limit", "msgtype", "info"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_delivery_content(fields: dict[str, Any], limit: int, msgtype: str,
                          info: dict[str, Any]) -> None:
    """Images over the pixel limit (or unmeasured) go out as m.file without dimensions."""
    offer = make_offer(**fields)
    content = delivery_content(offer, "mxc://hs/new", None, limit)
    assert content["msgtype"] == msgtype
    assert content["info"] == info
    assert content["url"] == "mxc://hs/new"
    assert shown_inline(offer, limit) is (msgtype == "m.image")
