"""Media transfer against a scripted loopback HTTP server: one attempt, failures classified."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from nio.crypto.attachments import decrypt_attachment

from bot.errors import TransientError
from bot.leader import NotLeader
from bot.matrix.media import (
    GrowingCopy,
    MediaClient,
    MediaError,
    Reservation,
    TooLarge,
    Uploaded,
    parse_mxc,
    upload_content_type,
)


class Script:
    """What the fake homeserver answers, one response per request, in order."""

    def __init__(self) -> None:
        self.responses: list[web.StreamResponse | web.Response] = []
        self.requests = 0
        self.last_body = b""
        self.seen: list[tuple[str, str]] = []  # (method, path) of every request


@pytest_asyncio.fixture
async def server() -> AsyncIterator[tuple[str, Script]]:
    script = Script()

    async def handler(request: web.Request) -> web.StreamResponse:
        script.requests += 1
        script.last_body = await request.read()
        script.seen.append((request.method, request.path))
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
    return MediaClient(url, lambda: "token", timeout)


def _following(client: MediaClient, dest: Path, copy: GrowingCopy,
               encrypt: bool = False) -> asyncio.Task[Uploaded]:
    """The staging upload of ``dest``, started before the download that writes it."""
    return asyncio.create_task(
        client.upload_following(dest, copy, "application/octet-stream", "a.bin",
                                encrypt=encrypt))


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


async def test_download_of_a_file_streams_it_to_disk(server, tmp_path: Path) -> None:
    """A 200 answer is written to the destination and measured."""
    url, script = server
    script.responses = [web.Response(body=b"hello")]
    client = _client(url)
    try:
        got = await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
    assert (tmp_path / "f").read_bytes() == b"hello" and got.size == 5
    assert got.sha256 == hashlib.sha256(b"hello").hexdigest()


async def test_download_rate_limited_is_transient_with_its_wait(server, tmp_path: Path) -> None:
    """A 429 is raised as transient carrying retry_after_ms, after one request, nothing on disk."""
    url, script = server
    script.responses = [_rate_limited()]
    client = _client(url)
    try:
        with pytest.raises(TransientError) as caught:
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
    assert caught.value.retry_after == 0.05
    assert script.requests == 1 and not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("status", "errcode", "permanent", "code"),
    [
        (502, None, False, None),
        (503, "M_UNKNOWN", False, None),
        (500, None, False, None),
        (404, "M_NOT_FOUND", True, "M_NOT_FOUND"),
        (403, "M_FORBIDDEN", True, "M_NOT_FOUND"),
        (400, "M_UNKNOWN", True, "M_UNKNOWN"),
    ],
)
async def test_download_error_answers_are_classified(
    server, tmp_path: Path, status: int, errcode: str | None, permanent: bool, code: str | None
) -> None:
    """5xx answers are transient; 4xx ones are permanent MediaErrors with a reason."""
    url, script = server
    body = {"errcode": errcode, "error": "no"} if errcode else {}
    script.responses = [web.json_response(body, status=status)]
    client = _client(url)
    try:
        with pytest.raises((MediaError, TransientError)) as caught:
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()
    assert isinstance(caught.value, MediaError) is permanent
    if permanent:
        assert caught.value.code == code and caught.value.reason
    assert script.requests == 1


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


async def test_upload_streams_the_file(server, tmp_path: Path) -> None:
    """An upload sends the file in full and returns the new URI and the plaintext's hash."""
    url, script = server
    source = tmp_path / "src"
    source.write_bytes(b"a" * 300_000)
    script.responses = [web.json_response({"content_uri": "mxc://x/new"})]
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
    script.responses = [web.json_response({"content_uri": "mxc://x/enc"})]
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
    """A server that never answers cannot stall a download forever: it is a transient failure."""
    url, script = server

    async def stall(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(body=b"late")

    script.responses = [stall]
    client = MediaClient(url, lambda: "token", 0.5)
    try:
        with pytest.raises(TransientError):
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=100)
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("answer", "permanent", "code"),
    [
        (lambda: web.json_response({"errcode": "M_TOO_LARGE"}, status=413), True, "M_TOO_LARGE"),
        (_rate_limited, False, None),
        (lambda: web.Response(status=502), False, None),
        (lambda: web.json_response({"errcode": "M_FORBIDDEN", "error": "no"}, status=403), True,
         "M_FORBIDDEN"),
    ],
)
async def test_upload_error_answers_are_classified(
    server, tmp_path: Path, answer, permanent: bool, code: str | None
) -> None:
    """413 and other 4xx are permanent (413 in plain words); 429 and 5xx are transient."""
    url, script = server
    source = tmp_path / "src"
    source.write_bytes(b"a" * 1000)
    script.responses = [answer()]
    client = _client(url)
    try:
        with pytest.raises((MediaError, TransientError)) as caught:
            await client.upload(source, "image/png", "a.png")
    finally:
        await client.close()
    assert isinstance(caught.value, MediaError) is permanent
    if permanent:
        assert caught.value.code == code
    if code == "M_TOO_LARGE":
        assert caught.value.reason == "the file is larger than the homeserver allows"


