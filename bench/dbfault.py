"""Part ``dbfault``: what a PostgreSQL restart or outage costs a chat (issue 19, "Measure").

Two ``parcel-bot run`` processes (leader and standby, the default lease and retry settings, E2EE
on) on a throwaway PostgreSQL (:class:`bench.ha.Postgres`). Each round has a file offered to the
agent and waiting; then the database fails:

- **restart**: ``pg_ctl restart -m fast``; once it returned, the agent clicks ✅ and the
  customer sends a text;
- **outage**: ``pg_ctl stop -m fast``; while it is down the agent clicks ✅ and the customer
  sends a text; it is started again after :attr:`DbFaultParams.outage_s`.

The clock runs from the database's return (``pg_ctl`` returned: it accepts connections) to the
text's arrival at the agent's client and to the accepted file's. Figures are printed and stored
(``results['dbfault']``), never asserted; a round that saw nothing in time records ``None`` and
a note instead of a guess.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

from bench.ha import Postgres, standby_ready
from bench.harness import BenchError, Seen, quantile
from bench.scenarios import KB, Bench, Chat, is_card, say
from bot.config import DEFAULT_LEADER_LEASE
from bot.render import OFFER_KEY

ACCEPT = "\u2705"
FILE_BYTES = 256 * KB
WAIT_AFTER_RETURN = 330.0
"""Seconds a round waits, once the database is back, for the text and the file: longer than
the default retry cap (300 s), so a slow recovery is measured rather than cut off."""


@dataclass(frozen=True)
class DbFaultParams:
    """How much of the part a mode does."""

    rounds: int  # of each fault
    outage_s: float


DBF_FULL = DbFaultParams(rounds=3, outage_s=60.0)
DBF_QUICK = DbFaultParams(rounds=1, outage_s=20.0)


def fault_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault: p50 / max of each "database back → X" interval over the rounds that measured
    it, and how many rounds did not (``failed``)."""
    out: dict[str, Any] = {}
    for fault in sorted({r["fault"] for r in rounds}):
        mine = [r for r in rounds if r["fault"] == fault]
        entry: dict[str, Any] = {"rounds": len(mine)}
        for key in ("to_text_s", "to_file_s"):
            values = [r[key] for r in mine if r.get(key) is not None]
            entry[key] = {
                "n": len(values),
                "p50": None if not values else round(quantile(values, 0.5) or 0.0, 3),
                "max": None if not values else round(max(values), 3),
            }
        entry["failed"] = sum(1 for r in mine
                              if r.get("to_text_s") is None or r.get("to_file_s") is None)
        out[fault] = entry
    return out


async def _offer_waiting(b: Bench, chat: Chat, name: str) -> Seen:
    """The customer's file offered to the agent, the card fully shown; returns the card."""
    await b.send_file(chat, name, FILE_BYTES)
    card = await chat.agent.wait_for(lambda s: s.room_id == chat.agent_room and is_card(s, name),
                                     f"the offer card for {name}", timeout=b.p.step_timeout)
    await b.offer_shown(chat, card, card.content[OFFER_KEY]["id"])
    return card


async def _round(b: Bench, pg: Postgres, chat: Chat, fault: str, k: int,
                 outage_s: float) -> dict[str, Any]:
    await b.probe(chat)
    name = f"dbfault-{fault}-{k}.bin"
    card = await _offer_waiting(b, chat, name)
    token = f"dbfault-{fault}-{k}-{secrets.token_hex(4)}"

    async def decide_and_talk() -> None:
        await chat.agent.react(chat.agent_room, str(card.source["event_id"]), ACCEPT)
        await chat.customer.say(chat.customer_room, token)

    if fault == "restart":
        await asyncio.to_thread(pg.server.restart)
        back_at = time.time()
        await decide_and_talk()
    else:
        await asyncio.to_thread(pg.server.stop)
        down_at = time.monotonic()
        await decide_and_talk()
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        await asyncio.to_thread(pg.server.start)
        back_at = time.time()
    out: dict[str, Any] = {"fault": fault, "round": k + 1, "to_text_s": None,
                           "to_file_s": None}
    if fault == "outage":
        out["outage_s"] = outage_s

    async def text() -> None:
        seen = await chat.agent.wait_for(
            lambda s: s.room_id == chat.agent_room
            and str(s.content.get("body", "")).endswith(token),
            "the text sent during the fault", timeout=WAIT_AFTER_RETURN)
        out["to_text_s"] = round(seen.at - back_at, 3)

    async def file() -> None:
        seen = await chat.agent.wait_for(
            lambda s: s.room_id == chat.agent_room and s.sender == chat.bot_id
            and ("url" in s.content or "file" in s.content)
            and name in (s.content.get("body"), s.content.get("filename")),
            f"the delivery of {name}", timeout=WAIT_AFTER_RETURN)
        out["to_file_s"] = round(seen.at - back_at, 3)

    results = await asyncio.gather(text(), file(), return_exceptions=True)
    errors = [str(r) for r in results if isinstance(r, BaseException)]
    if errors:
        out["error"] = "; ".join(errors)
    return out


async def part_dbfault(b: Bench) -> None:
    """PostgreSQL restarted and stopped under a leader and a standby; fills
    ``results['dbfault']``."""
    dp = DBF_FULL if b.p.mode == "full" else DBF_QUICK
    say(f"part dbfault: {dp.rounds} restart(s) and {dp.rounds} outage(s) of "
        f"{dp.outage_s:g} s of PostgreSQL under a leader and a standby")
    pg = Postgres(b)
    await pg.start()
    out: dict[str, Any] = {"lease_s": DEFAULT_LEADER_LEASE, "encryption": True,
                           "outage_s": dp.outage_s, "file_bytes": FILE_BYTES}
    b.results["dbfault"] = out
    instances = []
    try:
        customer = await b.actor("dbf-cust", "Carol", encrypted=True)
        agent = await b.actor("dbf-agent", "Alice", encrypted=True, auto_join=True)
        leader, standby, parcel = await pg.leader_and_standby("dbf", [agent.user_id])
        instances.extend((leader, standby))
        await standby_ready(standby)
        chat = await b.open_parcel_chat(parcel, customer, agent, encrypted=True)
        rounds: list[dict[str, Any]] = []
        out["per_round"] = rounds
        for fault in ("restart", "outage"):
            for k in range(dp.rounds):
                result = await _round(b, pg, chat, fault, k, dp.outage_s)
                rounds.append(result)
                say(f"  {fault} {k + 1}: database back → text at the agent after "
                    f"{result['to_text_s']} s, accepted file after {result['to_file_s']} s")
                if "error" in result:
                    b.notes.append(f"dbfault {fault} round {k + 1}: {result['error']}")
        out.update(fault_summary(rounds))
        exited = [child.log_path.name for child in instances
                  if child.process is not None and child.process.returncode is not None]
        out["instances_exited"] = exited
        if exited:
            b.notes.append(f"dbfault: instances exited during the part: {', '.join(exited)}")
        out["how"] = ("database back = pg_ctl restart / start returned; the ✅ and the text "
                      "are sent after the restart, or while the database is stopped; -> their "
                      "arrival at the agent's client")
    finally:
        for child in instances:
            await child.stop()
        await pg.stop()
    failed = [f"{r['fault']} {r['round']}" for r in out.get("per_round", []) if "error" in r]
    if failed:
        raise BenchError(f"dbfault: nothing arrived in time in round(s) {', '.join(failed)}")
