"""Every raw result BENCHMARKS.md cites is in bench/results/: a figure there without its JSON
(a file renamed, left in /tmp, or never copied) cannot be checked or rendered again."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def cited(text: str) -> set[str]:
    """The raw results' names a BENCHMARKS.md text cites: `bench/results/NAME.json` anywhere
    (NAME may hold a `*` or `…` for a family of runs), and a bare `NAME.json` in backquotes."""
    names = {m.group(1) for m in re.finditer(r"bench/results/([A-Za-z0-9_.*…-]+\.json)", text)}
    names |= {m.group(1) for m in re.finditer(r"`([A-Za-z0-9_.-]+\.json)`", text)}
    return names


def missing(names: set[str], results: Path) -> list[str]:
    """The cited names no file in `results` answers (a pattern: none that matches it)."""
    return sorted(n for n in names if not any(results.glob(n.replace("…", "*"))))


def test_every_raw_result_benchmarks_cites_is_there() -> None:
    names = cited((REPO / "BENCHMARKS.md").read_text())
    assert len(names) > 100, names  # (the patterns still find what the file cites)
    assert missing(names, RESULTS) == []


def test_a_cited_result_that_is_not_there_is_found(tmp_path: Path) -> None:
    (tmp_path / "cp1-session46.json").write_text("{}")
    text = "raw: `bench/results/cp1-session46.json`, `bench/results/gone.json`, `also-gone.json`, `bench/results/cp1-session*.json`, `bench/results/x-…-y.json`"
    assert missing(cited(text), tmp_path) == ["also-gone.json", "gone.json", "x-…-y.json"]
