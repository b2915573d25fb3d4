"""Metrics: names and values as scraped over HTTP, and the health endpoint's answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.attachments.model import Direction, OfferState
from bot.metrics import Metrics


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class HealthSwitch:
    """A health callback whose answer the test sets."""

    def __init__(self) -> None:
        self.answer: tuple[bool, str] = (True, "synced")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


def base_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[Metrics, FakeClock, HealthSwitch, str]]:
    """A Metrics object served on a free loopback port."""
    clock, health = FakeClock(), HealthSwitch()
    metrics = Metrics(clock=clock)
    runner = await metrics.serve("127.0.0.1", 0, health)
    try:
        yield metrics, clock, health, base_url(runner)
    finally:
        await runner.cleanup()


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """GET /metrics and return {(sample name, labels): value}."""
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.text()


async def test_fresh_metrics_are_zero(served: tuple[Metrics, FakeClock, HealthSwitch, str]) -> None:
    """Before anything happens every unlabelled metric is exposed at zero."""
    _, _, _, url = served
    samples = await scrape(url)
    for name in (
        "parcel_sessions_open",
        "parcel_sessions_total",
        "parcel_bytes_delivered_total",
        "parcel_sync_lag_seconds",
        "parcel_work_units_waiting",
        "parcel_work_oldest_seconds",
        "parcel_offer_decision_seconds_count",
        "parcel_delivery_seconds_count",
    ):
        assert samples[key(name)] == 0, name


async def test_counters_after_calls(served: tuple[Metrics, FakeClock, HealthSwitch, str]) -> None:
    """Each method moves its metric, with the labels it was given."""
    metrics, _, _, url = served
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_opened()
    metrics.session_closed()
    metrics.offer_state(Direction.CUSTOMER_TO_AGENT, OfferState.OFFERED)
    metrics.offer_state(Direction.CUSTOMER_TO_AGENT, OfferState.ACCEPTED)
    metrics.offer_state("agent_to_customer", "declined")
    metrics.offer_state("agent_to_customer", "declined")
    metrics.rejected("too_large")
    metrics.rejected("infected")
    metrics.rejected("infected")
    metrics.decided(42.0)
    metrics.delivered(1_500_000, 0.3)
    metrics.delivered(500_000, 2.0)
    metrics.homeserver_error("sync")
    metrics.homeserver_error("upload")
    metrics.retry("upload")
    metrics.retry("send")
    metrics.work_failed("send", "M_FORBIDDEN")
    metrics.watch_backlog(lambda: (7, 12.5))

    samples = await scrape(url)
    assert samples[key("parcel_sessions_open")] == 2
    assert samples[key("parcel_sessions_total")] == 3
    c2a, a2c = "customer_to_agent", "agent_to_customer"
    assert samples[key("parcel_offers_total", direction=c2a, state="offered")] == 1
    assert samples[key("parcel_offers_total", direction=c2a, state="accepted")] == 1
    assert samples[key("parcel_offers_total", direction=a2c, state="declined")] == 2
    assert samples[key("parcel_rejections_total", reason="too_large")] == 1
    assert samples[key("parcel_rejections_total", reason="infected")] == 2
    assert samples[key("parcel_bytes_delivered_total")] == 2_000_000
    assert samples[key("parcel_offer_decision_seconds_count")] == 1
    assert samples[key("parcel_offer_decision_seconds_sum")] == 42.0
    assert samples[key("parcel_offer_decision_seconds_bucket", le="30.0")] == 0
    assert samples[key("parcel_offer_decision_seconds_bucket", le="60.0")] == 1
    assert samples[key("parcel_delivery_seconds_count")] == 2
    assert samples[key("parcel_delivery_seconds_sum")] == pytest.approx(2.3)
    assert samples[key("parcel_delivery_seconds_bucket", le="0.5")] == 1
    assert samples[key("parcel_homeserver_errors_total", kind="sync")] == 1
    assert samples[key("parcel_homeserver_errors_total", kind="upload")] == 2
    assert samples[key("parcel_homeserver_errors_total", kind="send")] == 2
    assert samples[key("parcel_homeserver_retries_total", kind="upload")] == 1
    assert samples[key("parcel_homeserver_retries_total", kind="send")] == 1
    assert samples[key("parcel_work_failed_total", kind="send", code="M_FORBIDDEN")] == 1
    assert samples[key("parcel_work_units_waiting")] == 7
    assert samples[key("parcel_work_oldest_seconds")] == 12.5


async def test_open_sessions_never_go_negative(
    served: tuple[Metrics, FakeClock, HealthSwitch, str],
) -> None:
    """Closing more sessions than were opened (e.g. after a restart) stops at zero."""
    metrics, _, _, url = served
    metrics.session_closed()
    assert (await scrape(url))[key("parcel_sessions_open")] == 0
    metrics.set_sessions_open(5)
    metrics.session_closed()
    assert (await scrape(url))[key("parcel_sessions_open")] == 4


async def test_sync_lag_is_time_since_last_sync(
    served: tuple[Metrics, FakeClock, HealthSwitch, str],
) -> None:
    """The lag grows with time and drops to zero when a sync succeeds."""
    metrics, clock, _, url = served
    clock.now += 12.5
    assert (await scrape(url))[key("parcel_sync_lag_seconds")] == 12.5
    metrics.synced()
    assert (await scrape(url))[key("parcel_sync_lag_seconds")] == 0
    clock.now += 3
    assert metrics.sync_lag() == 3
    assert (await scrape(url))[key("parcel_sync_lag_seconds")] == 3


async def test_health_ok_and_unhealthy(
    served: tuple[Metrics, FakeClock, HealthSwitch, str],
) -> None:
    """/health answers 200 with the detail when healthy and 503 with the detail when not."""
    _, _, health, url = served
    assert await get(f"{url}/health") == (200, "synced")
    health.answer = (True, "standby")
    assert await get(f"{url}/health") == (200, "standby")
    health.answer = (True, "")
    assert await get(f"{url}/health") == (200, "ok")
    health.answer = (False, "no successful sync for 95s")
    assert await get(f"{url}/health") == (503, "no successful sync for 95s")


async def test_health_check_that_raises_is_unhealthy() -> None:
    """A health callback that raises gives 503 saying only that, not a server error."""

    def broken() -> tuple[bool, str]:
        raise RuntimeError("store closed")

    runner = await Metrics().serve("127.0.0.1", 0, broken)
    try:
        status, text = await get(f"{base_url(runner)}/health")
    finally:
        await runner.cleanup()
    assert (status, text) == (503, "health check failed")


async def test_unknown_path_is_404(served: tuple[Metrics, FakeClock, HealthSwitch, str]) -> None:
    """Only /metrics and /health are served."""
    _, _, _, url = served
    assert (await get(f"{url}/"))[0] == 404


async def test_registries_are_separate() -> None:
    """Two Metrics objects do not share values and nothing lands in the global registry."""
    one, two = Metrics(), Metrics()
    one.rejected("empty")
    assert b'parcel_rejections_total{reason="empty"} 1.0' in one.exposition()
    assert b"parcel_rejections_total{" not in two.exposition()
    assert REGISTRY.get_sample_value("parcel_sessions_total") is None


async def test_serve_on_a_busy_port_raises() -> None:
    """Binding an address already in use fails with OSError and leaves nothing running."""
    first = await Metrics().serve("127.0.0.1", 0, lambda: (True, ""))
    try:
        port = first.addresses[0][1]
        with pytest.raises(OSError):
            await Metrics().serve("127.0.0.1", port, lambda: (True, ""))
    finally:
        await first.cleanup()


TOKEN = "s3cret-scrape-token-0123"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, 401),
        ({"Authorization": TOKEN}, 401),
        ({"Authorization": f"Basic {TOKEN}"}, 401),
        ({"Authorization": f"Bearer {TOKEN}x"}, 401),
        ({"Authorization": f"Bearer {TOKEN}"}, 200),
    ],
)
async def test_metrics_token_is_required_when_set(headers: dict[str, str], status: int) -> None:
    """With a token, /metrics needs "Authorization: Bearer <token>"; /health stays open."""
    runner = await Metrics().serve("127.0.0.1", 0, lambda: (True, "ok"), TOKEN)
    url = base_url(runner)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/metrics", headers=headers) as response:
                assert response.status == status
                text = await response.text()
                if status == 401:
                    assert response.headers["WWW-Authenticate"].startswith("Bearer")
                    assert "parcel_" not in text and TOKEN not in text
                else:
                    assert "parcel_sessions_open" in text
            async with http.get(f"{url}/health") as response:
                assert (response.status, await response.text()) == (200, "ok")
    finally:
        await runner.cleanup()
