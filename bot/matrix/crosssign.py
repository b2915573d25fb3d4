"""Cross-signing of the bot's own device, which matrix-nio does not do.

Element's "exclude insecure devices" mode (MSC4153) sends no room keys to a device that its
owner has not cross-signed, so an unsigned bot only ever sees undecryptable events. At
start-up :func:`ensure_cross_signed` makes sure that

* the bot's account publishes a master key whose secret we hold (seeds in
  the ``cross_signing.json`` document of :mod:`bot.documents` (a file in data_dir, or a row
  in PostgreSQL), encrypted with AES-256-GCM under a key derived from the
  bot's encryption key, see :mod:`bot.keys`), with a self-signing and a user-signing key
  signed by it;
* the bot's current device is signed by that self-signing key.

It never replaces an identity the homeserver already publishes unless a password is
configured (the replacement needs interactive auth), and then it says so loudly: everyone who
verified the bot has to verify it again.

The pure helpers (:func:`canonical_json`, :func:`sign_json`, :func:`verify_signed_json`,
:class:`SigningKey`) follow the "Signing JSON" appendix of the Matrix spec: Ed25519 over
canonical JSON without ``signatures`` and ``unsigned``, unpadded standard base64, key ids
``ed25519:<public key>``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nio import AsyncClient

from bot import errors
from bot.documents import Documents

logger = logging.getLogger(__name__)

SEEDS_FILE = "cross_signing.json"
"""Name of the file in the data directory that holds the three private seeds."""

_SEEDS_VERSION = 2  # 1: the seeds in plain base64 (older versions); 2: sealed with AES-GCM
_PLAIN_SEEDS_VERSION = 1
_SEEDS_CIPHER = "A256GCM"
_SEED_NAMES = ("master", "self_signing", "user_signing")
_MAX_SAFE_INT = 2**53 - 1
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30)


class CrossSigningError(RuntimeError):
    """A local problem the operator must fix: a damaged or foreign seeds file, no login."""


class IdentityMismatch(CrossSigningError):
    """The homeserver publishes an identity for the bot whose seeds are not in the data dir.

    Replacing it makes every customer's client warn that the bot's identity changed, so it is
    never done by itself: the admin restores the seeds file or runs ``reset-identity``.
    """


@dataclass(frozen=True)
class CrossSigningStatus:
    """Outcome of :func:`ensure_cross_signed`.

    ``master_key`` and ``self_signing_key`` are the public keys (unpadded base64) the
    homeserver publishes for the bot when the call ends, as far as it learnt them; they are
    ours when ``cross_signed`` is true. ``detail`` says what was done, or why the device is not
    cross-signed, in a sentence fit for a log or an admin notice.
    """

    cross_signed: bool
    master_key: str | None
    self_signing_key: str | None
    detail: str


# --- encoding --------------------------------------------------------------------------------


def encode_base64(data: bytes) -> str:
    """Unpadded standard base64, as Matrix uses for keys and signatures."""
    return base64.b64encode(data).decode("ascii").rstrip("=")


def decode_base64(text: str) -> bytes:
    """Decode standard base64 with or without padding; ``ValueError`` if it is not base64."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError(f"not base64: {text!r}") from exc


