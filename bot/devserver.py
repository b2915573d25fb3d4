"""A throwaway Synapse on loopback, for the test suite, ``parcel-bot demo`` and the benchmarks.

:class:`Homeserver` writes a complete Synapse config into a directory (SQLite, media store,
signing key, every rate limit raised, no federation), runs Synapse as a child process in its
own process group and registers users through the shared-secret admin API.

Synapse itself must be importable by ``sys.executable`` (``pip install matrix-synapse``);
this module only imports it in the child process.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

logger = logging.getLogger(__name__)

START_DEADLINE = 60.0
"""Seconds ``start()`` waits for ``/_matrix/client/versions`` to answer."""

STOP_GRACE = 10.0
"""Seconds ``stop()`` waits after SIGTERM before it sends SIGKILL."""

STARTUP_TAIL = 12
"""Lines of Synapse's output a failed start quotes."""

# The last line of a Python traceback: "package.module.SomeError: what went wrong".
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): \S")

# Far beyond anything a test or a benchmark does, so no request is ever answered with 429.
_UNLIMITED = {"per_second": 100_000, "burst_count": 1_000_000}

# Every rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py). Synapse ignores
# unknown top-level keys, so a misspelling here would silently leave a limit in place: keep
# these names in step with that file when Synapse is upgraded.
_RATE_LIMITS: dict[str, Any] = {
    "rc_message": _UNLIMITED,
    "rc_registration": _UNLIMITED,
    "rc_registration_token_validity": _UNLIMITED,
    "rc_login": {
        "address": _UNLIMITED,
        "account": _UNLIMITED,
        "failed_attempts": _UNLIMITED,
    },
    "rc_admin_redaction": _UNLIMITED,
    "rc_joins": {"local": _UNLIMITED, "remote": _UNLIMITED},
    "rc_joins_per_room": _UNLIMITED,
    "rc_key_requests": _UNLIMITED,
    "rc_3pid_validation": _UNLIMITED,
    "rc_invites": {
        "per_room": _UNLIMITED,
        "per_user": _UNLIMITED,
        "per_issuer": _UNLIMITED,
    },
    "rc_third_party_invite": _UNLIMITED,
    "rc_media_create": _UNLIMITED,
    "rc_presence": {"per_user": _UNLIMITED},
    "rc_delayed_event_mgmt": _UNLIMITED,
    "rc_room_creation": _UNLIMITED,
    "rc_reports": _UNLIMITED,
    "rc_user_directory": _UNLIMITED,
    "rc_profile": _UNLIMITED,
    # Not a RatelimitSettings: these are the keyword arguments of FederationRatelimitSettings
    # (unknown keys make Synapse refuse to start).
    "rc_federation": {
        "window_size": 1000,
        "sleep_limit": 100_000,
        "sleep_delay": 1,
        "reject_limit": 1_000_000,
        "concurrent": 1000,
    },
    "federation_rr_transactions_per_room_per_second": 100_000,
    "remote_media_download_per_second": "1G",
    "remote_media_download_burst_count": "100G",
}

_localpart_counter = itertools.count(1)


class HomeserverError(RuntimeError):
    """The throwaway homeserver failed to start or refused a request.

    The first line of the message is the cause in a few words ("Synapse could not start:
    port 18449 is in use"); for a failed start, the last lines of Synapse's output follow.
    """


@dataclass(frozen=True)
class RegisteredUser:
    """A user registered on a :class:`Homeserver`, with a fresh logged-in device."""

    user_id: str
    password: str
    access_token: str
    device_id: str

    @property
    def localpart(self) -> str:
        """The part of the user id between ``@`` and ``:``."""
        return self.user_id[1:].split(":", 1)[0]


def unique_localpart(prefix: str) -> str:
    """Return ``prefix`` plus a short suffix unique in this process and very likely beyond.

    Tests that share one server use it so their users never collide. The prefix is lowered
    because Synapse only accepts lower-case localparts.
    """
    return f"{prefix.lower()}-{next(_localpart_counter)}{secrets.token_hex(2)}"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _signing_key_line() -> str:
    """A new Ed25519 signing key in Synapse's file format.

    The format is ``ed25519 <key id> <unpadded base64 of the 32-byte seed>``, exactly what
    ``signedjson.key.write_signing_keys`` writes; any 32 random bytes are a valid seed, so no
    subprocess or crypto library is needed.
    """
    seed = base64.b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