async def test_sealed_download_then_sealed_upload_round_trip(server, tmp_path: Path) -> None:
    """A sealed download leaves ciphertext on disk; the upload sends the plaintext again,
    plain or re-encrypted, and hashes the plaintext."""
    from bot.attachments.sealed import open_sealed

    url, script = server
    plaintext = bytes(range(256)) * 4000
    script.responses = [web.Response(body=plaintext),
                        web.json_response({"content_uri": "mxc://x/plain"}),
                        web.json_response({"content_uri": "mxc://x/enc"})]
    client = _client(url)
    dest = tmp_path / "offer-1"
    try:
        got = await client.download("mxc://x/y", dest, max_bytes=len(plaintext), seal=True)
        on_disk = dest.read_bytes()
        assert got.sealed_key is not None and got.sealed_key not in repr(got)
        assert got.sha256 == hashlib.sha256(plaintext).hexdigest()
        assert len(on_disk) == len(plaintext) and on_disk != plaintext
        assert hashlib.sha256(on_disk).hexdigest() != got.sha256
        with open_sealed(dest, got.sealed_key) as handle:
            assert handle.read() == plaintext
        plain = await client.upload(dest, "image/png", "a.png", sealed_key=got.sealed_key)
        assert script.last_body == plaintext and plain.sha256 == got.sha256
        enc = await client.upload(dest, "image/png", "a.png", encrypt=True,
                                  sealed_key=got.sealed_key)
    finally:
        await client.close()
    block = enc.file_block("image/png")
    assert block is not None and enc.sha256 == got.sha256
    assert decrypt_attachment(script.last_body, block["key"]["k"], block["hashes"]["sha256"],
                              block["iv"]) == plaintext


def _dribble(body: bytes, piece: int = 300_000):
    """A handler streaming ``body`` in pieces with a declared length (as Synapse does)."""

    async def answer(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), piece):
            await response.write(body[start:start + piece])
            await asyncio.sleep(0)  # let the client take each piece as it comes
        return response

    return answer


