"""What people wait for goes first: the order of the bot's requests, seen through a proxy.

The bot talks to the real Synapse through :class:`~tests.faulty_proxy.FaultyProxy`, which
logs every request's start and end; the bot's transaction ids (in the request paths) say
which request was which: ``offer-N-card``, ``offer-N-status``, ``offer-N-react-accept``,
``offer-N-deliver``, ``offer-N-accepted-card`` and so on, ``session-N-panel-…`` for panels.
"""

from __future__ import annotations

import re
from collections import defaultdict

from bot.attachments.model import OfferState
from tests import samples
from tests.chat import barrier
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy
from tests.helpers import wait_for
from tests.integration.test_prestage import UPLOAD, the_offer

ACCEPT = "\u2705"
SEND = r"/_matrix/client/v3/rooms/[^/]+/(send|redact)/"
CREATE = r"/_matrix/media/v1/create"


def _index(proxy: FaultyProxy, kind: str, path_regex: str, method: str = "PUT") -> int:
    found = proxy.position(kind, method, path_regex)
    assert found is not None, f"no {kind} of {method} {path_regex} in {proxy.log}"
    return found


def _bot_writes(proxy: FaultyProxy, start: int, end: int) -> list[str]:
    """The paths of the requests that write something (all but GETs) started in
    ``proxy.log[start:end]``."""
    return [path for kind, method, path in proxy.log[start:end]
            if kind == "start" and method != "GET"]


async def test_the_card_goes_first_and_the_file_before_the_bookkeeping(
        start_chat, homeserver) -> None:
    """From the verdict the card is the offer's first write and the status line its second;
    from a ✅ the delivered file is the next write, the edits and the seeds' redactions after
    it."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url)
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.noise(1024 * 1024, seed=23)
        await agent.send_file(chat.agent_room, data, "first.bin", "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "first.bin"),
                             "the offer card")
        card = customer.offer_named(chat.customer_room, "first.bin")
        assert card is not None
        await customer.until(lambda: len(customer.reactions_on(chat.customer_room,
                                                               card["event_id"])) >= 2,
                             "the bot's ✅ and ❌ under the card")
        await wait_for(lambda: _staged(chat), what="the staged copy")
        offer_id = (await the_offer(chat)).id

        download_end = _index(proxy, "end", r"/_matrix/client/v1/media/download/", "GET")
        card_start = _index(proxy, "start", rf"/offer-{offer_id}-card$")
        card_end = _index(proxy, "end", rf"/offer-{offer_id}-card$")
        # Between the verdict (after the download) and the card: no write of any kind.
        assert _bot_writes(proxy, download_end, card_start) == []
        # The status line is the next write after the card; seeds and staging after it.
        after_card = _bot_writes(proxy, card_end, len(proxy.log))
        assert re.search(rf"/offer-{offer_id}-status$", after_card[0]), after_card
        status_end = _index(proxy, "end", rf"/offer-{offer_id}-status$")
        for later in (rf"/offer-{offer_id}-react-accept$", rf"/offer-{offer_id}-react-decline$"):
            assert _index(proxy, "start", later) > status_end
        first_upload = min(i for i, (kind, method, path) in enumerate(proxy.log)
                           if kind == "start" and method in ("PUT", "POST")
                           and (re.search(UPLOAD, path) or re.search(CREATE, path)))
        assert first_upload > status_end, "the copy went up before the card and status line"

        mark = len(proxy.log)
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.offer_state(chat.customer_room, offer_id)
                             == "accepted", "the card's edit")
        await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "accepted",
                          "the status line's edit")
        await wait_for(lambda: _settled(chat, offer_id), what="the offer settled")
        await barrier(customer, chat.customer_room, agent, chat.agent_room)
        deliver_start = _index(proxy, "start", rf"/offer-{offer_id}-deliver$")
        deliver_end = _index(proxy, "end", rf"/offer-{offer_id}-deliver$")
        # From the ✅ to the file: the delivery is the only write.
        assert _bot_writes(proxy, mark, deliver_start) == []
        for step in ("accepted-card", "accepted-status", "unreact-accept", "unreact-decline"):
            assert _index(proxy, "start", rf"/offer-{offer_id}-{step}$") > deliver_end
        [delivered] = customer.deliveries(chat.customer_room, chat.bot_id)
        assert await customer.download(delivered["content"]) == data


async def test_a_decision_stops_the_seed_still_owed(start_chat, homeserver) -> None:
    """A ✅ given while the ❌ seed cannot get through: the ❌ seed is not tried again, the
    file is delivered, and only the ✅ seed (the one that went out) is taken back."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url)
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        # The first offer of the session is offer 1 in this bot's store.
        refused = proxy.fail("PUT", r"/offer-\d+-react-decline$", times=1000)
        await agent.send_file(chat.agent_room, samples.pdf(), "seed.pdf", "application/pdf")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "seed.pdf"),
                             "the offer card")
        card = customer.offer_named(chat.customer_room, "seed.pdf")
        assert card is not None
        await wait_for(lambda: refused.hits >= 1, what="the ❌ seed tried")
        offer_id = (await the_offer(chat)).id
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the delivery")
        await wait_for(lambda: _settled(chat, offer_id), what="the offer settled")
        tried = refused.hits
        await barrier(customer, chat.customer_room, agent, chat.agent_room)
        assert refused.hits == tried, "the ❌ seed was tried again after the ✅"
        assert proxy.count("PUT", rf"/offer-{offer_id}-unreact-accept$") == 1
        assert proxy.count("PUT", rf"/offer-{offer_id}-unreact-decline$") == 0
        assert proxy.count("PUT", rf"/offer-{offer_id}-deliver$") == 1