def _check_canonical(value: object, where: str) -> None:
    """Refuse what Matrix canonical JSON cannot express: floats, unsafe ints, non-str keys."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT:
            raise ValueError(f"{where}: integer {value} is outside ±(2**53 - 1)")
        return
    if isinstance(value, float):
        raise ValueError(f"{where}: floats are not allowed in canonical JSON ({value!r})")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: object key {key!r} is not a string")
            _check_canonical(item, f"{where}.{key}")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_canonical(item, f"{where}[{index}]")
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


def canonical_json(obj: object) -> bytes:
    """Matrix canonical JSON of ``obj`` as UTF-8 bytes.

    Keys sorted by code point, no whitespace, non-ASCII characters unescaped. Values the spec
    forbids (floats, integers beyond ±(2**53 - 1), NaN) raise ``ValueError`` rather than
    produce bytes another implementation would encode differently.
    """
    _check_canonical(obj, "$")
    text = json.dumps(
        obj, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    return text.encode("utf-8")


# --- keys and signatures ---------------------------------------------------------------------


class SigningKey:
    """An Ed25519 key pair known by its 32-byte seed."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed has 32 bytes, not {len(seed)}")
        self._private = Ed25519PrivateKey.from_private_bytes(seed)
        self.seed = seed
        self.public_key = encode_base64(self._private.public_key().public_bytes_raw())
        """Unpadded base64 of the public key; it is also the key's name."""

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    @property
    def key_id(self) -> str:
        """``ed25519:<public key>``, the id cross-signing keys are known by."""
        return f"ed25519:{self.public_key}"

    def sign(self, message: bytes) -> str:
        """Unpadded base64 Ed25519 signature of ``message``."""
        return encode_base64(self._private.sign(message))

    def __repr__(self) -> str:  # never show the seed
        return f"SigningKey({self.key_id})"