async def test_a_download_of_many_chunks_is_hashed_and_sealed_in_order(
        server, tmp_path: Path) -> None:
    """Chunks worked on in the worker thread keep their order: hash and sealed copy are right."""
    from bot.attachments.sealed import open_sealed

    url, script = server
    plaintext = hashlib.sha256(b"seed").digest() * (3 * 1024 * 1024 // 32 + 12345)
    script.responses = [_dribble(plaintext)]
    client = _client(url)
    dest = tmp_path / "offer-1"
    try:
        got = await client.download("mxc://x/y", dest, max_bytes=len(plaintext), seal=True)
    finally:
        await client.close()
    assert got.size == len(plaintext)
    assert got.sha256 == hashlib.sha256(plaintext).hexdigest()
    assert got.sealed_key is not None
    with open_sealed(dest, got.sealed_key) as handle:
        assert handle.read() == plaintext


async def test_an_upload_following_a_download_sends_the_checked_bytes(
        server, tmp_path: Path) -> None:
    """The staging upload reads the sealed copy as the encrypted download writes it: the
    homeserver gets the plaintext re-encrypted under a fresh key, with the same hash."""
    from nio.crypto.attachments import encrypt_attachment


    url, script = server
    plaintext = bytes(range(256)) * (9 * 1024 * 1024 // 256 // 2 + 77)
    ciphertext, keys = encrypt_attachment(plaintext)
    script.responses = [_dribble(ciphertext), web.json_response({"content_uri": "mxc://x/st"})]
    client = _client(url)
    copy = GrowingCopy()
    try:
        following = _following(client, tmp_path / "offer-1", copy, encrypt=True)
        got = await client.download("mxc://x/y", tmp_path / "offer-1",
                                    max_bytes=len(plaintext), encrypted_file=keys, seal=True,
                                    follow=copy)
        staged = await following
    finally:
        await client.close()
    assert staged.sha256 == got.sha256 == hashlib.sha256(plaintext).hexdigest()
    block = staged.file_block("application/octet-stream")
    assert block is not None and block["url"] == "mxc://x/st"
    assert script.last_body != ciphertext
    assert decrypt_attachment(script.last_body, block["key"]["k"], block["hashes"]["sha256"],
                              block["iv"]) == plaintext


async def test_an_upload_following_a_bad_download_never_completes(
        server, tmp_path: Path) -> None:
    """An encrypted file whose checksum fails at its end: the following upload is abandoned
    before its last byte, so the homeserver stores nothing."""
    from nio.crypto.attachments import encrypt_attachment

    from bot.attachments.mediacrypto import BadEncryptedFile

    url, script = server
    plaintext = b"x" * (3 * 1024 * 1024 + 5)
    ciphertext, keys = encrypt_attachment(plaintext)
    damaged = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    script.responses = [_dribble(damaged), web.json_response({"content_uri": "mxc://x/st"})]
    client = _client(url)
    copy = GrowingCopy()
    try:
        following = _following(client, tmp_path / "offer-1", copy)
        with pytest.raises(BadEncryptedFile):
            await client.download("mxc://x/y", tmp_path / "offer-1", max_bytes=len(plaintext),
                                  encrypted_file=keys, seal=True, follow=copy)
        with pytest.raises(Exception):  # noqa: B017, PT011 - any failure; never an upload
            await following
    finally:
        await client.close()
    assert script.last_body == b""  # the server never had a whole body
    assert len(script.responses) == 1  # the upload was never answered


async def test_an_upload_following_a_download_without_length_gives_up_at_once(
        server, tmp_path: Path) -> None:
    """Without a declared length the upload cannot say its own: following is refused and
    the download goes on alone."""

    url, script = server

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"y" * 5000)
        return response

    script.responses = [chunked]
    client = _client(url)
    copy = GrowingCopy()
    try:
        following = _following(client, tmp_path / "f", copy)
        got = await client.download("mxc://x/y", tmp_path / "f", max_bytes=10_000, seal=True,
                                    follow=copy)
        with pytest.raises(MediaError):
            await following
    finally:
        await client.close()
    assert got.size == 5000 and script.requests == 1


async def test_the_follower_is_started_only_once_the_file_exists(
        server, tmp_path: Path) -> None:
    """The follower opens the copy as soon as it is told to begin: the file must be there by
    then (else the staging from the download is lost to a race, and staged only later)."""
    from bot.attachments.sealed import Unsealer

    url, script = server
    dest = tmp_path / "offer-1"
    seen: list[bool] = []

    class Watching(GrowingCopy):
        def begin(self, size: int, reader: Unsealer) -> None:
            seen.append(dest.exists())
            super().begin(size, reader)

    script.responses = [web.Response(body=b"x" * 5000),
                        web.json_response({"content_uri": "mxc://x/st"})]
    client = _client(url)
    copy = Watching()
    try:
        following = _following(client, dest, copy)
        await client.download("mxc://x/y", dest, max_bytes=10_000, seal=True, follow=copy)
        staged = await following
    finally:
        await client.close()
    assert seen == [True]
    assert staged.uri == "mxc://x/st"


@pytest.mark.parametrize(("mimetype", "encrypted", "expected"), [
    ("image/png", False, "image/png"),
    ("image/png", True, "application/octet-stream"),
    (None, False, "application/octet-stream"),
    ("", False, "application/octet-stream"),
    (None, True, "application/octet-stream"),
])
def test_an_upload_goes_up_as_its_type_or_as_opaque_bytes_when_encrypted(
        mimetype: str | None, encrypted: bool, expected: str) -> None:
    assert upload_content_type(mimetype, encrypted) == expected


def _created(uri: str = "mxc://x/reserved") -> web.Response:
    return web.json_response({"content_uri": uri, "unused_expires_at": 1})


# (id, the homeserver's answer to /create, what reserve() gives: "uri", None or an error class)
RESERVE_CASES: list[tuple[str, web.Response, object]] = [
    ("granted", _created(), "uri"),
    ("unknown endpoint", web.json_response({"errcode": "M_UNRECOGNIZED"}, status=404), None),
    ("method not allowed", web.Response(status=405), None),
    ("old server says bad request", web.json_response({"errcode": "M_UNRECOGNIZED"},
                                                      status=400), None),
    ("pending limit: wait a day", web.json_response(
        {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 86_400_000}, status=429), None),
    ("rate limited briefly", web.json_response(
        {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 50}, status=429), TransientError),
    ("server error", web.json_response({"errcode": "M_UNKNOWN"}, status=502), TransientError),
    ("forbidden", web.json_response({"errcode": "M_FORBIDDEN"}, status=403), MediaError),
]


@pytest.mark.parametrize(("answer", "expected"), [(a, e) for _, a, e in RESERVE_CASES],
                         ids=[case[0] for case in RESERVE_CASES])
async def test_reserve_gives_a_uri_none_where_none_is_granted_or_raises(
    server, answer: web.Response, expected: object
) -> None:
    """A reservation is granted, not offered (then uploads go up plainly), or fails classified."""
    url, script = server
    script.responses = [answer]
    client = _client(url)
    try:
        if isinstance(expected, type):
            with pytest.raises(expected):  # type: ignore[arg-type]
                await client.reserve("image/png", encrypt=False)
            return
        reserved = await client.reserve("image/png", encrypt=False)
    finally:
        await client.close()
    assert script.seen == [("POST", "/_matrix/media/v1/create")]
    if expected is None:
        assert reserved is None
    else:
        assert reserved == Reservation("mxc://x/reserved", "image/png")


async def test_an_encrypted_reservation_keeps_its_key_and_goes_up_as_opaque_bytes(
    server, tmp_path: Path
) -> None:
    """The key and IV are chosen at reservation, survive the record (JSON) and are what the
    upload to the reserved URI encrypts with; the bytes go up as opaque bytes."""
    url, script = server
    plaintext = bytes(range(256)) * 3000
    source = tmp_path / "src"
    source.write_bytes(plaintext)
    script.responses = [_created("mxc://x/r1"), web.json_response({})]
    client = _client(url)
    try:
        reserved = await client.reserve("image/png", encrypt=True)
        assert reserved is not None and reserved.encrypted
        recorded = Reservation.from_json(reserved.to_json())
        assert recorded == reserved
        uploaded = await client.upload(source, "image/png", "a.png", encrypt=True,
                                       reserved=recorded)
    finally:
        await client.close()
    assert script.seen[1] == ("PUT", "/_matrix/media/v3/upload/x/r1")
    block = uploaded.file_block("image/png")
    assert uploaded.uri == "mxc://x/r1" and block is not None and block["url"] == "mxc://x/r1"
    assert decrypt_attachment(script.last_body, block["key"]["k"], block["hashes"]["sha256"],
                              block["iv"]) == plaintext
    assert reserved.key is not None and reserved.key not in repr(reserved)


@pytest.mark.parametrize("encrypt", [False, True], ids=["plain", "encrypted"])
async def test_a_repeated_upload_to_a_reserved_uri_reads_the_bytes_back(
    server, tmp_path: Path, encrypt: bool
) -> None:
    """An earlier attempt's bytes at the reserved URI (409) are read back and measured, not
    uploaded again: the same hash and, encrypted, the same file block as the first upload."""
    url, script = server
    plaintext = bytes(range(200)) * 4000
    source = tmp_path / "src"
    source.write_bytes(plaintext)
    reserved = Reservation("mxc://x/r2", "application/octet-stream")
    if encrypt:
        reserved = Reservation.from_json(
            (await _reserve(url, script, encrypt=True)).to_json())
    script.responses = [web.json_response({})]
    client = _client(url)
    try:
        first = await client.upload(source, "application/pdf", "a.pdf", encrypt=encrypt,
                                    reserved=reserved)
        sent = script.last_body
        script.responses = [
            web.json_response({"errcode": "M_CANNOT_OVERWRITE_MEDIA"}, status=409),
            web.Response(body=sent),
        ]
        again = await client.upload(source, "application/pdf", "a.pdf", encrypt=encrypt,
                                    reserved=reserved)
    finally:
        await client.close()
    media_id = reserved.uri.rsplit("/", 1)[1]
    assert script.seen[-1] == ("GET", f"/_matrix/client/v1/media/download/x/{media_id}")
    assert again.sha256 == first.sha256 == hashlib.sha256(plaintext).hexdigest()
    assert again.file_block("application/pdf") == first.file_block("application/pdf")


async def test_bytes_read_back_that_are_not_the_file_are_refused(server, tmp_path: Path) -> None:
    """A reserved URI holding something longer than the file is no copy of it."""
    url, script = server
    source = tmp_path / "src"
    source.write_bytes(b"a" * 1000)
    script.responses = [
        web.json_response({"errcode": "M_CANNOT_OVERWRITE_MEDIA"}, status=409),
        web.Response(body=b"a" * 2000),
    ]
    client = _client(url)
    try:
        with pytest.raises(MediaError):
            await client.upload(source, "text/plain", "a.txt",
                                reserved=Reservation("mxc://x/r3", "text/plain"))
    finally:
        await client.close()


async def _reserve(url: str, script: Script, encrypt: bool) -> Reservation:
    script.responses = [_created("mxc://x/r2")]
    client = _client(url)
    try:
        reserved = await client.reserve("application/pdf", encrypt=encrypt)
    finally:
        await client.close()
    assert reserved is not None
    return reserved


# -- transfers bound to the leader lease -------------------------------------------------------


class Term:
    """A leadership as a transfer sees it (the lease's check() and lost), ended at will."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.held = True

    def check(self) -> None:
        if not self.held:
            raise NotLeader("the lease ran out")

    def end(self, *, noticed: bool = True) -> None:
        """The lease ends; ``noticed``: the lease has set ``lost`` (as its renewal loop does)."""
        self.held = False
        if noticed:
            self.lost.set()


@pytest_asyncio.fixture
async def slow_server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, asyncio.Event, list[int]]]:
    """A media server that takes 1 MiB of an upload and says so; then it reads no more
    (``stalled``: the client's send blocks) or goes on reading slowly (``slow``)."""
    taken = asyncio.Event()
    received = [0]

    async def handler(http: web.Request) -> web.StreamResponse:
        while chunk := await http.content.read(65536):
            received[0] += len(chunk)
            if received[0] >= 1 << 20:
                taken.set()
                if request.param == "stalled":
                    await asyncio.sleep(3600)
                await asyncio.sleep(0.01)
        return web.json_response({"content_uri": "mxc://x/never"})

    app = web.Application(client_max_size=1 << 30)
    app.router.add_post("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", taken, received
    await runner.cleanup()


# A stalled send can only be cut by the loss being noticed, which the lease's renewal loop
# does within a renewal period (Lease.hold calls valid()).
@pytest.mark.parametrize(("slow_server", "noticed"),
                         [("stalled", True), ("slow", True), ("slow", False)],
                         indirect=["slow_server"])
async def test_a_deposed_leaders_upload_is_cut(
    slow_server: tuple[str, asyncio.Event, list[int]], tmp_path: Path, noticed: bool
) -> None:
    """A slow or stalled upload stops with NotLeader once the lease ends: at once when the
    lease is lost (even while the send is blocked), at the next chunk when it merely ran out."""
    url, taken, received = slow_server
    source = tmp_path / "big"
    source.write_bytes(b"p" * (64 << 20))
    term = Term()
    client = MediaClient(url, lambda: "token", 600.0, fence=term)
    try:
        upload = asyncio.create_task(client.upload(source, "application/pdf", "big.pdf"))
        await asyncio.wait_for(taken.wait(), 30)
        term.end(noticed=noticed)
        with pytest.raises(NotLeader):
            await asyncio.wait_for(upload, 60)  # a hang guard only
    finally:
        await client.close()
    assert received[0] < 64 << 20


async def test_a_download_stops_at_the_next_chunk_once_the_lease_is_not_held(
    server, tmp_path: Path
) -> None:
    """Each chunk of a download checks the lease: a term that ended (even unnoticed) stops it,
    and the partial file is removed."""
    url, script = server
    term = Term()
    sent = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = 64 << 20
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"d" * (1 << 20))
            sent.set()
            await asyncio.sleep(0.05)
        return response

    script.responses = [slow]  # type: ignore[list-item]
    client = MediaClient(url, lambda: "token", 600.0, fence=term)
    try:
        download = asyncio.create_task(
            client.download("mxc://x/y", tmp_path / "f", max_bytes=1 << 30))
        await asyncio.wait_for(sent.wait(), 30)
        term.end(noticed=False)
        with pytest.raises(NotLeader):
            await asyncio.wait_for(download, 30)
    finally:
        await client.close()
    assert not (tmp_path / "f").exists()


async def test_no_transfer_starts_without_the_lease(server, tmp_path: Path) -> None:
    """A transfer asked for after the lease ended is refused before any request."""
    url, script = server
    source = tmp_path / "src"
    source.write_bytes(b"a" * 1000)
    term = Term()
    term.end()
    client = MediaClient(url, lambda: "token", 10.0, fence=term)
    try:
        with pytest.raises(NotLeader):
            await client.upload(source, "image/png", "a.png")
        with pytest.raises(NotLeader):
            await client.download("mxc://x/y", tmp_path / "f", max_bytes=1000)
    finally:
        await client.close()
    assert script.requests == 0
