"""libpq's own settings, for the reader that does not use libpq.

ADBC connects through libpq, which finds a password in `PGPASSWORD` or the password file
(`PGPASSFILE`, else `~/.pgpass`) and takes `PGSSLMODE`; connectorx does not (it reports
"password missing"). `for_connectorx` completes a URL with what libpq would have used, in
memory only, so no password has to sit in `ENGINE_DATABASE_URL`. The result holds a secret:
show it only through `db.mask_url`.
"""

from __future__ import annotations

import getpass
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit


def for_connectorx(url: str, environ: Mapping[str, str] | None = None) -> str:
    """`url` with the password libpq would use (when it names none) and `sslmode` from
    `PGSSLMODE` (when it sets none)."""
    env = os.environ if environ is None else environ
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    names = {k for k, _ in query}
    if "sslmode" not in names and env.get("PGSSLMODE"):
        query.append(("sslmode", env["PGSSLMODE"]))
    netloc = parts.netloc
    if parts.password is None:
        user = unquote(parts.username or "") or env.get("PGUSER") or getpass.getuser()
        host = parts.hostname or env.get("PGHOST", "localhost")
        port = str(parts.port or env.get("PGPORT", "5432"))
        database = unquote(parts.path.lstrip("/")) or env.get("PGDATABASE") or user
        password = env.get("PGPASSWORD") or password_from_file(host, port, database, user, env)
        if password is not None:
            where = netloc.rsplit("@", 1)[-1]
            netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{where}"
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, quote_via=quote)))


def password_from_file(host: str, port: str, database: str, user: str,
                       environ: Mapping[str, str] | None = None) -> str | None:
    """The password of the first matching line of the password file, as libpq reads it
    (`host:port:database:user:password`, `*` matches anything, `\\:` and `\\\\` escape);
    None when there is no file, no match, or the file is readable by others (libpq then
    ignores it too)."""
    env = os.environ if environ is None else environ
    path = Path(env["PGPASSFILE"]) if env.get("PGPASSFILE") else Path.home() / ".pgpass"
    try:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            return None
        lines = path.read_text().splitlines()
    except OSError:
        return None
    wanted = (host, port, database, user)
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = _split(line)
        if len(fields) == 5 and all(f in ("*", w) for f, w in zip(fields[:4], wanted, strict=True)):
            return fields[4]
    return None


def _split(line: str) -> list[str]:
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":" and len(fields) < 4:
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields
