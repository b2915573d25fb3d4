"""Secrets at rest: a private data_dir, the encryption key sources, the re-pickled crypto store."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from nio.crypto.sessions import InboundGroupSession, OlmAccount, OutboundGroupSession
from nio.store import DefaultStore

from bot import config as config_module
from bot.config import ConfigError
from bot.datadir import PRIVATE_UMASK, describe, make_private, survey
from bot.keys import KEY_FILE, NIO_DEFAULT_PICKLE_KEY, describe_source, encryption_key
from bot.matrix.cryptostore import CryptoStoreKeyError, opens_with, protect_stores

USER, DEVICE = "@parcel:parcel.test", "PARCELDEV"


def _config(data_dir: Path, **extra: object) -> config_module.Config:
    env = {key: str(value) for key, value in extra.items() if key.startswith("PARCEL_")}
    raw = {"homeserver": "http://127.0.0.1:1", "user_id": USER, "password": "pw",
           "data_dir": str(data_dir),
           **{key: value for key, value in extra.items() if not key.startswith("PARCEL_")}}
    return config_module.parse(raw, env=env)


@pytest.fixture
def restore_umask():
    """make_private sets the process umask; put the old one back afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- a private data_dir ----------------------------------------------------------------------


def test_new_data_dir_is_created_private_with_a_private_umask(tmp_path: Path,
                                                              restore_umask: None) -> None:
    """A missing data_dir is created 0700, and what is written afterwards is 0600."""
    data_dir = tmp_path / "new" / "data"
    assert make_private(data_dir) == []
    assert _mode(data_dir) == 0o700
    assert os.umask(PRIVATE_UMASK) == 0o077
    (data_dir / "later.db").write_bytes(b"x")
    (data_dir / "sub").mkdir()
    assert _mode(data_dir / "later.db") == 0o600 and _mode(data_dir / "sub") == 0o700


