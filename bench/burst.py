"""Part 8: a burst of texts from the customer, drained through Parcel and through the relay.

The customer's client sends ``Params.burst_n`` numbered texts as fast as it can, with
``BURST_IN_FLIGHT`` sends pending at a time (one send after another is limited by the
homeserver's answer time, about 10 a second on a busy 2-core machine, and both bots keep up
with that). Timed from the first send to the last relayed copy the agent's client hands
over. Order: the copies must reach the agent in the order the homeserver put the originals in
the customer room (as the customer's own sync shows them), which with sends in flight need not
be the numbering. The relay and Parcel take turns (``burst_rounds`` each), from a quiet
homeserver and bot, E2EE off for both, after an unmeasured warm-up burst of ``WARM_UP``.
"""

from __future__ import annotations

import re
import secrets
import statistics
import time
from typing import Any

from bench.harness import BenchError, Child, Seen, proc_cpu_seconds, ratio
from bench.scenarios import Bench, Chat, _wait_idle, gather_limited, say

BURST_IN_FLIGHT = 16
"""Sends the customer's client keeps pending at once."""
WARM_UP = 30
"""Texts of the unmeasured burst each bot gets first."""


def order_report(arrived: list[int], expected: list[int]) -> dict[str, Any]:
    """How the arrival order of the copies compares with the originals' order."""
    rank = {index: k for k, index in enumerate(expected)}
    ranks = [rank.get(i, -1) for i in arrived]
    backwards = sum(1 for a, b in zip(ranks, ranks[1:], strict=False) if b < a)
    return {
        "in_order": arrived == expected,
        "arrived_distinct": len(set(arrived)),
        "duplicates": len(arrived) - len(set(arrived)),
        "missing": len(set(expected) - set(arrived)),
        "steps_backwards": backwards,
        "originals_in_send_order": expected == sorted(expected),
    }


async def _burst(b: Bench, chat: Chat, child: Child, tag: str, n: int) -> dict[str, Any]:
    prefix = f"burst-{tag}-{secrets.token_hex(3)}-"
    pattern = re.compile(re.escape(prefix) + r"(\d+)$")
    arrivals: list[tuple[int, float]] = []
    copies: list[Seen] = []
    originals: list[int] = []

    def watch(seen: Seen) -> None:
        match = pattern.search(str(seen.content.get("body", "")))
        if match is None:
            return
        if seen.room_id == chat.agent_room and seen.sender == chat.bot_id:
            arrivals.append((int(match.group(1)), seen.at))
            copies.append(seen)

    def echo(seen: Seen) -> None:
        match = pattern.search(str(seen.content.get("body", "")))
        if match is not None and seen.room_id == chat.customer_room \
                and seen.sender == chat.customer.user_id:
            originals.append(int(match.group(1)))

    spid = b.synapse_pid
    if spid:
        await _wait_idle(spid, max_wait=20.0, threshold=0.1)
    await _wait_idle(child.pid, max_wait=20.0)
    chat.agent.watchers.append(watch)
    chat.customer.watchers.append(echo)
    try:
        cpu0, syn0 = child.cpu(), proc_cpu_seconds(spid) if spid else 0.0
        first = time.time()
        results = await gather_limited(BURST_IN_FLIGHT, [
            lambda i=i: chat.customer.say(chat.customer_room, f"{prefix}{i:03d}")
            for i in range(n)])
        sent = time.time()
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise BenchError(f"{len(failed)} of {n} burst sends failed: {failed[0]!r}")
        timeout = max(120.0, n * 1.0)
        await chat.agent.wait_until(lambda: len({i for i, _ in arrivals}) >= n,
                                    f"{n} relayed texts through the {chat.kind}",
                                    timeout=timeout)
        last = max(at for _, at in arrivals)
        await chat.customer.wait_until(lambda: len(set(originals)) >= n,
                                       "the burst's echoes", timeout=60.0)
        await _wait_idle(child.pid, max_wait=10.0)
        cpu1, syn1 = child.cpu(), proc_cpu_seconds(spid) if spid else 0.0
    finally:
        chat.agent.watchers.remove(watch)
        chat.customer.watchers.remove(echo)
    drain = last - first
    # The homeserver's timestamps of the copies: how long each bot's send cycle took.
    stamps = sorted(float(s.source.get("origin_server_ts", 0)) / 1000 for s in copies)
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {
        "bot": chat.kind,
        "messages": n,
        "drain_s": round(drain, 3),
        "messages_per_s": round(n / drain, 1),
        "send_s": round(sent - first, 3),
        "send_rate_per_s": round(n / (sent - first), 1),
        "lag_after_last_send_s": round(last - sent, 3),
        "first_copy_after_s": round(min(at for _, at in arrivals) - first, 3),
        "copy_interval_ms_p50": round(statistics.median(gaps) * 1000, 1) if gaps else None,
        "bot_cpu_ms_per_message": round((cpu1 - cpu0) * 1000 / n, 2),
        "synapse_cpu_ms_per_message": round((syn1 - syn0) * 1000 / n, 2) if spid else None,
        "order": order_report([i for i, _ in arrivals], originals),
    }


