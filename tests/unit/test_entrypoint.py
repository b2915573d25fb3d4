"""docker/entrypoint.sh without Docker: it refuses missing and invalid configs, then execs the bot.

The real ``parcel-bot`` does the ``check-config``; ``run`` goes to a stub placed first on PATH,
which prints its arguments instead of connecting to a homeserver.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "docker" / "entrypoint.sh"
COMPOSE_CONFIG = REPO_ROOT / "docker" / "parcel.config.yaml"
REAL_BOT = Path(sys.executable).with_name("parcel-bot")

VALID = """\
homeserver: "http://127.0.0.1:8008"
user_id: "@parcel:example.org"
password: "pw"
data_dir: "./data"
"""

STUB = """\
#!/bin/sh
# Stand-in for parcel-bot: the real one checks configs, "run" only reports its arguments.
if [ "$1" = "run" ]; then
    echo "stub parcel-bot: $*"
    exit 0
fi
exec "{real}" "$@"
"""


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    """A directory with the stub parcel-bot, to put first on PATH."""
    if shutil.which("sh") is None:
        pytest.skip("no POSIX sh")
    if not REAL_BOT.exists():
        pytest.skip("parcel-bot is not installed next to this interpreter")
    directory = tmp_path / "bin"
    directory.mkdir()
    stub = directory / "parcel-bot"
    stub.write_text(STUB.format(real=REAL_BOT))
    stub.chmod(0o755)
    return directory


def run_entrypoint(
    bin_dir: Path, config: Path | None, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PARCEL_PASSWORD", "PARCEL_ACCESS_TOKEN", "PARCEL_CONFIG", "PARCEL_DATA",
                       "PARCEL_ENCRYPTION_KEY")
    }
    environ["PATH"] = f"{bin_dir}{os.pathsep}{environ.get('PATH', '')}"
    # The image's /data, stood in for by a private directory beside the stub.
    data = bin_dir.parent / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    environ["PARCEL_DATA"] = str(data)
    if config is not None:
        environ["PARCEL_CONFIG"] = str(config)
    environ.update(env)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_missing_config_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    """A config path that does not exist stops start-up with a message naming it."""
    missing = tmp_path / "nowhere" / "config.yaml"
    result = run_entrypoint(bin_dir, missing)
    assert result.returncode != 0
    assert f"no configuration file at {missing}" in result.stderr
    assert "stub parcel-bot" not in result.stdout


def test_default_config_path_is_config_yaml_under_config(bin_dir: Path) -> None:
    """Without PARCEL_CONFIG the entrypoint looks for /config/config.yaml."""
    if Path("/config/config.yaml").exists():
        pytest.skip("this machine has a /config/config.yaml")
    result = run_entrypoint(bin_dir, None)
    assert result.returncode != 0
    assert "no configuration file at /config/config.yaml" in result.stderr


def test_directory_instead_of_config_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    """A directory mounted where the file should be is refused before Python starts."""
    result = run_entrypoint(bin_dir, tmp_path)
    assert result.returncode != 0
    assert "is not a regular file" in result.stderr


def test_invalid_config_shows_the_config_error(bin_dir: Path, tmp_path: Path) -> None:
    """An invalid config stops start-up with check-config's one-line error and its status."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID.replace('"@parcel:example.org"', '"parcel"'))
    result = run_entrypoint(bin_dir, config)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith("parcel-bot: configuration error: user_id: ") for line in lines)
    assert "configuration check failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert "stub parcel-bot" not in result.stdout


def test_valid_config_execs_the_bot(bin_dir: Path, tmp_path: Path) -> None:
    """A valid config is checked, then ``parcel-bot run --config PATH`` is started."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    result = run_entrypoint(bin_dir, config)
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK" in result.stdout
    assert f"stub parcel-bot: run --config {config}" in result.stdout


def test_arguments_run_another_command(bin_dir: Path, tmp_path: Path) -> None:
    """Arguments replace the default: the entrypoint runs ``parcel-bot ARGS`` instead."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    result = run_entrypoint(bin_dir, tmp_path / "unused.yaml", "check-config", "--config",
                            str(config))
    assert result.returncode == 0, result.stderr
    assert f"{config}: OK" in result.stdout


def test_compose_example_config_is_valid(bin_dir: Path) -> None:
    """docker/parcel.config.yaml passes check-config once the secrets come from the env
    (with PostgreSQL the encryption key is required)."""
    result = run_entrypoint(bin_dir, COMPOSE_CONFIG, PARCEL_PASSWORD="secret",
                            PARCEL_ENCRYPTION_KEY="a key of at least sixteen characters")
    assert result.returncode == 0, result.stderr
    assert f"stub parcel-bot: run --config {COMPOSE_CONFIG}" in result.stdout


def test_dockerfile_makes_data_private_to_parcel() -> None:
    """The image creates /data owned by parcel with mode 0700."""
    dockerfile = (REPO_ROOT / "docker" / "Dockerfile").read_text()
    assert "chown parcel:parcel /data" in dockerfile and "chmod 0700 /data" in dockerfile


def test_missing_data_volume_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    """Without the data directory the bot is not started."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    result = run_entrypoint(bin_dir, config, PARCEL_DATA=str(tmp_path / "none"))
    assert result.returncode == 2
    assert f"no data directory at {tmp_path / 'none'}" in result.stderr
    assert "stub parcel-bot" not in result.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the volume to another user")
def test_data_volume_of_another_user_is_refused(bin_dir: Path, tmp_path: Path) -> None:
    """A /data owned by someone else stops the container with the fix in the message."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    data = tmp_path / "foreign"
    data.mkdir(mode=0o700)
    os.chown(data, 65534, 65534)
    result = run_entrypoint(bin_dir, config, PARCEL_DATA=str(data))
    assert result.returncode == 2
    assert "is owned by uid 65534" in result.stderr and "chown" in result.stderr
    assert "stub parcel-bot" not in result.stdout


def test_open_data_volume_of_the_bot_is_made_private(bin_dir: Path, tmp_path: Path) -> None:
    """A 0755 /data of the bot's own user (an older image) is narrowed to 0700, then it runs."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    data = tmp_path / "open"
    data.mkdir()
    data.chmod(0o755)
    result = run_entrypoint(bin_dir, config, PARCEL_DATA=str(data))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert f"{data} had mode 755; made it private (700)" in result.stdout
    assert f"stub parcel-bot: run --config {config}" in result.stdout


def test_check_config_reports_the_data_dir_and_the_key_source(bin_dir: Path,
                                                              tmp_path: Path) -> None:
    """The start-up check says whether data_dir is private and where the key comes from."""
    config = tmp_path / "config.yaml"
    config.write_text(VALID)
    result = run_entrypoint(bin_dir, config, PARCEL_ENCRYPTION_KEY="k" * 32)
    assert result.returncode == 0, result.stderr
    assert f"data_dir {tmp_path / 'data'}: private" in result.stdout
    assert "encryption key: from the environment (PARCEL_ENCRYPTION_KEY)" in result.stdout
