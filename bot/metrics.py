"""Prometheus metrics and the health endpoint.

:class:`Metrics` owns its own :class:`~prometheus_client.CollectorRegistry` (never the global
one, so several bots in one process, e.g. in tests, do not collide) and offers one small method
per thing the bot counts. The bot always keeps a ``Metrics`` object; :meth:`Metrics.serve`
exposes it over HTTP only when ``metrics.listen`` is configured:

* ``GET /metrics``: the text exposition format; with a token configured (``metrics.token``)
  only for requests carrying ``Authorization: Bearer <token>``, others get 401;
* ``GET /health``: 200 "ok" while the bot is healthy ("leader" or "standby" when instances
  share a PostgreSQL database); 503 "degraded: <reasons>" while a dependency fails (the
  database or the homeserver unreachable, a loop stalled) or "starting: …" before the first
  sync. Always open (load balancers and Kubernetes probes), and it says nothing more than that.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from enum import Enum

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

logger = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, str]]

# Offer → decision is a person's reaction time: seconds to a day (the default offer TTL).
DECISION_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 24 * 3600)
# Decision → delivered is download + re-encrypt + upload: sub-second to minutes.
DELIVERY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def _label(value: str | Enum) -> str:
    """A label value from a string or a string enum (``Direction``, ``OfferState``)."""
    return str(value.value) if isinstance(value, Enum) else str(value)


class Metrics:
    """Everything the bot counts, in one registry of its own.

    ``clock`` (monotonic seconds) is injectable for tests; the sync lag is measured from it.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._last_sync = clock()
        self._open_sessions = 0
        registry = self.registry
        self._sessions_open = Gauge(
            "parcel_sessions_open", "Sessions currently open.", registry=registry
        )
        self._sessions = Counter(
            "parcel_sessions", "Sessions opened since the bot started.", registry=registry
        )
        self._offers = Counter(
            "parcel_offers",
            "Offers that were made (state=offered) or reached a final state, by direction.",
            ("direction", "state"),
            registry=registry,
        )
        self._rejections = Counter(
            "parcel_rejections",
            "Files refused before being offered, by reason code (too_large, infected, ...).",
            ("reason",),
            registry=registry,
        )
        self._bytes_delivered = Counter(
            "parcel_bytes_delivered", "Bytes of accepted files delivered.", registry=registry
        )
        self._decision_seconds = Histogram(
            "parcel_offer_decision_seconds",
            "Time from an offer to the recipient's decision.",
            buckets=DECISION_BUCKETS,
            registry=registry,
        )
        self._delivery_seconds = Histogram(
            "parcel_delivery_seconds",
            "Time from an accept decision to the file being delivered.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )
        self._homeserver_errors = Counter(
            "parcel_homeserver_errors",
            "Failed homeserver requests, by kind (sync, send, upload, download, ...).",
            ("kind",),
            registry=registry,
        )
        self._homeserver_retries = Counter(
            "parcel_homeserver_retries",
            "Work units postponed after a transient homeserver failure, by kind of work.",
            ("kind",),
            registry=registry,
        )
        self._work_failed = Counter(
            "parcel_work_failed",
            "Work units ended by a permanent failure, by kind of work and cause.",
            ("kind", "code"),
            registry=registry,
        )
        self._backlog: Callable[[], tuple[int, float]] = lambda: (0, 0.0)
        self._work_waiting = Gauge(
            "parcel_work_units_waiting", "Work units waiting to run or to be retried.",
            registry=registry,
        )
        self._work_waiting.set_function(lambda: float(self._backlog()[0]))
        self._work_oldest = Gauge(
            "parcel_work_oldest_seconds", "Age of the oldest waiting work unit (0 when none).",
            registry=registry,
        )
        self._work_oldest.set_function(lambda: self._backlog()[1])
        self._sync_lag = Gauge(
            "parcel_sync_lag_seconds",
            "Seconds since the last successful sync (since start-up before the first one).",
            registry=registry,
        )
        self._sync_lag.set_function(self.sync_lag)
        self._leader = Gauge(
            "parcel_leader",
            "1 while this instance holds the leader lease and does the work, 0 as a standby.",
            registry=registry,
        )
        self._leader.set(1)
        self._loop_progress = Gauge(
            "parcel_loop_last_progress_timestamp_seconds",
            "Unix time of the last completed round of each loop that runs forever (work, sync, "
            "maintenance).",
            ["loop"],
            registry=registry,
        )
        self._loop_failures = Counter(
            "parcel_loop_failures",
            "Failed rounds of each loop that runs forever, by what failed (database, "
            "homeserver, disk, internal).",
            ["loop", "source"],
            registry=registry,
        )

    # --- what the bot calls ------------------------------------------------------------------

    def session_opened(self) -> None:
        """A new session started."""
        self._sessions.inc()
        self.set_sessions_open(self._open_sessions + 1)

    def session_closed(self) -> None:
        """A session ended (never counts below zero)."""
        self.set_sessions_open(self._open_sessions - 1)

    def set_leader(self, leader: bool) -> None:
        """Whether this instance leads (always, without a standby) or waits as a standby."""
        self._leader.set(1 if leader else 0)

    def set_sessions_open(self, count: int) -> None:
        """Set the number of open sessions, e.g. from the store after a restart."""
        self._open_sessions = max(0, count)
        self._sessions_open.set(self._open_sessions)

    def offer_state(self, direction: str | Enum, state: str | Enum) -> None:
        """An offer was made (``offered``) or reached a final state."""
        self._offers.labels(direction=_label(direction), state=_label(state)).inc()

    def rejected(self, code: str) -> None:
        """A file was refused; ``code`` is the verdict code (``too_large``, ``infected``...)."""
        self._rejections.labels(reason=code).inc()

    def decided(self, offer_to_decision_s: float) -> None:
        """The recipient decided, this many seconds after the offer."""
        self._decision_seconds.observe(max(0.0, offer_to_decision_s))

    def delivered(self, nbytes: int, decision_to_delivery_s: float) -> None:
        """An accepted file of ``nbytes`` was delivered, this long after the decision."""
        self._bytes_delivered.inc(max(0, nbytes))
        self._delivery_seconds.observe(max(0.0, decision_to_delivery_s))

    def homeserver_error(self, kind: str) -> None:
        """A homeserver request failed; ``kind`` names the request (``sync``, ``send``...)."""
        self._homeserver_errors.labels(kind=kind).inc()

    def retry(self, kind: str) -> None:
        """A unit of ``kind`` failed transiently and will be retried."""
        self._homeserver_errors.labels(kind=kind).inc()
        self._homeserver_retries.labels(kind=kind).inc()

    def work_failed(self, kind: str, code: str) -> None:
        """A unit of ``kind`` failed for good (``code``: M_FORBIDDEN, M_TOO_LARGE, internal...)."""
        self._homeserver_errors.labels(kind=kind).inc()
        self._work_failed.labels(kind=kind, code=code).inc()

    def loop_progressed(self, loop: str, at: float) -> None:
        """A round of ``loop`` completed at unix time ``at``."""
        self._loop_progress.labels(loop=loop).set(at)

    def loop_failed(self, loop: str, source: str | Enum) -> None:
        """A round of ``loop`` failed because ``source`` did."""
        self._loop_failures.labels(loop=loop, source=_label(source)).inc()

    def watch_backlog(self, backlog: Callable[[], tuple[int, float]]) -> None:
        """Report ``backlog()`` = (units waiting, oldest age in s) at every scrape."""
        self._backlog = backlog

    def synced(self) -> None:
        """A sync succeeded just now."""
        self._last_sync = self._clock()

    def sync_lag(self) -> float:
        """Seconds since the last successful sync (since creation before the first one)."""
        return max(0.0, self._clock() - self._last_sync)

    # --- exposition --------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)

    async def serve(
        self, host: str, port: int, health: Health, token: str | None = None
    ) -> web.AppRunner:
        """Serve ``/metrics`` and ``/health`` on ``host:port`` until the runner is cleaned up.

        ``health()`` returns ``(healthy, detail)``; ``/health`` answers 200 with the detail ("ok",
        "leader", "standby") when healthy, 503 with the detail otherwise (and 503 if ``health``
        raises). Port 0 picks a free port: read it from ``runner.addresses``. Stop with
        ``await runner.cleanup()``. Raises OSError if the address cannot be bound. With
        ``token``, ``/metrics`` answers 401 unless the request carries
        ``Authorization: Bearer <token>``.
        """
        app = web.Application()
        app.router.add_get("/metrics", _guarded(self._handle_metrics, token))
        app.router.add_get("/health", _health_handler(health))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        logger.info("metrics and health endpoint listening on %s", _addresses(runner))
        return runner

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _guarded(handler: Handler, token: str | None) -> Handler:
    """``handler`` behind a bearer token (as Prometheus' ``authorization`` setting sends it)."""
    if token is None:
        return handler
    expected = f"Bearer {token}".encode()

    async def handle(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):  # constant time: no timing oracle
            return web.Response(status=401, text="a bearer token is required\n",
                                headers={"WWW-Authenticate": 'Bearer realm="parcel metrics"'})
        return await handler(request)

    return handle


def _health_handler(health: Health) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            healthy, detail = health()
        except Exception as exc:  # noqa: BLE001 - a broken check is "unhealthy", not a 500
            logger.warning("health check raised: %r", exc, exc_info=True)
            healthy, detail = False, "health check failed"  # the details go to the log only
        if healthy:
            return web.Response(text=detail or "ok")
        return web.Response(status=503, text=detail or "unhealthy")

    return handle


def _addresses(runner: web.AppRunner) -> str:
    return ", ".join(
        f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
        for addr in runner.addresses
    )
