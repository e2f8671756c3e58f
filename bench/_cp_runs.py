"""bench/cp.py's load runs: round trips through hsbcpd (durable and memory-only) beside the
direct echo server, closed loop (bench_throughput) or open loop at a fixed rate (bench_ack), each
with the strict verdict, repeated when other load disturbed it; the medians and CPU per round
trip of each side (summarize), the journal's group commits, the disk's fdatasync floor, and the
wait for a quiet machine before each run (await_quiet).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import Child, background_cpu, start_hsbcpd  # noqa: E402
from bench._cp_children import child_argv  # noqa: E402
from hsb.wire.client import request  # noqa: E402
from tests.support.procs import SECRET, addr  # noqa: E402

start_cp = start_hsbcpd  # hsbcpd with free ports, killed with this process

ACK_WINDOW = 64  # the open-loop runs: a cap on what one terminal has outstanding, never reached below capacity


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


async def load_run(
    n: int,
    window: int,
    target: str,
    watch: dict[str, int],
    a: argparse.Namespace,
    logbase: Path,
    log: Any,
    mode: str,
    rate: float = 0.0,
    journal: Any = None,
) -> dict[str, Any]:
    """One load child against `target` (closed loop, or open loop at `rate` msg/s in all), with the
    strict verdict; a run disturbed by other load on the machine is repeated (`--retries`).
    `journal`: the durable CP, whose group commits over the kept attempt are counted (not over the
    attempts repeated before it, whose messages the kept one does not count)."""
    label = f"window {window:<4}" if rate <= 0 else f"{rate:,.0f} msg/s"
    for attempt in range(1 + max(0, getattr(a, "retries", 0))):
        await await_quiet(a, log)
        j0 = await journal_counts(journal) if journal is not None else None
        argv = ["--cp", target, "--terminals", str(n), "--window", str(window), "--duration", str(a.duration), "--watch", json.dumps(watch)]
        load = await Child.start(child_argv("_load", *argv, "--rate", str(rate)), Path(f"{logbase}-{attempt}.log"))
        try:
            out = await load.read(a.duration + 150)
        finally:
            await load.stop()
        r = out["report"]
        failures = list(r["failures"])
        if r["sessions_opened"] != n:
            failures.append(f"sessions: {r['sessions_opened']} of {n} terminals had a session")
        if not r["ok"] and not failures:
            failures.append("no terminal was ever welcomed")
        run = {
            "rate": r["reply_rate"],
            "p50": r["latency_ms"]["p50"],
            "p99": r["latency_ms"]["p99"],
            "ack_p50": (r.get("ack_latency_ms") or {}).get("p50"),
            "ack_p99": (r.get("ack_latency_ms") or {}).get("p99"),
            "replied": r["replied"],
            "duration_s": r["duration_s"],
            "cpu": out["cpu"],
            "loop_cpu": out.get("loop_cpu", {}),
            "lost": r["lost"],
            "duplicates": r["duplicates"],
            "unexpected": r["unexpected"],
            "ok": bool(r["ok"]) and not failures,
            "failures": failures,
        }
        if not run["ok"]:
            log(f"  {n:>5} terminals  {label} {mode}: FAILED: {'; '.join(failures)}")
        other = out["cpu"].get("other", 0.0) + out["cpu"].get("steal", 0.0)
        log(
            f"  {n:>5} terminals  {label} {mode}: {run['rate']:>9.0f} msg/s  "
            f"p50 {run['p50'] or float('nan'):.2f} ms  p99 {run['p99'] or float('nan'):.2f} ms  "
            f"ack p99 {run['ack_p99'] or float('nan'):.2f} ms  cpu {run['cpu']}"
        )
        run["attempts"] = attempt + 1
        if j0 is not None:
            run["group_commits"] = group_commits(j0, await journal_counts(journal), run)
        run["disturbed"] = other > getattr(a, "max_other", float("inf"))
        if not run["disturbed"] or not run["ok"]:  # a failed run is kept, never run again
            break
        log(f"    other load {other:.2f} cores during the run; running it again")
    return run


async def bench_throughput(n: int, window: int, a: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    d = work / f"rt-{n}-w{window}"
    d.mkdir()
    cp = start_cp(d, terminals=n, host_timeout=5.0)  # durability = "fsync", the default
    cpmem = start_cp(d / "memory-only", terminals=n, host_timeout=5.0, durability="none")
    host = hostmem = echo = None
    runs: dict[str, list[dict[str, Any]]] = {"cp": [], "cpmem": [], "direct": []}
    try:
        host = await Child.start(child_argv("_host", "--addr", cp.info["host"], "--secret-hex", SECRET.hex()), d / "host.log")
        await host.read(30)
        hostmem = await Child.start(child_argv("_host", "--addr", cpmem.info["host"], "--secret-hex", SECRET.hex()), d / "host-memory-only.log")
        await hostmem.read(30)
        echo = await Child.start(child_argv("_echo"), d / "echo.log")
        port = (await echo.read(30))["port"]
        modes = ["cp", "cpmem", "direct"]
        for rep in range(a.reps):
            order = modes[rep % 3 :] + modes[: rep % 3]  # each first in turn
            for mode in order:
                target = {"cp": cp.info["terminal"], "cpmem": cpmem.info["terminal"]}.get(mode, f"127.0.0.1:{port}")
                watch = (
                    {"hsbcpd": cp.popen.pid, "host": host.pid}
                    if mode == "cp"
                    else {"hsbcpd": cpmem.popen.pid, "host": hostmem.pid}
                    if mode == "cpmem"
                    else {"echo": echo.pid}
                )
                run = await load_run(
                    n, window, target, watch, a, d / f"load-{mode}-{rep}", log, f"{mode:<6} rep {rep + 1}", journal=cp if mode == "cp" else None
                )
                runs[mode].append(run)
    finally:
        for c in (host, hostmem, echo):
            if c is not None:
                await c.stop()
        cp.stop()
        cpmem.stop()

    cps, mem, direct = summarize(runs["cp"]), summarize(runs["cpmem"]), summarize(runs["direct"])
    ratios = [c["rate"] / dr["rate"] for c, dr in zip(runs["cp"], runs["direct"], strict=False) if dr["rate"]]
    durable = [c["rate"] / m["rate"] for c, m in zip(runs["cp"], runs["cpmem"], strict=False) if m["rate"]]
    return {
        "terminals": n,
        "window": window,
        "cp": cps,
        "memory_only": mem,
        "direct": direct,
        "ratio": round(cps["rate"] / direct["rate"], 3) if direct["rate"] else None,
        "ratios": [round(x, 3) for x in ratios],
        "durable_ratio": round(cps["rate"] / mem["rate"], 3) if mem["rate"] else None,
        "durable_ratios": [round(x, 3) for x in durable],
    }


async def journal_counts(cp: Any) -> dict[str, Any]:
    """The durable CP's journal counters (status): group commits and records written so far."""
    h, p = addr(cp.info["admin"])
    j = (await request(h, p, SECRET, {"t": "status"}, timeout=10))["data"]["journal"]
    return {"syncs": j["syncs"], "records": j["records_written"]}


