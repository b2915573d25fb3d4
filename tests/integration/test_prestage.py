"""Pre-staged deliveries on a real Synapse: the recipient's copy goes up while the offer waits."""

from __future__ import annotations

import asyncio

import aiohttp
from nio import RoomPutStateResponse

from bot.attachments.model import Offer, OfferState
from bot.attachments.staging import thumbnail_uri
from tests import samples
from tests.chat import barrier
from tests.conftest import Chat
from tests.faulty_proxy import FaultyProxy
from tests.helpers import wait_for

ACCEPT, DECLINE = "\u2705", "\u274c"
# Uploads go to a reserved URI (PUT .../upload/{server}/{id}); a plain POST where none is granted.
UPLOAD = r"/_matrix/media/v3/upload(/|$)"
DOWNLOAD = r"/_matrix/client/v1/media/download/"


async def the_offer(chat: Chat) -> Offer:
    """The single offer of the chat's session, from the bot's store."""
    parcel = chat.bot.parcel
    assert parcel is not None and parcel.store is not None
    session = (await parcel.store.sessions.sessions())[-1]
    [offer] = await parcel.store.offers.session_offers(session.id)
    return offer


async def is_staged(chat: Chat) -> bool:
    """Whether the offer's copy for the recipient is uploaded."""
    return (await the_offer(chat)).staged_uri is not None


async def is_unstaged(chat: Chat) -> bool:
    """Whether the offer has no staged copy (any more)."""
    return (await the_offer(chat)).staged_uri is None


def uploads(proxy: FaultyProxy) -> int:
    """How many uploads the bot started through the proxy (to reserved URIs or not)."""
    return proxy.count("PUT", UPLOAD) + proxy.count("POST", UPLOAD)


async def _media_status(chat: Chat, uri: str) -> int:
    """The HTTP status the homeserver answers for downloading ``uri`` as the customer."""
    server, media_id = uri.removeprefix("mxc://").split("/", 1)
    url = f"{chat.homeserver.url}/_matrix/client/v1/media/download/{server}/{media_id}"
    headers = {"Authorization": f"Bearer {chat.customer.user.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status


async def test_accept_before_staging_is_done_delivers_once(start_chat, homeserver) -> None:
    """A ✅ given while the staged upload is still crawling waits for it: one upload by the
    bot, one delivery, the inspected bytes."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, policy={"max_size": "20MB"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.noise(6 * 1024 * 1024, seed=5)
        proxy.rate = 2 * 1024 * 1024  # the bot's transfers take seconds from here on
        proxy.upload_rate = 512 * 1024  # the staging upload, following the download, lags
        await agent.send_file(chat.agent_room, data, "report.bin", "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "report.bin"),
                             "the offer card", timeout=60)
        card = customer.offer_named(chat.customer_room, "report.bin")
        assert card is not None
        assert (await the_offer(chat)).staged_uri is None, (
            "staging finished before the ✅ could race it")
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the delivery", timeout=60)
        proxy.rate = proxy.upload_rate = None
        await barrier(customer, chat.customer_room, agent, chat.agent_room)
        delivered = customer.deliveries(chat.customer_room, chat.bot_id)
        assert len(delivered) == 1
        assert await customer.download(delivered[0]["content"]) == data
        assert uploads(proxy) == 1
        assert delivered[0]["content"]["url"] == (await the_offer(chat)).staged_uri


async def test_decline_deletes_the_staged_copy(start_chat) -> None:
    """With admin rights the bot deletes the staged copy of a declined file; nothing in the
    recipient's room ever references it."""
    chat: Chat = await start_chat(bot_admin=True)
    await chat.open_session()
    agent, customer = chat.agent, chat.customer
    await agent.send_file(chat.agent_room, samples.pdf(), "terms.pdf", "application/pdf")
    await customer.until(lambda: customer.offer_named(chat.customer_room, "terms.pdf"),
                         "the offer card")
    await wait_for(lambda: is_staged(chat), what="the staged copy")
    staged = (await the_offer(chat)).staged_uri
    assert staged is not None and await _media_status(chat, staged) == 200
    card = customer.offer_named(chat.customer_room, "terms.pdf")
    assert card is not None
    await customer.react(chat.customer_room, card["event_id"], DECLINE)
    offer_id = (await the_offer(chat)).id
    await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "declined",
                      "the declined status line")
    await wait_for(lambda: is_unstaged(chat), what="the staged copy dropped")
    assert await _media_status(chat, staged) == 404
    assert not any(staged in str(e.get("content")) for e in customer.events[chat.customer_room])


