"""Settings (built once from `ENGINE_*` variables and flags) and the miner models."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.errors import InputError, quoted
from engine.reference import REFERENCE_DIR

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


@dataclass(frozen=True)
class MinerModel:
    name: str
    hashrate_th: float
    power_w: float


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides its arguments. Build it with `Settings.from_env`."""

    database_url: str | None = None  # None: the embedded server under data_dir
    data_dir: Path = Path("data")
    miner_models_file: Path = REFERENCE_DIR / "miner_models.toml"
    lock_timeout_ms: int = 5_000
    statement_timeout_ms: int = 300_000
    # The schema of the engine's own tables (a plain lower-case identifier; see store.schema).
    schema: str = "engine"
    # libpq's connect_timeout for every connection (ADBC and connectorx); None: the URL's own
    # `connect_timeout`, else 10 s.
    connect_timeout_s: float | None = None
    # A Slack-compatible incoming webhook; its URL is a secret, so it stays out of repr().
    alert_webhook: str | None = field(default=None, repr=False)
    # The peak memory of the whole process, in MiB, that months are sliced to stay under
    # (`engine.month.slices`); concurrent months share it.
    memory_budget_mb: int = 1024

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Read `ENGINE_DATABASE_URL`, `ENGINE_DATA_DIR`, `ENGINE_SCHEMA`, `ENGINE_MINER_MODELS`,
        `ENGINE_LOCK_TIMEOUT_MS`, `ENGINE_STATEMENT_TIMEOUT_MS`, `ENGINE_CONNECT_TIMEOUT_S` and
        `ENGINE_MEMORY_BUDGET`; `overrides` win. Raises `InputError` for a value that cannot be used."""
        env = os.environ if environ is None else environ
        for variable in _VARIABLES:  # set but empty is a broken template, not "use the default"
            if variable in env and not env[variable].strip():
                raise InputError(f"{variable} is set but empty; unset it or give it a value")
        values: dict[str, object] = {}
        if url := env.get("ENGINE_DATABASE_URL"):
            values["database_url"] = url
        if data_dir := env.get("ENGINE_DATA_DIR"):
            values["data_dir"] = Path(data_dir)
        if name := env.get("ENGINE_SCHEMA"):
            values["schema"] = name
        if models := env.get("ENGINE_MINER_MODELS"):
            values["miner_models_file"] = Path(models)
        for name, key in (("ENGINE_LOCK_TIMEOUT_MS", "lock_timeout_ms"),
                          ("ENGINE_STATEMENT_TIMEOUT_MS", "statement_timeout_ms")):
            if name in env:
                values[key] = _positive_int(name, env[name])
        if "ENGINE_CONNECT_TIMEOUT_S" in env:
            values["connect_timeout_s"] = _seconds("ENGINE_CONNECT_TIMEOUT_S",
                                                   env["ENGINE_CONNECT_TIMEOUT_S"])
        # ENGINE_ALERT_WEBHOOK: where alerts are posted (engine.operations.alerts).
        if webhook := env.get("ENGINE_ALERT_WEBHOOK"):
            if not webhook.startswith(("http://", "https://")):
                raise InputError("ENGINE_ALERT_WEBHOOK must be an http:// or https:// URL")
            values["alert_webhook"] = webhook
        if "ENGINE_MEMORY_BUDGET" in env:
            values["memory_budget_mb"] = parse_memory("ENGINE_MEMORY_BUDGET", env["ENGINE_MEMORY_BUDGET"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)  # type: ignore[arg-type]
        settings.check()
        return settings

    def check(self) -> None:
        """Raise `InputError` for a setting that cannot be used (a bad schema name)."""
        check_schema_name(self.schema)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def check_schema_name(name: str) -> str:
    """Return `name` if it is a plain lower-case identifier fit for the engine's schema;
    raise `InputError` otherwise (it ends up in SQL text, so nothing else is accepted)."""
    if not _SCHEMA_NAME.fullmatch(name) or name.startswith("pg_") or name in (
            "public", "information_schema"):
        raise InputError(
            f"ENGINE_SCHEMA={name!r} is not usable: give a lower-case identifier "
            "(letters, digits, _; not public, information_schema or pg_…)")
    return name


_MEMORY = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(MB|MIB|M|GB|GIB|G)?", re.IGNORECASE)
#: The least budget a month can be computed in: the process with its libraries warmed up
#: (connectorx, Polars, DuckDB, ADBC) holds about 350 MiB before any data.
MIN_MEMORY_MB = 512


def parse_memory(name: str, text: str) -> int:
    """`1GB`, `1.5G`, `800MB` or `800` (MiB) as MiB; raise `InputError` for anything else or a
    budget under `MIN_MEMORY_MB`."""
    match = _MEMORY.fullmatch(text.strip())
    if match is None:
        raise InputError(f"{name} {quoted(text)} is not a size such as 1GB or 800MB")
    value = float(match[1]) * (1024 if (match[2] or "M").upper().startswith("G") else 1)
    if not MIN_MEMORY_MB <= value <= 1024 * 1024:
        raise InputError(f"{name} must be between {MIN_MEMORY_MB}MB and 1024GB, not {quoted(text)}")
    return int(value)


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InputError(f"{name}={quoted(text)} is not a whole number") from None
    if value <= 0:
        raise InputError(f"{name} must be positive, not {value}")
    return value


def _seconds(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{name}={quoted(text)} is not a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise InputError(f"{name} must be more than 0 and at most 3600 seconds, not {quoted(text)}")
    return value


_MODEL_KEYS = {"hashrate_th", "power_w"}


#: The variables `Settings.from_env` reads.
_VARIABLES = ("ENGINE_DATABASE_URL", "ENGINE_DATA_DIR", "ENGINE_SCHEMA", "ENGINE_MINER_MODELS",
              "ENGINE_LOCK_TIMEOUT_MS", "ENGINE_STATEMENT_TIMEOUT_MS", "ENGINE_CONNECT_TIMEOUT_S",
              "ENGINE_ALERT_WEBHOOK", "ENGINE_MEMORY_BUDGET")
#: A miner models file is a few lines; anything this large is the wrong file.
_MODELS_MAX_BYTES = 1_000_000


def load_miner_models(path: Path) -> tuple[MinerModel, ...]:
    """Read the miner models from a TOML file of `[NAME] hashrate_th = … power_w = …` tables.

    Raises `InputError` for a missing file, an unknown or missing key, or a non-positive number.
    """
    from engine.store.paths import check_input  # here: `engine --help` need not import Polars

    check_input(path, "miner models file", max_bytes=_MODELS_MAX_BYTES)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"miner models file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read miner models file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"miner models file {path} is not valid TOML: {error}") from None
    models = []
    for name, spec in raw.items():
        if not isinstance(spec, dict) or set(spec) != _MODEL_KEYS:
            raise InputError(
                f"miner model {quoted(name)} in {path} must have exactly the keys "
                f"{', '.join(sorted(_MODEL_KEYS))}"
            )
        numbers = {key: spec[key] for key in _MODEL_KEYS}
        for key, value in numbers.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0
            ):
                raise InputError(f"miner model {quoted(name)}: {key} must be a positive number")
        models.append(MinerModel(name, float(numbers["hashrate_th"]), float(numbers["power_w"])))
    if not models:
        raise InputError(f"miner models file {path} defines no model")
    return tuple(models)
