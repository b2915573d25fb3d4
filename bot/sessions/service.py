"""Sessions: opening on invite, the ordered per-session work queue, the text relay, closing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from nio import AsyncClient, ErrorResponse, RoomCreateResponse, RoomPreset

from bot import render
from bot.attachments.text import strip_invisible
from bot.config import Config
from bot.matrix.client import MatrixError, Sender
from bot.matrix.rooms import RoomDirectory
from bot.metrics import Metrics
from bot.sessions.naming import disambiguate
from bot.store import Job, Session, SessionState, Side, Store
from bot.tasks import TaskGroup

if TYPE_CHECKING:
    from bot.attachments.offers import OfferService

logger = logging.getLogger(__name__)

MAX_JOB_ATTEMPTS = 6


def server_of(user_id: str) -> str:
    """The homeserver name part of a user id."""
    return user_id.split(":", 1)[1] if ":" in user_id else ""


class SessionService:
    """Owns sessions: every action on one session runs in order through its job queue."""

    def __init__(
        self,
        config: Config,
        store: Store,
        client: AsyncClient,
        sender: Sender,
        rooms: RoomDirectory,
        tasks: TaskGroup,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics or Metrics()
        self._config = config
        self._store = store
        self._client = client
        self._sender = sender
        self._rooms = rooms
        self._tasks = tasks
        self._wakeups: dict[int, asyncio.Event] = {}
        self.offers: OfferService | None = None  # set by the composition root
        self._job_kinds: dict[str, Callable[[Session, dict[str, Any]], Awaitable[None]]] = {
            "open": self._run_open,
            "send": self._run_send,
            "close": self._run_close,
        }

    @property
    def own_user_id(self) -> str:
        """The bot's user id."""
        return self._config.user_id

    def is_agent(self, user_id: str) -> bool:
        """Whether ``user_id`` is a configured agent (by id, never by name)."""
        return user_id in self._config.agents.users

    # -- naming ---------------------------------------------------------------------------

    def label(self, session: Session, side: Side, user_id: str) -> str:
        """How ``user_id`` (writing in ``side``'s room) is named toward the other side."""
        room_id = session.room_of(side) or session.customer_room
        name = self._rooms.display_name(room_id, user_id)
        others: dict[str, str] = {}
        for room in (session.customer_room, session.agent_room):
            if room:
                others.update(self._rooms.names_in(room))
        others.pop(self.own_user_id, None)
        agent_names = [
            self._rooms.display_name(session.agent_room, agent)
            for agent in self._config.agents.users
            if session.agent_room and agent != user_id
        ]
        is_agent = self.is_agent(user_id)
        shown = disambiguate(
            user_id, name, others, agent_names, self._config.agents.label, is_agent
        )
        if side is Side.AGENT:
            return render.agent_label(shown, self._config.agents.label)
        return shown

    # -- opening --------------------------------------------------------------------------

    async def on_invite(self, room_id: str, inviter: str) -> None:
        """A user invited the bot: open a session unless the invite should not open one."""
        found = self._store.session_for_room(room_id)
        if found is not None:
            session, side = found
            if side is Side.AGENT or session.state is not SessionState.CLOSED:
                return  # one of our rooms already, or an invite seen again before the join
        if inviter == self.own_user_id:
            return
        if self.is_agent(inviter):
            logger.info("ignoring invite to %s from agent %s", room_id, inviter)
            await self._client.room_leave(room_id)
            return
        allowed = self._config.allowed_servers
        if allowed and server_of(inviter) not in allowed:
            logger.info("refusing invite to %s from %s: server not allowed", room_id, inviter)
            # Telling them needs the room from a later sync: not inline in this one.
            self._tasks.spawn(self._refuse(room_id, inviter), name=f"refuse-{room_id}")
            return
        name = await self._profile_name(inviter)
        session, created = self._store.create_session(room_id, inviter, name)
        if created:
            self._metrics.session_opened()
            logger.info("session %d opened for %s in %s", session.id, inviter, room_id)
        self._store.enqueue(session.id, "open", {})
        self.wake(session.id)

    async def _refuse(self, room_id: str, inviter: str) -> None:
        joined = await self._client.join(room_id)
        if isinstance(joined, ErrorResponse):
            return
        try:
            await self._rooms.ready(room_id, timeout=30)
            notice = render.Message(
                "Sorry, this support service is not available to accounts on "
                f"{server_of(inviter)}."
            )
            await self._sender.send(room_id, notice.content(), txn_id=f"refuse-{room_id}")
        except (TimeoutError, MatrixError) as exc:
            logger.warning("could not tell %s why the invite was refused: %s", inviter, exc)
        await self._client.room_leave(room_id)

    async def _profile_name(self, user_id: str) -> str:
        response = await self._client.get_displayname(user_id)
        name = getattr(response, "displayname", None)
        if isinstance(name, str):
            cleaned = " ".join(strip_invisible(name).split())[:64]
            if cleaned:
                return cleaned
        return user_id.split(":", 1)[0].lstrip("@")

    async def _run_open(self, session: Session, payload: dict[str, Any]) -> None:
        joined = await self._client.join(session.customer_room)
        if isinstance(joined, ErrorResponse):
            raise MatrixError(f"could not join {session.customer_room}: {joined.message}")
        if session.agent_room is None:
            session = await self._create_agent_room(session)
        assert session.agent_room is not None
        await self._rooms.ready(session.customer_room)
        await self._rooms.ready(session.agent_room)
        await self._sender.send(
            session.customer_room,
            render.welcome(self._config.messages.welcome).content(),
            txn_id=f"session-{session.id}-welcome",
        )
        await self._sender.send(
            session.agent_room,
            render.session_opened_for_agents(
                session.customer_name, session.customer_id, session.id
            ).content(),
            txn_id=f"session-{session.id}-opened",
        )

    async def _create_agent_room(self, session: Session) -> Session:
        # Someone let in later (and removed by the bot) must not read the chat so far.
        initial_state: list[dict[str, Any]] = [
            {
                "type": "m.room.history_visibility",
                "state_key": "",
                "content": {"history_visibility": "invited"},
            }
        ]
        if self._config.encryption and self._config.agents.room_encryption:
            initial_state.append(
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            )
        name = self._config.messages.agent_room_name.format(
            customer=session.customer_name, session=session.id
        )
        response = await self._client.room_create(
            name=name,
            topic=f"Parcel session #{session.id} with {session.customer_id}",
            invite=list(self._config.agents.users),
            preset=RoomPreset.private_chat,
            initial_state=initial_state,
        )
        if not isinstance(response, RoomCreateResponse):
            raise MatrixError(f"could not create the agent room: {response.message}")
        logger.info("session %d: agent room %s created", session.id, response.room_id)
        return self._store.attach_agent_room(session.id, response.room_id)

    # -- the queue --------------------------------------------------------------------------

    def enqueue_send(
        self,
        session: Session,
        to_side: Side,
        content: dict[str, Any],
        txn_id: str,
        handled_event: str | None = None,
    ) -> None:
        """Queue a message for one side's room, in order with the session's other work."""
        payload = {"side": to_side.value, "content": content, "txn_id": txn_id}
        self._store.enqueue(session.id, "send", payload, handled_event)
        self.wake(session.id)

    def wake(self, session_id: int) -> None:
        """Make sure the session's worker runs."""
        event = self._wakeups.get(session_id)
        if event is None:
            event = self._wakeups[session_id] = asyncio.Event()
            self._tasks.spawn(self._worker(session_id, event), name=f"session-{session_id}")
        event.set()

    def resume(self) -> None:
        """Restart the workers of sessions with queued work (after a restart)."""
        for session_id in self._store.sessions_with_jobs():
            self.wake(session_id)

    async def _worker(self, session_id: int, wakeup: asyncio.Event) -> None:
        try:
            while True:
                job = self._store.next_job(session_id)
                if job is None:
                    wakeup.clear()
                    if self._store.next_job(session_id) is None:
                        await wakeup.wait()
                    continue
                await self._run_job(job)
        finally:
            self._wakeups.pop(session_id, None)

    async def _run_job(self, job: Job) -> None:
        session = self._store.get_session(job.session_id)
        handler = self._job_kinds.get(job.kind)
        if handler is None:
            logger.error("session %d: unknown job kind %r dropped", job.session_id, job.kind)
            self._store.finish_job(job.id)
            return
        try:
            await handler(session, job.payload)
        except (MatrixError, TimeoutError, OSError) as exc:
            self._store.count_attempt(job.id)
            if job.attempts + 1 >= MAX_JOB_ATTEMPTS:
                logger.error("session %d: giving up on %s job %d: %s", session.id, job.kind,
                             job.id, exc)
                self._store.finish_job(job.id)
            else:
                delay = min(2.0 ** job.attempts, 30.0)
                logger.warning("session %d: %s job %d failed (%s); retrying in %.0f s",
                               session.id, job.kind, job.id, exc, delay)
                await asyncio.sleep(delay)
            return
        self._store.finish_job(job.id)

    async def _run_send(self, session: Session, payload: dict[str, Any]) -> None:
        room_id = session.room_of(Side(payload["side"]))
        if room_id is None:
            raise MatrixError(f"session {session.id} has no agent room yet")
        await self._rooms.ready(room_id)
        await self._sender.send(room_id, payload["content"], txn_id=payload["txn_id"])

    # -- closing ------------------------------------------------------------------------------

    def request_close(
        self, session: Session, reason: str, by: str | None, handled_event: str | None
    ) -> None:
        """Queue the end of a session (after the work already queued for it)."""
        payload = {"reason": reason, "by": by}
        self._store.enqueue(session.id, "close", payload, handled_event)
        self.wake(session.id)

    async def _run_close(self, session: Session, payload: dict[str, Any]) -> None:
        reason, by = payload["reason"], payload.get("by")
        if self._store.close_session(session.id, reason):
            self._metrics.session_closed()
        if self.offers is not None:
            await self.offers.expire_session(session.id, "the chat ended")
        if self._config.retention.redact_delivered_on_close:
            await self._redact_deliveries(session)
        notice = render.session_closed(by, reason)
        for room_id in (session.customer_room, session.agent_room):
            if room_id is None:
                continue
            if room_id == session.customer_room and reason == "customer_left":
                continue
            try:
                await self._sender.send(
                    room_id, notice.content(), txn_id=f"session-{session.id}-closed-{room_id}"
                )
            except MatrixError as exc:
                logger.warning("session %d: could not post the closing notice: %s", session.id,
                               exc)
        # Leaving the customer room lets their client start a fresh chat next time.
        await self._client.room_leave(session.customer_room)
        logger.info("session %d closed (%s)", session.id, reason)

    async def _redact_deliveries(self, session: Session) -> None:
        """Remove delivered files from the chat when it ends (images in-line only while live)."""
        for offer in self._store.session_offers(session.id):
            if offer.delivery_event_id is None:
                continue
            room_id = session.room_of(
                Side.AGENT if offer.direction.value == "customer_to_agent" else Side.CUSTOMER
            )
            if room_id is None:
                continue
            try:
                await self._sender.redact(room_id, offer.delivery_event_id, "the chat ended",
                                          txn_id=f"offer-{offer.id}-redact")
            except MatrixError as exc:
                logger.warning("offer %d (session %d): could not redact the delivered file: %s",
                               offer.id, session.id, exc)