async def test_a_room_encrypted_after_staging_gets_an_encrypted_delivery(start_chat) -> None:
    """The customer turns on encryption after the copy was staged in the clear: the ✅
    delivers a freshly staged, encrypted copy (and thumbnail) that the customer decrypts; the
    plain copy and its thumbnail are deleted, not orphaned."""
    chat: Chat = await start_chat(encrypted=True, bot_admin=True)
    await chat.open_session(encrypted=False)
    agent, customer = chat.agent, chat.customer
    image = samples.png(1000, 750)  # larger than a thumbnail: one is made and staged
    await agent.send_file(chat.agent_room, image, "map.png", "image/png", "m.image")
    await customer.until(lambda: customer.offer_named(chat.customer_room, "map.png"),
                         "the offer card")
    await wait_for(lambda: is_staged(chat), what="the staged copy")
    plain_copy = (await the_offer(chat)).staged_uri
    plain_thumbnail = thumbnail_uri((await the_offer(chat)).image_info)
    assert plain_copy is not None and not (await the_offer(chat)).staged_encrypted
    assert plain_thumbnail is not None and await _media_status(chat, plain_thumbnail) == 200
    # Once staged, no copy of the file is kept on the bot's disk.
    assert (await the_offer(chat)).temp_path is None
    assert list((chat.bot.config.data_dir / "media").iterdir()) == []
    turned_on = await customer.client.room_put_state(
        chat.customer_room, "m.room.encryption", {"algorithm": "m.megolm.v1.aes-sha2"})
    assert isinstance(turned_on, RoomPutStateResponse), turned_on
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    card = customer.offer_named(chat.customer_room, "map.png")
    assert card is not None
    await customer.react(chat.customer_room, card["event_id"], ACCEPT)
    await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                         "the encrypted delivery", timeout=60)
    [delivered] = customer.deliveries(chat.customer_room, chat.bot_id)
    assert "file" in delivered["content"] and "url" not in delivered["content"]
    assert delivered["content"]["file"]["url"] != plain_copy
    assert await customer.download(delivered["content"]) == image
    assert "thumbnail_file" in delivered["content"]["info"]
    assert await _media_status(chat, plain_copy) == 404
    assert await _media_status(chat, plain_thumbnail) == 404


async def test_a_crash_between_staging_and_recording_delivers_once(start_chat) -> None:
    """Killed right after the staged upload, before it was recorded: after the restart the
    bytes are found at the URI reserved (and recorded) before the upload, not uploaded again,
    and the ✅ delivers exactly one file."""
    chat: Chat = await start_chat(as_process=True, bot_admin=True)
    await chat.open_session()
    await chat.bot.stop()
    await chat.bot.start(failpoint="delivery-staged")
    agent, customer = chat.agent, chat.customer
    data = samples.pdf()
    await agent.send_file(chat.agent_room, data, "contract.pdf", "application/pdf")
    await chat.bot.wait_killed()
    await chat.bot.start()
    await customer.until(lambda: customer.offer_named(chat.customer_room, "contract.pdf"),
                         "the offer card after the restart")
    card = customer.offer_named(chat.customer_room, "contract.pdf")
    assert card is not None
    await customer.react(chat.customer_room, card["event_id"], ACCEPT)
    await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                         "the delivery")
    await barrier(customer, chat.customer_room, agent, chat.agent_room)
    delivered = customer.deliveries(chat.customer_room, chat.bot_id)
    assert len(delivered) == 1
    assert await customer.download(delivered[0]["content"]) == data
    assert await _bot_media(chat) == 1, "the copy was uploaded again after the restart"
    assert "has its bytes already; reading them back" in chat.bot.log_path.read_text()


