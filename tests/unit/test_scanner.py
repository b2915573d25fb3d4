"""The external scanner: real subprocesses for clean, infected, failing, slow and missing ones."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

import pytest

from bot.attachments.policy import OK
from bot.attachments.scanner import (
    OUTPUT_LIMIT,
    SCAN_FAILED_REASON,
    VERDICT_LIMIT,
    ScanResult,
    scan,
    scanner_argv,
    verdict_line,
)
from bot.config import ScannerConfig

FAKE_SCANNER = Path(__file__).resolve().parents[1] / "fake_scanner.py"
EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def fake(on_failure: str = "reject", timeout: float = 30.0) -> ScannerConfig:
    """The fake clamdscan, run with this interpreter."""
    return ScannerConfig(
        command=(sys.executable, str(FAKE_SCANNER), "{path}"),
        timeout=timeout,
        on_failure=on_failure,
    )


def python_scanner(code: str, on_failure: str = "reject", timeout: float = 30.0) -> ScannerConfig:
    """A scanner written inline: ``code`` runs with the file path in ``sys.argv[1]``."""
    return ScannerConfig(
        command=(sys.executable, "-c", code, "{path}"), timeout=timeout, on_failure=on_failure
    )


@pytest.fixture
def clean_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(b"%PDF-1.4 nothing to see here\n")
    return path


@pytest.fixture
def eicar_file(tmp_path: Path) -> Path:
    path = tmp_path / "eicar.com.txt"
    path.write_bytes(EICAR + b"\n")
    return path


def _gone(pid: int) -> bool:
    """Whether a process no longer runs (absent, or a zombie waiting for its parent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def _wait_until_gone(pid: int, deadline: float = 5.0) -> bool:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if _gone(pid):
            return True
        await asyncio.sleep(0.05)
    return _gone(pid)


# --- pure helpers ----------------------------------------------------------------------------


def test_argv_replaces_every_placeholder_with_the_absolute_path(tmp_path: Path) -> None:
    """Every "{path}", also inside a longer argument, becomes the absolute file path."""
    path = tmp_path / "f"
    argv = scanner_argv(("scan", "--file={path}", "{path}", "-v"), path)
    assert argv == ["scan", f"--file={path}", str(path), "-v"]


def test_argv_makes_a_relative_path_absolute(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    """A relative path that looks like an option is passed absolute, never as "-rf"."""
    monkeypatch.chdir(tmp_path)
    assert scanner_argv(("scan", "{path}"), Path("-rf")) == ["scan", str(tmp_path / "-rf")]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (b"/tmp/x/file: Eicar-Test-Signature FOUND\n", "Eicar-Test-Signature FOUND"),
        (b"\n  \n/tmp/x/file: Win.Test.EICAR_HDB-1 FOUND\n\nsummary\n",
         "Win.Test.EICAR_HDB-1 FOUND"),
        (b"Infected: /tmp/x/file (Trojan.X)\n", "Infected: (Trojan.X)"),
        (b"\x1b[31mBad\xe2\x80\xaeSig\x07 FOUND\x1b[0m\n", "[31mBadSig FOUND[0m"),
        (b"tab\tand   spaces\n", "tab and spaces"),
        (b"\xff\xfe broken utf-8 FOUND\n", "\ufffd\ufffd broken utf-8 FOUND"),
        (b"", ""),
        (b"\n\n   \n", ""),
        (b"/tmp/x/file:\n", ""),
    ],
)
def test_verdict_line(output: bytes, expected: str) -> None:
    """The first non-empty line, without the path, invisible characters or extra spaces."""
    assert verdict_line(output, Path("/tmp/x/file")) == expected


def test_verdict_line_is_cut_to_the_limit() -> None:
    """A very long line is shortened to VERDICT_LIMIT characters, ending in an ellipsis."""
    line = verdict_line(b"S" * 5000 + b" FOUND", Path("/tmp/x/file"))
    assert len(line) == VERDICT_LIMIT
    assert line.endswith("\u2026")


# --- real subprocesses -----------------------------------------------------------------------


async def test_clean_file_passes(clean_file: Path) -> None:
    """Exit 0 means clean: allowed, and the scanner really ran."""
    result = await scan(clean_file, fake())
    assert result == ScanResult(clean=True, verdict=OK, scanned=True, detail="clean")


async def test_infected_file_is_rejected_with_the_signature(eicar_file: Path) -> None:
    """Exit 1 refuses the file, naming the signature but not the file's path."""
    result = await scan(eicar_file, fake())
    assert not result.clean
    assert result.scanned
    assert result.verdict.allowed is False
    assert result.verdict.code == "infected"
    assert result.verdict.reason == (
        "the malware scanner flagged it (Eicar-Test-Signature FOUND)"
    )
    assert str(eicar_file.parent) not in result.verdict.reason


async def test_eicar_across_chunks_is_found(tmp_path: Path) -> None:
    """The fake scanner finds the test string wherever it sits in a large file."""
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * ((1 << 16) - 10) + EICAR + b"\0" * 1000)
    result = await scan(path, fake())
    assert result.verdict.code == "infected"


