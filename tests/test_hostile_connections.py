"""Connections under hostile or mistaken settings: a port that is not PostgreSQL, Ctrl-C while
connecting, libpq key=value strings, passwords full of URL syntax. Every failure is one line,
exit 2, within the connect timeout, and no message ever holds the password."""

from __future__ import annotations

import http.server
import os
import re
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import adbc_driver_postgresql.dbapi as adbc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import DatabaseUnavailable, EngineError, InputError
from engine.store import db, dsn
from tests.conftest import PASSWORD_ROLE, insert_curtailment, insert_difficulty
from tests.test_faults import ENGINE

SPECIAL_ROLE = "engine_special_probe"
SPECIAL_PASSWORD = "p@ss:w/o?r#d %zz@end"  # every character a URL gives a meaning to


class _Silent(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    """A real HTTP server on 127.0.0.1: it accepts the connection and never answers as
    PostgreSQL (it waits for a request line that libpq never sends)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Silent)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def run(*args: str, url: str, data_dir: Path, timeout: float = 120, **env: str
        ) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([*ENGINE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "ENGINE_DATABASE_URL": url,
                               "ENGINE_DATA_DIR": str(data_dir), **env})
    return done, time.monotonic() - start


def one_line(done: subprocess.CompletedProcess, code: int = 2) -> str:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    return done.stderr


def test_status_and_month_against_an_http_server_fail_in_one_line_within_the_timeout(
        http_port, tmp_path):
    url = f"postgresql://someone:hunter2-secret@127.0.0.1:{http_port}/engine"

    for command in (("status",), ("month", "2023-12")):
        done, seconds = run(*command, url=url, data_dir=tmp_path, timeout=60,
                            ENGINE_CONNECT_TIMEOUT_S="2")
        message = one_line(done)
        assert "timeout expired" in message and "ENGINE_CONNECT_TIMEOUT_S" in message, command
        assert "hunter2-secret" not in message
        # 2 s of timeout; the rest is Python starting on a busy machine.
        assert seconds < 20, (command, seconds)


def test_ctrl_c_while_connecting_exits_130_at_once(http_port, tmp_path):
    url = f"postgresql://someone@127.0.0.1:{http_port}/engine"
    engine = subprocess.Popen([*ENGINE, "status"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "ENGINE_DATABASE_URL": url,
                                              "ENGINE_DATA_DIR": str(tmp_path),
                                              "ENGINE_CONNECT_TIMEOUT_S": "300"})
    try:
        deadline = time.monotonic() + 60
        while not _connected_to(engine.pid, http_port):
            assert time.monotonic() < deadline and engine.poll() is None, "never connected"
            time.sleep(0.1)
        sent = time.monotonic()
        engine.send_signal(signal.SIGINT)
        _, stderr = engine.communicate(timeout=30)
    finally:
        engine.kill()

    assert engine.returncode == 130, stderr
    assert stderr.strip() == "interrupted"
    assert time.monotonic() - sent < 5


def _connected_to(pid: int, port: int) -> bool:
    """Whether process `pid` has a TCP connection to 127.0.0.1:`port` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    remote = f"0100007F:{port:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == remote and fields[9] in inodes:
            return True
    return False


# --- key=value strings and passwords with URL syntax ---------------------------------------------

def key_value(url: str, password: str | None = None) -> str:
    """`url` as a libpq key=value string."""
    parts = urlsplit(url)
    pairs = {"host": parts.hostname, "port": str(parts.port), "user": parts.username,
             "dbname": parts.path.lstrip("/")}
    if password is not None:
        pairs["password"] = password
    return " ".join(f"{k}='{_escape(v)}'" for k, v in pairs.items() if v is not None)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def seed(url: str) -> None:
    """One record (2023-12-01 period 1, farm A, -10 MWh) and its difficulty: 3 rows to insert."""
    insert_curtailment(url, [("2023-12-01", 1, "A", "-10")])
    insert_difficulty(url, {"2023-12-01": "100000000000000"})


def test_a_key_value_string_works_like_a_url(database_url, tmp_path):
    seed(database_url)

    done, _ = run("month", "2023-12", "--json", url=key_value(database_url), data_dir=tmp_path)

    assert done.returncode == 0, done.stderr
    assert '"inserted": 3' in done.stdout


def test_a_key_value_string_with_a_bad_quote_is_refused_without_its_password(tmp_path):
    done, _ = run("status", url="host=127.0.0.1 user=x password='never-shown dbname=y",
                  data_dir=tmp_path)

    message = one_line(done)
    assert "unterminated quote" in message and "never-shown" not in message


def test_a_password_with_an_at_sign_never_reaches_the_message_through_the_host(tmp_path):
    """libpq splits a URL at its first `@`: `tail-of-secret@nowhere.invalid` would be the host
    and the error would print it."""
    url = "postgresql://someone:head@tail-of-secret@nowhere.invalid:5432/engine"

    done, _ = run("status", url=url, data_dir=tmp_path, ENGINE_CONNECT_TIMEOUT_S="2")

    message = one_line(done)
    assert "tail-of-secret" not in message and "head" not in message
    assert "postgresql://someone:***@nowhere.invalid:5432/engine" in message


@pytest.mark.parametrize("value", ["soon", "0", "-1", "inf", "nan", "1e9"])
def test_a_bad_connect_timeout_is_refused(value, tmp_path):
    done, _ = run("status", url="postgresql://x@127.0.0.1:1/y", data_dir=tmp_path,
                  ENGINE_CONNECT_TIMEOUT_S=value)

    assert "ENGINE_CONNECT_TIMEOUT_S" in one_line(done)


def test_a_huge_host_name_is_quoted_in_a_few_dozen_characters(tmp_path):
    url = f"postgresql://someone:secret@{'h' * 100_000}.invalid:5432/engine"

    done, _ = run("status", url=url, data_dir=tmp_path, ENGINE_CONNECT_TIMEOUT_S="2")

    message = one_line(done)
    assert len(message) < 400 and "secret" not in message


@pytest.fixture
def special_role(server_url: str, database_url: str) -> str:
    """A superuser that must log in with SPECIAL_PASSWORD (scram over TCP); returns the URL of
    the test database as that role, its password percent-encoded."""
    if os.environ.get("ENGINE_TEST_DATABASE_URL"):
        pytest.skip("needs the embedded test server, whose pg_hba.conf the tests may edit")
    hba = Path(tempfile.gettempdir()) / f"engine-tests-{os.getuid()}" / "postgres" / "pg_hba.conf"
    line = f"host all {SPECIAL_ROLE} 127.0.0.1/32 scram-sha-256\n"
    if line not in hba.read_text():
        hba.write_text(line + hba.read_text())
    with adbc.connect(server_url, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = $1", (SPECIAL_ROLE,))
        if cursor.fetchone() is None:
            cursor.execute(f"CREATE ROLE {SPECIAL_ROLE} LOGIN SUPERUSER")
        literal = SPECIAL_PASSWORD.replace("'", "''")
        cursor.execute(f"ALTER ROLE {SPECIAL_ROLE} LOGIN SUPERUSER PASSWORD '{literal}'")
        cursor.execute("SELECT pg_reload_conf()")
        cursor.fetchall()
    return re.sub(r"postgresql://[^@]*@",
                  f"postgresql://{SPECIAL_ROLE}:{quote(SPECIAL_PASSWORD, safe='')}@", database_url)


def test_a_password_full_of_url_syntax_connects_in_every_form(special_role, tmp_path):
    """The same password percent-encoded, written raw into the URL, and as a key=value
    string: each reconciles the month (ADBC and connectorx both log in); a wrong one fails."""
    seed(special_role)
    raw = special_role.replace(quote(SPECIAL_PASSWORD, safe=""), SPECIAL_PASSWORD)
    forms = [special_role, raw, key_value(special_role, SPECIAL_PASSWORD)]

    for number, url in enumerate(forms):
        done, _ = run("month", "2023-12", "--json", url=url, data_dir=tmp_path / str(number))
        assert done.returncode == 0, (url, done.stderr)
        assert SPECIAL_PASSWORD not in done.stdout + done.stderr
    wrong, _ = run("status", url=special_role.replace("p%40ss", "p%40sS"), data_dir=tmp_path)
    assert "password authentication failed" in one_line(wrong)


# --- the property: no message ever holds the password --------------------------------------------

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=5, max_size=9).map(lambda t: "zq" + t)
PASSWORDS = st.tuples(st.lists(_TOKEN, min_size=1, max_size=4),
                      st.lists(st.sampled_from("@:/?#% '\\"), min_size=1, max_size=4)).map(
    lambda parts: ("".join(t + s for t, s in zip(parts[0], parts[1] * 4, strict=False)),
                   parts[0]))


def _forms(base: str, password: str) -> list[str]:
    """The URL with the password raw and percent-encoded, and the key=value string."""
    parts = urlsplit(base)
    location = f"{parts.hostname}:{parts.port}{parts.path}"
    return [f"postgresql://{parts.username}:{password}@{location}",
            f"postgresql://{parts.username}:{quote(password, safe='')}@{location}",
            key_value(base, password)]


def _messages(url: str) -> list[str]:
    out = [db.mask_url(url)]
    try:
        with db.connect(url):
            pass
    except (DatabaseUnavailable, InputError) as error:
        out.append(str(error))
    except EngineError as error:  # pragma: no cover - any other engine error is shown too
        out.append(str(error))
    return out


def assert_hidden(password: str, tokens: list[str], messages: list[str]) -> None:
    for message in messages:
        assert password not in message, message
        for token in tokens:
            assert token not in message, (token, message)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated=PASSWORDS)
