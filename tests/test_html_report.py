"""`engine report --html`: one self-contained page, checked as text and in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_backfill import demo, engine

HEADINGS = ("Reconciliation report", "Coverage per year", "Coverage per miner model",
            "Missing rows by day", "Missing rows per month", "Months by status",
            "Remaining months, worst first", "Remaining days, worst first", "Failures",
            "Recent backfills")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# As root, on a closed network: no sandbox, no GPU, none of the calls home.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")


@pytest.fixture
def page(database_url: str, tmp_path: Path) -> Path:
    """The report of two demo months, one of them reconciled by `engine run`."""
    demo(database_url, "2023-11", "2023-12")
    assert engine(database_url, tmp_path, "run", "--from", "2023-12", "--to", "2023-12").exit_code == 0
    result = engine(database_url, tmp_path, "report", "--html", str(tmp_path / "report.html"))
    assert result.exit_code == 0, result.output
    return tmp_path / "report.html"


def chromium(page: Path, profile: Path, *args: str) -> tuple[str, list[str]]:
    """Open `page` in headless Chromium with `args`; return its stdout and console messages."""
    assert CHROMIUM, "ENGINE_REQUIRE_CHROMIUM=1 but chromium is not installed"
    done = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def test_the_page_has_every_section_inline_svg_charts_and_nothing_to_fetch(page: Path) -> None:
    html = page.read_text()

    for heading in HEADINGS:
        assert f">{heading}</h" in html
    assert html.count("<svg") == 3  # per year, the heatmap by day, per month
    assert "<script" not in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", html)
    assert "2023-11" in html and "not_started" in html and "completed" in html


def test_an_unwritable_path_is_one_clear_line(database_url: str, tmp_path: Path) -> None:
    result = engine(database_url, tmp_path, "report", "--html", str(tmp_path / "no" / "such" / "r.html"))

    assert result.exit_code == 2
    assert result.output.strip().startswith("error: cannot write") and "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and os.environ.get("ENGINE_REQUIRE_CHROMIUM") != "1",
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_headless_chromium_renders_the_page_with_its_headings_and_no_console_errors(
        page: Path, tmp_path: Path) -> None:
    dom, console = chromium(page, tmp_path / "profile", "--dump-dom")
    _, shot_console = chromium(page, tmp_path / "profile", "--window-size=1280,2400",
                               f"--screenshot={tmp_path / 'r.png'}")

    assert re.findall(r"<h[12]>([^<]+)</h[12]>", dom) == list(HEADINGS)
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.png").stat().st_size > 50_000  # the charts, not a blank page
    assert console == [] and shot_console == []


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and os.environ.get("ENGINE_REQUIRE_CHROMIUM") != "1",
                    reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_console_check_sees_an_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.html"
    broken.write_text("<h1>x</h1><script>console.error('boom'); undefined_call();</script>")

    _, console = chromium(broken, tmp_path / "profile", "--dump-dom")

    assert any("boom" in line for line in console) and any("undefined_call" in line for line in console)
