"""Failures are classified once: transient (retry later) or permanent (end and tell)."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import pytest

from bot.errors import PermanentError, TransientError, from_exception, from_http, from_response

# (HTTP status, errcode, retry_after_ms) -> (transient?, permanent code, retry_after seconds)
HTTP_CASES = [
    (429, "M_LIMIT_EXCEEDED", 1500, (True, None, 1.5)),
    (429, None, None, (True, None, None)),
    (400, "M_LIMIT_EXCEEDED", 200, (True, None, 0.2)),
    (429, "M_LIMIT_EXCEEDED", "soon", (True, None, None)),
    (429, "M_LIMIT_EXCEEDED", True, (True, None, None)),
    (500, "M_UNKNOWN", None, (True, None, None)),
    (502, None, None, (True, None, None)),
    (503, None, None, (True, None, None)),
    (504, None, None, (True, None, None)),
    (408, None, None, (True, None, None)),
    (403, "M_FORBIDDEN", None, (False, "M_FORBIDDEN", None)),
    (404, "M_NOT_FOUND", None, (False, "M_NOT_FOUND", None)),
    (413, "M_TOO_LARGE", None, (False, "M_TOO_LARGE", None)),
    (413, None, None, (False, "M_TOO_LARGE", None)),
    (400, "M_BAD_JSON", None, (False, "M_BAD_JSON", None)),
    (400, "M_NOT_JSON", None, (False, "M_NOT_JSON", None)),
    (400, "M_DUPLICATE_ANNOTATION", None, (False, "M_DUPLICATE_ANNOTATION", None)),
    (401, "M_UNKNOWN_TOKEN", None, (False, "M_UNKNOWN_TOKEN", None)),
    (400, "M_UNKNOWN", None, (False, "M_UNKNOWN", None)),
    (400, None, None, (False, "http_400", None)),
]


@pytest.mark.parametrize(("status", "errcode", "retry_after_ms", "expected"), HTTP_CASES)
def test_http_answers_are_classified(status, errcode, retry_after_ms, expected) -> None:
    """429 and 5xx are transient (with the server's wait); other 4xx are permanent by errcode."""
    transient, code, retry_after = expected
    error = from_http(status, errcode, "the server said no", "sending x", retry_after_ms)
    assert isinstance(error, TransientError) is transient
    assert isinstance(error, PermanentError) is not transient
    if transient:
        assert error.retry_after == retry_after
    else:
        assert error.code == code
    assert error.reason.startswith("sending x: ")


def _nio_error(status: int | None, errcode: str | None, retry_after_ms: int | None = None):
    transport = SimpleNamespace(status=status) if status is not None else None
    return SimpleNamespace(transport_response=transport, status_code=errcode,
                           message="nope", retry_after_ms=retry_after_ms)


@pytest.mark.parametrize(
    ("response", "transient", "code"),
    [
        (_nio_error(429, "M_LIMIT_EXCEEDED", 300), True, None),
        (_nio_error(502, None), True, None),
        (_nio_error(403, "M_FORBIDDEN"), False, "M_FORBIDDEN"),
        (_nio_error(None, "M_FORBIDDEN"), False, "M_FORBIDDEN"),
        (_nio_error(None, "M_LIMIT_EXCEEDED", 10), True, None),
        (_nio_error(None, None), True, None),
    ],
)
def test_nio_error_responses_are_classified(response, transient: bool, code: str | None) -> None:
    """nio error responses are judged by HTTP status, or by errcode when nio kept no status."""
    error = from_response(response, "joining !r")
    assert isinstance(error, TransientError) is transient
    if not transient:
        assert error.code == code


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (aiohttp.ClientConnectionError("refused"), True),
        (aiohttp.ServerDisconnectedError(), True),
        (ConnectionResetError("reset"), True),
        (TimeoutError(), True),
        (TimeoutError(), True),
        (OSError("network unreachable"), True),
        (ValueError("a bug"), False),
        (KeyError("a bug"), False),
    ],
)
def test_exceptions_are_classified(exc: Exception, transient: bool) -> None:
    """Transport exceptions are transient; anything else is a permanent internal error."""
    error = from_exception(exc, "uploading a.png")
    assert isinstance(error, TransientError) is transient
    if not transient:
        assert isinstance(error, PermanentError) and error.code == "internal"


def test_classified_errors_pass_through_unchanged() -> None:
    """An error classified where it was raised is not classified again."""
    original = PermanentError("too big", code="M_TOO_LARGE")
    assert from_exception(original, "anything") is original
