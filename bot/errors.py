"""One error hierarchy for work done on the homeserver, classified once where it is raised.

Every failure of a request to the homeserver (a send, an upload, a download, a join) becomes
either a :class:`TransientError` (try again later: connection refused or reset, timeout, 5xx,
429) or a :class:`PermanentError` (trying again cannot help: forbidden, not found, too large,
bad content). Code that does work raises these; only the scheduler (``bot/work.py``) decides
what follows: retry with backoff, or end the unit and tell the person waiting. Callers catch
:class:`WorkError`, never a tuple of library exceptions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import asyncpg

# Errcodes that say "this request will never succeed as it is".
PERMANENT_ERRCODES = frozenset({
    "M_FORBIDDEN",
    "M_NOT_FOUND",
    "M_TOO_LARGE",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_UNKNOWN_TOKEN",
    "M_MISSING_TOKEN",
    "M_INVALID_PARAM",
    "M_DUPLICATE_ANNOTATION",
    "M_UNSUPPORTED_ROOM_VERSION",
    "M_INCOMPATIBLE_ROOM_VERSION",
    "M_USER_DEACTIVATED",
    "M_GUEST_ACCESS_FORBIDDEN",
    "M_EXCLUSIVE",
    "M_ROOM_IN_USE",
})
RATE_LIMITED = "M_LIMIT_EXCEEDED"


class WorkError(Exception):
    """Root of every failure of work Parcel does; ``reason`` is fit to show to a person."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TransientError(WorkError):
    """Worth retrying later. ``retry_after`` is the wait the server asked for, in seconds."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class PermanentError(WorkError):
    """Retrying cannot help. ``code`` is a short machine-readable cause, for metrics."""

    def __init__(self, reason: str, code: str = "permanent") -> None:
        super().__init__(reason)
        self.code = code


# Exceptions from the transport (aiohttp, sockets, deadlines) that mean "not now".
TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError, asyncio.TimeoutError)
# The store's PostgreSQL connection lost or refused for now (a restart, a failover): "not now".
DATABASE_ERRORS = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError)


def from_exception(exc: BaseException, what: str) -> WorkError:
    """Classify an exception raised while doing ``what`` (already classified ones pass through)."""
    if isinstance(exc, WorkError):
        return exc
    if isinstance(exc, DATABASE_ERRORS):
        detail = str(exc) or type(exc).__name__
        return TransientError(f"{what}: the database could not be reached ({detail})")
    if isinstance(exc, TRANSPORT_ERRORS):
        detail = str(exc) or type(exc).__name__
        return TransientError(f"{what}: the homeserver could not be reached ({detail})")
    return PermanentError(f"{what}: unexpected {type(exc).__name__}: {exc}", code="internal")


def from_http(status: int, errcode: str | None, message: str, what: str,
              retry_after_ms: object = None) -> WorkError:
    """Classify an HTTP error answer (status, Matrix errcode, message) to a request for ``what``."""
    detail = f"{what}: {message or errcode or status}"
    if status == 429 or errcode == RATE_LIMITED:
        retry_after = (
            float(retry_after_ms) / 1000.0
            if isinstance(retry_after_ms, int | float) and not isinstance(retry_after_ms, bool)
            and retry_after_ms >= 0 else None
        )
        return TransientError(f"{detail} (rate limited)", retry_after=retry_after)
    if status >= 500 or status in (408, 0):
        return TransientError(detail)
    if status == 413:
        return PermanentError(detail, code="M_TOO_LARGE")
    if errcode in PERMANENT_ERRCODES:
        return PermanentError(detail, code=errcode)
    if 400 <= status < 500:
        return PermanentError(detail, code=errcode or f"http_{status}")
    return TransientError(detail)


def from_response(response: Any, what: str) -> WorkError:
    """Classify a matrix-nio ``ErrorResponse`` answered to a request for ``what``."""
    transport = getattr(response, "transport_response", None)
    status = getattr(transport, "status", None)
    errcode = getattr(response, "status_code", None)
    message = getattr(response, "message", None) or ""
    if not isinstance(status, int):
        # nio without a transport response: judge by the errcode alone.
        status = 429 if errcode == RATE_LIMITED else 400 if errcode in PERMANENT_ERRCODES else 500
    return from_http(status, errcode if isinstance(errcode, str) else None, str(message), what,
                     getattr(response, "retry_after_ms", None))