async def part_burst(b: Bench) -> None:
    """8. A customer's burst of texts: messages/s through Parcel and the relay, order kept."""
    n, rounds = b.p.burst_n, b.p.burst_rounds
    say(f"part 8: text burst, {n} messages x {rounds} round(s) per bot")
    customer = await b.actor("burst-cust", "Burst Customer")
    agent = await b.actor("burst-agent", "Burst Agent", auto_join=True)
    parcel = await b.parcel("burst", encryption=False, agents=[agent.user_id])
    relay = await b.relay("burst", encryption=False)
    p_chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=False)
    r_chat = await b.open_relay_chat(relay, customer, agent, encrypted=False)
    # Not measured: the first burst through a fresh bot warms its code paths and caches.
    for chat, child in ((r_chat, relay.child), (p_chat, parcel.child)):
        await _burst(b, chat, child, f"{chat.kind[0]}w", WARM_UP)
    runs: list[dict[str, Any]] = []
    for r in range(rounds):
        for chat, child in ((r_chat, relay.child), (p_chat, parcel.child)):
            run = await _burst(b, chat, child, f"{chat.kind[0]}{r}", n)
            runs.append(run)
            say(f"  {chat.kind}: {n} texts in {run['drain_s']:.2f} s = "
                f"{run['messages_per_s']:.1f}/s (client sent at {run['send_rate_per_s']:.0f}/s; "
                f"{'in order' if run['order']['in_order'] else 'ORDER BROKEN'})")
    await parcel.child.stop()
    await relay.child.stop()

    def side(kind: str) -> dict[str, Any]:
        mine = [r for r in runs if r["bot"] == kind]
        return {
            "messages_per_s": round(statistics.median(r["messages_per_s"] for r in mine), 1),
            "drain_s": round(statistics.median(r["drain_s"] for r in mine), 3),
            "lag_after_last_send_s": round(
                statistics.median(r["lag_after_last_send_s"] for r in mine), 3),
            "bot_cpu_ms_per_message": round(
                statistics.median(r["bot_cpu_ms_per_message"] for r in mine), 2),
            "copy_interval_ms_p50": round(statistics.median(
                r["copy_interval_ms_p50"] or 0 for r in mine), 1),
            "in_order": all(r["order"]["in_order"] for r in mine),
        }

    parcel_side, relay_side = side("parcel"), side("relay")
    b.results["burst"] = {
        "how": f"one customer client sends {n} numbered texts as fast as it can "
               f"({BURST_IN_FLIGHT} sends in flight); first send -> the agent's client handing "
               "over the last relayed copy; order: copies at the agent vs the originals in "
               "the customer room; E2EE off; relay and Parcel alternate; medians over rounds",
        "in_flight": BURST_IN_FLIGHT,
        "messages": n,
        "rounds": rounds,
        "runs": runs,
        "parcel": parcel_side,
        "relay": relay_side,
        "ratio_rate": ratio(parcel_side["messages_per_s"], relay_side["messages_per_s"]),
    }