async def test_infected_without_output_has_a_plain_reason(clean_file: Path) -> None:
    """Exit 1 with nothing printed still refuses, with the bare reason."""
    result = await scan(clean_file, python_scanner("raise SystemExit(1)"))
    assert result.verdict.code == "infected"
    assert result.verdict.reason == "the malware scanner flagged it"


async def test_hostile_scanner_output_is_cleaned_and_capped(clean_file: Path) -> None:
    """Control/bidi characters go, the path goes, the line is cut, huge output is bounded."""
    code = (
        "import sys\n"
        "out = sys.stdout\n"
        "out.write('\\x1b[1m' + sys.argv[1] + ': Evil\\u202eSig' + 'A' * 500 + ' FOUND\\n')\n"
        f"out.write('x' * {OUTPUT_LIMIT * 40})\n"
        "out.flush()\n"
        "raise SystemExit(1)\n"
    )
    result = await scan(clean_file, python_scanner(code))
    assert result.verdict.code == "infected"
    reason = result.verdict.reason
    assert reason.startswith("the malware scanner flagged it ([1m: EvilSigAAAA")
    assert "\u202e" not in reason and "\x1b" not in reason
    assert str(clean_file) not in reason
    assert len(result.detail) == VERDICT_LIMIT


async def test_scanner_error_rejects_by_default(tmp_path: Path) -> None:
    """Exit 2 (here: the file is gone) refuses the file with a plain reason."""
    result = await scan(tmp_path / "vanished.pdf", fake())
    assert result.clean is False
    assert result.scanned is False
    assert result.verdict.code == "scan_failed"
    assert result.verdict.reason == SCAN_FAILED_REASON == "it could not be checked for malware"
    assert result.detail.startswith("exit status 2: No such file or directory")


async def test_scanner_error_with_allow_lets_the_file_through(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With scanner_failure "allow", a failed scan passes the file and logs a warning."""
    with caplog.at_level(logging.WARNING, logger="bot.attachments.scanner"):
        result = await scan(tmp_path / "vanished.pdf", fake(on_failure="allow"))
    assert result.clean is True
    assert result.scanned is False
    assert result.verdict == OK
    assert any(
        record.levelno == logging.WARNING and "exit status 2" in record.getMessage()
        for record in caplog.records
    )


async def test_scanner_killed_by_a_signal_is_a_failure(clean_file: Path) -> None:
    """A scanner that dies from a signal is a failed scan, not a clean one."""
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = await scan(clean_file, python_scanner(code))
    assert result.verdict.code == "scan_failed"
    assert result.detail.startswith("killed by signal 9")


async def test_timeout_kills_the_whole_process_group(clean_file: Path, tmp_path: Path) -> None:
    """A scan past its timeout fails, and the scanner's children are killed too."""
    pidfile = tmp_path / "child.pid"
    command = ("sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pidfile))
    config = ScannerConfig(command=command + ("{path}",), timeout=0.5, on_failure="reject")
    started = time.monotonic()
    result = await scan(clean_file, config)
    assert time.monotonic() - started < 5
    assert result.verdict.code == "scan_failed"
    assert result.detail == "timed out after 0.5s"
    assert await _wait_until_gone(int(pidfile.read_text()))


async def test_timeout_with_allow_lets_the_file_through(clean_file: Path) -> None:
    """A timed-out scan with scanner_failure "allow" passes the file unscanned."""
    config = ScannerConfig(command=("sleep", "30"), timeout=0.3, on_failure="allow")
    result = await scan(clean_file, config)
    assert (result.clean, result.scanned, result.verdict) == (True, False, OK)


async def test_cancelled_scan_kills_the_scanner(clean_file: Path, tmp_path: Path) -> None:
    """Cancelling the task that awaits a scan kills the scanner's process group."""
    pidfile = tmp_path / "child.pid"
    command = ("sh", "-c", 'sleep 30 & echo $! > "$1"; wait', "sh", str(pidfile), "{path}")
    task = asyncio.create_task(scan(clean_file, ScannerConfig(command=command, timeout=60)))
    end = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < end, "the scanner never started"
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _wait_until_gone(int(pidfile.read_text()))


@pytest.mark.parametrize("on_failure", ["reject", "allow"])
async def test_missing_executable(clean_file: Path, on_failure: str) -> None:
    """A scanner that cannot be started is a failed scan, decided by scanner_failure."""
    config = ScannerConfig(command=("/nonexistent/clamdscan", "{path}"), on_failure=on_failure)
    result = await scan(clean_file, config)
    assert result.scanned is False
    assert "cannot start '/nonexistent/clamdscan'" in result.detail
    if on_failure == "reject":
        assert result.verdict.code == "scan_failed"
        assert not result.clean
    else:
        assert result.verdict == OK
        assert result.clean


async def test_fake_scanner_runs_as_an_executable(eicar_file: Path) -> None:
    """tests/fake_scanner.py is executable on its own, as a scanner command would be."""
    config = ScannerConfig(command=(str(FAKE_SCANNER), "{path}"))
    result = await scan(eicar_file, config)
    assert result.verdict.code == "infected"
