"""Run the external malware scanner (e.g. clamdscan) on one file and turn its answer into a verdict.

The command comes from ``policy.scanner`` in the config: a list of arguments in which every
``{path}`` is replaced by the file to scan. It runs without a shell, in its own process group
(so a timeout kills everything it started), with stdin closed and its output captured up to
:data:`OUTPUT_LIMIT` bytes per stream. The exit status follows the ClamAV convention:

* 0: clean;
* 1: infected; the scanner's first non-empty output line, cleaned, becomes the verdict text;
* anything else, a command that cannot be started, or a timeout: the scan failed, and
  ``policy.scanner_failure`` decides: ``reject`` refuses the file, ``allow`` lets it through
  with a logged warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path

from bot.attachments.policy import OK, Verdict
from bot.attachments.reasons import Reason
from bot.attachments.text import ELLIPSIS, strip_invisible
from bot.config import PATH_PLACEHOLDER, ScannerConfig
from bot.i18n import N_

logger = logging.getLogger(__name__)

# Bytes of stdout and of stderr kept from one scan; the rest is read and dropped.
OUTPUT_LIMIT = 64 * 1024
# Longest scanner line shown to users, in characters.
VERDICT_LIMIT = 200
_READ_CHUNK = 64 * 1024
_SPACES = re.compile(r"\s+")

EXIT_CLEAN = 0
EXIT_INFECTED = 1

SCAN_FAILED_REASON = N_("it could not be checked for malware")


@dataclass(frozen=True)
class ScanResult:
    """What the scan means for the file.

    ``clean`` is True when nothing stops the file: the scanner found it clean, or the scan
    failed and ``scanner_failure`` is ``allow`` (then ``scanned`` is False). ``verdict`` is
    :data:`~bot.attachments.policy.OK` or a refusal with code ``infected`` or ``scan_failed``
    whose reason completes "<file> was not sent: <reason>". ``scanned`` is True when the
    scanner ran to a clean/infected answer. ``detail`` is for logs only (exit status, the
    scanner's own words, the path): never show it to users.
    """

    clean: bool
    verdict: Verdict
    scanned: bool
    detail: str = ""


def scanner_argv(command: tuple[str, ...] | list[str], path: Path) -> list[str]:
    """The command's arguments with every ``{path}`` replaced by the (absolute) file path.

    The path is made absolute so that it can never be read as an option (``-x``).
    """
    target = os.fspath(path.absolute())
    return [argument.replace(PATH_PLACEHOLDER, target) for argument in command]


def verdict_line(output: bytes, path: Path) -> str:
    """The first non-empty line of ``output``, made safe to show to users.

    A leading ``<path>:`` (how ClamAV names the file it scanned) and any other mention of the
    path are removed, control and bidi characters are stripped, whitespace runs become one
    space, and the result is cut to :data:`VERDICT_LIMIT` characters. "" if there is none.
    """
    spellings = _path_spellings(path)
    for raw in output.decode("utf-8", errors="replace").splitlines():
        line = raw.strip()
        for spelling in spellings:
            if line.startswith(spelling + ":"):
                line = line[len(spelling) + 1 :]
                break
        for spelling in spellings:
            line = line.replace(spelling, "")
        line = _SPACES.sub(" ", strip_invisible(line)).strip()
        if line:
            if len(line) > VERDICT_LIMIT:
                line = line[: VERDICT_LIMIT - 1].rstrip() + ELLIPSIS
            return line
    return ""


def _path_spellings(path: Path) -> list[str]:
    """The ways a scanner may print the path, longest first (so prefixes do not win)."""
    spellings = {os.fspath(path), os.fspath(path.absolute())}
    with contextlib.suppress(OSError, RuntimeError):
        spellings.add(os.fspath(path.resolve()))
    return sorted((s for s in spellings if s), key=len, reverse=True)


async def scan(path: Path, scanner: ScannerConfig) -> ScanResult:
    """Run ``scanner.command`` on ``path`` and return what it means for the file.

    Never raises for a scanner problem (missing executable, crash, unexpected exit status,
    timeout): those become a failed scan, decided by ``scanner.on_failure``. If the calling
    task is cancelled, the scanner's process group is killed before the cancellation goes on.
    """
    argv = scanner_argv(scanner.command, path)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:  # not found, not executable, NUL in an argument
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return _failed(scanner, path, f"cannot start {argv[0]!r}: {reason}")

    assert process.stdout is not None and process.stderr is not None
    readers = (
        asyncio.ensure_future(_read_capped(process.stdout)),
        asyncio.ensure_future(_read_capped(process.stderr)),
    )
    timed_out = False
    try:
        async with asyncio.timeout(scanner.timeout):
            stdout, stderr = await asyncio.gather(*readers)
            status = await process.wait()
    except TimeoutError:
        timed_out = True
    finally:
        if timed_out or process.returncode is None:
            # Timed out or cancelled: kill everything the scanner started, then reap it.
            _kill_group(process.pid)
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            with contextlib.suppress(ProcessLookupError):
                await process.wait()

    if timed_out:
        return _failed(scanner, path, f"timed out after {scanner.timeout:g}s")
    if status == EXIT_CLEAN:
        logger.debug("scan of %s: clean", path)
        return ScanResult(clean=True, verdict=OK, scanned=True, detail="clean")
    if status == EXIT_INFECTED:
        line = verdict_line(stdout, path) or verdict_line(stderr, path)
        facts = (Reason(N_("the malware scanner flagged it ({finding})"), {"finding": line})
                 if line else Reason(N_("the malware scanner flagged it")))
        logger.info("scan of %s: infected (%s)", path, line or "no details")
        return ScanResult(
            clean=False,
            verdict=Verdict(allowed=False, code="infected", reason=facts.render(), facts=facts),
            scanned=True,
            detail=line or "infected",
        )
    words = verdict_line(stderr, path) or verdict_line(stdout, path)
    how = f"killed by signal {-status}" if status < 0 else f"exit status {status}"
    return _failed(scanner, path, f"{how}: {words}" if words else how)


def _failed(scanner: ScannerConfig, path: Path, detail: str) -> ScanResult:
    """A scan without an answer, decided by ``scanner.on_failure``."""
    if scanner.on_failure == "allow":
        logger.warning(
            "scan of %s failed (%s); letting the file through (scanner_failure: allow)",
            path,
            detail,
        )
        return ScanResult(clean=True, verdict=OK, scanned=False, detail=detail)
    logger.warning("scan of %s failed (%s); refusing the file", path, detail)
    return ScanResult(
        clean=False,
        verdict=Verdict(allowed=False, code="scan_failed", reason=SCAN_FAILED_REASON,
                        facts=Reason(SCAN_FAILED_REASON)),
        scanned=False,
        detail=detail,
    )


async def _read_capped(stream: asyncio.StreamReader) -> bytes:
    """Read ``stream`` to its end, keeping the first :data:`OUTPUT_LIMIT` bytes."""
    kept = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        if len(kept) < OUTPUT_LIMIT:
            kept += chunk[: OUTPUT_LIMIT - len(kept)]
    return bytes(kept)


def _kill_group(pgid: int) -> None:
    """SIGKILL the scanner's process group (its pid: it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
