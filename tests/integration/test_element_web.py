"""A real customer in Element Web (headless Chromium): an agent's image offer, ✅, in-line image.

Needs ``../shared/element-web``, Debian's ``chromium`` and npm ``playwright-core`` (all installed
by ``.ci/setup.sh``). Outside CI it is skipped only when ``../shared`` is absent; in CI (and
wherever ``../shared`` exists) anything missing is a failure, not a skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.devserver import unique_localpart
from tests import samples
from tests.browser import element
from tests.chat import OFFER_KEY, BotRunner, Person, bot_config

pytestmark = pytest.mark.timeout(240)

# A long name, as cameras and scanners make them: the table must still fit.
LONG_NAME = "network-diagram-for-the-second-floor-router-and-the-modem-2026-11-24.png"


def _fits(lines: list[str]) -> dict[int, tuple[int, int]]:
    """The browser's "FIT <window width> <table width> <container width>" lines."""
    fits = {}
    for line in lines:
        if line.startswith("FIT "):
            width, table, container = (int(part) for part in line.split()[1:4])
            fits[width] = (table, container)
    return fits


def _skip_or_fail() -> None:
    """Skip only outside CI when ../shared is absent; otherwise name what is missing."""
    if not element.ELEMENT_DIR.parent.exists() and os.environ.get("CI") != "true":
        pytest.skip("../shared is absent (outside CI)")
    problems = element.missing()
    if problems:
        pytest.fail("the browser test needs: " + ", ".join(problems)
                    + " (run bash .ci/setup.sh)")


async def test_customer_in_element_accepts_an_image_and_sees_it_inline(
    homeserver, make_user, make_client, tmp_path: Path
) -> None:
    """A customer logs in to Element Web, starts a chat with the bot, clicks ✅ on the agent's
    image offer, sees the image in-line and the activity panel saying 📎, and the table
    ``!attachments`` answers with fits the timeline from a phone's width to 1440 px."""
    _skip_or_fail()
    bot_user = await make_user("parcel", displayname="Parcel")
    agent_user = await make_user("alice", displayname="Alice")
    customer_user = await homeserver.register(unique_localpart("carol"), displayname="Carol")
    agent = Person(await make_client(agent_user, encrypted=True), agent_user)
    config = bot_config(homeserver, bot_user, [agent_user.user_id], tmp_path / "bot",
                        agents={"room_encryption": True})
    bot = BotRunner(config)
    await bot.start()
    try:
        async with element.element_web(homeserver.url, homeserver.server_name,
                                       tmp_path.parent / "element-web-cache") as url:
            customer = await element.Customer.start(
                url, customer_user.localpart, customer_user.password, bot_user.user_id,
                fail_shot=Path(os.environ.get("PARCEL_BROWSER_FAIL_SHOT",
                                              tmp_path / "failure.png")),
            )
            try:
                await customer.until_step("logged-in", timeout=90)
                agent_room = await agent.accept_invite("the agent room invite", timeout=90)
                await customer.until_step("chat-open", timeout=90)
                image = samples.png(320, 200, "teal")
                await agent.send_file(agent_room, image, LONG_NAME, "image/png", "m.image",
                                      encrypt=True)
                await customer.until_step("offer-shown", timeout=60)
                assert await customer.finish(timeout=90) == 0, "".join(customer.lines)
                fits = _fits(customer.lines)
            finally:
                await customer.close()
        store = bot.parcel.store
        [session] = await store.sessions.sessions()
        [offer] = await store.offers.session_offers(session.id)
        assert offer.state.value == "accepted" and offer.delivery_event_id is not None
        assert offer.decided_by == customer_user.user_id
        await agent.until(lambda: agent.offer_state(agent_room, offer.id) == "accepted",
                          "the agent's status line edited to accepted")
        assert [e["content"][OFFER_KEY]["number"] for e in agent.offers(agent_room)] == [1]
        # !attachments' table fits the timeline at every width measured (no column cut off).
        assert sorted(fits) == sorted(element.FIT_WIDTHS), customer.lines
        for width, (table, container) in fits.items():
            assert table <= container, (
                f"at {width} px the table is {table} px wide in a {container} px timeline\n"
                + "".join(customer.lines))
    finally:
        await bot.stop()
