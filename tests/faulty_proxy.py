"""A loopback HTTP proxy in front of the real Synapse that can fail or slow chosen requests.

The bot is pointed at the proxy; everything is forwarded to Synapse as is (streamed both
ways) except requests matching a rule, which are answered with a 502 or have their connection
dropped, a given number of times. It lets a test make exactly one kind of request fail while
the homeserver otherwise works, as a flaky load balancer in front of Synapse would. ``rate``
limits the bytes per second of every body, so that a transfer is still under way when the
test stops Synapse behind it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate", "host"}


@dataclass
class Rule:
    """Fail ``times`` requests whose method and path match, then let them through."""

    method: str
    path: re.Pattern[str]
    times: int
    how: str  # "502", "403" (refused for good: M_FORBIDDEN) or "drop"
    hits: int = 0


class FaultyProxy:
    """``async with FaultyProxy(upstream) as proxy:`` then point the bot at ``proxy.url``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.rate: float | None = None  # bytes per second, per body; None for full speed
        # Bytes per second of request bodies (uploads) when they must crawl slower than
        # downloads; None: ``rate`` applies to them too.
        self.upload_rate: float | None = None
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request, in order
        self.queries: list[tuple[str, str]] = []  # (path, query string) beside ``seen``
        # ("start" | "end", method, path), in order: "end" once a response was sent in full.
        self.log: list[tuple[str, str, str]] = []
        self.log_at: list[float] = []  # time.monotonic() of each entry of :attr:`log`
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def fail(self, method: str, path_regex: str, times: int, how: str = "502") -> Rule:
        """Add a rule; returns it so the test can read ``hits``."""
        rule = Rule(method.upper(), re.compile(path_regex), times, how)
        self.rules.append(rule)
        return rule

    async def __aenter__(self) -> FaultyProxy:
        self._session = aiohttp.ClientSession(auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        # At exit, cut what is still being forwarded (a bot's 30 s long poll) instead of
        # waiting for it (aiohttp's default waits up to 60 s).
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
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

    def _rule_for(self, request: web.Request) -> Rule | None:
        for rule in self.rules:
            if (rule.hits < rule.times and rule.method == request.method
                    and rule.path.search(request.path)):
                return rule
        return None

    def position(self, what: str, method: str, path_regex: str) -> int | None:
        """Where in :attr:`log` the first matching start or end is; None if there is none."""
        pattern = re.compile(path_regex)
        for index, (kind, m, path) in enumerate(self.log):
            if kind == what and m == method and pattern.search(path):
                return index
        return None

    def count(self, method: str, path_regex: str) -> int:
        """How many requests so far matched ``method`` and ``path_regex``."""
        pattern = re.compile(path_regex)
        return sum(1 for m, path in self.seen if m == method and pattern.search(path))

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path))
        self.queries.append((request.path, request.query_string))
        self.log.append(("start", request.method, request.path))
        self.log_at.append(time.monotonic())
        rule = self._rule_for(request)
        if rule is not None:
            rule.hits += 1
            if rule.how == "drop":
                assert request.transport is not None
                request.transport.close()
                raise web.HTTPBadGateway()
            if rule.how == "403":
                return web.json_response({"errcode": "M_FORBIDDEN", "error": "injected 403"},
                                         status=403)
            return web.json_response({"errcode": "M_UNKNOWN", "error": "injected 502"},
                                     status=502)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = self._paced(request.content, upload=True) if request.body_exists else None
        try:
            async with self._session.request(
                request.method, self.upstream + request.rel_url.path_qs, headers=headers,
                data=body, allow_redirects=False,
            ) as upstream:
                response = web.StreamResponse(status=upstream.status)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_BY_HOP:
                        response.headers[key] = value
                await response.prepare(request)
                async for chunk in self._paced(upstream.content):
                    await response.write(chunk)
                await response.write_eof()
                self.log.append(("end", request.method, request.path))
                self.log_at.append(time.monotonic())
                return response
        except (aiohttp.ClientError, ConnectionError):
            # Synapse behind us went away: as a load balancer would, cut the client off.
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPBadGateway() from None

    async def _paced(self, stream: aiohttp.StreamReader,
                     upload: bool = False) -> AsyncIterator[bytes]:
        async for chunk in stream.iter_chunked(1 << 16):
            rate = (self.upload_rate or self.rate) if upload else self.rate
            if rate:
                await asyncio.sleep(len(chunk) / rate)
            yield chunk