def _signable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a signed object that the signature covers."""
    return {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}


def sign_json(
    obj: Mapping[str, Any], key: SigningKey, user_id: str, key_id: str | None = None
) -> dict[str, Any]:
    """Return a copy of ``obj`` with ``key``'s signature added under ``signatures[user_id]``.

    The signature covers the canonical JSON of ``obj`` without ``signatures`` and
    ``unsigned``; other signatures and ``unsigned`` are kept. ``key_id`` defaults to
    ``ed25519:<public key>`` (cross-signing keys); devices would use ``ed25519:<device id>``.
    """
    signed = copy.deepcopy(dict(obj))
    signature = key.sign(canonical_json(_signable(signed)))
    signatures = signed.setdefault("signatures", {})
    signatures.setdefault(user_id, {})[key_id or key.key_id] = signature
    return signed


def verify_signed_json(
    obj: Mapping[str, Any], user_id: str, public_key: str, key_id: str | None = None
) -> bool:
    """Whether ``obj`` carries a valid signature by ``public_key`` (unpadded base64) for
    ``user_id``, filed under ``key_id`` (default ``ed25519:<public_key>``).

    Missing signatures, malformed base64 and objects that cannot be canonicalised count as
    not signed; nothing raises.
    """
    try:
        signature = obj["signatures"][user_id][key_id or f"ed25519:{public_key}"]
        verifier = Ed25519PublicKey.from_public_bytes(decode_base64(public_key))
        verifier.verify(decode_base64(signature), canonical_json(_signable(obj)))
    except (KeyError, TypeError, ValueError, InvalidSignature):
        return False
    return True


def ed25519_public_key(key_object: Mapping[str, Any] | None) -> str | None:
    """The public key of a cross-signing key object (``keys: {"ed25519:X": "X"}``), if any."""
    if not isinstance(key_object, Mapping):
        return None
    keys = key_object.get("keys")
    if not isinstance(keys, Mapping):
        return None
    for key_id, value in keys.items():
        if isinstance(key_id, str) and key_id.startswith("ed25519:") and isinstance(value, str):
            return value
    return None


# --- the three cross-signing keys --------------------------------------------------------------


@dataclass(frozen=True)
class CrossSigningSeeds:
    """The bot's master, self-signing and user-signing keys."""

    user_id: str
    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls, user_id: str) -> CrossSigningSeeds:
        """Three new random keys for ``user_id``."""
        return cls(user_id, SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    def upload_body(self) -> dict[str, Any]:
        """Body of ``POST /keys/device_signing/upload``: the three public keys, the
        self-signing and user-signing keys signed by the master key.

        Ed25519 signatures are deterministic, so the body is the same every time: Synapse
        answers a repeat with 200 and no interactive auth.
        """

        def key_object(key: SigningKey, usage: str) -> dict[str, Any]:
            return {"user_id": self.user_id, "usage": [usage], "keys": {key.key_id: key.public_key}}

        return {
            "master_key": key_object(self.master, "master"),
            "self_signing_key": sign_json(
                key_object(self.self_signing, "self_signing"), self.master, self.user_id
            ),
            "user_signing_key": sign_json(
                key_object(self.user_signing, "user_signing"), self.master, self.user_id
            ),
        }


def _seeds_aad(user_id: str) -> bytes:
    """What the seeds' ciphertext is bound to: the format and the account."""
    return f"parcel cross-signing seeds v{_SEEDS_VERSION} {user_id}".encode()


async def load_seeds(
    documents: Documents, user_id: str, key: bytes
) -> CrossSigningSeeds | None:
    """Read the seeds document, decrypting it with ``key``; ``None`` if there is none.

    Raises :class:`CrossSigningError` when it is damaged, belongs to another account or does
    not decrypt with ``key``: it is never overwritten, because losing the seeds means
    resetting the bot's identity. A plaintext document of an older version is re-written
    encrypted.
    """
    text = await documents.read(SEEDS_FILE)
    if text is None:
        return None
    where = documents.where(SEEDS_FILE)
    seeds, plain = parse_seeds(text, where, user_id, key)
    if plain:
        await save_seeds(documents, seeds, key)
        logger.warning("%s held the cross-signing seeds in plain text; re-wrote it encrypted",
                       where)
    return seeds


def parse_seeds(
    text: str, where: str, user_id: str, key: bytes
) -> tuple[CrossSigningSeeds, bool]:
    """The seeds in a seeds document, and whether it was of the old plaintext version."""
    damaged = (
        "restore it from a backup, or move it away and set a password to reset the bot's "
        "cross-signing identity"
    )
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        version = raw.get("version")
        if version not in (_SEEDS_VERSION, _PLAIN_SEEDS_VERSION):
            raise ValueError(f"unknown version {version!r}")
        owner = raw["user_id"]
        if not isinstance(owner, str):
            raise ValueError("user_id is not a string")
        if owner != user_id:
            raise CrossSigningError(
                f"{where} holds the cross-signing keys of {owner}, not of {user_id}; "
                "use another data directory or database"
            )
        if version == _SEEDS_VERSION:
            if raw.get("cipher") != _SEEDS_CIPHER:
                raise ValueError(f"unknown cipher {raw.get('cipher')!r}")
            try:
                plain = AESGCM(key).decrypt(
                    decode_base64(raw["nonce"]), decode_base64(raw["ciphertext"]),
                    _seeds_aad(user_id),
                )
            except InvalidTag:
                raise CrossSigningError(
                    f"{where} cannot be decrypted with the configured encryption key: restore "
                    "the key it was written with (PARCEL_ENCRYPTION_KEY, encryption_key or "
                    "data_dir/encryption.key)"
                ) from None
            secrets = json.loads(plain)
            if not isinstance(secrets, dict):
                raise ValueError("the decrypted seeds are not a JSON object")
        else:
            secrets = raw
        keys = {name: SigningKey(decode_base64(secrets[name])) for name in _SEED_NAMES}
    except (ValueError, KeyError, TypeError) as exc:
        raise CrossSigningError(f"{where} is damaged ({exc}); {damaged}") from exc
    seeds = CrossSigningSeeds(
        user_id, keys["master"], keys["self_signing"], keys["user_signing"]
    )
    return seeds, version == _PLAIN_SEEDS_VERSION


async def save_seeds(documents: Documents, seeds: CrossSigningSeeds, key: bytes) -> None:
    """Write the seeds document encrypted with ``key`` (AES-256-GCM), atomically."""
    secrets = {name: encode_base64(getattr(seeds, name).seed) for name in _SEED_NAMES}
    nonce = os.urandom(12)
    ciphertext = AESGCM(key).encrypt(
        nonce, json.dumps(secrets).encode("utf-8"), _seeds_aad(seeds.user_id)
    )
    document = {
        "version": _SEEDS_VERSION,
        "user_id": seeds.user_id,
        "cipher": _SEEDS_CIPHER,
        "nonce": encode_base64(nonce),
        "ciphertext": encode_base64(ciphertext),
    }
    await documents.write(SEEDS_FILE, json.dumps(document, indent=2) + "\n")


# --- talking to the homeserver -----------------------------------------------------------------


class _Failed(Exception):
    """The homeserver refused or could not be reached; the message is the status detail."""


@dataclass
class _Reply:
    status: int
    body: dict[str, Any]

    @property
    def error(self) -> str:
        code = self.body.get("errcode", "no errcode")
        return f"HTTP {self.status} {code}: {self.body.get('error', '')}".rstrip(": ")


class _Api:
    """The three client-server endpoints cross-signing needs; one attempt per call."""

    def __init__(self, session: aiohttp.ClientSession, homeserver: str, token: str) -> None:
        self._session = session
        self._base = homeserver.rstrip("/") + "/_matrix/client/v3"
        self._headers = {"Authorization": f"Bearer {token}"}

    async def post(self, path: str, body: Mapping[str, Any]) -> _Reply:
        """POST JSON; other answers are returned, 429 and 5xx and dropped connections raised
        as :class:`~bot.errors.TransientError` for the caller's retry."""
        what = f"POST {path}"
        try:
            async with self._session.post(
                self._base + path, json=body, headers=self._headers, timeout=_REQUEST_TIMEOUT
            ) as response:
                try:
                    payload = await response.json(content_type=None)
                except ValueError:
                    payload = None
                reply = _Reply(response.status, payload if isinstance(payload, dict) else {})
        except Exception as exc:  # noqa: BLE001 - classified here, once
            raise errors.from_exception(exc, what) from exc
        if reply.status == 429 or reply.status >= 500:
            raise errors.from_http(reply.status, reply.body.get("errcode"), reply.error, what,
                                   reply.body.get("retry_after_ms"))
        return reply


@contextlib.asynccontextmanager
async def _http_session(
    session: aiohttp.ClientSession | None,
) -> AsyncIterator[aiohttp.ClientSession]:
    if session is not None:
        yield session
        return
    async with aiohttp.ClientSession() as own:
        yield own


@dataclass
class _Published:
    """What ``/keys/query`` says about the bot's own account and device."""

    master: str | None
    self_signing: str | None
    device: dict[str, Any] | None


class _Run:
    """One pass of :func:`ensure_cross_signed` for one user and device."""

    def __init__(
        self,
        api: _Api,
        user_id: str,
        device_id: str,
        device_ed25519: str,
        documents: Documents,
        password: str | None,
        seeds_key: bytes,
        reset: bool,
    ) -> None:
        self.reset = reset
        self.api = api
        self.user_id = user_id
        self.device_id = device_id
        self.device_ed25519 = device_ed25519
        self.documents = documents
        self.seeds_where = documents.where(SEEDS_FILE)
        self.password = password
        self.seeds_key = seeds_key
        self.master: str | None = None
        self.self_signing: str | None = None

    def status(self, cross_signed: bool, detail: str) -> CrossSigningStatus:
        return CrossSigningStatus(cross_signed, self.master, self.self_signing, detail)

    async def run(self, seeds: CrossSigningSeeds | None) -> CrossSigningStatus:
        published = await self.query()
        device = published.device
        if device is None:
            raise _Failed(
                f"the homeserver has no keys for device {self.device_id}; upload the device "
                "keys (client.keys_upload()) before cross-signing"
            )
        if device.get("keys", {}).get(f"ed25519:{self.device_id}") != self.device_ed25519:
            raise _Failed(
                f"the homeserver's keys for device {self.device_id} are not this device's "
                "keys; refusing to sign them"
            )

        if seeds is not None and published.master == seeds.master.public_key:
            if published.self_signing == seeds.self_signing.public_key:
                keys_done = "cross-signing keys already published"
            else:
                # Only we can sign a self-signing key for our master key, so it is missing:
                # adding it still counts as changing the keys and needs interactive auth.
                await self.upload_keys(seeds, replacing=True)
                keys_done = "re-published the self-signing key"
        elif published.master is None:
            if seeds is None:
                seeds = CrossSigningSeeds.generate(self.user_id)
                await save_seeds(self.documents, seeds, self.seeds_key)
            await self.upload_keys(seeds, replacing=False)
            keys_done = "published new cross-signing keys"
        else:
            ours = (
                f"but {self.seeds_where} holds {seeds.master.public_key}"
                if seeds is not None
                else f"and {self.seeds_where} does not exist"
            )
            why = f"the homeserver publishes master key {published.master} for {self.user_id}"
            why = f"{why}, {ours}"
            if not self.reset:
                raise IdentityMismatch(
                    f"{why}. Restore the seeds from a backup, or, to give the bot a new "
                    "identity (everyone who verified it must verify it again), run "
                    "`parcel-bot reset-identity --config FILE`"
                )
            if self.password is None:
                raise _Failed(
                    f"{why}; replacing the bot's identity needs its password in the "
                    f"configuration: device {self.device_id} stays unsigned"
                )
            old_master = published.master
            if seeds is None:
                seeds = CrossSigningSeeds.generate(self.user_id)
                # Saved before the upload: a published identity must never lack its seeds.
                await save_seeds(self.documents, seeds, self.seeds_key)
            await self.upload_keys(seeds, replacing=True)
            logger.warning(
                "%s; replaced it: the cross-signing identity of %s changed from master key %s "
                "to %s, so everyone who verified the bot must verify it again",
                why, self.user_id, old_master, seeds.master.public_key,
            )
            keys_done = f"replaced master key {old_master} with {seeds.master.public_key}"

        device_done = await self.sign_device(device, seeds.self_signing)
        return self.status(True, f"{keys_done}; {device_done}")

    async def query(self) -> _Published:
        reply = await self.api.post("/keys/query", {"device_keys": {self.user_id: []}})
        if reply.status != 200:
            raise _Failed(f"querying the bot's own keys failed: {reply.error}")
        body = reply.body
        self.master = ed25519_public_key(body.get("master_keys", {}).get(self.user_id))
        self.self_signing = ed25519_public_key(
            body.get("self_signing_keys", {}).get(self.user_id)
        )
        device = body.get("device_keys", {}).get(self.user_id, {}).get(self.device_id)
        if not isinstance(device, dict):
            device = None
        return _Published(self.master, self.self_signing, device)

    async def upload_keys(self, seeds: CrossSigningSeeds, *, replacing: bool) -> None:
        """Publish ``seeds``; answer the password challenge if one comes and we may."""
        body = seeds.upload_body()
        path = "/keys/device_signing/upload"
        reply = await self.api.post(path, body)
        if reply.status == 401 and "flows" in reply.body:
            if not replacing or self.password is None:
                raise _Failed(
                    "the homeserver wants interactive auth to publish cross-signing keys for "
                    f"{self.user_id} and no password is configured"
                )
            stages = {s for flow in reply.body["flows"] for s in flow.get("stages", [])}
            if "m.login.password" not in stages:
                raise _Failed(
                    "the homeserver does not offer password auth for replacing the "
                    f"cross-signing keys of {self.user_id} (it offers {sorted(stages)}); "
                    "approve the reset on the account page and restart"
                )
            auth = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": self.user_id},
                "password": self.password,
                "session": reply.body.get("session"),
            }
            reply = await self.api.post(path, {**body, "auth": auth})
            if reply.status == 401:
                raise _Failed(
                    f"the homeserver refused the password for {self.user_id} while replacing "
                    f"its cross-signing keys ({reply.error})"
                )
        if reply.status != 200:
            raise _Failed(f"publishing the cross-signing keys failed: {reply.error}")
        self.master = seeds.master.public_key
        self.self_signing = seeds.self_signing.public_key
        logger.info(
            "published cross-signing keys for %s: master %s, self-signing %s",
            self.user_id, self.master, self.self_signing,
        )

    async def sign_device(self, device: dict[str, Any], self_signing: SigningKey) -> str:
        """Sign the device with the self-signing key unless it already carries our signature."""
        if verify_signed_json(device, self.user_id, self_signing.public_key):
            return f"device {self.device_id} already signed"
        signed = sign_json(_signable(device), self_signing, self.user_id)
        reply = await self.api.post(
            "/keys/signatures/upload", {self.user_id: {self.device_id: signed}}
        )
        if reply.status != 200:
            raise _Failed(
                f"uploading the signature of device {self.device_id} failed: {reply.error}"
            )
        # Synapse answers 200 even when it rejects a signature; the reasons are in here.
        failures = reply.body.get("failures") or {}
        failure = failures.get(self.user_id, {}).get(self.device_id)
        if failures:
            raise _Failed(
                f"the homeserver rejected the signature of device {self.device_id}: "
                f"{json.dumps(failure if failure is not None else failures)}"
            )
        logger.info(
            "signed device %s of %s with self-signing key %s",
            self.device_id, self.user_id, self_signing.public_key,
        )
        return f"signed device {self.device_id}"


