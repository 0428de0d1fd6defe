"""Where the database is: a `postgresql://` URL or a libpq `key=value` string, parsed once into
a `Target` that gives the one URL every driver connects with and the masked form a user sees.

libpq and Python split a URL with an unencoded `@` in its password at different places (libpq
at the first `@`, so its "could not translate host name" error prints the rest of the
password), and connectorx takes URLs only. So neither driver ever sees what the user typed:
both get `Target.url`, rebuilt here with every part percent-encoded, and every message a
driver returns goes through `scrub` before anyone sees it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from engine.errors import InputError, quoted

SCHEMES = ("postgresql://", "postgres://")
#: libpq's `connect_timeout` when nothing sets it (seconds).
DEFAULT_CONNECT_TIMEOUT_S = 10
#: Parameters whose values are secrets: never shown, removed from driver messages.
SECRET_PARAMETERS = ("password", "sslpassword")
#: Each part of a masked URL (user, host, database) is cut to this many characters.
SHOWN_PART = 30

_DSN_PAIR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")
_DSN_NEXT_KEY = re.compile(r"\s+[A-Za-z_][A-Za-z0-9_]*\s*=")
_HOST = re.compile(r"[A-Za-z0-9._~%:,\[\]-]+")
_DSN_KEYS = {"host", "hostaddr", "port", "user", "password", "dbname"}


@dataclass(frozen=True)
class Target:
    """A database to connect to, parsed from a URL or a key=value string."""

    host: str
    port: int | None = None
    user: str = ""
    password: str | None = field(default=None, repr=False)
    dbname: str | None = None
    params: tuple[tuple[str, str], ...] = ()
    # The password as it was written (maybe still percent-encoded).
    typed_password: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """The URL both drivers connect with: every part percent-encoded, parameters kept."""
        auth = quote(self.user, safe="")
        if self.password is not None:
            auth += ":" + quote(self.password, safe="")
        netloc = (f"{auth}@" if auth else "") + _host(self.host)
        if self.port is not None:
            netloc += f":{self.port}"
        path = "/" + quote(self.dbname, safe="") if self.dbname is not None else ""
        query = urlencode(self.params, quote_via=quote) if self.params else ""
        return f"postgresql://{netloc}{path}" + (f"?{query}" if query else "")

    @property
    def masked(self) -> str:
        """The URL as a user may see it: no password, no parameters, long parts cut."""
        auth = _cut(self.user) + (":***" if self.password is not None else "")
        netloc = (f"{auth}@" if auth else "") + _cut(_host(self.host))
        if self.port is not None:
            netloc += f":{self.port}"
        path = "/" + _cut(self.dbname) if self.dbname is not None else ""
        shown = f"postgresql://{netloc}{path}"
        for secret in self.secrets():  # a password typed where a user or host was expected
            shown = shown.replace(secret, "***")
        return shown

    def secrets(self) -> list[str]:
        """Every form a secret of this target may take in a driver's message, longest first."""
        values = [self.password, self.typed_password,
                  *(v for k, v in self.params if k in SECRET_PARAMETERS)]
        forms = {form for value in values if value
                 for form in (value, quote(value, safe=""), quote(value), unquote(value))}
        return sorted((f for f in forms if f), key=len, reverse=True)

    def with_param(self, key: str, value: str, *, replace: bool = True) -> Target:
        """This target with parameter `key` set (kept as it is when present and not `replace`)."""
        if not replace and any(k == key for k, _ in self.params):
            return self
        params = (*((k, v) for k, v in self.params if k != key), (key, value))
        return Target(self.host, self.port, self.user, self.password, self.dbname, params,
                      self.typed_password)

    def param(self, key: str) -> str | None:
        return next((v for k, v in reversed(self.params) if k == key), None)


def parse(text: str) -> Target:
    """Parse a `postgresql://` URL or a libpq `key=value` string.

    Raises `InputError` naming the problem; its message never holds the password, and quotes
    at most a few dozen characters of what was given.
    """
    text = text.strip()
    if text.lower().startswith(SCHEMES):
        return _parse_url(text)
    if _DSN_PAIR.match(text):
        return _parse_dsn(text)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,19}", scheme):
        raise InputError(f"database URL {quoted(scheme + '://…', 30)} must start with "
                         "postgresql:// (or be a key=value string: host=… user=… dbname=…)")
    raise InputError("the database setting is neither a postgresql:// URL nor a libpq key=value "
                     "string (host=… user=… password=… dbname=…)")


def normalize(text: str, *, connect_timeout_s: float | None = None) -> str:
    """`text` (URL or key=value) as the URL the drivers connect with, with a `connect_timeout`:
    `connect_timeout_s` when given, else the URL's own, else `DEFAULT_CONNECT_TIMEOUT_S`."""
    target = parse(text)
    if connect_timeout_s is not None:
        target = target.with_param("connect_timeout", str(timeout_parameter(connect_timeout_s)))
    else:
        target = target.with_param("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT_S),
                                   replace=False)
    return target.url


