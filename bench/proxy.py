"""A counting reverse proxy between a bot and Synapse: every request the bot makes, sized.

The bot is pointed at :attr:`CountingProxy.url`; each request is forwarded to Synapse as is
(bodies streamed both ways) and recorded with its kind, the bytes of its request body (sent
to the homeserver) and of its response body (received). Bytes are bodies only: HTTP headers
are left out, the same for every bot.

A sent event is classified from its path, ``PUT .../rooms/{room}/send/{type}/{txn}``: Parcel
gives every message a transaction id naming the offer and the step (``offer-7-card``,
``offer-7-react-accept``, ``offer-7-status``, ``offer-7-deliver``, ``offer-7-accepted-card``,
``offer-7-unreact-accept`` for a redaction …), so card, reactions, status line, delivery,
edits and the removal of the bot's reactions can be told apart even when the event type is
``m.room.encrypted``; the activity panel's posts and edits are ``session-3-panel-…``.

(This is the benchmark's own proxy; it shares nothing with the tests' fault-injecting one.)
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host", "content-length"}
_SEND = re.compile(r"/rooms/[^/]+/send/(?P<type>[^/]+)/(?P<txn>[^/]+)$")
_REDACT = re.compile(r"/rooms/[^/]+/redact/[^/]+/(?P<txn>[^/]+)$")
_OFFER_TXN = re.compile(r"^offer-\d+-(?P<step>.+)$")
_PANEL_TXN = re.compile(r"^session-\d+-panel-")


@dataclass
class Request:
    """One request through the proxy."""

    at: float
    method: str
    path: str
    kind: str
    sent: int = 0  # request body bytes (to the homeserver)
    received: int = 0  # response body bytes (from the homeserver)
    status: int = 0


def classify(method: str, path: str) -> str:
    """A short kind for a client-server API request (see the module docstring)."""
    redact = _REDACT.search(path)
    if redact and method == "PUT":
        # Redacting its own seeded reactions once the offer is decided is part of the offer.
        return "event:unreact" if _OFFER_TXN.match(unquote(redact["txn"])) else "redaction"
    send = _SEND.search(path)
    if send and method == "PUT":
        txn = unquote(send["txn"])
        if _PANEL_TXN.match(txn):
            return "event:panel"  # the session's activity panel, posted or edited
        step = _OFFER_TXN.match(txn)
        if step is None:
            return f"event:other:{unquote(send['type'])}"
        name = step["step"]
        if name == "card":
            return "event:card"
        if name.startswith("react-"):
            return "event:reaction"
        if name == "status":
            return "event:status"
        if name == "deliver":
            return "event:delivery"
        if name.endswith("-card") or name.endswith("-status"):
            return "event:edit"
        return f"event:offer-{name}"
    if "/media/" in path and "/upload" in path:
        return "upload"
    if "/media/" in path and "/download/" in path:
        return "download"
    if path.endswith("/sync"):
        return "sync"
    if "/sendToDevice/" in path:
        return "to-device"
    if "/keys/" in path:
        return "keys"
    if "/redact/" in path:
        return "redaction"
    if "/state/" in path:
        return "state"
    if "/receipt/" in path or "/read_markers" in path:
        return "receipt"
    return "other"


class CountingProxy:
    """``async with CountingProxy(upstream) as proxy:`` then point a bot at ``proxy.url``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[Request] = []
        self.url = ""
        self.bearer: str | None = None
        """The last access token the bot sent: a raw request as the bot while it is stopped."""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CountingProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def mark(self) -> int:
        """A position in the record, for :meth:`tally` of what came after it."""
        return len(self.requests)

    def tally(self, start: int, end: int | None = None) -> dict[str, dict[str, int]]:
        """{kind: {"count", "sent", "received"}} of the requests in ``[start, end)``."""
        out: dict[str, Counter[str]] = {}
        for request in self.requests[start:end]:
            entry = out.setdefault(request.kind, Counter())
            entry["count"] += 1
            entry["sent"] += request.sent
            entry["received"] += request.received
        return {kind: dict(counts) for kind, counts in sorted(out.items())}

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        record = Request(time.time(), request.method, request.path,
                         classify(request.method, request.path))
        self.requests.append(record)
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            self.bearer = auth[len("Bearer "):]
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        body = self._counted(request.content, record, "sent") if request.body_exists else None
        try:
            async with self._session.request(
                request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                data=body, allow_redirects=False,
            ) as upstream:
                record.status = upstream.status
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers[key] = value
                if upstream.content_length is not None:
                    response.content_length = upstream.content_length
                await response.prepare(request)
                async for chunk in self._counted(upstream.content, record, "received"):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, ConnectionError):
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPBadGateway() from None

    @staticmethod
    async def _counted(stream: aiohttp.StreamReader, record: Request,
                       attr: str) -> AsyncIterator[bytes]:
        async for chunk in stream.iter_chunked(1 << 16):
            setattr(record, attr, getattr(record, attr) + len(chunk))
            yield chunk


def per_offer(tallies: list[dict[str, dict[str, int]]]) -> dict[str, Any]:
    """Mean count and bytes per kind over several offers' tallies (rounded)."""
    n = len(tallies)
    kinds = sorted({kind for tally in tallies for kind in tally})
    out: dict[str, Any] = {}
    for kind in kinds:
        entries = [t.get(kind, {}) for t in tallies]
        out[kind] = {
            "count": round(sum(e.get("count", 0) for e in entries) / n, 2),
            "sent": round(sum(e.get("sent", 0) for e in entries) / n),
            "received": round(sum(e.get("received", 0) for e in entries) / n),
        }
    return out
