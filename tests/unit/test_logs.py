"""Logging set-up: JSON lines carry the fields admins parse; nio's noise stays out."""

from __future__ import annotations

import json
import logging

from bot.logs import JsonFormatter, setup_logging


def test_json_formatter_writes_one_object_per_line() -> None:
    """A JSON log line has time, level, logger and the formatted message."""
    record = logging.LogRecord("bot.attachments.offers", logging.INFO, __file__, 1,
                               "offer %d (session %d): offered", (12, 3), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "INFO" and entry["logger"] == "bot.attachments.offers"
    assert entry["message"] == "offer 12 (session 3): offered"
    assert entry["time"].endswith("Z")


def test_setup_logging_keeps_nio_quiet_even_at_debug() -> None:
    """nio's request logging (which can include tokens in URLs) stays at WARNING or above."""
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    setup_logging("DEBUG", "json")
    try:
        assert root.level == logging.DEBUG
        assert logging.getLogger("nio.responses").level >= logging.WARNING
        assert isinstance(root.handlers[0].formatter, JsonFormatter)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
