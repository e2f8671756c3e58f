"""bench/hsbd.py's report: its section of BENCHMARKS.md (render) from the raw results alone, and
the light load's verdict over the standby restarts (load_failed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._report import fmt_ms, machine_line, median, raw_name, table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "hsbd.json"


def load_failed(rs: list[dict[str, Any]]) -> list[str]:
    """The load's failures over these restarts (files from before the strict verdict: lost or disconnected)."""
    out: list[str] = []
    for r in rs:
        if "load_ok" not in r and (r.get("load_lost") or r.get("load_disconnects")):
            r = {**r, "load_ok": False, "load_failures": [f"lost {r.get('load_lost')}, disconnects {r.get('load_disconnects')}"]}
        if r.get("load_ok") is False:
            for f in r.get("load_failures") or ["failed"]:
                if f not in out:
                    out.append(f)
    return out


def render(start: list[dict[str, Any]], lag: list[dict[str, Any]], a: argparse.Namespace) -> str:
    m = a.machine
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds these tables).",
        "",
        f"Machine: {machine_line(m)}. **Everything shares the 2 cores**: hsbcpd, both hsbd, the load or churn"
        " generator, and the benchmark itself (other engineers' jobs were running at times too). Takeover file"
        " on local ext4 (`/tmp`), echo service, default timing.",
    ]
    oc = [r["others_cpu"] for r in start + lag if r.get("others_cpu") is not None]
    if oc:
        out[-1] += (
            f" Other processes (not this benchmark) used a median {median(oc):.2f} (max {max(oc):.2f}) cores just before"
            " each measurement (it waits a while for < 0.3)."
        )
    if start:
        out += [
            "",
            f"**Standby start → hot standby established** (N terminals logged on, {a.load_rate:,.0f} messages/s of light"
            ' load; host-b SIGKILLed and restarted with `start_host(..., "standby")`, timed from the restart to'
            " `hot_standby_established` in its log, which comes after the batch read and after the CP has answered"
            " every standby-session open). Median (max) over the runs:",
            "",
        ]
        rows = []
        for n in sorted({r["n"] for r in start}):
            rs = [r for r in start if r["n"] == n]

            def mm(k: str, digits: int = 0) -> str:
                v = [r[k] for r in rs if r.get(k) is not None]
                return f"{fmt_ms(median(v), digits)} ({fmt_ms(max(v) if v else None, digits)})"

            rows.append(
                [
                    f"{n:,}",
                    str(len(rs)),
                    f"**{mm('total_ms')}**",
                    mm("process_start_ms"),
                    mm("to_standby_startup_ms"),
                    mm("startup_to_batch_complete_ms"),
                    mm("batch_write_ms", 1),
                    mm("batch_read_ms", 1),
                    mm("opens_ms"),
                    str(min(r["cp_standby_sessions"] for r in rs)),
                    "all OK" if not load_failed(rs) else "**FAILED**",
                ]
            )
        out.append(
            table(
                [
                    "N",
                    "runs",
                    "restart → established (ms)",
                    "process start → `host_started`",
                    "→ STANDBY STARTUP sent",
                    "→ BATCH WRITE COMPLETE",
                    "active batch write (ms)",
                    "standby batch read (`batch_read_complete` ms)",
                    "N standby opens at the CP",
                    "CP standby sessions after",
                    "load verdict",
                ],
                rows,
                "lrrrrrrrrrl",
            )
        )
        bad = [(n, load_failed([r for r in start if r["n"] == n])) for n in sorted({r["n"] for r in start})]
        bad = [(n, f) for n, f in bad if f]
        if bad:
            out += ["", "**The light load failed the strict verdict** (hsb.term):", ""]
            out += [f"- N = {n:,}: {'; '.join(f)}" for n, f in bad]
    if lag:
        out += [
            "",
            f"**Sequential lag**, active session open → standby session open at the CP, {lag[0]['rate']:,.0f} logons/s"
            f" and as many logoffs (each session held {lag[0]['hold']} s; pool of {lag[0]['pool']:,} terminals; so"
            f" {2 * lag[0]['rate']:,.0f} ring entries/s). The active's open is when the terminal received"
            " `session open`; the standby's is found by polling the CP's admin `sessions` on one open connection"
            " back to back; the error column is the polling resolution (half the spacing of the two polls that"
            " bracket the appearance).",
            "",
        ]
        rows = []
        for r in lag:
            lg = r["lag_ms"]
            rows.append(
                [
                    f"{r['ring_poll_ms']:.0f} ms" + (" (default)" if abs(r["ring_poll_ms"] - 50) < 1e-6 else ""),
                    f"{r['logons']:,}",
                    f"{r['achieved_logons_per_s']:,.0f}",
                    f"**{fmt_ms(lg['p50'], 1)}**",
                    fmt_ms(lg["p90"], 1),
                    f"**{fmt_ms(lg['p99'], 1)}**",
                    fmt_ms(lg["max"], 1),
                    f"±{fmt_ms(r['error_bound_ms']['median'], 1)} (p99 ±{fmt_ms(r['error_bound_ms']['p99'], 1)})",
                    f"{fmt_ms((r.get('lag_polled_both_ms') or {}).get('p50'), 1)} / {fmt_ms((r.get('lag_polled_both_ms') or {}).get('p99'), 1)}",
                    f"{r['matched']:,} / {r['unmatched']}",
                ]
            )
        out.append(
            table(
                [
                    "host-b `ring_poll_interval`",
                    "logons",
                    "logons/s achieved",
                    "lag p50 (ms)",
                    "p90",
                    "lag p99 (ms)",
                    "max",
                    "measurement error (ms)",
                    "cross-check: both ends polled, p50 / p99",
                    "matched / not seen",
                ],
                rows,
            )
        )
    return "\n".join(out)
