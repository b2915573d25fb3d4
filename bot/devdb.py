"""A throwaway PostgreSQL server on loopback, for the test suite and the benchmarks.

:class:`PostgresServer` runs Debian's (or any) PostgreSQL binaries on a cluster in a temporary
directory: ``initdb`` with a password-protected superuser, ``pg_ctl start`` listening on
127.0.0.1 and a Unix socket inside that directory, and ``createdb`` for one database per test.
Nothing touches the machine's own clusters. PostgreSQL refuses to run as root, so when this
process is root the server runs as the ``postgres`` system user (which Debian's package
creates) via ``runuser``.

For the database-fault tests it can also fail the way a production database does:
:meth:`PostgresServer.restart` (a minor-version upgrade, ``pg_ctl restart -m fast``),
:meth:`PostgresServer.stop` then :meth:`PostgresServer.start` (an outage),
:meth:`PostgresServer.freeze` / :meth:`PostgresServer.thaw` (SIGSTOP / SIGCONT of every process
of the cluster: a stalled host or a network that drops packets: connections stay open, nothing
answers) and :meth:`PostgresServer.terminate_connections` (an admin or a failover killing the
clients' backends).
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
import signal
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
        self._frozen: list[int] = []  # the pids SIGSTOPped by freeze(), in that order

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster on first use, start the server and wait until it answers."""
        if self._started:
            return
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._own(self.base_dir)
        self._pg_ctl("start", "-w", "-t", str(int(START_DEADLINE)), "-l", str(self.log_path),
                     "-o", self._server_options())
        self._started = True
        atexit.register(self._stop_at_exit)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``mode``: smart, fast or immediate); data stays for ``start()``."""
        if not self._started:
            return
        self.thaw()  # a frozen postmaster would never hear pg_ctl
        self._pg_ctl("stop", "-w", "-m", mode)
        self._started = False
        atexit.unregister(self._stop_at_exit)

    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped it since."""
        return self._started

    # -- faults ----------------------------------------------------------------------------

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m MODE``: every connection is cut (clients in a query get
        ``AdminShutdownError``), the server is down for a moment and comes back on the same
        port with the same data, as in a minor-version upgrade."""
        if not self._started:
            raise PostgresError("restart() of a server that is not running")
        self.thaw()
        self._pg_ctl("restart", "-w", "-t", str(int(START_DEADLINE)), "-m", mode,
                     "-l", str(self.log_path), "-o", self._server_options())

    def outage(self, seconds: float, mode: str = "fast") -> None:
        """Stop the server, keep it down for ``seconds``, start it again (blocking; run it in a
        thread from async code)."""
        self.stop(mode)
        time.sleep(seconds)
        self.start()

    def pids(self) -> list[int]:
        """The cluster's processes: the postmaster (first) and its children (its backends, the
        checkpointer, the WAL writer, ...), found through ``postmaster.pid`` and ``/proc``."""
        try:
            postmaster = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *children_of(postmaster)]

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the cluster, the postmaster first (so that it forks no
        child that would escape). Open connections stay open and nothing answers: queries and
        new connections hang until :meth:`thaw`. Returns the pids stopped."""
        if self._frozen:
            return list(self._frozen)
        pids = self.pids()
        if not pids:
            raise PostgresError("freeze(): no postmaster.pid; is the server running?")
        stopped: list[int] = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        # A backend forked between the listing and the postmaster's stop: catch it too.
        for pid in children_of(pids[0]):
            if pid not in stopped:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                    stopped.append(pid)
        self._frozen = stopped
        return list(stopped)

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped, the children first, then the postmaster."""
        frozen, self._frozen = self._frozen, []
        for pid in reversed(frozen):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    @property
    def frozen(self) -> bool:
        """Whether :meth:`freeze` stopped the server and :meth:`thaw` has not resumed it."""
        return bool(self._frozen)

    def terminate_connections(self, database: str) -> int:
        """Kill every client backend connected to ``database`` (``pg_terminate_backend``), as
        an admin or a failover does: each client's next query fails; returns how many."""
        out = self.sql(
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE datname = '{database.replace(chr(39), chr(39) * 2)}' "
            "AND pid <> pg_backend_pid()",
        )
        return int(out.strip() or 0)

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

    def _server_options(self) -> str:
        return (f"-c listen_addresses=127.0.0.1 -p {self.port} "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")

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
            self.thaw()
            self._pg_ctl("stop", "-m", "immediate")


def children_of(parent: int) -> list[int]:
    """The pids whose parent is ``parent`` (from ``/proc/PID/stat``)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == parent:
            children.append(int(entry.name))
    return children
