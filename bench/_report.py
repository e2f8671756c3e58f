"""What a bench reports: the machine its figures were measured on, the numbers (percentiles,
medians, milliseconds), its tables, its progress on stderr, its raw results (--json, --render)
and its section of BENCHMARKS.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench._common import machine as _common_machine

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "BENCHMARKS.md"


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on (bench/_common.py), plus load, date and code state."""
    return {
        **_common_machine(),
        "loadavg": os.getloadavg(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "code": _code_version(),
    }


def _code_version() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "hsb"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes in hsb/' if dirty else ''}"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, uvloop {m['uvloop']}; "
        f"load average at start {m['loadavg'][0]:.2f}; code {m.get('code', '?')}; {m['date']}"
        + (f"; net.core.somaxconn {m['somaxconn']:,}" if m.get("somaxconn", -1) >= 0 else "")
    )


# --------------------------------------------------------------------------- numbers


def pctl(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); with few samples p99 is the maximum."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = max(1, math.ceil(len(v) * p / 100.0))
    return v[k - 1]


def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def latencies(rs: list[dict[str, Any]], key: str) -> list[float]:
    """The runs' reply latency figures (`key`), for a median or a goal: a run with a message
    never answered counts as infinite (hsb.term.timeline gives no figure then), never as a run
    without the figure."""
    return [float("inf") if r.get("unanswered") else r[key] for r in rs if r.get("unanswered") or r.get(key) is not None]


def fmt_ms(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    if v == float("inf"):
        return "∞"
    return f"{v:,.{digits}f}"


def say(*a: Any) -> None:
    """Progress for the person running a bench: stderr, so stdout stays the report."""
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- BENCHMARKS.md


def write_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    """Put `## title` + body into BENCHMARKS.md: replace our own earlier section of that title,
    else append at the end. Other sections are left byte for byte as they are."""
    head = f"## {title}"
    text = path.read_text() if path.exists() else ""
    section = f"{head}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == head), None)
    if start is None:
        sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        if text and not text.endswith("\n\n"):
            sep = "\n" if text.endswith("\n") else "\n\n"
        path.write_text(text + sep + section)
        return
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))


def result_args(ap: Any, results: Path) -> None:
    """The options every bench shares: where its raw results go, re-rendering them, BENCHMARKS.md."""
    ap.add_argument("--json", default=str(results), help="write the raw results to this file (default: %(default)s)")
    ap.add_argument("--render", metavar="JSON", help="do not measure: render the results saved with --json")
    ap.add_argument("--no-write", dest="write", action="store_false", help="do not update BENCHMARKS.md")
    ap.add_argument("--write", dest="write", action="store_true", help="update BENCHMARKS.md (the default)")


def save_results(a: Any, section: str, res: Any, text: str) -> None:
    """Write a run's raw results (with the machine and the command) to --json, print its report,
    and put it into BENCHMARKS.md as `## section` unless --no-write."""
    write_json(a, {"machine": a.machine, "command": a.command, "results": res})
    print(text)
    if a.write:
        write_section(section, text)


def write_json(a: Any, saved: Any) -> None:
    """A run's raw results to --json (its folder made if need be)."""
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=1) + "\n")


def report(a: Any, section: str, text: str) -> None:
    """A measuring run's end: print its report and where its raw results are (--json), and put
    the report into BENCHMARKS.md as `## section` unless --no-write."""
    print()
    print(text)
    say(f"raw results: {a.json}")
    if a.write:
        write_section(section, text)
        say("written to BENCHMARKS.md")


def raw_name(a: Any, default: Path) -> str:
    """The raw results' file a section cites: the one rendered (--render), else the one written
    (--json), else the bench's default."""
    return Path(getattr(a, "render", None) or getattr(a, "json", None) or default).name


def section_head(a: Any, setup: str) -> list[str]:
    """The first lines of a bench_main bench's section: its command, its raw results, and the
    machine followed by `setup` (what was run, how)."""
    return [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, Path(a.json))}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}. {setup}",
    ]


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)
