"""Partition benchmark: the four network partitions of tests/netns, repeated.

    sudo .venv/bin/python bench/partitions.py [--rounds 5] [--terminals 200] [--rate 400]
                                              [--hold 2] [--scenario NAME ...] [--dir D] [--json FILE]
                                              [--no-write] [--render FILE]

Each round of each scenario builds a fresh lab (tests/netns/harness.py): hsbcpd, host A
(active), host B (standby) and the terminals in four network namespaces joined through
bridges by veth pairs, default timing (heartbeat 100 ms, peer timeout 500 ms, CP host
timeout 500 ms), the journal service. It starts the load, waits until every terminal has
its standby session, cuts a link with `ip link set ... down`, holds the cut `--hold`
seconds, heals it, and checks the delivery guarantee, the at-most-one-active rule and the
terminals' connections (tests/netns/scenarios.py). Scenarios:

- peer_link_cut: the A–B peer link only (both hosts still reach the CP): no switchover;
- active_isolated: host A cut off from everything: B is granted the switch; A, healed, is fenced;
- active_cp_link_cut: only A's link to the CP (A–B up): the CP decides; A fenced, B serves;
- standby_isolated: host B cut off from everything: A keeps serving; healed, established again.

Times are on the wall clock from the cut (the daemons' own status records: the standby's
`last_takeover.requested_at`, the CP's `last_switchover` with `first_reply_ms` and
`all_served_ms`). "worst pause" and "all served (terminals)" are what the terminals saw
(hsb.term.timeline: the worst reply latency over the messages in flight at the cut or sent in
the second after it, and the cut → the last reply to a message it kept waiting); "service gap"
is the load's longest stretch with messages outstanding and no reply at all. "2 claim" is how
long both hosts reported role=active (not fenced) at once in the 100 ms status samples. A round
whose checks fail (the load's strict verdict included) counts as failed: the table shows it and
the bench exits 1. Needs root and iproute2.

The raw results (every round's figures) go to `bench/results/partitions.json` (`--json FILE`
elsewhere); the section "Partitions (`bench/partitions.py`)" of BENCHMARKS.md is written from
them (not with `--no-write`), and `--render FILE` rebuilds it from such a file alone, without
measuring (no root needed then).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from _sandbox import machine, machine_line, raw_name, report, result_args, run_or_render, write_json  # noqa: E402

from tests.netns import scenarios  # noqa: E402
from tests.netns.harness import skip_reason  # noqa: E402

COMMAND = "sudo .venv/bin/python bench/partitions.py"
RESULTS = Path(__file__).resolve().parent / "results" / "partitions.json"
SECTION = "Partitions (`bench/partitions.py`)"
LABELS = {
    "peer_link_cut": "A–B peer link cut (both reach the CP)",
    "active_isolated": "A cut off from everything",
    "active_cp_link_cut": "only the A–CP link cut (A–B up)",
    "standby_isolated": "B cut off from everything",
}
COLUMNS = [
    ("cut_to_request_ms", "cut → B asks"),
    ("cut_to_grant_ms", "cut → grant"),
    ("cut_to_first_reply_ms", "cut → first reply"),
    ("cut_to_all_served_ms", "cut → all served"),
    ("worst_pause_ms", "worst pause"),
    ("all_served_ms", "all served (terminals)"),
    ("service_gap_ms", "service gap"),
    ("cut_to_peer_down_ms", "cut → peer down seen"),
    ("cut_to_no_standby_ms", "cut → no standby seen"),
    ("heal_to_fenced_exit_ms", "heal → A exits 75"),
    ("heal_to_established_ms", "heal → established"),
    ("two_claim_active_ms", "2 claim active"),
]


def fmt(values: list[float]) -> str:
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.0f}"
    return f"{med:.0f} ({min(values):.0f}–{max(values):.0f})"


def table(results: dict[str, list[dict[str, Any]]], failures: dict[str, list[str]]) -> str:
    cols = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for rs in results.values() for r in rs)]
    lines = ["| scenario | rounds ok | " + " | ".join(h for _, h in cols) + " | verdict |", "|---|---:|" + "---:|" * len(cols) + "---|"]
    for name in scenarios.SCENARIOS:
        if name not in results and name not in failures:
            continue
        rs = results.get(name, [])
        nf = len(failures.get(name, []))
        ok = f"{len(rs)}/{len(rs) + nf}"
        cells = [fmt([float(r[k]) for r in rs if r.get(k) is not None]) for k, _ in cols]
        verdict = "all OK" if not nf else f"**{nf} FAILED**"
        lines.append(f"| {LABELS.get(name, name)} | {ok} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def render(saved: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (the whole saved JSON)."""
    results: dict[str, list[dict[str, Any]]] = saved["results"]
    failures: dict[str, list[str]] = saved.get("failures") or {}
    s = saved.get("settings") or {}
    rounds_all = [r for rs in results.values() for r in rs]
    acked = sum(r["acked"] for r in rounds_all)
    nfail = sum(len(v) for v in failures.values())
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this table).",
        "",
        f"Machine: {machine_line(a.machine)}.",
        "",
        f"{s.get('rounds', '?')} round{'s' if s.get('rounds') != 1 else ''} of each scenario. hsbcpd, host A (active), host B (standby) and the terminals"
        " each run in their own network namespace, joined through bridges by veth pairs (tests/netns/harness.py);"
        " a link is cut with `ip link set … down` on the switch side, so traffic is dropped silently both ways"
        " (no RST, no ICMP), like a pulled cable. Default timing (heartbeat 100 ms, peer timeout 500 ms, CP host"
        f" timeout 500 ms), journal service, {s.get('terminals', '?'):,} terminals at {s.get('rate', 0):,.0f} msg/s"
        " (window 8). Each round starts a fresh system, waits until every terminal has its standby session, cuts,"
        f" holds the cut {s.get('hold', '?'):g} s after its effect is seen, heals, and checks the delivery guarantee"
        " and the load's strict verdict (every acknowledged id answered once and in a journal, repeats marked"
        " redelivered, nothing unexpected or unacknowledged), at most one host registered at the CP as a serving"
        " active in each 100 ms status sample, and no terminal disconnected.",
        "",
        'Median (min–max) in ms, on the wall clock from the cut ("B asks": the standby\'s'
        ' `last_takeover.requested_at`; "grant", "first reply", "all served": the CP\'s `last_switchover`;'
        ' "worst pause", "all served (terminals)": what the terminals saw, hsb.term.timeline; "service gap":'
        " the load's longest stretch with messages outstanding and no reply at all):",
        "",
        table(results, failures),
        "",
        f"{acked:,} acknowledged messages checked over the {len(rounds_all)} rounds that passed; "
        + ("every round passed." if not nfail else f"**{nfail} round{'s' if nfail != 1 else ''} failed**:"),
    ]
    for name, fs in failures.items():
        out += [f"- {LABELS.get(name, name)}, {f[:500]}" for f in fs]
    return "\n".join(out)


