"""Partition benchmark (issue 7): the four network partitions of tests/netns, repeated.

    sudo .venv/bin/python bench/partitions.py [--rounds 5] [--terminals 200] [--rate 400]
                                              [--hold 2] [--scenario NAME ...] [--dir D] [--json FILE]

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
`all_served_ms`). "service gap" is the load's longest stretch with messages outstanding and
no reply at all. "2 claim" is how long both hosts reported role=active (not fenced) at once
in the 100 ms status samples. Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import asyncio
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

from tests.netns import scenarios  # noqa: E402
from tests.netns.harness import skip_reason  # noqa: E402

COLUMNS = [
    ("cut_to_request_ms", "cut → B asks"),
    ("cut_to_grant_ms", "cut → grant"),
    ("cut_to_first_reply_ms", "cut → first reply"),
    ("cut_to_all_served_ms", "cut → all served"),
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
    lines = ["| scenario | rounds ok | " + " | ".join(h for _, h in cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name in scenarios.SCENARIOS:
        if name not in results and name not in failures:
            continue
        rs = results.get(name, [])
        ok = f"{len(rs)}/{len(rs) + len(failures.get(name, []))}"
        cells = [fmt([float(r[k]) for r in rs if r.get(k) is not None]) for k, _ in cols]
        lines.append(f"| {name} | {ok} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_line() -> str:
    try:
        from bench._common import machine, machine_line as ml

        return ml(machine())
    except Exception:  # pragma: no cover - only a description
        import os
        import platform

        return f"{os.cpu_count()} CPUs, Python {platform.python_version()}"


async def main(a: argparse.Namespace) -> int:
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
                continue
            results.setdefault(name, []).append(out)
            times = ", ".join(f"{h} {out[k]:.0f} ms" for k, h in COLUMNS if out.get(k) is not None)
            print(f"[{rnd}/{a.rounds}] {name}: {times}; acked {out['acked']}, lost 0", file=sys.stderr)
    print(f"\nPartitions: {a.rounds} rounds × {len(names)} scenarios, {a.terminals} terminals at {a.rate:g} msg/s, "
          f"cuts held {a.hold:g} s after their effect is seen; {time.monotonic() - t0:.0f} s in all. {machine_line()}")
    print("Median (min–max) in ms.\n")
    print(table(results, failures))
    acked = sum(r["acked"] for rs in results.values() for r in rs)
    print(f"\nAcknowledged messages checked: {acked}; lost: 0, duplicate replies: 0 in every round that passed.")
    for name, fs in failures.items():
        for f in fs:
            print(f"FAILED {name} {f[:500]}")
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "failures": failures}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="rounds of each scenario (default 5)")
    p.add_argument("--terminals", type=int, default=200)
    p.add_argument("--rate", type=float, default=400.0, help="messages per second, all terminals")
    p.add_argument("--hold", type=float, default=scenarios.HOLD, help="seconds a cut is held once its effect is seen")
    p.add_argument("--scenario", action="append", choices=list(scenarios.SCENARIOS), help="only these (repeatable)")
    p.add_argument("--dir", help="keep every round's configs and logs here (default: a new temporary directory)")
    p.add_argument("--json", help="also write every round's figures to this file")
    p.add_argument("-v", "--verbose", action="store_true")
    sys.exit(asyncio.run(main(p.parse_args())))
