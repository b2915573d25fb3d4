"""The command line: one clear line and a non-zero exit on bad configuration, never a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from bot.devdb import PostgresServer

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
    ("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"),
    ("@a", "'@a"), ("@SUM(A1:A9)", "'@SUM(A1:A9)"), ("\tx", "'\tx"), ("\r=1", "'\r=1"),
    # A whole Matrix user id is left as it is; anything more is guarded.
    ("@carol:example.org", "@carol:example.org"), ("@bot.1_x=/+-:hs:8448", "@bot.1_x=/+-:hs:8448"),
    ("@carol:[::1]:8448", "@carol:[::1]:8448"), ("@carol:10.0.0.1", "@carol:10.0.0.1"),
    ("@a:b|cmd", "'@a:b|cmd"), ("@a:b c", "'@a:b c"), ("@Carol:hs", "'@Carol:hs"),
    ("@a:b)(x", "'@a:b)(x"), ("@:hs", "'@:hs"), ("@a:", "'@a:"),
    ("report.pdf", "report.pdf"), (42, 42), (None, None),
])
def test_csv_cells_cannot_become_formulas(value: object, expected: object) -> None:
    """Cells a spreadsheet would run as formulas are exported quoted; sender ids are not."""
    from bot.__main__ import _spreadsheet_safe

    assert _spreadsheet_safe(value) == expected


@pytest.mark.parametrize("argv", [
    ["--log-level", "DEBUG", "run", "--config", "c.yaml"],
    ["run", "--config", "c.yaml", "--log-level", "DEBUG"],
    ["log", "--log-level", "DEBUG", "--config", "c.yaml"],
], ids=["before", "after", "between"])
def test_log_level_is_accepted_before_and_after_the_subcommand(argv: list[str]) -> None:
    """--log-level works wherever it is written, as the README's `run … --log-level` shows."""
    from bot.__main__ import _parser

    assert _parser().parse_args(argv).log_level == "DEBUG"


def _store_config(tmp_path: Path, offers: int = 0, database: Path | str | None = None) -> Path:
    """A config without any password, and a store holding ``offers`` offers.

    ``database``: None for the default SQLite file in data_dir, else what the config names.
    """
    config = tmp_path / "c.yaml"
    text = f"homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\ndata_dir: {tmp_path}/d\n"
    if isinstance(database, str):
        text += f"database: '{database}'\n"
    config.write_text(text)
    asyncio.run(_fill_store(database if isinstance(database, str) else None, tmp_path / "d",
                            offers))
    return config


async def _fill_store(database: str | None, data_dir: Path, offers: int) -> None:
    from bot.attachments.model import Direction
    from bot.store import Store

    store = await Store.open(database, data_dir)
    session, _ = await store.sessions.create_session("!c:x", "@c:x", "Carol")
    for n in range(offers):
        await store.offers.create_offer(
            session_id=session.id, direction=Direction.CUSTOMER_TO_AGENT, sender="@c:x",
            sender_name="Carol", source_room="!c:x", source_event_id=f"$e{n}",
            source_content="{}", msgtype="m.file", filename=f"file-{n}-{'x' * 60}.pdf",
            declared_mimetype=None, declared_size=None)
    await store.close()


def test_log_reads_the_store_without_the_password(tmp_path: Path,
                                                        store_database: Path | str) -> None:
    """`parcel-bot log` needs no password or token: it only reads the store (either backend)."""
    config = _store_config(tmp_path, offers=1, database=store_database)
    result = subprocess.run([sys.executable, "-m", "bot", "log", "--config", str(config)],
                            capture_output=True, text=True, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("offer,session,direction")
    assert "file-0-" in result.stdout


def test_log_reads_postgres_with_the_password_from_the_environment(
    tmp_path: Path, postgres: PostgresServer, postgres_url: str
) -> None:
    """With the password only in PARCEL_DATABASE_PASSWORD, `log` reads PostgreSQL; a wrong one
    is a one-line error naming the setting that shows no password."""
    from urllib.parse import urlsplit

    _store_config(tmp_path, offers=1, database=postgres_url)
    parts = urlsplit(postgres_url)
    bare = f"postgresql://{parts.username}@{parts.hostname}:{parts.port}{parts.path}"
    config = tmp_path / "c.yaml"
    config.write_text(f"homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\n"
                      f"data_dir: {tmp_path}/d\ndatabase: '{bare}'\n")
    command = [sys.executable, "-m", "bot", "log", "--config", str(config)]
    right = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={"PATH": "/usr/bin:/bin",
                                "PARCEL_DATABASE_PASSWORD": postgres.password})
    assert right.returncode == 0, right.stderr
    assert "file-0-" in right.stdout
    wrong = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={"PATH": "/usr/bin:/bin", "PARCEL_DATABASE_PASSWORD": "wrong-one"})
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"parcel-bot: database: PostgreSQL at {bare} refused the login")
    assert "wrong-one" not in wrong.stderr and postgres.password not in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1