def group_commits(j0: dict[str, Any], j1: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """Group commits over a load run: how many a second, and messages answered per group (a closed
    loop whose every message waits for its group commits in lock step: about the window)."""
    syncs, recs = j1["syncs"] - j0["syncs"], j1["records"] - j0["records"]
    msgs = run["replied"]
    return {
        "syncs": syncs,
        "records": recs,
        "per_s": round(syncs / run["duration_s"], 1) if run["duration_s"] else None,
        "messages_per_group": round(msgs / syncs, 2) if syncs else None,
        "records_per_message": round(recs / msgs, 2) if msgs else None,
        "cycle_ms": round(run["duration_s"] * 1000 / syncs, 3) if syncs else None,
    }


def summarize(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of the runs of one side, and CPU µs per round trip of each process."""
    cpu_keys = [k for k in (rs[0]["cpu"] if rs else {}) if k not in ("other", "steal")]
    for r in rs:  # CPU microseconds each process spent per round trip (robust to a busy machine)
        r["us_per_msg"] = {k: round(r["cpu"][k] / r["rate"] * 1e6, 2) for k in cpu_keys if r["rate"]}
        r["loop_us_per_msg"] = {k: round(v / r["rate"] * 1e6, 2) for k, v in r.get("loop_cpu", {}).items() if r["rate"]}
    loop_keys = sorted({k for r in rs for k in r["loop_us_per_msg"]})
    return {
        "rate": round(median([r["rate"] for r in rs]), 1),
        "p50": round(median([r["p50"] for r in rs if r["p50"] is not None]), 3),  # None: a failed run with no reply
        "p99": round(median([r["p99"] for r in rs if r["p99"] is not None]), 3),
        "ack_p50": round(median([r["ack_p50"] for r in rs if r.get("ack_p50") is not None]), 3),
        "ack_p99": round(median([r["ack_p99"] for r in rs if r.get("ack_p99") is not None]), 3),
        "cpu": {k: round(median([r["cpu"].get(k, float("nan")) for r in rs]), 2) for k in [*cpu_keys, "other", "steal"]},
        "us_per_msg": {k: round(median([r["us_per_msg"].get(k, float("nan")) for r in rs]), 2) for k in cpu_keys},
        # hsbcpd's event loop's thread alone (the rest of its CPU: io_uring's kernel workers, its other threads)
        "loop_us_per_msg": {k: round(median([r["loop_us_per_msg"].get(k, float("nan")) for r in rs]), 2) for k in loop_keys},
        "failed": sum(1 for r in rs if not r.get("ok", True)),
        "runs": rs,
    }


async def bench_ack(n: int, rate: float, a: argparse.Namespace, work: Path, log: Any) -> dict[str, Any]:
    """Ack latency at a fixed offered rate (open loop, below both sides' capacity), durable beside
    memory-only: what the journal's group commit adds to an ack when no queue builds up. (A closed
    loop at capacity measures the queue too: each side's latency is its window over its rate.)"""
    d = work / f"ack-{n}-r{rate:g}"
    d.mkdir()
    cp = start_cp(d, terminals=n, host_timeout=5.0)
    cpmem = start_cp(d / "memory-only", terminals=n, host_timeout=5.0, durability="none")
    host = hostmem = None
    runs: dict[str, list[dict[str, Any]]] = {"cp": [], "cpmem": []}
    try:
        host = await Child.start(child_argv("_host", "--addr", cp.info["host"], "--secret-hex", SECRET.hex()), d / "host.log")
        await host.read(30)
        hostmem = await Child.start(child_argv("_host", "--addr", cpmem.info["host"], "--secret-hex", SECRET.hex()), d / "host-memory-only.log")
        await hostmem.read(30)
        sides = {"cp": (cp, host), "cpmem": (cpmem, hostmem)}
        for rep in range(a.reps):
            for mode in ("cp", "cpmem") if rep % 2 == 0 else ("cpmem", "cp"):
                c, h = sides[mode]
                watch = {"hsbcpd": c.popen.pid, "host": h.pid}
                runs[mode].append(
                    await load_run(n, ACK_WINDOW, c.info["terminal"], watch, a, d / f"load-{mode}-{rep}", log, f"{mode:<6} rep {rep + 1}", rate)
                )
    finally:
        for ch in (host, hostmem):
            if ch is not None:
                await ch.stop()
        cp.stop()
        cpmem.stop()
    return {"terminals": n, "offered": rate, "cp": summarize(runs["cp"]), "memory_only": summarize(runs["cpmem"])}


def fdatasync_floor(work: Path, n: int = 500) -> dict[str, Any]:
    """What one small append + fdatasync costs on this disk (the journal's floor)."""
    path = work / "fdatasync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    lat = []
    try:
        for _ in range(n):
            os.write(fd, b"x" * 200)
            t0 = time.perf_counter()
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        path.unlink()
    lat.sort()
    return {"n": n, "p50_ms": round(lat[n // 2] * 1000, 4), "p99_ms": round(lat[int(n * 0.99) - 1] * 1000, 4)}


async def await_quiet(a: argparse.Namespace, log: Any) -> None:
    """With --quiet-wait S: wait up to S seconds for the machine's other load to drop below
    --quiet-below cores (other sessions' tests share these cores), measured each second."""
    if getattr(a, "quiet_wait", 0) <= 0:
        return
    deadline = time.monotonic() + a.quiet_wait
    while True:
        bg = await background_cpu(1.0)
        if bg < a.quiet_below:
            return
        if time.monotonic() > deadline:
            log(f"  machine still busy ({bg:.2f} cores used by others); measuring anyway")
            return