async def test_without_prestage_the_copy_is_uploaded_on_accept(start_chat, homeserver) -> None:
    """media.prestage: false keeps upload-on-✅: nothing is uploaded while the offer waits."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, media={"prestage": False})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.pdf()
        await agent.send_file(chat.agent_room, data, "plain.pdf", "application/pdf")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "plain.pdf"),
                             "the offer card")
        await barrier(agent, chat.agent_room, customer, chat.customer_room)
        assert uploads(proxy) == 0 and (await the_offer(chat)).staged_uri is None
        card = customer.offer_named(chat.customer_room, "plain.pdf")
        assert card is not None
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the delivery")
        assert uploads(proxy) == 1
        [delivered] = customer.deliveries(chat.customer_room, chat.bot_id)
        assert await customer.download(delivered["content"]) == data


async def test_the_copy_is_staged_from_the_download_stream(start_chat, homeserver) -> None:
    """The recipient's copy goes up while the file still comes down (one upload in all), and
    the ✅ delivers that copy: the inspected bytes."""
    async with FaultyProxy(homeserver.url) as proxy:
        # Following the download is for large files; here a small one stands in for them.
        chat: Chat = await start_chat(homeserver=proxy.url, policy={"max_size": "20MB"},
                                      media={"follow_download_from": "1MB"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.noise(4 * 1024 * 1024, seed=11)
        proxy.rate = 2 * 1024 * 1024  # the download takes seconds: room to overlap
        await agent.send_file(chat.agent_room, data, "stream.bin", "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "stream.bin"),
                             "the offer card", timeout=60)
        await wait_for(lambda: is_staged(chat), timeout=60,
                       what="the staged copy")
        proxy.rate = None
        upload_start = proxy.position("start", "PUT", UPLOAD)
        download_end = proxy.position("end", "GET", DOWNLOAD)
        assert upload_start is not None and download_end is not None
        assert upload_start < download_end, "the staging upload waited for the download"
        card = customer.offer_named(chat.customer_room, "stream.bin")
        assert card is not None
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the delivery", timeout=60)
        [delivered] = customer.deliveries(chat.customer_room, chat.bot_id)
        assert delivered["content"]["url"] == (await the_offer(chat)).staged_uri
        assert await customer.download(delivered["content"]) == data
        assert uploads(proxy) == 1


async def _bot_media(chat: Chat) -> int:
    """How many media items the homeserver keeps from the bot (admin API, bot's token)."""
    url = f"{chat.homeserver.url}/_synapse/admin/v1/users/{chat.bot_id}/media"
    headers = {"Authorization": f"Bearer {chat.bot_user.access_token}"}
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return int((await response.json())["total"])


async def test_a_refused_file_leaves_no_staged_copy(start_chat, homeserver) -> None:
    """A program refused after it came down: the staging upload that followed the download
    is abandoned before its end, so the homeserver keeps nothing of it."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, bot_admin=True,
                                      policy={"max_size": "20MB"},
                                      media={"follow_download_from": "1MB"})
        await chat.open_session()
        agent = chat.agent
        program = samples.elf_program() + samples.noise(3 * 1024 * 1024, seed=3)
        proxy.rate = 2 * 1024 * 1024
        await agent.send_file(chat.agent_room, program, "tool.bin", "application/octet-stream")
        store = chat.bot.parcel.store

        async def settled_rejection() -> bool:
            session = (await store.sessions.sessions())[-1]
            offers = await store.offers.session_offers(session.id)
            return bool(offers) and offers[0].state is OfferState.REJECTED \
                and await store.offers.is_settled(offers[0].id)

        await wait_for(settled_rejection, timeout=60, what="the rejection")
        proxy.rate = None
        assert proxy.position("start", "PUT", UPLOAD) is not None, "no staging was tried"
        assert proxy.position("end", "PUT", UPLOAD) is None
        assert (await the_offer(chat)).staged_uri is None
        await barrier(agent, chat.agent_room, chat.customer, chat.customer_room)
        assert await _bot_media(chat) == 0


async def _no_work_left(chat: Chat) -> bool:
    """Whether the bot's work table is empty (every unit done, none retrying)."""
    return not await chat.bot.parcel.store.work.work_units()


async def test_a_decline_during_staging_leaves_nothing_behind(start_chat, homeserver) -> None:
    """A ❌ while the recipient's copy is still going up stops the staging: the declined
    offer settles with no staged copy, no key and no reservation in its row, and the
    homeserver keeps nothing of the bot's."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, bot_admin=True,
                                      policy={"max_size": "20MB"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.noise(6 * 1024 * 1024, seed=7)
        proxy.rate = 2 * 1024 * 1024
        proxy.upload_rate = 256 * 1024  # staging takes far longer than the decision
        await agent.send_file(chat.agent_room, data, "draft.bin", "application/octet-stream")
        await customer.until(lambda: customer.offer_named(chat.customer_room, "draft.bin"),
                             "the offer card", timeout=60)
        assert (await the_offer(chat)).staged_uri is None, "staging finished before the ❌"
        card = customer.offer_named(chat.customer_room, "draft.bin")
        assert card is not None
        await customer.react(chat.customer_room, card["event_id"], DECLINE)
        offer_id = (await the_offer(chat)).id
        store = chat.bot.parcel.store

        async def settled() -> bool:
            return await store.offers.is_settled(offer_id)

        await wait_for(settled, timeout=60, what="the declined offer settled")
        proxy.rate = proxy.upload_rate = None
        await agent.until(lambda: agent.offer_state(chat.agent_room, offer_id) == "declined",
                          "the declined status line")
        offer = await the_offer(chat)
        assert offer.state is OfferState.DECLINED
        assert offer.staged_uri is None and offer.staged_file is None
        assert offer.copy_reservation is None and offer.thumbnail_reservation is None
        assert offer.temp_path is None
        assert proxy.position("end", "PUT", UPLOAD) is None, "the staging upload finished"
        await wait_for(lambda: _no_work_left(chat), what="no work left")
        assert await _bot_media(chat) == 0
        assert list((chat.bot.config.data_dir / "media").iterdir()) == []


async def test_a_staging_failure_fails_the_offer_and_tells_the_sender(start_chat,
                                                                      homeserver) -> None:
    """The homeserver refuses the bot's uploads for good while the offer waits: the offer
    ends FAILED, the sender is told, it settles, and no work is left retrying."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url)
        await chat.open_session()
        agent = chat.agent
        proxy.fail("POST", r"/_matrix/media/v1/create$", times=100, how="403")
        proxy.fail("POST", r"/_matrix/media/v3/upload$", times=100, how="403")
        await agent.send_file(chat.agent_room, samples.pdf(), "offer.pdf", "application/pdf")
        await agent.until(
            lambda: any("offer.pdf could not be offered" in body
                        for body in agent.bodies(chat.agent_room, chat.bot_id)),
            "the failure told to the sender", timeout=60)
        offer = await the_offer(chat)
        assert offer.state is OfferState.FAILED
        await wait_for(lambda: chat.bot.parcel.store.offers.is_settled(offer.id),
                       what="the failed offer settled")
        await wait_for(lambda: _no_work_left(chat), what="no work left")
        assert offer.copy_reservation is None and offer.staged_uri is None


async def test_a_stop_during_staging_ends_its_tasks_and_the_restart_delivers_once(
        start_chat, homeserver) -> None:
    """Stopped while the copy follows the download up: no staging task outlives the bot;
    started again, the offer's unit stages the copy and the ✅ delivers it once, intact."""
    async with FaultyProxy(homeserver.url) as proxy:
        chat: Chat = await start_chat(homeserver=proxy.url, policy={"max_size": "20MB"})
        await chat.open_session()
        agent, customer = chat.agent, chat.customer
        data = samples.noise(3 * 1024 * 1024, seed=13)
        proxy.rate = 1024 * 1024
        proxy.upload_rate = 256 * 1024
        await agent.send_file(chat.agent_room, data, "slow.bin", "application/octet-stream")

        async def following() -> bool:
            return proxy.position("start", "PUT", UPLOAD) is not None

        await wait_for(following, timeout=60, what="the staging upload under way")
        await chat.bot.stop()
        left = [task.get_name() for task in asyncio.all_tasks()
                if task.get_name().startswith("offer-") and not task.done()]
        assert left == [], f"tasks outlived the bot: {left}"
        proxy.rate = proxy.upload_rate = None
        await chat.bot.start()
        await customer.until(lambda: customer.offer_named(chat.customer_room, "slow.bin"),
                             "the offer card", timeout=60)
        await wait_for(lambda: is_staged(chat), timeout=60, what="the staged copy")
        card = customer.offer_named(chat.customer_room, "slow.bin")
        assert card is not None
        await customer.react(chat.customer_room, card["event_id"], ACCEPT)
        await customer.until(lambda: customer.deliveries(chat.customer_room, chat.bot_id),
                             "the delivery", timeout=60)
        await barrier(customer, chat.customer_room, agent, chat.agent_room)
        [delivered] = customer.deliveries(chat.customer_room, chat.bot_id)
        assert await customer.download(delivered["content"]) == data
        offer = await the_offer(chat)
        assert offer.copy_reservation is None and delivered["content"]["url"] == offer.staged_uri