class Homeserver:
    """A real Synapse on loopback in a temporary directory, for tests, demo and benchmarks.

    Everything lives in ``base_dir``: ``homeserver.yaml``, the signing key, the SQLite
    database, the media store and two logs (``homeserver.log`` with Synapse's warnings,
    ``synapse-output.log`` with the process's stdout and stderr). Data survives ``stop()``
    and ``start()``; the port is chosen once per object, so ``restart()`` comes back on the
    same URL.

    Use it as an async context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(
        self,
        base_dir: Path,
        server_name: str = "parcel.test",
        port: int | None = None,
        max_upload_size: str = "100M",
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.server_name = server_name
        self.port = port if port is not None else free_port()
        self.max_upload_size = max_upload_size
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = self.base_dir / "homeserver.yaml"
        self.log_path = self.base_dir / "homeserver.log"
        self.output_path = self.base_dir / "synapse-output.log"
        self.startup_seconds: float | None = None
        """How long the last ``start()`` took, for reports and benchmarks."""
        self._process: asyncio.subprocess.Process | None = None
        self._session: aiohttp.ClientSession | None = None
        self._shared_secret = ""

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the Synapse process was started and has not exited."""
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Write the config (keeping key, secrets and data), start Synapse, wait until it answers.

        Raises :class:`HomeserverError` with the end of the logs if Synapse exits or does not
        answer ``/_matrix/client/versions`` within :data:`START_DEADLINE` seconds.
        """
        if self.running:
            return
        began = time.monotonic()
        self._write_config()
        with self.output_path.open("ab") as output:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "synapse.app.homeserver",
                "-c",
                str(self.config_path),
                cwd=self.base_dir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        atexit.register(self._kill_at_exit)
        logger.info(
            "Synapse starting: pid %s, %s, dir %s", self._process.pid, self.url, self.base_dir
        )
        try:
            await self._wait_until_ready(began + START_DEADLINE)
        except BaseException:
            await self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        logger.info("Synapse ready at %s after %.2f s", self.url, self.startup_seconds)

    async def stop(self) -> None:
        """Stop Synapse: SIGTERM to its process group, SIGKILL after :data:`STOP_GRACE` s.

        Safe to call when it is not running. Data and port are kept for a later ``start()``.
        """
        if self._session is not None:
            await self._session.close()
            self._session = None
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self._kill_at_exit)
        if process.returncode is None:
            self._signal_group(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE)
            except TimeoutError:
                logger.warning("Synapse pid %s ignored SIGTERM; killing it", process.pid)
                self._signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        # Children of Synapse (there should be none) die with the group.
        self._signal_group(process.pid, signal.SIGKILL)
        logger.info("Synapse at %s stopped (exit code %s)", self.url, process.returncode)

    async def restart(self) -> None:
        """Stop and start again on the same port with the same data (for outage tests)."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Homeserver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- users -----------------------------------------------------------------------------

    @staticmethod
    def unique_localpart(prefix: str) -> str:
        """Same as the module-level :func:`unique_localpart`."""
        return unique_localpart(prefix)

    async def register(
        self,
        localpart: str,
        password: str | None = None,
        admin: bool = False,
        displayname: str | None = None,
    ) -> RegisteredUser:
        """Register ``localpart`` through the shared-secret admin API and return its login.

        The response's access token and device id are a logged-in device the caller may use
        directly (for example with nio's ``restore_login``). A random password is made up when
        none is given. The display name is set in the same request (the API's ``displayname``
        field), which saves a ``/profile`` round trip.
        """
        if password is None:
            password = secrets.token_urlsafe(12)
        endpoint = "/_synapse/admin/v1/register"
        nonce = (await self._request("GET", endpoint))["nonce"]
        mac = hmac.new(self._shared_secret.encode("utf-8"), digestmod=hashlib.sha1)
        for part in (nonce, localpart, password):
            mac.update(part.encode("utf-8"))
            mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        body: dict[str, Any] = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": mac.hexdigest(),
        }
        if displayname is not None:
            body["displayname"] = displayname
        reply = await self._request("POST", endpoint, body)
        logger.debug("Registered %s (device %s)", reply["user_id"], reply["device_id"])
        return RegisteredUser(
            user_id=reply["user_id"],
            password=password,
            access_token=reply["access_token"],
            device_id=reply["device_id"],
        )

    # -- internals -------------------------------------------------------------------------

    def _write_config(self) -> None:
        """Write homeserver.yaml and the log config; create key and secrets on first use."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        secrets_path = self.base_dir / "secrets.json"
        if secrets_path.exists():
            kept = json.loads(secrets_path.read_text(encoding="utf-8"))
        else:
            kept = {name: secrets.token_hex(32) for name in ("registration", "macaroon", "form")}
            secrets_path.write_text(json.dumps(kept), encoding="utf-8")
        self._shared_secret = kept["registration"]

        key_path = self.base_dir / "signing.key"
        if not key_path.exists():
            key_path.write_text(_signing_key_line(), encoding="ascii")

        log_config_path = self.base_dir / "log_config.yaml"
        log_config = {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - %(message)s"
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "filename": str(self.log_path),
                    "formatter": "precise",
                    "level": "WARNING",
                    "encoding": "utf8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        log_config_path.write_text(yaml.safe_dump(log_config), encoding="utf-8")

        config: dict[str, Any] = {
            "server_name": self.server_name,
            "public_baseurl": self.url + "/",
            "pid_file": str(self.base_dir / "homeserver.pid"),
            "listeners": [
                {
                    # Client API (which also serves /_synapse/admin) only: no federation.
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.base_dir / "homeserver.db")},
            },
            "log_config": str(log_config_path),
            "media_store_path": str(self.base_dir / "media_store"),
            "max_upload_size": self.max_upload_size,
            "signing_key_path": str(key_path),
            "registration_shared_secret": kept["registration"],
            "macaroon_secret_key": kept["macaroon"],
            "form_secret": kept["form"],
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            "bcrypt_rounds": 4,
            "suppress_key_server_warning": True,
            "trusted_key_servers": [],
            # An empty whitelist forbids all outbound federation: nothing leaves loopback.
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            **_RATE_LIMITS,
        }
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    async def _wait_until_ready(self, deadline: float) -> None:
        """Poll ``/_matrix/client/versions`` until it answers 200, the process dies or time ends."""
        assert self._process is not None
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if self._process.returncode is not None:
                    raise HomeserverError(
                        f"Synapse could not start: {self.startup_failure()} (exit code "
                        f"{self._process.returncode}); the end of its output:\n"
                        f"{self.log_tail(STARTUP_TAIL)}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + "/_matrix/client/versions") as response:
                        if response.status == 200:
                            return
                if time.monotonic() > deadline:
                    raise HomeserverError(
                        f"Synapse did not answer at {self.url} within {START_DEADLINE:.0f} s; "
                        f"the end of its output:\n{self.log_tail(STARTUP_TAIL)}"
                    )
                await asyncio.sleep(0.05)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Send one JSON request to the homeserver; raise HomeserverError on a non-200."""
        if not self.running:
            raise HomeserverError(f"Synapse at {self.url} is not running")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.request(method, self.url + path, json=body) as response:
            text = await response.text()
            if response.status != 200:
                raise HomeserverError(f"{method} {path} answered {response.status}: {text}")
            reply: dict[str, Any] = json.loads(text)
            return reply

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the process output and of Synapse's own log (once when
        both end the same, as a start-up traceback does)."""
        parts = []
        seen: list[list[str]] = []
        for path in (self.output_path, self.log_path):
            if path.exists():
                tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                if tail and tail not in seen:
                    seen.append(tail)
                    parts.append(f"--- {path} ---\n" + "\n".join(tail))
        return "\n".join(parts) or "(no logs written)"

    def startup_failure(self) -> str:
        """Why Synapse stopped during start-up, in a few words, from its output."""
        text = "\n".join(
            path.read_text(encoding="utf-8", errors="replace")
            for path in (self.output_path, self.log_path) if path.exists()
        )
        if "Address already in use" in text:
            return f"port {self.port} is in use"
        # Otherwise the last line of the traceback names the exception and its message.
        errors = [line.strip() for line in text.splitlines()
                  if _EXCEPTION_LINE.match(line.strip())]
        return errors[-1] if errors else "see the end of its output below"

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        """Send ``sig`` to the process group led by ``pid``, ignoring a group already gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)

    def _kill_at_exit(self) -> None:
        """Last resort at interpreter exit: never leave a Synapse running behind a crashed run."""
        if self._process is not None and self._process.returncode is None:
            self._signal_group(self._process.pid, signal.SIGKILL)
