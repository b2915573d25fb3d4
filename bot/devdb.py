"""A throwaway PostgreSQL server on loopback, for the test suite and the benchmarks.

:class:`PostgresServer` runs Debian's (or any) PostgreSQL binaries on a cluster in a temporary
directory: ``initdb`` with a password-protected superuser, ``pg_ctl start`` listening on
127.0.0.1 and a Unix socket inside that directory, and ``createdb`` for one database per test.
Nothing touches the machine's own clusters. PostgreSQL refuses to run as root, so when this
process is root the server runs as the ``postgres`` system user (which Debian's package
creates) via ``runuser``.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import itertools
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from bot.devserver import free_port

START_DEADLINE = 30.0
"""Seconds ``start()`` waits for the server to accept connections."""

SUPERUSER = "parcel"


class PostgresError(RuntimeError):
    """The PostgreSQL binaries are missing, or the server did not start or stop."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first).

    ``PARCEL_PG_BINDIR`` overrides the search. Raises :class:`PostgresError` naming the package
    to install when none is found.
    """
    explicit = os.environ.get("PARCEL_PG_BINDIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise PostgresError(
        "PostgreSQL's server binaries (initdb, pg_ctl) were not found: install Debian's "
        "'postgresql' package (bash .ci/setup.sh does) or set PARCEL_PG_BINDIR"
    )


class PostgresServer:
    """A real PostgreSQL cluster in ``base_dir`` (as root: a private temp dir), started and stopped
    by this object.

    ``url(database)`` gives a ``postgresql://`` URL without the password (it is in
    :attr:`password`, as a deployment would pass it in ``PARCEL_DATABASE_PASSWORD``);
    ``url(database, with_password=True)`` embeds it.
    """

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self._run_as = "postgres" if os.geteuid() == 0 else None
        if self._run_as is None:
            self.base_dir = Path(base_dir).resolve()
        else:
            # The server's user must reach its directory, and pytest keeps its own temporary
            # directories private to root (re-applied by every pytest that starts): so the
            # cluster gets a directory of its own, removed at exit.
            self.base_dir = Path(tempfile.mkdtemp(prefix="parcel-pg-"))
            atexit.register(shutil.rmtree, self.base_dir, True)
        self.bindir = find_bindir()
        self.port = port if port is not None else free_port()
        self.data_dir = self.base_dir / "cluster"
        self.socket_dir = self.base_dir / "socket"
        self.log_path = self.base_dir / "postgres.log"
        self.password = secrets.token_urlsafe(18)
        self._names = itertools.count(1)
        self._started = False

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, start the server and wait until it answers."""
        if self._started:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._own(self.base_dir)
        self._pg_ctl(
            "start", "-w", "-t", str(int(START_DEADLINE)), "-l", str(self.log_path),
            "-o", f"-c listen_addresses=127.0.0.1 -p {self.port} "
            f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
        )
        self._started = True
        atexit.register(self._stop_at_exit)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); data stays for ``start()``."""
        if not self._started:
            return
        self._pg_ctl("stop", "-w", "-m", mode)
        self._started = False
        atexit.unregister(self._stop_at_exit)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------

    def create_database(self, prefix: str = "parcel") -> str:
        """Create a new empty database and return its name."""
        name = f"{prefix}_{next(self._names)}_{secrets.token_hex(3)}"
        self._client("createdb", name)
        return name

    def url(self, database: str, with_password: bool = False) -> str:
        """The ``postgresql://`` URL of ``database`` on this server (TCP on 127.0.0.1)."""
        auth = SUPERUSER + (f":{quote(self.password, safe='')}" if with_password else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"

    def sql(self, database: str, statement: str) -> str:
        """Run one statement with ``psql`` as the superuser and return its unaligned output."""
        return self._client("psql", "-X", "-q", "-A", "-t", "-d", database, "-c", statement)

    # -- internals -------------------------------------------------------------------------

    def _initdb(self) -> None:
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        self._own(self.base_dir)
        try:
            self._run(
                self.bindir / "initdb", "-D", str(self.data_dir), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                "--locale=C", "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        self._own(self.base_dir)

    def _own(self, path: Path) -> None:
        """Hand ``path`` (recursively) to the user the server runs as."""
        if self._run_as is None:
            return
        user = pwd.getpwnam(self._run_as)
        for root, dirs, files in os.walk(path):
            os.chown(root, user.pw_uid, user.pw_gid)
            for name in dirs + files:
                with contextlib.suppress(FileNotFoundError):
                    os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid)

    def _pg_ctl(self, *args: str) -> None:
        self._run(self.bindir / "pg_ctl", "-D", str(self.data_dir), *args)

    def _client(self, program: str, *args: str) -> str:
        env = {"PGPASSWORD": self.password}
        return self._run(
            self.bindir / program, "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER,
            *args, env=env, as_server_user=False,
        )

    def _run(
        self, program: Path, *args: str, env: dict[str, str] | None = None,
        as_server_user: bool = True,
    ) -> str:
        command = [str(program), *args]
        if as_server_user and self._run_as is not None:
            command = ["runuser", "-u", self._run_as, "--", *command]
        began = time.monotonic()
        result = subprocess.run(
            command, capture_output=True, text=True, env={**os.environ, **(env or {})},
            cwd=self.base_dir, check=False, timeout=START_DEADLINE + 30,
        )
        if result.returncode != 0:
            log = ""
            if self.log_path.exists():
                log = self.log_path.read_text(errors="replace")[-3000:]
            raise PostgresError(
                f"{program.name} {' '.join(args[:3])} failed after "
                f"{time.monotonic() - began:.1f} s: {result.stderr.strip() or result.stdout}"
                + (f"\n--- postgres.log ---\n{log}" if log else "")
            )
        return result.stdout

    def _stop_at_exit(self) -> None:
        """Last resort at interpreter exit: never leave a server running behind a crashed run."""
        with contextlib.suppress(Exception):
            self._pg_ctl("stop", "-m", "immediate")
