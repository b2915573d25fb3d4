"""The command line: one clear line and a non-zero exit on bad configuration, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PARCEL_PASSWORD": "secret", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bot", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_check_config_accepts_the_example() -> None:
    """The shipped example validates."""
    result = _run("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("homeserver: http://x\nuser_id: '@b:x'\npolicy: {max_size: lots}\n",
         'policy.max_size: expected a size like "25MB", got "lots"'),
        ("homeserver: http://x\nuser_id: '@b:x'\npolicy: {max_sise: 1MB}\n",
         "policy.max_sise: unknown key (did you mean 'max_size'?)"),
        ("homeserver: [\n", "invalid YAML"),
    ],
)
def test_bad_config_is_one_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    """A bad file stops start-up with one line naming the key, and no traceback."""
    path = tmp_path / "config.yaml"
    path.write_text(text)
    for command in ("check-config", "run"):
        result = _run(command, "--config", str(path))
        assert result.returncode == 2
        assert expected in result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_missing_config_file(tmp_path: Path) -> None:
    """A missing file is named in the error."""
    result = _run("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "file not found" in result.stderr


def test_log_without_a_store_says_so(tmp_path: Path) -> None:
    """The admin log command explains that there is no store yet instead of crashing."""
    config = tmp_path / "c.yaml"
    config.write_text(f"homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\ndata_dir: {tmp_path}/d\n")
    result = _run("log", "--config", str(config))
    assert result.returncode == 1 and "no store" in result.stderr


@pytest.mark.parametrize(("value", "expected"), [
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("@a", "'@a"),
    ("report.pdf", "report.pdf"), (42, 42), (None, None),
])
def test_csv_cells_cannot_become_formulas(value: object, expected: object) -> None:
    """File names that a spreadsheet would run as formulas are exported quoted."""
    from bot.__main__ import _spreadsheet_safe

    assert _spreadsheet_safe(value) == expected
