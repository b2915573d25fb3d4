"""What one offer costs the homeserver: requests, events and bytes, counted from the bot's side.

Parcel and the baseline relay each talk to Synapse through their own
:class:`~bench.proxy.CountingProxy`, in a chat of their own (so the latency figures, taken
without a proxy in between, are not touched). For each offer (upload → card, reactions,
status line → ✅ → delivery → both edits) the requests the bot made from the moment the
customer posted the file until the bot was idle again are tallied by kind; the relay's
forward of the same file is tallied the same way. Long-polling syncs count where they start.
Bot CPU per offer here is for one offer at a time (the scale part has it under load).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.proxy import CountingProxy, per_offer
from bench.scenarios import KB, MB, Bench, _wait_idle, say

SIZES = (("4 KB", 4 * KB), ("1 MB", 1 * MB))
EVENT_ROLES = ("event:card", "event:reaction", "event:status", "event:delivery", "event:edit",
               "event:unreact", "event:panel")


async def _settle(pid: int) -> None:
    """Until the bot has been idle briefly: its last requests are in the count."""
    await _wait_idle(pid, max_wait=10.0)
    await asyncio.sleep(0.3)


def _totals(kinds: dict[str, Any]) -> dict[str, Any]:
    """Events, requests and bytes per offer from the per-kind means."""
    events = {k: v for k, v in kinds.items() if k.startswith("event:")}
    return {
        "events": round(sum(v["count"] for v in events.values()), 2),
        "event_bytes_sent": sum(v["sent"] for v in events.values()),
        "uploads": kinds.get("upload", {}).get("count", 0),
        "upload_bytes": kinds.get("upload", {}).get("sent", 0),
        "downloads": kinds.get("download", {}).get("count", 0),
        "download_bytes": kinds.get("download", {}).get("received", 0),
        "requests": round(sum(v["count"] for v in kinds.values()), 2),
        "bytes_sent": sum(v["sent"] for v in kinds.values()),
        "bytes_received": sum(v["received"] for v in kinds.values()),
    }


async def part_traffic(b: Bench, encrypted: bool) -> None:
    """Requests, events and bytes per offer (Parcel) and per forwarded file (relay)."""
    tag = "e2ee" if encrypted else "plain"
    say(f"traffic: requests per offer through a counting proxy, E2EE "
        f"{'on' if encrypted else 'off'}")
    async with CountingProxy(b.hs.url) as p_proxy, CountingProxy(b.hs.url) as r_proxy:
        customer = await b.actor(f"tr-cust-{tag}", "Carol", encrypted=encrypted)
        agent = await b.actor(f"tr-agent-{tag}", "Alice", auto_join=True, encrypted=encrypted)
        parcel = await b.parcel(f"traffic-{tag}", encryption=encrypted, agents=[agent.user_id],
                                homeserver=p_proxy.url)
        relay = await b.relay(f"traffic-{tag}", encryption=encrypted, homeserver=r_proxy.url)
        try:
            p_chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=encrypted)
            r_chat = await b.open_relay_chat(relay, customer, agent, encrypted=encrypted)
            await b.parcel_cycle(p_chat, f"tr-warm-{tag}-p.bin", 4 * KB)
            await b.relay_cycle(r_chat, f"tr-warm-{tag}-r.bin", 4 * KB)
            out: dict[str, Any] = {}
            for label, size in SIZES:
                p_tallies, r_tallies, cpu = [], [], []
                await _settle(parcel.child.pid)
                for i in range(b.p.traffic_n):
                    # Each count runs until its bot is idle again: the next one starts quiet.
                    mark, cpu0 = p_proxy.mark(), parcel.child.cpu()
                    await b.parcel_cycle(p_chat, f"tr-{tag}-{label.replace(' ', '')}-{i}-p.bin",
                                         size)
                    await _settle(parcel.child.pid)
                    p_tallies.append(p_proxy.tally(mark))
                    cpu.append(parcel.child.cpu() - cpu0)
                    mark = r_proxy.mark()
                    await b.relay_cycle(r_chat, f"tr-{tag}-{label.replace(' ', '')}-{i}-r.bin",
                                        size)
                    await _settle(relay.child.pid)
                    r_tallies.append(r_proxy.tally(mark))
                p_kinds, r_kinds = per_offer(p_tallies), per_offer(r_tallies)
                out[label] = {
                    "bytes": size,
                    "n": b.p.traffic_n,
                    "parcel": {"kinds": p_kinds, **_totals(p_kinds),
                               "bot_cpu_s_per_offer_alone": round(sum(cpu) / len(cpu), 4)},
                    "relay": {"kinds": r_kinds, **_totals(r_kinds)},
                }
                t = out[label]["parcel"]
                say(f"  {label}: Parcel {t['events']:.0f} events ({t['event_bytes_sent']} B), "
                    f"{t['uploads']:.0f} upload(s) {t['upload_bytes'] / 1e6:.2f} MB, "
                    f"{t['requests']:.0f} requests; relay "
                    f"{out[label]['relay']['events']:.0f} event(s)")
        finally:
            await parcel.child.stop()
            await relay.child.stop()
    b.results[f"traffic_{tag}"] = {
        "how": "requests the bot made from the customer posting the file until the bot was "
               "idle again, through a counting reverse proxy (bench/proxy.py); bytes are "
               "HTTP bodies; events are classified by Parcel's transaction ids",
        "roles": list(EVENT_ROLES),
        "sizes": out,
    }
