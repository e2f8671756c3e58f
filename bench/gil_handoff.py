"""A helper thread's call while the event loop is busy: how long until its answer is back.

    .venv/bin/python bench/gil_handoff.py [--calls 40] [--busy-us 0,50,300] [--json FILE]

hsb.worker.Worker runs blocking file I/O (the CP journal's group commit, the takeover file) on
a thread. The thread must win the GIL back after each blocking call, and a busy event loop
(uvloop, Python callbacks back to back, as hsbcpd under load) gives it up around each poll and
takes it straight back. This measures, in one process on uvloop with the daemons' switch
interval, a call's round trip (`Worker.call` → the answer on the loop) for a no-op and for one
100-byte `pwrite` + `fdatasync`, with the loop idle and running callbacks of `busy_us` each back
to back; with the worker giving the GIL away (hsb.worker's nudge, the daemons' code) and
without (the nudge disabled, as before). A run that has not finished within `--limit` seconds is
reported as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

COMMAND = ".venv/bin/python bench/gil_handoff.py"
RESULTS = Path(__file__).resolve().parent / "results" / "gil_handoff.json"


def child(kind: str, busy_us: float, calls: int, nudge: bool, d: str) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    import uvloop

    from hsb import worker as wmod
    from hsb.loop import SWITCH_INTERVAL

    sys.setswitchinterval(SWITCH_INTERVAL)
    if not nudge:
        wmod.Worker._went_out = lambda self, loop, spin=True: None  # type: ignore[method-assign]
        wmod.Worker._answered = lambda self: None  # type: ignore[method-assign]
    fd = os.open(Path(d) / "f", os.O_WRONLY | os.O_CREAT, 0o600)

    def work() -> None:
        if kind == "fsync":
            os.pwrite(fd, b"x" * 100, 0)
            os.fdatasync(fd)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        w = wmod.Worker("bench")
        stop = False
        turns = 0

        def busy() -> None:
            nonlocal turns
            turns += 1
            end = time.perf_counter() + busy_us / 1e6
            while time.perf_counter() < end:
                pass
            if not stop:
                loop.call_soon(busy)

        if busy_us:
            loop.call_soon(busy)
        lat = []
        c0 = time.process_time()
        for _ in range(calls):
            f = loop.create_future()
            t0 = time.perf_counter()
            w.call(work, lambda r, e, f=f: f.set_result(None))
            await f
            lat.append((time.perf_counter() - t0) * 1000)
        stop = True
        cpu = time.process_time() - c0
        lat.sort()
        return {
            "p50_ms": round(statistics.median(lat), 3),
            "p90_ms": round(lat[int(len(lat) * 0.9)], 3),
            "max_ms": round(lat[-1], 3),
            "nudges_per_call": round(w.nudges / calls, 2),
            "busy_turns": turns,
            "cpu_s": round(cpu, 3),
        }

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        return r.run(main())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--busy-us", default="0,50,300")
    p.add_argument("--limit", type=float, default=60.0, help="seconds a run may take")
    p.add_argument("--json", type=Path, default=RESULTS)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        kind, busy, nudge, d = a.child
        print(json.dumps(child(kind, float(busy), a.calls, nudge == "1", d)))
        return 0
    from _sandbox import machine

    rows = []
    with tempfile.TemporaryDirectory(prefix="hsb-gil-", dir="/var/tmp") as d:
        for busy in [float(x) for x in a.busy_us.split(",")]:
            for kind in ("noop", "fsync"):
                for nudge in (False, True):
                    argv_ = [sys.executable, __file__, "--calls", str(a.calls), "--child", kind, str(busy), "1" if nudge else "0", d]
                    try:
                        out = subprocess.run(argv_, capture_output=True, text=True, timeout=a.limit, check=True)
                        r = json.loads(out.stdout.strip().splitlines()[-1])
                    except subprocess.TimeoutExpired:
                        r = {"timed_out_s": a.limit}
                    r.update(kind=kind, busy_us=busy, nudge=nudge)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
    res = {"machine": machine(), "command": f"{COMMAND} --calls {a.calls} --busy-us {a.busy_us}", "calls": a.calls, "results": rows}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
