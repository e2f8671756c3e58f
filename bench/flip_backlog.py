"""The flip at a grant with a backlog held at every terminal: the longest turn of the event loop.

    .venv/bin/python bench/flip_backlog.py [--terminals 4096] [--held 16,64] [--reps 3] [--json FILE] [--no-write] [--render FILE [--write]]

In a failover while the service had been failing (messages held up to the CP's `held_bound` at
each terminal) the flip hands every held message to the new active. It runs a slice per turn of
the CP's event loop, so heartbeats and replies are relayed between slices; a slice's budget is
`[cp] flip_slice` (4,096), and each message handed over counts as one more terminal. Before it
counted terminals only, so 4,096 terminals holding 256 messages each were one slice. In-process
as bench/flip_inflight.py (the CP's code on stand-in transports, no sockets): `--terminals`
terminals with both sessions, each holding `--held` messages acknowledged and delivered to the
old active; its link is lost and the standby asks. Each slice is timed: the longest is how long
the loop did nothing else. For a comparison with older code, copy this file into a clone of that
code and run it there (`cd <clone> && PYTHONPATH=<clone> .../.venv/bin/python bench/flip_backlog.py`):
it imports the hsb of the checkout it sits in.
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

COMMAND = ".venv/bin/python bench/flip_backlog.py"
RESULTS = Path(__file__).resolve().parent / "results" / "flip_backlog.json"
SECTION = "The flip with a backlog at every terminal (`bench/flip_backlog.py`)"


async def one(n: int, held: int) -> dict[str, Any]:
    from hsb.cp import flip as flipmod
    from hsb.cp.core import CP
    from tests.support.cpcore import cp_config, fake_host, fake_terminal

    slices: list[float] = []
    real = flipmod.Flip.run

    def timed(self: Any, budget: int | None) -> bool:
        t = time.perf_counter()
        try:
            return real(self, budget)
        finally:
            slices.append(time.perf_counter() - t)

    flipmod.Flip.run = timed  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory(prefix="hsb-flip-backlog-") as tmp:
            cp = CP(cp_config(Path(tmp), n, width=6, cp=f"held_bound = {held}\n"), None)
            a = fake_host(cp, "host-a", timeout=600.0)
            a.deliver_batch_bytes = 64 * 1024
            cp.host_register(a, "active", 1)
            b = fake_host(cp, "host-b", timeout=600.0)
            b.deliver_batch_bytes = 64 * 1024
            cp.host_register(b, "standby", 2)
            terms = []
            for name in list(cp.terms):
                terms.append(fake_terminal(cp, name, timeout=600.0))
                cp.host_open(a, name, "active", {"protocol": "hsb1"})
                cp.host_open(b, name, "standby", {"protocol": "hsb1"})
                t = cp.terms[name]
                for mid in range(1, held + 1):
                    cp.terminal_msg(t, mid, b"x" * 32)
            for _ in range(50):  # the acknowledgements' callbacks
                await asyncio.sleep(0)
            assert cp.counts.held == n * held, cp.counts.held
            a.connection_lost(None)
            t0 = time.perf_counter()
            cp.host_switchover(b, "bench", False, "failover")
            while not slices or cp.flipping is not None:
                await asyncio.sleep(0)
                assert time.perf_counter() - t0 < 600, "the flip never ended"
            flip = time.perf_counter() - t0
            assert cp.active is b and all(h.delivered_epoch == cp.epoch for t in cp.terms.values() for h in t.held.values())
            out = {
                "terminals": n,
                "held": held,
                "messages": n * held,
                "slices": len(slices),
                "longest_slice_ms": round(max(slices) * 1000, 2),
                "flip_ms": round(flip * 1000, 2),
            }
            for p in terms:
                p.connection_lost(None)
            b.connection_lost(None)
    finally:
        flipmod.Flip.run = real  # type: ignore[method-assign]
    return out


async def amain(a: argparse.Namespace) -> int:
    from hsb import gcpolicy, logs

    logs.setup("warning", cache=True)
    gcpolicy.apply()  # as the daemon
    runs: list[dict[str, Any]] = []
    for rep in range(a.reps):
        for held in a.held:
            r = await one(a.terminals, held)
            runs.append(r)
            print(
                f"[flip_backlog] rep {rep + 1} {a.terminals:,} x {held}: {r['slices']} slices, longest {r['longest_slice_ms']} ms,"
                f" flip {r['flip_ms']} ms",
                file=sys.stderr,
                flush=True,
            )
    res = {"terminals": a.terminals, "held": a.held, "reps": a.reps, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    rows = []
    for held in res["held"]:
        rs = [r for r in res["runs"] if r["held"] == held]
        rows.append(
            [
                f"{res['terminals']:,} × {held}",
                f"{statistics.median(r['slices'] for r in rs):.0f}",
                ", ".join(f"{r['longest_slice_ms']:.1f}" for r in rs),
                f"{statistics.median(r['longest_slice_ms'] for r in rs):.1f}",
                ", ".join(f"{r['flip_ms']:.0f}" for r in rs),
                f"{statistics.median(r['flip_ms'] for r in rs):.0f}",
            ]
        )
    return "\n".join(
        [
            *section_head(
                a,
                "In-process (the CP's code on stand-in transports); every terminal holds the messages given, acknowledged and"
                f" delivered to the old active; from the new active's request; {res['reps']} runs.",
            ),
            "",
            table(
                ["terminals × held", "slices", "longest slice, ms (runs)", "median", "whole flip, ms (runs)", "median"],
                rows,
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/flip_backlog.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=4096)
    ap.add_argument("--held", type=lambda s: [int(x) for x in s.split(",") if x], default=[16, 64])
    ap.add_argument("--reps", type=int, default=3)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