async def test_panel_edits_are_paced_and_wait_for_cards(start_chat, homeserver) -> None:
    """Under a burst of offers, each room's panel is written at most once a second, and no
    panel write starts while a card is on its way."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url)
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        names = [f"burst-{i}.pdf" for i in range(6)]
        for name in names:
            await agent.send_file(chat.agent_room, samples.pdf(), name, "application/pdf")
        for name in names:
            await customer.until(lambda n=name: customer.offer_named(chat.customer_room, n),
                                 f"the card for {name}", timeout=60)

        async def panels_caught_up() -> bool:
            store = chat.bot.parcel.store
            for room in (chat.customer_room, chat.agent_room):
                panel = await store.panels.get_panel(room)
                if panel is None or panel.shown_version < panel.version:
                    return False
            return True

        await wait_for(panels_caught_up, timeout=60, what="the panels caught up")
        panel_starts: dict[str, list[float]] = defaultdict(list)
        cards: list[tuple[int, int]] = []
        for index, (kind, method, path) in enumerate(proxy.log):
            if kind == "start" and method == "PUT" and "-panel-" in path:
                room = path.split("/rooms/")[1].split("/")[0]
                panel_starts[room].append(proxy.log_at[index])
            if kind == "start" and method == "PUT" and re.search(r"/offer-\d+-card$", path):
                cards.append((index, _index_after(proxy, index, path)))
        assert panel_starts, "no panel was written"
        for room, starts in panel_starts.items():
            gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
            assert all(gap >= 0.95 for gap in gaps), (room, gaps)
        for start, end in cards:
            during = [path for kind, method, path in proxy.log[start:end]
                      if kind == "start" and "-panel-" in path]
            assert during == [], f"a panel write started while a card was on its way: {during}"


def _index_after(proxy: FaultyProxy, start: int, path: str) -> int:
    """Where the request started at ``start`` ended in the proxy's log."""
    for index in range(start + 1, len(proxy.log)):
        if proxy.log[index] == ("end", "PUT", path):
            return index
    return len(proxy.log)


async def _staged(chat: Chat) -> bool:
    return (await the_offer(chat)).staged_uri is not None


async def _settled(chat: Chat, offer_id: int) -> bool:
    store = chat.bot.parcel.store
    offer = await store.offers.get_offer(offer_id)
    return (offer is not None and offer.state is OfferState.ACCEPTED
            and await store.offers.is_settled(offer_id))
