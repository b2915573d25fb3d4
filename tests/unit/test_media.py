"""Media transfer against a scripted loopback HTTP server: 429, 5xx, size caps, timeouts."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from nio.crypto.attachments import decrypt_attachment

from bot.matrix.media import MediaClient, MediaError, TooLarge, parse_mxc


class Script:
    """What the fake homeserver answers, one response per request, in order."""

    def __init__(self) -> None:
        self.responses: list[web.StreamResponse | web.Response] = []
        self.requests = 0
        self.last_body = b""


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handler(request: web.Request) -> web.StreamResponse:
        script.requests += 1
        script.last_body = await request.read()
        answer = script.responses.pop(0)
        if callable(answer):
            return await answer(request)
        return answer

    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", script
    await runner.cleanup()


def _client(url: str, timeout: float = 10.0) -> MediaClient:
    return MediaClient(url, lambda: "token", timeout, max_attempts=3)


def _rate_limited() -> web.Response:
    return web.json_response({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 50}, status=429)


@pytest.mark.parametrize("uri", ["mxc://example.org/abc", "mxc://[::1]:8448/Abc_-1"])
def test_parse_mxc_accepts_valid_uris(uri: str) -> None:
    """Well-formed content URIs split into server and media id."""
    assert parse_mxc(uri)[1]


@pytest.mark.parametrize("uri", [None, 42, "", "http://x/y", "mxc://x/../y", "mxc://x/a/b"])
def test_parse_mxc_refuses_anything_else(uri: object) -> None:
    """Malformed content URIs are refused with a reason fit for the sender."""
    with pytest.raises(MediaError):
        parse_mxc(uri)


async def test_download_honours_429_then_succeeds(server, tmp_path: Path) -> None:
    """A 429 is retried after retry_after_ms and the file then arrives."""
    url, script = server
    script.responses = [_rate_limited(), web.Response(body=b"hello")]
    client = _client(url)
    try:
        got = await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
    assert (tmp_path / "f").read_bytes() == b"hello" and got.size == 5
    assert script.requests == 2


async def test_download_stops_at_the_limit_without_content_length(server, tmp_path: Path) -> None:
    """A streamed body larger than the limit is cut off and nothing is left on disk."""
    url, script = server

    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        return response

    script.responses = [endless]
    client = _client(url)
    try:
        with pytest.raises(TooLarge):
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100_000)
    finally:
        await client.close()
    assert not (tmp_path / "f").exists()


async def test_download_gives_up_after_repeated_5xx(server, tmp_path: Path) -> None:
    """A homeserver answering 502 again and again ends in a MediaError, not a hang."""
    url, script = server
    script.responses = [web.Response(status=502) for _ in range(3)]
    client = _client(url)
    try:
        with pytest.raises(MediaError):
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
    assert script.requests == 3


async def test_upload_honours_429_and_streams_the_file(server, tmp_path: Path) -> None:
    """An upload rate-limited once is sent again in full and returns the new URI."""
    url, script = server
    source = tmp_path / "src"
    source.write_bytes(b"a" * 300_000)
    script.responses = [_rate_limited(),
                        web.json_response({"content_uri": "mxc://x/new"})]
    client = _client(url)
    try:
        uploaded = await client.upload(source, "image/png", "a.png")
    finally:
        await client.close()
    assert uploaded.uri == "mxc://x/new" and uploaded.file_block("image/png") is None
    assert uploaded.sha256 == hashlib.sha256(b"a" * 300_000).hexdigest()
    assert script.last_body == b"a" * 300_000


async def test_encrypted_upload_streams_ciphertext_that_decrypts(server, tmp_path: Path) -> None:
    """With encrypt=True the server receives only ciphertext, decryptable with the file block."""
    url, script = server
    plaintext = bytes(range(256)) * 5000
    source = tmp_path / "src"
    source.write_bytes(plaintext)
    script.responses = [_rate_limited(), web.json_response({"content_uri": "mxc://x/enc"})]
    client = _client(url)
    try:
        uploaded = await client.upload(source, "image/png", "a.png", encrypt=True)
    finally:
        await client.close()
    block = uploaded.file_block("image/png")
    assert block is not None and block["url"] == "mxc://x/enc"
    assert script.last_body != plaintext and len(script.last_body) == len(plaintext)
    assert decrypt_attachment(script.last_body, block["key"]["k"], block["hashes"]["sha256"],
                              block["iv"]) == plaintext
    assert uploaded.sha256 == hashlib.sha256(plaintext).hexdigest()


async def test_transfer_timeout_applies(server, tmp_path: Path) -> None:
    """A server that never answers cannot stall a download forever."""
    url, script = server

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(body=b"late")

    script.responses = [stall]
    client = MediaClient(url, lambda: "token", 0.5, max_attempts=1)
    try:
        with pytest.raises(MediaError):
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
