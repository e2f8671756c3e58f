"""Planned switchover vs SIGKILL failover, side by side (issue 6 measure).

    .venv/bin/python bench/switchover.py [--sizes 1000,10000] [--reps 3] [--rate R]

For each size: one sandbox; per repetition, one load run (hsbterm load in its own
process) with a planned `hsbctl switchover` in the middle, then one with a SIGKILL
of the active (old active restarted as standby afterwards). Reports the service
gap seen by the terminals that the operation caused (the longest stretch with
messages outstanding and no reply that overlaps the operation's window: for a
switchover from `hsbctl switchover` until it returns with hot standby
established again, for a SIGKILL from the kill until the new active is seen,
+0.5 s each), the longest stretch of the whole run beside it, the CP's own
figure, lost, duplicates and disconnects, and the ratio failover gap /
switchover gap from the same run. Goal: planned gap <= 50 ms,
zero lost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hsb.ctl import sandbox  # noqa: E402


status = sandbox.status
until = sandbox.until


actives = sandbox.actives


async def one(d: Path, info: dict[str, Any], n: int, rate: float, kind: str) -> dict[str, Any]:
    await until(d, lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] >= 0, 120, "established")
    load = subprocess.Popen(
        [sys.executable, "-m", "hsb.term", "load", "--cp", info["cp"]["terminal"], "--terminals", str(n), "--rate", str(rate), "--duration", "8", "--settle", "20", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    await until(d, lambda s: s["cp"]["terminals"]["standby_sessions"] == n, 120, "standby sessions")
    await asyncio.sleep(2.0)
    s = await status(d)
    old = actives(s)[0]
    new = "host-b" if old == "host-a" else "host-a"
    op_start = time.time()
    if kind == "switchover":
        r = await asyncio.get_running_loop().run_in_executor(
            None, lambda: subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], "switchover", "--yes", "--timeout", "120"], capture_output=True, text=True)
        )
        if r.returncode != 0:
            raise RuntimeError(f"switchover failed: {r.stderr}")
    else:
        os.kill(sandbox.load_state(d)["hosts"][old]["pid"], signal.SIGKILL)
        await until(d, lambda s: actives(s) == [new], 30, "takeover")
    # switchover: hsbctl returns once hot standby is established again, so the window holds
    # the re-establishment too; failover: the old active is restarted after the load run
    op_end = time.time() + 0.5
    out, _ = await asyncio.get_running_loop().run_in_executor(None, load.communicate)
    rep = json.loads(out)
    s = await status(d)
    rec = s["cp"].get("last_switchover") or {}
    if kind == "failover":
        while sandbox._alive(sandbox.load_state(d)["hosts"][old]["pid"]):
            await asyncio.sleep(0.05)
        sandbox.start_host(d, old, "standby")
        await until(d, lambda s: s["established"], 180, "established again")
    # the longest stretch without replies that overlaps the operation's window (the run's
    # longest may lie elsewhere: the 10,000 logons at its start, say)
    in_op = [g["ms"] for g in rep.get("gaps", []) if g["start"] is not None and g["end"] is not None
             and g["end"] >= op_start and g["start"] <= op_end]
    return {
        "kind": kind,
        "terminals": n,
        "op_gap_ms": max(in_op) if in_op else None,
        "op_window_s": round(op_end - op_start, 3),
        "gap_ms": rep["service_gap"]["ms"],
        "cp_gap_ms": rec.get("service_gap_ms") if kind == "switchover" else rec.get("first_reply_ms"),
        "switch_ms": rec.get("switch_ms"),
        # where the terminals' longest gap lies, from the CP's grant (wall clock, same machine)
        "gap_start_after_grant_ms": None if rec.get("at") is None or rep["service_gap"].get("start") is None else round((rep["service_gap"]["start"] - rec["at"]) * 1000, 1),
        "gap_end_after_grant_ms": None if rec.get("at") is None or rep["service_gap"].get("end") is None else round((rep["service_gap"]["end"] - rec["at"]) * 1000, 1),
        "cp_first_reply_ms": rec.get("first_reply_ms"),
        "grant_at": rec.get("at"),
        "release_to_grant_ms": rec.get("release_to_grant_ms"),
        "lost": rep["lost"],
        "duplicates": rep["duplicates"],
        "disconnects": rep["disconnects"],
        "acked": rep["acked"],
    }


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=2000.0)
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    base = Path(tempfile.mkdtemp(prefix="hsb-bench-switchover-"))
    for n in [int(x) for x in a.sizes.split(",")]:
        d = base / f"n{n}"
        info = await sandbox.aup(d, terminals=n, service="echo", timeout=180)
        try:
            for _ in range(a.reps):
                for kind in ("switchover", "failover"):
                    r = await one(d, info, n, a.rate, kind)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
        finally:
            sandbox.down(d, timeout=3.0)
    print(f"\ncommand: .venv/bin/python bench/switchover.py --sizes {a.sizes} --reps {a.reps} --rate {a.rate:.0f}; machine: {os.cpu_count()} cores, load generator and daemons on the same machine")
    print("\n| terminals | runs | planned: gap in its window ms (median / max) | SIGKILL: gap in its window ms (median / max) | ratio kill/planned | longest gap of the whole run, planned / SIGKILL (median) | CP planned gap ms (median) | lost | dup | disconnects |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True

    def med_max(xs: list[float]) -> str:
        return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "-"

    for n in sorted({r["terminals"] for r in rows}):
        sw = [r for r in rows if r["terminals"] == n and r["kind"] == "switchover"]
        fo = [r for r in rows if r["terminals"] == n and r["kind"] == "failover"]
        sg = [r["op_gap_ms"] for r in sw if r["op_gap_ms"] is not None]
        fg = [r["op_gap_ms"] for r in fo if r["op_gap_ms"] is not None]
        cpg = [r["cp_gap_ms"] for r in sw if r["cp_gap_ms"] is not None]
        lost = sum(r["lost"] for r in sw + fo)
        dup = sum(r["duplicates"] for r in sw + fo)
        disc = sum(r["disconnects"] for r in sw + fo)
        ok &= lost == 0 and dup == 0
        ratio = f"{statistics.median(fg) / max(statistics.median(sg), 0.001):.2f}" if sg and fg else "-"
        whole = f"{statistics.median([r['gap_ms'] for r in sw]):.1f} / {statistics.median([r['gap_ms'] for r in fo]):.1f}"
        print(
            f"| {n:,} | {len(sw)} + {len(fo)} | {med_max(sg)} | {med_max(fg)} | {ratio} | {whole} | "
            f"{statistics.median(cpg) if cpg else float('nan'):.1f} | {lost} | {dup} | {disc} |"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    from hsb import logs

    logs.setup("warning")
    sys.exit(asyncio.run(main()))
