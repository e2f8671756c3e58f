"""Benchmark of a mass disconnect at the CP, for BENCHMARKS.md.

    .venv/bin/python bench/massdrop.py [--sizes 10000,19000] [--reps 2] [--host-timeout 0.5]
                                       [--json FILE] [--no-write] [--render FILE [--write]]

Every terminal's connection ends at once without a `bye`: the load process holding them is
SIGKILLed, as when a switch in front of the CP restarts or a terminal concentrator dies. Per
size, a sandbox (journal service) with that many resuming terminals logged on under 200 msg/s;
an admin client asks hsbcpd for its status every 5 ms throughout (each answer's wait is the
event loop's responsiveness); then the kill. Reported: the worst status wait, the CP's own
`cp_loop_stalled` events (logged past host_timeout / 2), hosts that dropped their CP link, and
the time until no terminal is connected and no active session is left. hsbcpd's work for each
lost connection past a burst is queued and taken a slice at a time (hsb.cp.logons); what is left
in the kill's turn is libuv's and the kernel's end of every connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import Admin, Logs, bench_main, sandbox, sandbox_down, save_results, section_head, start_load, status, table, until  # noqa: E402

COMMAND = ".venv/bin/python bench/massdrop.py"
RESULTS = Path(__file__).resolve().parent / "results" / "massdrop.json"
SECTION = "A mass disconnect at the CP (`bench/massdrop.py`)"


async def one(d: Path, n: int, rep: int) -> dict[str, Any]:
    logs = Logs(d)
    load = await start_load(sandbox.load_state(d)["cp"]["terminal"], n, 200, d / f"load-{rep}.log", settle=60, expect_disconnects=True)
    try:
        assert (await load.read(timeout=300))["ev"] == "sending"
        await until(lambda: status(d), lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] == n, 300, "hot standby", 0.2)
        await asyncio.sleep(1)
        logs.mark()
        adm = Admin(sandbox.load_state(d)["cp"]["admin"], str(d / "secret"))
        await adm.open()
        waits: list[float] = []
        probing = True

        async def probe() -> None:
            while probing:
                t = time.perf_counter()
                await adm.ask({"t": "status"})
                waits.append(time.perf_counter() - t)
                await asyncio.sleep(0.005)

        task = asyncio.create_task(probe())
        await asyncio.sleep(0.3)
        t0 = time.time()
        os.kill(load.pid, signal.SIGKILL)
    finally:
        await load.stop()
    s = await until(
        lambda: status(d),
        lambda s: s["cp"]["terminals"].get("connected", 0) == 0 and s["cp"]["terminals"]["active_sessions"] == 0,
        120,
        "all gone",
        0.05,
    )
    gone = time.time() - t0
    await asyncio.sleep(0.5)
    probing = False
    await task
    await adm.close()
    cp = logs["cp"].read()
    return {
        "terminals": n,
        "rep": rep,
        "all_gone_s": round(gone, 2),
        "status_worst_ms": round(max(waits) * 1000, 1),
        "status_p50_ms": round(sorted(waits)[len(waits) // 2] * 1000, 2),
        "probes": len(waits),
        "cp_stalls_ms": [e.get("stalled_ms") for e in cp if e.get("event") == "cp_loop_stalled"],
        "host_link_drops": [f"{h}: {e.get('reason')}" for h in sandbox.HOSTS for e in logs[h].read() if e.get("event") == "cp_link_down"],
        "disconnects_queued": s["cp"]["counters"].get("disconnects_queued"),
    }


async def amain(a: argparse.Namespace) -> int:
    rows = []
    for n in [int(x) for x in a.sizes.split(",")]:
        d = Path(tempfile.mkdtemp(prefix="hsb-bench-massdrop-")) / "s"
        await sandbox.aup(d, terminals=n, service="journal", timeout=300, host_timeout=a.host_timeout)
        try:
            for rep in range(a.reps):
                r = await one(d, n, rep)
                print(f"[massdrop] {r}", file=sys.stderr, flush=True)
                rows.append(r)
                await until(lambda: status(d), lambda s: s["established"], 120, "established again", 0.2)
        finally:
            sandbox_down(d)
    res = {"host_timeout": a.host_timeout, "runs": rows}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    rows = [
        [
            f"{r['terminals']:,}",
            f"{r['status_worst_ms']:,.1f}",
            ", ".join(f"{x:,.0f}" for x in r["cp_stalls_ms"]) or "none",
            str(len(r["host_link_drops"])),
            f"{r['all_gone_s']:.2f}",
            f"{r.get('disconnects_queued') or 0:,}",
        ]
        for r in res["runs"]
    ]
    return "\n".join(
        [
            *section_head(
                a,
                f"A sandbox (journal service, host_timeout {res['host_timeout']:g} s); its resuming terminals logged on under 200 msg/s from"
                " one load process, then that process SIGKILLed: every connection ends at once, without a bye.",
            ),
            "",
            table(["terminals", "status wait, worst ms", "CP loop stalls ms", "host links dropped", "all gone s", "losses queued (total)"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/massdrop.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,19000", help="terminal counts, comma-separated (one load process each: at most ~19,000)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--host-timeout", type=float, default=0.5, help="the CP's host_timeout and the hosts' heartbeat_timeout")
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