def test_what_an_older_version_left_is_tightened_and_logged(
    tmp_path: Path, restore_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    """Group/other bits go from data_dir and everything in it; owner bits stay; one log line."""
    data_dir = tmp_path / "data"
    (data_dir / "crypto").mkdir(parents=True)
    (data_dir / "media").mkdir()
    files = {data_dir / "parcel.db": 0o644, data_dir / "parcel.db-wal": 0o664,
             data_dir / "crypto" / "x.db": 0o644, data_dir / "media" / "offer-1": 0o666,
             data_dir / "tool": 0o755, data_dir / "credentials.json": 0o600}
    for path, mode in files.items():
        path.write_bytes(b"x")
        path.chmod(mode)
    for folder in (data_dir, data_dir / "crypto", data_dir / "media"):
        folder.chmod(0o755)
    (data_dir / "link").symlink_to("/etc/hostname")
    with caplog.at_level("WARNING", logger="bot.datadir"):
        changed = make_private(data_dir)
    assert len(changed) == 8  # 3 directories and 5 files; credentials.json was private
    expected = {data_dir / "parcel.db": 0o600, data_dir / "parcel.db-wal": 0o600,
                data_dir / "crypto" / "x.db": 0o600, data_dir / "media" / "offer-1": 0o600,
                data_dir / "tool": 0o700, data_dir / "credentials.json": 0o600,
                data_dir: 0o700, data_dir / "crypto": 0o700, data_dir / "media": 0o700}
    assert {path: _mode(path) for path in expected} == expected
    lines = [r.getMessage() for r in caplog.records if "readable by others" in r.getMessage()]
    assert len(lines) == 1 and "8 paths" in lines[0] and "parcel.db 644→600" in lines[0]
    caplog.clear()
    assert make_private(data_dir) == [] and not caplog.records


def test_check_config_line_reports_without_changing(tmp_path: Path) -> None:
    """describe() says what start-up would tighten and leaves the modes as they are."""
    data_dir = tmp_path / "data"
    assert "does not exist yet" in describe(data_dir)
    data_dir.mkdir(mode=0o700)
    data_dir.chmod(0o700)
    assert "private" in describe(data_dir) and "readable" not in describe(data_dir)
    (data_dir / "parcel.db").write_bytes(b"")
    (data_dir / "parcel.db").chmod(0o644)
    line = describe(data_dir)
    assert "1 path is readable by others" in line and "parcel.db 644→600" in line
    assert _mode(data_dir / "parcel.db") == 0o644
    (data_dir / "parcel.db-wal").write_bytes(b"")
    (data_dir / "parcel.db-wal").chmod(0o644)
    assert "2 paths are readable by others" in describe(data_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
@pytest.mark.parametrize("which", ["data_dir", "a file in it"])
def test_data_dir_of_another_user_stops_start_up(tmp_path: Path, which: str,
                                                 restore_umask: None) -> None:
    """Like ssh: a data_dir (or a file in it) owned by someone else is refused, unchanged."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    target = data_dir if which == "data_dir" else data_dir / "parcel.db"
    target.touch()
    os.chown(target, 65534, 65534)
    for check in (survey, make_private, describe):
        with pytest.raises(ConfigError) as info:
            check(data_dir)
        assert info.value.key == "data_dir"
        assert "is owned by" in info.value.problem and "uid 65534" in info.value.problem
        assert "chown" in info.value.problem
        # Shown after the key ("data_dir: …"), the problem does not name the key again.
        assert not info.value.problem.startswith("data_dir")
    assert _mode(data_dir) == 0o755


def test_a_file_instead_of_data_dir_is_refused(tmp_path: Path) -> None:
    """data_dir naming a file is a clear error, not a traceback."""
    path = tmp_path / "file"
    path.write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        survey(path)


# --- the key sources ---------------------------------------------------------------------------


def test_key_is_generated_once_into_a_private_file(tmp_path: Path, restore_umask: None) -> None:
    """Without a configured key a random one is written 0600 and read back on every start."""
    config = _config(tmp_path / "data")
    assert "will be generated" in describe_source(config)
    first = encryption_key(config)
    path = tmp_path / "data" / KEY_FILE
    assert _mode(path) == 0o600 and len(base64.urlsafe_b64decode(
        path.read_text().strip() + "==")) == 32
    assert str(path) in first.source and str(path) in describe_source(config)
    second = encryption_key(config)
    assert second.pickle_key == first.pickle_key and second.seeds_key == first.seeds_key
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE]
    assert path.read_text().strip() not in repr(first)


def test_configured_key_wins_and_creates_no_file(tmp_path: Path) -> None:
    """A key from the config or the environment is used as is; no key file appears."""
    from_file = _config(tmp_path, encryption_key="a-configured-key-1")
    from_env = _config(tmp_path, encryption_key="a-configured-key-1",
                       PARCEL_ENCRYPTION_KEY="an-environment-key")
    assert describe_source(from_file) == "from the config file (encryption_key)"
    assert describe_source(from_env) == "from the environment (PARCEL_ENCRYPTION_KEY)"
    key_file, key_env = encryption_key(from_file), encryption_key(from_env)
    assert key_file.pickle_key != key_env.pickle_key
    assert key_file.pickle_key == encryption_key(from_file).pickle_key
    assert not (tmp_path / KEY_FILE).exists()


def test_derived_keys_differ_per_use_and_from_nios_default(tmp_path: Path) -> None:
    """The pickle key and the seeds key are distinct, and neither is nio's default."""
    key = encryption_key(_config(tmp_path, encryption_key="a-configured-key-1"))
    assert key.pickle_key != NIO_DEFAULT_PICKLE_KEY
    assert base64.b64decode(key.pickle_key) != key.seeds_key and len(key.seeds_key) == 32


@pytest.mark.parametrize("content", ["", "short\n"])
def test_damaged_key_file_is_an_error_and_kept(tmp_path: Path, content: str) -> None:
    """An empty or truncated key file stops start-up; it is never replaced by a new key."""
    (tmp_path / KEY_FILE).write_text(content)
    with pytest.raises(ConfigError, match="damaged"):
        encryption_key(_config(tmp_path))
    assert (tmp_path / KEY_FILE).read_text() == content


# --- re-pickling nio's crypto store ------------------------------------------------------------


def _old_store(store_dir: Path, passphrase: str) -> tuple[str, str]:
    """A nio store pickled with ``passphrase``: an account and an inbound Megolm session."""
    store = DefaultStore(USER, DEVICE, str(store_dir), passphrase)
    account = OlmAccount()
    store.save_account(account)
    outbound = OutboundGroupSession()
    inbound = InboundGroupSession(outbound.session_key, account.identity_keys["ed25519"],
                                  account.identity_keys["curve25519"], "!room:parcel.test")
    store.save_inbound_group_session(inbound)
    store.database.close()
    return account.identity_keys["ed25519"], inbound.id


def test_store_with_nios_default_key_is_repickled(tmp_path: Path) -> None:
    """Account and Megolm sessions move from nio's default key to ours, keys unchanged."""
    ed25519, session_id = _old_store(tmp_path, NIO_DEFAULT_PICKLE_KEY)
    db = tmp_path / f"{USER}_{DEVICE}.db"
    assert opens_with(db, NIO_DEFAULT_PICKLE_KEY) is True
    assert protect_stores(tmp_path, "our-key") == [db]
    assert opens_with(db, NIO_DEFAULT_PICKLE_KEY) is False
    assert opens_with(db, "our-key") is True
    store = DefaultStore(USER, DEVICE, str(tmp_path), "our-key")
    account = store.load_account()
    assert account is not None and account.identity_keys["ed25519"] == ed25519
    sessions = store.load_inbound_group_sessions()
    assert sessions.get("!room:parcel.test", account.identity_keys["curve25519"], session_id)
    store.database.close()
    assert protect_stores(tmp_path, "our-key") == []  # the second start changes nothing


def test_store_under_an_unknown_key_stops_start_up(tmp_path: Path) -> None:
    """A store that opens neither with our key nor nio's default is refused and left alone."""
    _old_store(tmp_path, "some-other-key")
    db = tmp_path / f"{USER}_{DEVICE}.db"
    before = db.read_bytes()
    with pytest.raises(CryptoStoreKeyError, match="encryption key"):
        protect_stores(tmp_path, "our-key")
    assert db.read_bytes() == before


def test_empty_store_directory_needs_nothing(tmp_path: Path) -> None:
    """No store yet (the first start): nothing to do."""
    assert protect_stores(tmp_path, "our-key") == []
