"""The delivered file's message: in-line images only when clients can afford to decode them."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.attachments.delivery import delivery_content, shown_inline, staged_delivery_content
from bot.attachments.model import Direction, Offer, OfferState
from bot.attachments.staging import thumbnail_uri


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


THUMB_BLOCK = {"url": "mxc://hs/thumb-enc", "v": "v2"}
FILE_BLOCK = {"url": "mxc://hs/copy-enc", "v": "v2"}

# (id, the staged offer's fields, the delivery's url / file, its extra info)
STAGED_CASES: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any]]] = [
    ("plain copy", {"staged_uri": "mxc://hs/copy"}, {"url": "mxc://hs/copy"}, {}),
    ("encrypted copy", {"staged_uri": "mxc://hs/copy-enc", "staged_file": json.dumps(FILE_BLOCK)},
     {"file": FILE_BLOCK}, {}),
    ("image extras", {"staged_uri": "mxc://hs/copy", "width": 64, "height": 48,
                      "image_info": json.dumps({"thumbnail_url": "mxc://hs/thumb",
                                                "xyz.amorgan.blurhash": "LEHV6n"})},
     {"url": "mxc://hs/copy"},
     {"thumbnail_url": "mxc://hs/thumb", "xyz.amorgan.blurhash": "LEHV6n", "w": 64, "h": 48}),
    ("metadata removed: smaller", {"staged_uri": "mxc://hs/copy", "delivered_size": 16_000},
     {"url": "mxc://hs/copy"}, {"size": 16_000}),
]


@pytest.mark.parametrize(
    ("fields", "where", "extra"),
    [pytest.param(*case[1:], id=case[0]) for case in STAGED_CASES],
)
def test_staged_delivery_content(fields: dict[str, Any], where: dict[str, Any],
                                 extra: dict[str, Any]) -> None:
    """The delivery points at the staged copy (plain URL or encrypted file block) and carries
    the image extras made while staging."""
    content = staged_delivery_content(make_offer(**fields), 40_000_000)
    for key, value in where.items():
        assert content[key] == value
    assert ("url" in content) is ("url" in where) and ("file" in content) is ("file" in where)
    for key, value in extra.items():
        assert content["info"][key] == value


# (id, recorded image extras, the thumbnail's URI)
THUMBNAIL_CASES: list[tuple[str, str | None, str | None]] = [
    ("none recorded", None, None),
    ("blurhash only", json.dumps({"xyz.amorgan.blurhash": "LEHV6n"}), None),
    ("plain thumbnail", json.dumps({"thumbnail_url": "mxc://hs/thumb"}), "mxc://hs/thumb"),
    ("encrypted thumbnail", json.dumps({"thumbnail_file": THUMB_BLOCK}), "mxc://hs/thumb-enc"),
]


@pytest.mark.parametrize(("image_info", "uri"), [pytest.param(*c[1:], id=c[0])
                                                 for c in THUMBNAIL_CASES])
def test_the_thumbnail_of_a_staged_copy_is_found_to_be_deleted(image_info: str | None,
                                                               uri: str | None) -> None:
    """A replaced or refused staged copy's thumbnail is found in its recorded extras."""
    assert thumbnail_uri(image_info) == uri
