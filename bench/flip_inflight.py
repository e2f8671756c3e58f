"""The messages in flight at a grant when few terminals hold any, for BENCHMARKS.md.

    .venv/bin/python bench/flip_inflight.py [--sizes 19000,100000] [--holders 200] [--reps 5] [--json FILE] [--no-write] [--render FILE [--write]]

bench/scale_core.py measures the flip with a held message at every terminal. In a failover or
a planned switchover under load only the terminals with a message in flight hold one (about 200
at 2,000 msg/s). In-process as scale_core (the CP's code on stand-in transports, no sockets):
N terminals with both sessions, `--holders` of them, spread over the terminal table, holding
one message delivered to the old active; the old active's link is lost and the standby asks.
From the request: every held message sent to the new active (`inflight_ms`: what the switch
keeps those terminals waiting, on the CP's side) and every session flipped (`flip_ms`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, save_results, section_head, table  # noqa: E402

COMMAND = ".venv/bin/python bench/flip_inflight.py"
RESULTS = Path(__file__).resolve().parent / "results" / "flip_inflight.json"
SECTION = "The messages in flight at a grant (`bench/flip_inflight.py`)"


async def one(n: int, holders: int) -> dict[str, Any]:
    import scale_core

    from hsb.cp.core import CP
    from tests.support.cpcore import fake_terminal

    with tempfile.TemporaryDirectory(prefix="hsb-flip-inflight-") as tmp:
        cp = CP(scale_core._cfg(n, Path(tmp)), None)
        a, _ = scale_core._host(cp, "host-a")
        cp.host_register(a, "active", 1)
        b, _ = scale_core._host(cp, "host-b")
        cp.host_register(b, "standby", 2)
        names = list(cp.terms)
        terms = []
        for name in names:
            terms.append(fake_terminal(cp, name, timeout=scale_core.SETUP_S))
            cp.host_open(a, name, "active", scale_core.ATTRS)
            cp.host_open(b, name, "standby", scale_core.ATTRS)
        step = max(1, n // holders)
        for name in names[step - 1 :: step][:holders]:
            cp.terminal_msg(cp.terms[name], 1, b"x" * 32)
        await asyncio.sleep(0)
        assert cp.counts.held == holders, cp.counts.held
        a.connection_lost(None)
        t0 = time.perf_counter()
        cp.host_switchover(b, "bench", False, "failover")
        inflight = None
        for _ in range(1000000):
            if inflight is None and cp.counters["redelivered"] >= holders:
                inflight = time.perf_counter() - t0
            if cp.flipping is None and inflight is not None:
                break
            await asyncio.sleep(0)
        flip = time.perf_counter() - t0
        assert cp.active is b and cp.counters["redelivered"] == holders and cp.switchovers[-1]["switched"] == n
        out = {"terminals": n, "holders": holders, "inflight_ms": round(inflight * 1000, 2), "flip_ms": round(flip * 1000, 2)}
        out["slices"] = cp.switchovers[-1]["slices"]
        for p in terms:
            p.connection_lost(None)
        b.connection_lost(None)
    return out


async def amain(a: argparse.Namespace) -> int:
    from hsb import gcpolicy, logs

    logs.setup("warning", cache=True)
    gcpolicy.apply()  # as the daemon
    runs: list[dict[str, Any]] = []
    for rep in range(a.reps):
        for n in a.sizes:
            r = await one(n, a.holders)
            runs.append(r)
            print(f"[flip_inflight] rep {rep + 1} {n:,}: in flight {r['inflight_ms']} ms, flip {r['flip_ms']} ms", file=sys.stderr, flush=True)
    res = {"sizes": a.sizes, "holders": a.holders, "reps": a.reps, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    rows = []
    for n in res["sizes"]:
        rs = [r for r in res["runs"] if r["terminals"] == n]
        rows.append(
            [
                f"{n:,}",
                ", ".join(f"{r['inflight_ms']:.1f}" for r in rs),
                f"{statistics.median(r['inflight_ms'] for r in rs):.1f}",
                ", ".join(f"{r['flip_ms']:.1f}" for r in rs),
                f"{statistics.median(r['flip_ms'] for r in rs):.1f}",
            ]
        )
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process (the CP's code on stand-in transports); {res['holders']} terminals of N hold a message"
                f" delivered to the old active, spread over the table; from the new active's request; {res['reps']} runs.",
            ),
            "",
            table(
                ["terminals", "every held message sent to the new active, ms (runs)", "median", "every session flipped, ms (runs)", "median"], rows
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/flip_inflight.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",") if x], default=[19000, 100000])
    ap.add_argument("--holders", type=int, default=200)
    ap.add_argument("--reps", type=int, default=5)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