def test_log_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    """`parcel-bot log | head -1`: the reader goes away, the command ends with 0 and no noise."""
    config = _store_config(tmp_path, offers=1500)
    process = subprocess.Popen(
        [sys.executable, "-m", "bot", "log", "--config", str(config), "--format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.readline().strip() == b"["
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 0
    assert stderr == b""


def test_bad_since_is_a_command_line_error(tmp_path: Path) -> None:
    """A bad --since is reported by the argument parser (exit 2), not as a configuration error."""
    config = _store_config(tmp_path)
    result = _run("log", "--config", str(config), "--since", "last tuesday")
    assert result.returncode == 2
    assert "argument --since: expected a date like 2026-11-24" in result.stderr
    assert "configuration error" not in result.stderr and "Traceback" not in result.stderr


def test_check_config_reports_a_data_dir_that_cannot_be_created(tmp_path: Path) -> None:
    """check-config names data_dir when a file stands where its folder would be created."""
    (tmp_path / "plain-file").write_text("x")
    config = tmp_path / "c.yaml"
    config.write_text("homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\n"
                      f"data_dir: {tmp_path}/plain-file/data\n")
    result = _run("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"parcel-bot: configuration error: data_dir: cannot create {tmp_path}/plain-file/data: "
        f"{tmp_path}/plain-file is not a directory")
    assert not (tmp_path / "plain-file" / "data").exists()


@pytest.mark.parametrize("data_dir", ["/proc/nope", "/proc/nope/deeper"])
def test_check_config_and_run_refuse_the_same_data_dir(tmp_path: Path, data_dir: str) -> None:
    """A data_dir the system will not create (here under /proc, where even root cannot) fails
    check-config exactly as it stops run: one line naming the key, exit 2, nothing left."""
    config = tmp_path / "c.yaml"
    config.write_text("homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\npassword: pw\n"
                      f"data_dir: {data_dir}\n")
    results = [_run(command, "--config", str(config)) for command in ("check-config", "run")]
    for result in results:
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            f"parcel-bot: configuration error: data_dir: cannot create {data_dir} ("), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert results[0].stderr == results[1].stderr


def test_check_config_leaves_no_data_dir_behind(tmp_path: Path) -> None:
    """check-config creates data_dir as start-up would (to know it can), then removes it."""
    config = tmp_path / "c.yaml"
    config.write_text("homeserver: http://127.0.0.1:1\nuser_id: '@b:x'\npassword: pw\n"
                      f"data_dir: {tmp_path}/a/b/data\n")
    result = _run("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "does not exist yet; it will be created private (700)" in result.stdout
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(not Path(sys.executable).with_name("parcel-bot").exists(),
                    reason="needs the installed parcel-bot script beside the interpreter")
def test_the_demo_hints_name_a_command_this_shell_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bare name only when PATH finds this install; else the script's path (relative
    inside the folder the reader is in, as the Quick start's `.venv/bin/parcel-bot`)."""
    from bot.demo import command_name

    script = Path(sys.executable).with_name("parcel-bot")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.chdir(script.parents[2])
    assert command_name() == str(script.relative_to(script.parents[2]))
    monkeypatch.chdir(tmp_path)
    assert command_name() == str(script)
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")
    assert command_name() == "parcel-bot"
