"""Hostile and mistaken input to the command line: every file-system and input error is one
line with its own exit code (2 bad input, 74 an environment problem), never a traceback, and
nothing is deleted or truncated that the engine did not create."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from engine.cli import app

runner = CliRunner()


def engine(*args: str, data_dir: Path, url: str | None = None, **env: str):
    environment = {"ENGINE_DATA_DIR": str(data_dir), **env}
    if url is not None:
        environment["ENGINE_DATABASE_URL"] = url
    return runner.invoke(app, list(args), env=environment)


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr


def test_a_huge_argument_is_quoted_in_at_most_about_80_characters(database_url, tmp_path):
    digits = "9" * 100_000

    for args in (("month", digits), ("status-month", digits), ("run", "--order", digits),
                 ("report", "--format", digits), ("month", "2023-12", "--fix", digits)):
        message = one_line_error(engine(*args, url=database_url, data_dir=tmp_path))
        assert len(message) < 250 and "100,000 characters" in message, args