async def ensure_cross_signed(
    client: AsyncClient,
    documents: Documents,
    password: str | None,
    *,
    seeds_key: bytes,
    reset: bool = False,
    session: aiohttp.ClientSession | None = None,
) -> CrossSigningStatus:
    """Make sure the bot's device is cross-signed by the bot's own identity; say how it went.

    Call once at start-up, after login and after the device keys were uploaded. The seeds of
    the master, self-signing and user-signing keys live in the ``cross_signing.json`` document
    of ``documents`` (a 0600 file in data_dir, or a row in the database), encrypted with
    ``seeds_key`` (:attr:`bot.keys.EncryptionKey.seeds_key`).
    When the homeserver has no identity for the bot, a new one is published (Synapse needs no
    interactive auth for that). When it has a different one (or we have no seeds),
    :class:`IdentityMismatch` is raised, unless ``reset`` is given (the admin's
    ``reset-identity`` command): then it is replaced through password auth, with a WARNING.
    A second call does one ``/keys/query`` and nothing else.

    Homeserver refusals are logged as errors and returned as a status with
    ``cross_signed=False``; an unreachable homeserver raises
    :class:`~bot.errors.TransientError` for the caller to retry. :class:`CrossSigningError`
    is raised for local problems: no login, a damaged or foreign seeds file, an identity
    mismatch. ``session`` lets the caller share an aiohttp session; by default a private one
    is used and closed.
    """
    user_id, device_id, token = client.user_id, client.device_id, client.access_token
    if not (user_id and device_id and token):
        raise CrossSigningError("log in before cross-signing the device")
    if client.olm is None:
        detail = (
            f"end-to-end encryption is off for device {device_id}, so it has no device keys "
            "to cross-sign"
        )
        logger.error("not cross-signing %s: %s", user_id, detail)
        return CrossSigningStatus(False, None, None, detail)
    device_ed25519 = client.olm.account.identity_keys["ed25519"]
    seeds = await load_seeds(documents, user_id, seeds_key)
    async with _http_session(session) as http:
        run = _Run(
            _Api(http, client.homeserver, token),
            user_id, device_id, device_ed25519, documents, password, seeds_key, reset,
        )
        try:
            status = await run.run(seeds)
        except _Failed as exc:
            logger.error("device %s of %s is not cross-signed: %s", device_id, user_id, exc)
            return run.status(False, str(exc))
    logger.info("cross-signing of %s device %s: %s", user_id, device_id, status.detail)
    return status