def timeout_parameter(seconds: float) -> int:
    """libpq takes whole seconds (and treats 1 as 2): round up."""
    return max(1, math.ceil(seconds))


def connect_timeout(url: str) -> int:
    """The `connect_timeout` of a normalized URL, in seconds."""
    value = parse(url).param("connect_timeout")
    try:
        return max(2, int(value)) if value is not None else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        return DEFAULT_CONNECT_TIMEOUT_S


def mask(text: str) -> str:
    """The database as it may be shown: masked, or a placeholder when it cannot be parsed.
    Never raises."""
    try:
        return parse(text).masked
    except InputError:
        return "(an unreadable database setting)"


def scrub(message: str, text: str, limit: int = 300) -> str:
    """A driver's `message` about the database `text`, safe to show: every form of its
    password replaced by `***`, long parts of it cut, and at most `limit` characters."""
    try:
        target = parse(text)
    except InputError:
        return message[:limit]
    for secret in target.secrets():
        message = message.replace(secret, "***")
    for part in (target.host, target.user, target.dbname):
        if part and len(part) > SHOWN_PART:
            message = message.replace(part, _cut(part))
    return message if len(message) <= limit else message[:limit] + "…"


# --- parsing -----------------------------------------------------------------------------------


def _parse_url(text: str) -> Target:
    rest = text.split("://", 1)[1]
    # Everything before the LAST `@` is the user and password: a password may hold `@`, `/`,
    # `?` or `#` unencoded, and must never end up in the host (where messages would show it).
    userinfo, at, location = rest.rpartition("@")
    if not at:
        userinfo, location = "", rest
    typed_user, colon, typed_password = userinfo.partition(":")
    try:
        parts = urlsplit("postgresql://" + location)
        port = parts.port
    except ValueError:
        raise InputError("database URL has an invalid host or port") from None
    host = unquote(parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc)
    params = tuple(parse_qsl(parts.query, keep_blank_values=True))
    password = unquote(typed_password) if colon else None
    for key, value in params:
        if key == "password":
            password = value
        elif key == "host" and not host:
            host = value
    params = tuple((k, v) for k, v in params if k not in ("password", "host"))
    dbname = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    return _checked(Target(host, port, unquote(typed_user), password, dbname or None, params,
                           typed_password if colon else None))


def _parse_dsn(text: str) -> Target:
    values: dict[str, str] = {}
    params: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _DSN_PAIR.match(text, position)
        if match is None:
            raise InputError("the database key=value string has a syntax error after "
                             f"{len(values) + len(params)} setting(s): expected key=value")
        key = match[1]
        value, position = _dsn_value(text, match.end(), key)
        if key in _DSN_KEYS:
            values[key] = value
        else:
            params.append((key, value))
    port = values.get("port")
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        raise InputError("database key=value string has an invalid port")
    return _checked(Target(values.get("host") or values.get("hostaddr", ""),
                           int(port) if port else None, values.get("user", ""),
                           values.get("password"), values.get("dbname"), tuple(params),
                           values.get("password")))


def _dsn_value(text: str, position: int, key: str) -> tuple[str, int]:
    """libpq's value syntax: bare up to whitespace, or 'single quoted'; `\\` escapes. Unlike
    libpq, `host= password=x` gives `host` an empty value rather than `password=x`."""
    out: list[str] = []
    if _DSN_NEXT_KEY.match(text, position):
        return "", position
    while position < len(text) and text[position].isspace():
        position += 1
    quoted_value = position < len(text) and text[position] == "'"
    position += quoted_value
    while position < len(text):
        char = text[position]
        if char == "\\" and position + 1 < len(text):
            out.append(text[position + 1])
            position += 2
            continue
        if (quoted_value and char == "'") or (not quoted_value and char.isspace()):
            return "".join(out), position + 1
        out.append(char)
        position += 1
    if quoted_value:
        raise InputError(f"the database key=value string has an unterminated quote in the "
                         f"value of {quoted(key, 20)}")
    return "".join(out), position


def _checked(target: Target) -> Target:
    if not target.host or target.host.startswith("/"):
        raise InputError(f"database {target.masked} has no TCP host; connectorx needs one "
                         "(host=127.0.0.1 or postgresql://…@HOST/…), not a Unix socket")
    if not _HOST.fullmatch(target.host):
        # Not shown: `host=\ password=…` makes the rest of the string the host.
        raise InputError("the database's host is not a host name or an IP address")
    return target


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _cut(part: str) -> str:
    if "=" in part or any(c.isspace() for c in part):  # the rest of a key=value string?
        return "(hidden)"
    return part if len(part) <= SHOWN_PART else part[:SHOWN_PART] + "…"