def test_no_message_holds_the_password_of_a_closed_port(generated):
    password, tokens = generated
    for url in _forms("postgresql://someone@127.0.0.1:1/engine", password):
        assert_hidden(password, tokens, _messages(url))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(generated=PASSWORDS)
def test_no_message_holds_a_wrong_password_the_server_refused(server_url, generated):
    if os.environ.get("ENGINE_TEST_DATABASE_URL"):
        pytest.skip("needs the embedded test server, where one role requires a password")
    password, tokens = generated
    base = re.sub(r"postgresql://[^@]*@", f"postgresql://{PASSWORD_ROLE}@", server_url)
    for url in _forms(base, password):
        messages = _messages(url)
        assert any("password authentication failed" in m for m in messages), messages
        assert_hidden(password, tokens, messages)


@settings(max_examples=300, deadline=None)
@given(generated=PASSWORDS, prefix=st.sampled_from(["postgresql://", "postgres://", "mysql://", ""]),
       host=st.text(min_size=0, max_size=12))
def test_masking_never_shows_the_password_whatever_the_text(generated, prefix, host):
    password, tokens = generated
    texts = [f"{prefix}user:{password}@{host}/db", f"host={host} password={password}",
             f"host='{host}' password='{_escape(password)}' dbname=x"]
    for text in texts:
        shown = [db.mask_url(text)]
        try:
            dsn.parse(text)
        except InputError as error:
            shown.append(str(error))
        assert_hidden(password, tokens, shown)