def save(a: argparse.Namespace, results: dict[str, list[dict[str, Any]]], failures: dict[str, list[str]]) -> None:
    settings = {"rounds": a.rounds, "terminals": a.terminals, "rate": a.rate, "hold": a.hold, "scenarios": a.scenario or list(scenarios.SCENARIOS)}
    write_json(a, {"machine": a.machine, "command": a.command, "settings": settings, "results": results, "failures": failures})


async def amain(a: argparse.Namespace) -> int:
    why = skip_reason()
    if why is not None:
        print(f"bench/partitions.py: {why}", file=sys.stderr)
        return 2
    from hsb import logs

    logs.setup("warning", process="bench-partitions")  # keep the table alone on stdout
    names = a.scenario or list(scenarios.SCENARIOS)
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="hsb-partitions-"))
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, list[str]] = {}
    t0 = time.monotonic()
    for rnd in range(1, a.rounds + 1):
        for name in names:
            d = base / f"{name}-{rnd}"
            try:
                out = await scenarios.run(name, d, terminals=a.terminals, rate=a.rate, hold=a.hold)
            except Exception as exc:  # a broken promise: count it, keep the logs, go on
                failures.setdefault(name, []).append(f"round {rnd}: {type(exc).__name__}: {exc}")
                print(f"[{rnd}/{a.rounds}] {name}: FAILED ({type(exc).__name__}: {str(exc)[:300]}); logs in {d}", file=sys.stderr)
                if a.verbose:
                    traceback.print_exc()
                save(a, results, failures)
                continue
            results.setdefault(name, []).append(out)
            save(a, results, failures)
            times = ", ".join(f"{h} {out[k]:.0f} ms" for k, h in COLUMNS if out.get(k) is not None)
            print(f"[{rnd}/{a.rounds}] {name}: {times}; acked {out['acked']}, lost 0", file=sys.stderr)
    print(
        f"Partitions: {a.rounds} rounds × {len(names)} scenarios, {a.terminals} terminals at {a.rate:g} msg/s, "
        f"cuts held {a.hold:g} s after their effect is seen; {time.monotonic() - t0:.0f} s in all; logs in {base}",
        file=sys.stderr,
    )
    save(a, results, failures)
    text = render(json.loads(Path(a.json).read_text()), a)
    report(a, SECTION, text)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench/partitions.py", description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    p.add_argument("--rounds", type=int, default=5, help="rounds of each scenario (default 5)")
    p.add_argument("--terminals", type=int, default=200)
    p.add_argument("--rate", type=float, default=400.0, help="messages per second, all terminals")
    p.add_argument("--hold", type=float, default=scenarios.HOLD, help="seconds a cut is held once its effect is seen")
    p.add_argument("--scenario", action="append", choices=list(scenarios.SCENARIOS), help="only these (repeatable)")
    p.add_argument("--dir", help="keep every round's configs and logs here (default: a new temporary directory)")
    result_args(p, RESULTS)
    p.add_argument("-v", "--verbose", action="store_true")
    argv = sys.argv[1:] if argv is None else argv
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved, a), amain)


if __name__ == "__main__":
    sys.exit(main())
