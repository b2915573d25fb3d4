"""The data directory is private by construction: nobody but the bot's user can read it.

``data_dir`` holds the store (every chat's attachment log), the crypto store (the bot's Olm
account and Megolm sessions), the login, the cross-signing seeds and the checked copies of
files. :func:`make_private` runs first at start-up: it sets the process umask to 077, so every
file the bot, SQLite and matrix-nio create afterwards is 0600 and every directory 0700; it
creates ``data_dir`` 0700; and it removes the group and other permission bits from whatever an
older version left behind, logging once what it changed.

Like ssh with its keys, it refuses a ``data_dir`` owned by another user, or anything in it
that it cannot make private: start-up stops with a :class:`~bot.config.ConfigError` naming
the path and how to fix it. :func:`survey` finds the same without changing anything, for
``check-config``.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from bot.config import ConfigError

logger = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
_OPEN_BITS = 0o077  # any permission for the group or for others
_LISTED = 8  # paths named in the one log line; the rest are counted


@dataclass(frozen=True)
class Loose:
    """A path readable, writable or searchable by others, and the mode it will get."""

    path: Path
    mode: int

    @property
    def private_mode(self) -> int:
        """The same permissions for the owner, none for anyone else."""
        return self.mode & ~_OPEN_BITS

    def describe(self, root: Path) -> str:
        """``parcel.db 644→600``, relative to ``root``."""
        name = "data_dir" if self.path == root else os.fspath(self.path.relative_to(root))
        return f"{name} {self.mode:o}→{self.private_mode:o}"


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _foreign(path: Path, owner: int, root: Path) -> ConfigError:
    me = os.geteuid()
    # The error is shown after the key ("data_dir: ..."): the path alone says which.
    what = f"{root}" if path == root else f"{path} (in data_dir)"
    try:
        name = pwd.getpwuid(me).pw_name
    except KeyError:
        name = str(me)
    return ConfigError(
        "data_dir",
        f"{what} is owned by {_user(owner)}, not by {_user(me)} who runs the bot; refusing "
        f"to keep secrets there (as root: chown -R {name} {root} && chmod 700 {root})",
    )


def survey(data_dir: Path) -> list[Loose]:
    """What in ``data_dir`` others may access, without changing anything.

    Returns [] for a ``data_dir`` that does not exist yet. Raises :class:`ConfigError` when
    ``data_dir`` is not a directory, or it or anything in it belongs to another user.
    Symbolic links are not followed (their own mode means nothing on Linux).
    """
    try:
        top = data_dir.stat()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ConfigError("data_dir", f"cannot inspect {data_dir} ({exc.strerror})") from None
    if not stat.S_ISDIR(top.st_mode):
        raise ConfigError("data_dir", f"{data_dir} is not a directory")
    me = os.geteuid()
    if top.st_uid != me:
        raise _foreign(data_dir, top.st_uid, data_dir)
    loose = [Loose(data_dir, stat.S_IMODE(top.st_mode))] if top.st_mode & _OPEN_BITS else []

    def on_error(exc: OSError) -> None:
        raise ConfigError(
            "data_dir", f"cannot read {exc.filename} ({exc.strerror}); it must be the bot's"
        )

    for folder, dirs, files in os.walk(data_dir, onerror=on_error):
        for name in (*dirs, *files):
            path = Path(folder, name)
            try:
                info = path.lstat()
            except FileNotFoundError:
                continue  # removed while we looked (a finished temporary file)
            if stat.S_ISLNK(info.st_mode):
                continue
            if info.st_uid != me:
                raise _foreign(path, info.st_uid, data_dir)
            if info.st_mode & _OPEN_BITS:
                loose.append(Loose(path, stat.S_IMODE(info.st_mode)))
    return loose


def make_private(data_dir: Path) -> list[Loose]:
    """Set the umask to 077, create ``data_dir`` 0700 and make everything in it private.

    Returns what was tightened (logged once as a warning). Raises :class:`ConfigError` when
    ``data_dir`` belongs to another user or a path cannot be made private (a file system that
    ignores permissions, a file of another user).
    """
    os.umask(PRIVATE_UMASK)
    create(data_dir)
    loose = survey(data_dir)
    for item in loose:
        try:
            os.chmod(item.path, item.private_mode)
            after = stat.S_IMODE(item.path.lstat().st_mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(
                "data_dir", f"cannot make {item.path} private ({exc.strerror})"
            ) from None
        if after & _OPEN_BITS:
            raise ConfigError(
                "data_dir",
                f"cannot make {item.path} private: its mode stays {after:o} (a file system "
                "that ignores permissions?); put data_dir on one that keeps them",
            )
    if loose:
        shown = ", ".join(item.describe(data_dir) for item in loose[:_LISTED])
        more = f" and {len(loose) - _LISTED} more" if len(loose) > _LISTED else ""
        logger.warning(
            "data_dir %s was readable by others: removed group/other access from %s (%s%s)",
            data_dir, paths(len(loose)), shown, more,
        )
    return loose


def describe(data_dir: Path) -> str:
    """One line for ``check-config``: is ``data_dir`` private, or what start-up will tighten.

    Raises :class:`ConfigError` for what start-up would refuse.
    """
    loose = survey(data_dir)
    if not data_dir.exists():
        return f"data_dir {data_dir}: does not exist yet; it will be created private (700)"
    if not loose:
        owner = _user(os.geteuid())
        return f"data_dir {data_dir}: private (owned by {owner}, no access for others)"
    shown = ", ".join(item.describe(data_dir) for item in loose[:_LISTED])
    more = f" and {len(loose) - _LISTED} more" if len(loose) > _LISTED else ""
    verb = "is" if len(loose) == 1 else "are"
    return (f"data_dir {data_dir}: {paths(len(loose))} {verb} readable by others and will be "
            f"made private at start ({shown}{more})")


def paths(count: int) -> str:
    """ "1 path", "3 paths"."""
    return "1 path" if count == 1 else f"{count} paths"


def create(data_dir: Path) -> list[Path]:
    """Create ``data_dir`` (0700) and its missing parents; return the folders it created,
    outermost first. ``run`` and ``check-config`` both go through here, so they agree on what
    can be created: the operating system answers, not a guess from permission bits.

    Raises :class:`ConfigError` naming the path when it cannot be created or written.
    """
    missing = []
    probe = data_dir
    while not os.path.lexists(probe) and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == data_dir else f"cannot create {data_dir}: "
        raise ConfigError("data_dir", f"{where}{probe} is not a directory")
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made meanwhile (another instance starting): fine
        except OSError as exc:
            raise ConfigError(
                "data_dir", f"cannot create {data_dir} ({exc.strerror} at {folder})"
            ) from None
        created.append(folder)
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError("data_dir", f"{data_dir} is not writable")
    return created