def test_ctrl_c_during_a_connectorx_read_that_cannot_connect_is_not_held_back(http_port):
    """connectorx waits half a minute for a connection it cannot make; Ctrl-C ends it at once."""
    url = f"postgresql://someone@127.0.0.1:{http_port}/engine?connect_timeout=60"
    script = ("import sys\nfrom engine.store import db\ntry:\n    db.read_arrow(sys.argv[1], 'SELECT 1')\n"
              "except KeyboardInterrupt:\n    sys.exit(130)\n")
    reader = subprocess.Popen([ENGINE[0], "-c", script, url], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _connected_to(reader.pid, http_port):
            assert time.monotonic() < deadline and reader.poll() is None, "never connected"
            time.sleep(0.1)
        sent = time.monotonic()
        reader.send_signal(signal.SIGINT)
        reader.communicate(timeout=30)
    finally:
        reader.kill()

    assert reader.returncode == 130
    assert time.monotonic() - sent < 5


def test_the_read_url_keeps_a_raw_password_whole():
    url = db.with_timeouts("postgresql://u:p?a/s#s@w:rd@127.0.0.1:5/db", lock_timeout_ms=1,
                           statement_timeout_ms=2)

    target = dsn.parse(url)
    assert (target.user, target.password, target.host, target.port, target.dbname) == (
        "u", "p?a/s#s@w:rd", "127.0.0.1", 5, "db")
    assert target.param("options") == "-c lock_timeout=1 -c statement_timeout=2"
    assert target.param("connect_timeout") == "10"
