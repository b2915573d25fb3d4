"""Named crash points for crash-safety tests: ``PARCEL_FAILPOINT=name`` kills the process there.

A failpoint is a no-op unless the environment names it; it then ends the process with SIGKILL,
exactly like a crash at that line (no cleanup, no flush).
"""

from __future__ import annotations

import logging
import os
import signal

ENV_VAR = "PARCEL_FAILPOINT"
logger = logging.getLogger(__name__)


def hit(name: str) -> None:
    """Crash here if ``PARCEL_FAILPOINT`` names this point."""
    if os.environ.get(ENV_VAR) == name:
        logger.warning("failpoint %s: killing the process", name)
        os.kill(os.getpid(), signal.SIGKILL)
