"""bench/scale.py's report: its section of BENCHMARKS.md (render), from the raw results alone."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._report import fmt_ms, machine_line, raw_name, table  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
TITLES = {"steady": "steady load", "failover": "SIGKILL failover", "switchover": "planned switchover", "cp_restart": "CP restart (journal)"}
HEADERS = [
    "phase",
    "verdict",
    "lost / dup / unexpected / unacked",
    "disconnects",
    "worst pause ms",
    "p99 ms",
    "back ms",
    "re-established s",
    "log on s (+ standby)",
    "RSS MiB CP / active / standby",
    "KiB per terminal CP / active / standby",
    "load child peak MiB",
]


def pause(v: float | None) -> str:
    return "∞ (never answered)" if v == float("inf") else fmt_ms(v, 1)


def mib(v: int | None) -> str:
    return "–" if v is None else f"{v / 1024:,.0f}"


def render(data: dict[str, Any], a: argparse.Namespace) -> str:
    c = data["config"]
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}; open-files limit {c['nofile'][0]:,} (soft) / {c['nofile'][1]:,} (hard) per process."
        " hsbcpd, both hosts, the load children and the benchmark share the cores.",
        f"Per size a fresh sandbox (fast switch, {c['service']} service, the CP's journal with fsync, "
        + ("default timing" if c.get("host_timeout", 0.5) == 0.5 else f"host_timeout and heartbeat_timeout {c['host_timeout']:g} s")
        + (", hsbcpd under its master (`--supervise`: the CP restart kills the CP and the master forks the next)" if c.get("supervise") else "")
        + "); per phase a load"
        f" run of its own: {c['rate']:,.0f} msg/s in total over all N terminals, split over load children of at most"
        f" {c['per_child']:,} terminals, each from a 127.0.0.x of its own; strict verdict. **Worst pause**: the longest reply latency"
        " over the messages in flight at the operation or sent in the second after it (steady: sent in the"
        f" {c['steady']:g} s window), max over the children; p99 is the worst child's. **Back**: operation → every terminal"
        " switched (or its session open again after the CP restart). **Re-established**: operation → hot standby with all N"
        " standby sessions (after the failover, the killed host restarted as standby first). **Log on**: load started → N active"
        " sessions at the CP, + then → N standby sessions. RSS = VmRSS at the phase's end by role (active, standby after it);"
        " KiB per terminal = (that RSS − the same role's RSS in the idle sandbox, N terminals configured, none connected) / N.",
    ]
    for size in data["sizes"]:
        n = size["n"]
        out += ["", f"**{n:,} terminals**" + (f": skipped ({size['skipped']})." if size.get("skipped") else "")]
        if size.get("skipped"):
            continue
        ph = size["phases"]
        kids = ph[0]["children"] if ph else []
        idle = size.get("idle_rss_kib") or {}
        out.append(
            f"{len(kids)} load child{'ren' if len(kids) != 1 else ''} per phase ({' + '.join(format(k['terminals'], ',') for k in kids)}"
            f" terminals, each from an address of its own, {kids[0]['source'] if kids else '?'} up); sandbox up in {size.get('up_s')} s;"
            f" idle RSS: CP {mib(idle.get('cp'))} MiB,"
            f" active {mib(idle.get('active'))} MiB, standby {mib(idle.get('standby'))} MiB."
        )
        out.append("")
        rows = []
        for r in ph:
            e, k = r.get("rss_end_kib") or {}, r.get("kib_per_terminal") or {}
            load_peak = [v for name, v in (r.get("rss_peak_kib") or {}).items() if name.startswith("load-")]
            disc = f"{r.get('disconnects', 0):,}" + (f" (resumed {r.get('resumed', 0):,})" if r["phase"] == "cp_restart" else "")
            rows.append(
                [
                    TITLES[r["phase"]],
                    "OK" if r["ok"] else "**FAIL**",
                    " / ".join(f"{r.get(x, 0):,}" for x in ("lost", "duplicates", "unexpected", "unacked")),
                    disc,
                    pause(r.get("worst_ms")),
                    pause(r.get("p99_ms")),
                    "–" if r.get("all_back_s") is None else f"{r['all_back_s'] * 1000:,.0f}",
                    "–" if r.get("reestablished_s") is None else f"{r['reestablished_s']:.1f}",
                    f"{r.get('logon_s', '–')} + {r.get('standby_open_s', '–')}",
                    " / ".join(mib(e.get(x)) for x in ("cp", "active", "standby")),
                    " / ".join("–" if k.get(x) is None else f"{k[x]:.1f}" for x in ("cp", "active", "standby")),
                    mib(max(load_peak)) if load_peak else "–",
                ]
            )
        out.append(table(HEADERS, rows, "llrrrrrrrrrr"))
        for r in ph:
            if r["failures"]:
                out.append(f"\n- {TITLES[r['phase']]} failed: " + "; ".join(r["failures"][:6]))
        by = {r["phase"]: r for r in ph}
        served, listening = (by.get("failover") or {}).get("served_s"), (by.get("cp_restart") or {}).get("listening_s")
        out.append(
            f"\nSIGKILL failover: the standby served after {fmt_ms(None if served is None else served * 1000)} ms. CP restart: the new"
            f" hsbcpd listening after {fmt_ms(None if listening is None else listening * 1000)} ms (its journal recovery"
            f" {fmt_ms((by.get('cp_restart') or {}).get('journal_recovery_ms'), 1)} ms). Other processes' CPU (not this benchmark's)"
            f" before each phase: {' / '.join(fmt_ms(r.get('others_cpu'), 2) for r in ph)} cores."
        )
        offs = [r for r in ph if r.get("logoff") is not None]
        if offs:
            out.append(
                "\nEvery terminal logging off at each phase's end (a logoff storm): "
                + "; ".join(
                    f"{TITLES[r['phase']]}: logged off in {fmt_ms(None if r.get('logoff_s') is None else r['logoff_s'] * 1000)} ms,"
                    f" CP loop stalls {', '.join(f'{x:,.0f}' for x in r['logoff']['cp_stalls_ms']) or 'none'} ms,"
                    f" host links dropped {len(r['logoff']['host_link_drops'])}"
                    for r in offs
                )
                + " (a stall is logged past host_timeout / 2)."
            )
        if size.get("stopped"):
            out.append(f"\n- stopped {size['stopped']}")
    return "\n".join(out)
