"""Benchmark of the communications processor (hsbcpd), figures for BENCHMARKS.md.

    .venv/bin/python bench/cp.py [--quick] [--json FILE] [--only throughput,switch,memory]
                                 [--no-write] [--render FILE [--write]]

Measures, against a real hsbcpd process on 127.0.0.1 (nothing else is contacted):

1. **Round trips.** Closed-loop load (each terminal keeps `window` messages outstanding and
   sends the next one as soon as a reply comes; each size at each of `--windows`) from
   `hsb.term.load.run_load` in a process of its own, at 1, 100 and 1,000 terminals, through hsbcpd to a host (a separate process) that
   answers each `deliver` at once, and beside it the same terminals talking straight to an
   equally small uvloop echo server that speaks the terminal link (welcome, session open, ack
   + reply per message). Replies per second while sending, reply latency p50/p99, the ratio
   CP / direct per window, the capacity ratio (each side at its best window; goal: >= 50 %),
   and the CPU each process used. One terminal with a small window is latency-bound, not
   capacity-bound: each message crosses four loopback hops through hsbcpd and two direct.
2. **Switchover.** N terminals (1,000 and 10,000) connected with active sessions, a standby
   host with a standby session for each; the active's host link closes, the standby asks for
   the switchover and gets `switch_granted`. hsbcpd's own `last_switchover.switch_ms` (sessions
   flipped, held messages re-delivered) and `notices_sent_ms` (grant to the last `switched`
   written; goal: 10,000 in <= 50 ms), and from outside: the grant arriving at the standby to
   the last `switched` arriving at a terminal (system-wide monotonic clock).
3. **Memory.** hsbcpd's VmRSS with 10,000 terminals defined and none connected, then with all
   10,000 connected with sessions (active, then also standby, then after one round trip
   each); the difference divided by 10,000 (goal: <= 10 KiB per terminal).

Beside the switchover, two floors: one small frame written to each of the same N idle terminal
sockets by a bare uvloop server (no CP logic), and the kernel's own: a plain `socket.send` of
14 bytes to each of N connected loopback sockets whose other ends nobody reads (no event
loop, no receiver waking up) — the least one notice per terminal can cost on this machine.

The machine may be shared: each load run records the CPU the rest of the machine used
meanwhile ("other") and the hypervisor's steal, a disturbed run (over `--max-other` cores) is
repeated up to `--retries` times, and `--quiet-wait S` waits for the machine to calm down first.
CPU microseconds per round trip, per process, are reported too (robust to other load).
Every child process (hsbcpd, host, echo, load, fleet) dies with the benchmark (PDEATHSIG), and
SIGTERM/SIGINT unwind cleanly.

Every load run has the strict verdict of hsb.term (nothing lost, duplicated, unexpected, wrong or
unacknowledged, every terminal logged on with a session): a failed run is recorded as such, shown
in the table, and the bench exits 1.

The raw results (every run's figures) go to `bench/results/cp.json` (`--json FILE` elsewhere);
the section "Communications processor, hsbcpd (`bench/cp.py`)" of BENCHMARKS.md is written from
them (not with `--no-write`, nor with `--quick` unless `--write`), and `--render FILE` rebuilds it
from such a file alone, without measuring.

Hidden modes run the child processes: `_host`, `_echo`, `_load`, `_fleet`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchHost,
    Child,
    EchoProtocol,
    Fleet,
    background_cpu,
    cpu_sample,
    emit,
    rss_kib,
    start_hsbcpd,
    stdin_lines,
)
from _sandbox import machine, machine_line, raw_name, run_or_render, write_section  # noqa: E402

from hsb import gcpolicy  # noqa: E402
from hsb import loop as hsb_loop  # noqa: E402
from hsb.term.load import run_load, terminal_names  # noqa: E402
from hsb.wire.client import request  # noqa: E402
from tests.support.procs import SECRET, addr  # noqa: E402

start_cp = start_hsbcpd  # hsbcpd with free ports, killed with this process

COMMAND = ".venv/bin/python bench/cp.py"
RESULTS = Path(__file__).resolve().parent / "results" / "cp.json"
SECTION = "Communications processor, hsbcpd (`bench/cp.py`)"
ATTRS = {"protocol": "hsb1"}
THIS = str(Path(__file__).resolve())
GOAL_RATIO = 0.5
GOAL_SWITCH_MS = 50.0
GOAL_KIB = 10.0
ACK_WINDOW = 64  # the open-loop runs: a cap on what one terminal has outstanding, never reached below capacity


def child_argv(mode: str, *args: str) -> list[str]:
    return [sys.executable, THIS, mode, *args]


# =========================================================================== child processes


async def host_main(a: argparse.Namespace) -> None:
    """_host: one active host that opens every requested session and answers at once."""
    h = await BenchHost.connect(addr(a.addr), a.name, bytes.fromhex(a.secret_hex), "active", attrs=ATTRS)
    emit({"ready": True, "epoch": h.epoch})
    stdin = await stdin_lines()
    await stdin.read()  # until EOF
    emit({"counts": dict(h.counts)})
    h.close()


async def echo_main(a: argparse.Namespace) -> None:
    """_echo: the direct baseline server."""
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(EchoProtocol, "127.0.0.1", 0, backlog=4096)
    emit({"port": srv.sockets[0].getsockname()[1]})
    stdin = await stdin_lines()
    await stdin.read()
    srv.close()


async def load_main(a: argparse.Namespace) -> None:
    """_load: one run, closed loop (or open loop at `--rate` msg/s in all); CPU of this and the
    watched processes while sending."""
    gcpolicy.apply()  # as hsbterm load does
    watch: dict[str, int] = json.loads(a.watch)
    watch["load"] = os.getpid()
    sending = asyncio.Event()
    task = asyncio.ensure_future(
        run_load(
            addr(a.cp),
            terminals=a.terminals,
            rate=a.rate,
            duration=a.duration,
            window=a.window,
            closed_loop=a.rate <= 0,
            settle=15,
            connect_timeout=90,
            sending=sending,
        )
    )
    waiter = asyncio.ensure_future(sending.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    cpu = {}
    if sending.is_set() and not task.done():
        c0, t0 = cpu_sample(watch), time.monotonic()
        await asyncio.sleep(a.duration)
        c1, t1 = cpu_sample(watch), time.monotonic()
        span = t1 - t0
        cpu = {k: round((c1[k] - c0[k]) / span, 3) for k in watch}
        # Everything else the machine did meanwhile (other sessions' tests, the kernel's share of
        # loopback I/O not charged to our processes), and the hypervisor's steal.
        cpu["other"] = round((c1["_busy"] - c0["_busy"]) / span - sum(cpu.values()), 3)
        cpu["steal"] = round((c1["_steal"] - c0["_steal"]) / span, 3)
    r = await task
    emit({"report": r.to_dict(), "cpu": cpu})


async def fleet_main(a: argparse.Namespace) -> None:
    """_fleet: idle terminals driven by JSON commands on stdin."""
    from hsb.term.load import _raise_nofile

    names = terminal_names(a.terminals)
    _raise_nofile(len(names) + 256)
    fleet = Fleet(addr(a.cp), names)
    stdin = await stdin_lines()
    try:
        while True:
            line = await stdin.readline()
            if not line:
                break
            cmd = json.loads(line)
            c = cmd["cmd"]
            if c == "connect":
                emit({"connect_s": await fleet.connect()})
            elif c == "arm":
                fleet.arm()
                emit({"ok": True})
            elif c == "await_switched":
                n = len(names)
                ok = await fleet.until(lambda: fleet.switched >= n, cmd.get("timeout", 60))
                emit(
                    {
                        "ok": ok,
                        "switched": fleet.switched,
                        "first": fleet.first_switched,
                        "last": fleet.last_switched,
                        "disconnects": fleet.disconnects,
                        "sessions": fleet.sessions,
                    }
                )
            elif c == "ping":
                emit({"ping_s": await fleet.ping()})
            elif c == "state":
                emit({"sessions": fleet.sessions, "disconnects": fleet.disconnects, "replies": fleet.replies, "errors": dict(fleet.errors)})
    finally:
        fleet.close()


# =========================================================================== measurements


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
    return {
        "rate": round(median([r["rate"] for r in rs]), 1),
        "p50": round(median([r["p50"] for r in rs if r["p50"] is not None]), 3),  # None: a failed run with no reply
        "p99": round(median([r["p99"] for r in rs if r["p99"] is not None]), 3),
        "ack_p50": round(median([r["ack_p50"] for r in rs if r.get("ack_p50") is not None]), 3),
        "ack_p99": round(median([r["ack_p99"] for r in rs if r.get("ack_p99") is not None]), 3),
        "cpu": {k: round(median([r["cpu"].get(k, float("nan")) for r in rs]), 2) for k in [*cpu_keys, "other", "steal"]},
        "us_per_msg": {k: round(median([r["us_per_msg"].get(k, float("nan")) for r in rs]), 2) for k in cpu_keys},
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


async def bench_switch(n: int, rounds_wanted: int, work: Path, log: Any, memory: bool, max_other: float = float("inf")) -> dict[str, Any]:
    """Switchover rounds; a round with other load above `max_other` cores just before it does
    not count towards `rounds_wanted` (at most twice as many rounds are run)."""
    d = work / f"switch-{n}"
    d.mkdir()
    cp = start_cp(d, terminals=n, host_timeout=5.0)
    admin_h, admin_p = addr(cp.info["admin"])
    hosts: list[BenchHost] = []
    fleet: Child | None = None
    names = terminal_names(n)
    mem: dict[str, Any] = {}
    rounds: list[dict[str, Any]] = []
    try:
        host_addr = addr(cp.info["host"])
        active = await BenchHost.connect(host_addr, "host-a", SECRET, "active", attrs=ATTRS)
        standby = await BenchHost.connect(host_addr, "host-b", SECRET, "standby", attrs=ATTRS)
        hosts += [active, standby]
        pid = cp.popen.pid
        if memory:
            mem["idle_kib"] = rss_kib(pid)
        fleet = await Child.start(child_argv("_fleet", "--cp", cp.info["terminal"], "--terminals", str(n)), d / "fleet.log")
        conn = await fleet.ask({"cmd": "connect"}, 300)
        log(f"  {n} terminals connected with active sessions in {conn['connect_s']:.2f} s")
        if memory:
            mem["active_kib"] = rss_kib(pid)

        async def open_standby(sb: BenchHost) -> None:
            base = sb.counts["opened:standby"]
            sb.send_many([{"t": "open", "terminal": nm, "kind": "standby", "attrs": ATTRS} for nm in names])
            await sb.until(lambda: sb.counts["opened:standby"] >= base + n, 120, "standby sessions opened")

        await open_standby(standby)
        if memory:
            mem["standby_kib"] = rss_kib(pid)
            ping = await fleet.ask({"cmd": "ping"}, 300)
            mem["ping_s"] = ping["ping_s"]
            mem["after_ping_kib"] = rss_kib(pid)
        rep = 0
        while sum(not r["disturbed"] for r in rounds) < rounds_wanted and rep < 2 * rounds_wanted:
            if rep:
                await open_standby(standby)
            sb = standby
            await fleet.ask({"cmd": "arm"})
            bg = await background_cpu(0.5)  # everything here is idle now: what else is the machine doing?
            lost = standby.counts["active_lost"]
            active.close()
            await sb.until(lambda: sb.counts["active_lost"] > lost, 30, "active_lost")
            granted = sb.counts["switch_granted"]
            t_req = time.monotonic()
            sb.send({"t": "switchover", "reason": "bench", "planned": False})
            await sb.until(lambda: sb.counts["switch_granted"] > granted or sb.counts["switch_refused"] > 0, 30, "switch_granted")
            if sb.counts["switch_refused"]:
                raise RuntimeError(f"switchover refused: {sb.last.get('switch_refused')}")
            t_grant = sb.events["switch_granted"]
            sw = await fleet.ask({"cmd": "await_switched", "timeout": 60}, 120)
            st = (await request(admin_h, admin_p, SECRET, {"t": "status"}, timeout=10))["data"]
            last = st["last_switchover"]
            if not sw["ok"] or sw["disconnects"] or last["switched"] != n:
                raise RuntimeError(f"switchover incomplete: fleet {sw}, cp {last}")
            rnd = {
                "switch_ms": last["switch_ms"],
                "notices_sent_ms": last.get("notices_sent_ms"),
                "switched": last["switched"],
                "grant_to_last_switched_ms": round((sw["last"] - t_grant) * 1000, 3),
                "grant_to_first_switched_ms": round((sw["first"] - t_grant) * 1000, 3),
                "request_to_last_switched_ms": round((sw["last"] - t_req) * 1000, 3),
                "request_to_grant_ms": round((t_grant - t_req) * 1000, 3),
                "background_cpu": bg,
                "disturbed": bg > max_other,
            }
            rounds.append(rnd)
            rep += 1
            log(
                f"  {n} sessions, round {rep}: hsbcpd switch_ms {rnd['switch_ms']:.2f}, "
                f"notices_sent_ms {rnd['notices_sent_ms']}; "
                f"terminal side grant->last switched {rnd['grant_to_last_switched_ms']:.2f} ms "
                f"(request->last {rnd['request_to_last_switched_ms']:.2f} ms); background cpu {bg:.2f}"
            )
            # Roles reversed: the new active keeps answering; a fresh standby joins for the next round.
            name = "host-a" if sb.name == "host-b" else "host-b"
            active = sb
            standby = await BenchHost.connect(host_addr, name, SECRET, "standby", attrs=ATTRS)
            hosts.append(standby)
    finally:
        if fleet is not None:
            await fleet.stop()
        for h in hosts:
            h.close()
        cp.stop()

    out: dict[str, Any] = {"terminals": n, "rounds": rounds}
    all_rounds = rounds
    rounds = [r for r in rounds if not r["disturbed"]] or rounds
    out["rounds_counted"] = len(rounds)
    if all_rounds:
        out.update(
            {
                "switch_ms": round(median([r["switch_ms"] for r in rounds]), 3),
                "switch_ms_max": max(r["switch_ms"] for r in rounds),
                "notices_sent_ms": round(median([r["notices_sent_ms"] for r in rounds if r["notices_sent_ms"] is not None]), 3),
                "notices_sent_ms_max": max((r["notices_sent_ms"] or 0.0) for r in rounds),
                "grant_to_last_switched_ms": round(median([r["grant_to_last_switched_ms"] for r in rounds]), 3),
                "request_to_last_switched_ms": round(median([r["request_to_last_switched_ms"] for r in rounds]), 3),
                "background_cpu": round(median([r["background_cpu"] for r in rounds]), 3),
            }
        )
    if memory:
        idle = mem["idle_kib"]
        for k in ("active", "standby", "after_ping"):
            mem[f"{k}_per_terminal_kib"] = round((mem[f"{k}_kib"] - idle) / n, 2)
        mem["terminals"] = n
        out["memory"] = mem
    return out


class _FloorProtocol(EchoProtocol):
    """The echo server, remembering every transport so the floor test can write to each."""

    registry: list[asyncio.Transport] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.registry.append(transport)  # type: ignore[arg-type]


async def bench_floor(n: int, rounds: int, work: Path, log: Any) -> dict[str, Any]:
    """The least any switchover can cost here: one small frame written to each of n loopback
    sockets from one uvloop process (no CP logic at all), received by the same idle fleet."""
    from hsb.wire.framing import encode

    loop = asyncio.get_running_loop()
    _FloorProtocol.registry = []
    srv = await loop.create_server(_FloorProtocol, "127.0.0.1", 0, backlog=4096)
    port = srv.sockets[0].getsockname()[1]
    fleet = await Child.start(child_argv("_fleet", "--cp", f"127.0.0.1:{port}", "--terminals", str(n)), work / f"floor-fleet-{n}.log")
    res: list[dict[str, float]] = []
    try:
        await fleet.ask({"cmd": "connect"}, 300)
        frame = encode({"t": "switched", "epoch": 2})
        for _ in range(rounds):
            await fleet.ask({"cmd": "arm"})
            bg = await background_cpu(0.5)
            t0 = time.monotonic()
            for tr in _FloorProtocol.registry:
                tr.write(frame)
            t1 = time.monotonic()
            sw = await fleet.ask({"cmd": "await_switched", "timeout": 60}, 120)
            if not sw["ok"]:
                raise RuntimeError(f"floor: only {sw['switched']}/{n} frames arrived")
            res.append({"write_ms": round((t1 - t0) * 1000, 3), "last_received_ms": round((sw["last"] - t0) * 1000, 3), "background_cpu": bg})
        log(f"  floor, {n} sockets: write loop {[r['write_ms'] for r in res]} ms")
    finally:
        await fleet.stop()
        srv.close()
        for tr in _FloorProtocol.registry:
            tr.abort()
    return {
        "terminals": n,
        "rounds": res,
        "write_ms": round(median([r["write_ms"] for r in res]), 3),
        "last_received_ms": round(median([r["last_received_ms"] for r in res]), 3),
    }


def kernel_floor(n: int, rounds: int) -> dict[str, Any]:
    """One 14-byte `socket.send` to each of n connected loopback sockets, from a plain loop: no
    event loop, and the other ends sit in a child that never reads (so no receiver wakes up)."""
    import socket

    from hsb.term.load import _raise_nofile

    _raise_nofile(2 * n + 256)
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the receiving ends: connect, then wait without reading
        try:
            keep = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
            os.write(ready_w, b"r")
            os.read(quit_r, 1)
            del keep
        finally:
            os._exit(0)
    conns = []
    try:
        conns = [srv.accept()[0] for _ in range(n)]
        os.read(ready_r, 1)
        for c in conns:
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        data = b"\x00\x00\x00\x0a" + b"x" * 10
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for c in conns:
                c.send(data)
            times.append(round((time.perf_counter() - t0) * 1000, 3))
    finally:
        os.write(quit_w, b"q")
        os.waitpid(pid, 0)
        for c in conns:
            c.close()
        srv.close()
        for fd in (ready_r, ready_w, quit_r, quit_w):
            os.close(fd)
    return {"terminals": n, "rounds_ms": times, "send_ms": round(median(times), 3), "us_per_send": round(median(times) * 1000 / n, 2)}


# =========================================================================== report


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


def verdict(runs: list[dict[str, Any]]) -> str:
    nf = sum(1 for r in runs if not r.get("ok", True))
    return "all OK" if not nf else f"**{nf} FAILED**"


def disk_line(fs: dict[str, Any]) -> str:
    return (
        f"This machine's disk, measured in the same run: one 200-byte append + `fdatasync` takes p50 {fs['p50_ms']:.3f} ms,"
        f" p99 {fs['p99_ms']:.3f} ms ({fs['n']} calls in the benchmark's work directory)."
    )


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (`res` = the JSON's "results")."""
    L: list[str] = []
    L.append(f"Command: `{a.command}`")
    L.append(f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds these tables).")
    L.append("")
    L.append(f"Machine: {machine_line(a.machine)}. hsbcpd, the host, the load generator and the benchmark share the machine's cores.")
    L.append(f"Run: {res['when']}, {res['settings']}.")
    L.append("")
    if res.get("throughput"):
        L.append(
            "Round trips, closed loop (each terminal keeps `window` messages outstanding and sends "
            "the next on each reply), host answers at once; median of the repetitions; CPU is the "
            "share of one core each process used while sending, (other) what the rest of the machine "
            "used meanwhile:"
        )
        L.append("")
        L.append(
            "| terminals | window | via hsbcpd msg/s | p50 ms | p99 ms | direct msg/s | p50 ms | p99 ms | CP / direct | CPU via CP: load / hsbcpd / host (other) | CPU direct: load / echo (other) | verdict |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
        disturbed = total = 0
        failed: list[str] = []
        for t in res["throughput"]:
            c, dr = t["cp"], t["direct"]
            mem = t.get("memory_only") or {"runs": []}
            cc, dc = c["cpu"], dr["cpu"]
            disturbed += sum(r.get("disturbed", False) for r in c["runs"] + dr["runs"] + mem["runs"])
            total += len(c["runs"]) + len(dr["runs"]) + len(mem["runs"])
            for mode, side in (("via hsbcpd", c), ("direct", dr), ("memory-only hsbcpd", mem)):
                failed += [
                    f"{t['terminals']:,} terminals, window {t['window']}, {mode}: {'; '.join(r.get('failures') or [])}"
                    for r in side["runs"]
                    if not r.get("ok", True)
                ]
            L.append(
                f"| {t['terminals']:,} | {t['window']} | {c['rate']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} | {dr['rate']:,.0f} | "
                f"{dr['p50']:.2f} | {dr['p99']:.2f} | {100 * t['ratio']:.0f} % | "
                f"{cc.get('load', 0):.0%} / {cc.get('hsbcpd', 0):.0%} / {cc.get('host', 0):.0%} "
                f"({cc.get('other', 0):.0%}) | "
                f"{dc.get('load', 0):.0%} / {dc.get('echo', 0):.0%} ({dc.get('other', 0):.0%}) | "
                f"{verdict(c['runs'] + dr['runs'])} |"
            )
        if failed:
            L.append("")
            L.append(
                f"**{len(failed)} load run{'s' if len(failed) != 1 else ''} failed the strict verdict** (their figures are in the medians above):"
            )
            L.append("")
            L += [f"- {f}" for f in failed]
        L.append("")
        L.append("Capacity (each side at the window that gave it the most msg/s; goal: through hsbcpd >= 50 % of direct):")
        L.append("")
        L.append("| terminals | via hsbcpd msg/s (window) | direct msg/s (window) | CP / direct | goal >= 50 % |")
        L.append("|---:|---:|---:|---:|:---:|")
        for n in sorted({t["terminals"] for t in res["throughput"]}):
            rows = [t for t in res["throughput"] if t["terminals"] == n]
            bc = max(rows, key=lambda t: t["cp"]["rate"])
            bd = max(rows, key=lambda t: t["direct"]["rate"])
            ratio = bc["cp"]["rate"] / bd["direct"]["rate"] if bd["direct"]["rate"] else 0.0
            clean = all(r.get("ok", True) for t in rows for side in ("cp", "direct") for r in t[side].get("runs", []))
            ok = "met" if ratio >= GOAL_RATIO and clean else "**missed**"
            L.append(
                f"| {n:,} | {bc['cp']['rate']:,.0f} ({bc['window']}) | {bd['direct']['rate']:,.0f} ({bd['window']}) | {100 * ratio:.0f} % | {ok} |"
            )
        L.append("")
        dur = [t for t in res["throughput"] if t.get("memory_only")]
        if dur:
            L.append(
                'The journal\'s cost: the same CP with `durability = "fsync"` (the default: every ack and reply waits for'
                ' its record\'s group commit) beside `durability = "none"` (memory only), same terminals, interleaved in'
                " one run; ack latency is send → ack at the terminal (goal: durable ≥ 80 % of memory-only msg/s, and"
                " ≤ 2 ms more p99 ack latency):"
            )
            L.append("")
            L.append(
                "| terminals | window | fsync msg/s | none msg/s | fsync / none | ack p50 fsync / none ms | ack p99 fsync / none ms | p99 ack added | goals | verdict |"
            )
            L.append("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|")
            for t in dur:
                c, m = t["cp"], t["memory_only"]
                added = c["ack_p99"] - m["ack_p99"]
                clean = all(r.get("ok", True) for r in c["runs"] + m["runs"])
                ok = "met" if (t["durable_ratio"] or 0) >= 0.8 and added <= 2.0 and clean else "**missed**"
                L.append(
                    f"| {t['terminals']:,} | {t['window']} | {c['rate']:,.0f} | {m['rate']:,.0f} | {100 * (t['durable_ratio'] or 0):.0f} % | "
                    f"{c['ack_p50']:.2f} / {m['ack_p50']:.2f} | {c['ack_p99']:.2f} / {m['ack_p99']:.2f} | {added:+.2f} ms | {ok} | "
                    f"{verdict(c['runs'] + m['runs'])} |"
                )
            fs = res.get("fdatasync")
            if fs:
                L.append("")
                L.append(disk_line(fs))
            L.append("")
        if disturbed:
            L.append(
                f"{disturbed} of {total} load runs kept were disturbed by other load on the machine (more than --max-other cores) even after retries."
            )
            L.append("")
        L.append(
            "CPU time per round trip (µs of CPU per message answered; median of the runs; less sensitive than msg/s to other load on the machine):"
        )
        L.append("")
        L.append("| terminals | window | via hsbcpd: load | hsbcpd | host | total | direct: load | echo | total | hsbcpd / echo |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in res["throughput"]:
            cu, du = t["cp"]["us_per_msg"], t["direct"]["us_per_msg"]
            ct, dt = sum(cu.values()), sum(du.values())
            rel = f"{cu.get('hsbcpd', 0) / du['echo']:.1f}x" if du.get("echo") else "-"
            L.append(
                f"| {t['terminals']:,} | {t['window']} | {cu.get('load', 0):.1f} | {cu.get('hsbcpd', 0):.1f} | "
                f"{cu.get('host', 0):.1f} | {ct:.1f} | {du.get('load', 0):.1f} | {du.get('echo', 0):.1f} | "
                f"{dt:.1f} | {rel} |"
            )
        L.append("")
    if res.get("ack"):
        L.append(
            "Ack latency at a fixed offered rate (open loop: each terminal sends on its own schedule, whatever the"
            ' replies do, so no queue builds up as it does at capacity), `durability = "fsync"` beside `"none"`,'
            " interleaved in one run; send → ack at the terminal, median of the repetitions (goal: ≤ 2 ms more p99):"
        )
        L.append("")
        L.append(
            "| terminals | offered msg/s | replied msg/s fsync / none | ack p50 fsync / none ms | ack p99 fsync / none ms | p99 ack added | goal | verdict |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|:---:|---|")
        for t in res["ack"]:
            c, m = t["cp"], t["memory_only"]
            added = c["ack_p99"] - m["ack_p99"]
            clean = all(r.get("ok", True) for r in c["runs"] + m["runs"])
            ok = "met" if added <= 2.0 and clean else "**missed**"
            L.append(
                f"| {t['terminals']:,} | {t['offered']:,.0f} | {c['rate']:,.0f} / {m['rate']:,.0f} | {c['ack_p50']:.2f} / {m['ack_p50']:.2f} | "
                f"{c['ack_p99']:.2f} / {m['ack_p99']:.2f} | {added:+.2f} ms | {ok} | {verdict(c['runs'] + m['runs'])} |"
            )
        fs = res.get("fdatasync")
        if fs and not res.get("throughput"):
            L.append("")
            L.append(disk_line(fs))
        L.append("")
    if res.get("switch"):
        L.append("Switchover of N sessions inside hsbcpd (active host link closed, standby asks, granted); median (max) of the rounds:")
        L.append("")
        L.append(
            "| sessions | hsbcpd `switch_ms`: sessions flipped, held re-delivered | `notices_sent_ms`: grant → last `switched` written | goal (10,000 ≤ 50 ms) | terminal side: grant received → last `switched` received | floor: bare uvloop, one write per socket | kernel floor: `socket.send` per socket, nobody reading | other CPU before the rounds |"
        )
        L.append("|---:|---:|---:|:---:|---:|---:|---:|---:|")
        for s in res["switch"]:
            if "switch_ms" not in s:
                continue
            goal = ("met" if s["notices_sent_ms"] <= GOAL_SWITCH_MS else "**missed**") if s["terminals"] >= 10000 else "-"
            fl, kf = s.get("floor"), s.get("kernel_floor")
            floor = f"{fl['write_ms']:.1f} ms" if fl else "-"
            kfloor = f"{kf['send_ms']:.1f} ms ({kf['us_per_send']:.1f} µs each)" if kf else "-"
            L.append(
                f"| {s['terminals']:,} | {s['switch_ms']:.1f} ({s['switch_ms_max']:.1f}) ms | "
                f"{s['notices_sent_ms']:.1f} ({s['notices_sent_ms_max']:.1f}) ms | {goal} | "
                f"{s['grant_to_last_switched_ms']:.1f} ms | {floor} | {kfloor} | {s['background_cpu']:.0%} |"
            )
        L.append("")
    mem = next((s["memory"] for s in res.get("switch", []) if "memory" in s), None)
    if mem:
        n = mem["terminals"]
        L.append(f"Resident memory of hsbcpd (VmRSS), {n:,} terminals defined:")
        L.append("")
        L.append("| state | VmRSS | per connected terminal | goal <= 10 KiB |")
        L.append("|---|---:|---:|:---:|")
        L.append(f"| none connected (active and standby hosts registered) | {mem['idle_kib'] / 1024:.1f} MiB | - | |")
        for k, label in (
            ("active", f"{n:,} connected, active sessions"),
            ("standby", "+ a standby session each"),
            ("after_ping", "+ one round trip each"),
        ):
            per = mem[f"{k}_per_terminal_kib"]
            ok = "met" if per <= GOAL_KIB else "**missed**"
            L.append(f"| {label} | {mem[f'{k}_kib'] / 1024:.1f} MiB | {per:.2f} KiB | {ok} |")
        L.append("")
    return "\n".join(L)


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


async def orchestrate(a: argparse.Namespace) -> dict[str, Any]:
    def log(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    only = set(a.only.split(",")) if a.only else {"throughput", "switch", "memory"}
    work = Path(tempfile.mkdtemp(prefix="hsb-bench-cp-"))
    res: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M %Z"),
        "settings": f"{a.duration:g} s per load run x {a.reps}, windows {','.join(map(str, a.windows))}, {a.switch_reps} switchover rounds"
        + (f", ack latency at {', '.join(f'{r:,.0f}' for r in a.ack_rates)} msg/s offered" if "ack" in only else ""),
        "throughput": [],
        "switch": [],
        "ack": [],
    }
    log(f"bench/cp.py: {machine_line(a.machine)}; work dir {work}")
    try:
        if "throughput" in only:
            res["fdatasync"] = fdatasync_floor(work)
            log(f"  fdatasync on this disk: {res['fdatasync']}")
            for n in a.sizes:
                for w in a.windows:
                    await await_quiet(a, log)
                    res["throughput"].append(await bench_throughput(n, w, a, work, log))
        if "ack" in only:
            if "fdatasync" not in res:  # (measured once per run)
                res["fdatasync"] = fdatasync_floor(work)
            for n in a.sizes:
                for rate in a.ack_rates:
                    await await_quiet(a, log)
                    res["ack"].append(await bench_ack(n, rate, a, work, log))
        if "switch" in only or "memory" in only:
            sizes = a.switch_sizes if "switch" in only else [max(a.switch_sizes)]
            for n in sizes:
                await await_quiet(a, log)
                sw = await bench_switch(
                    n, a.switch_reps if "switch" in only else 0, work, log, memory="memory" in only and n == max(sizes), max_other=a.max_other
                )
                if "switch" in only:
                    sw["floor"] = await bench_floor(n, a.switch_reps, work, log)
                    sw["kernel_floor"] = kernel_floor(n, max(3, a.switch_reps))
                    log(f"  kernel floor, {n} sockets: {sw['kernel_floor']['rounds_ms']} ms")
                res["switch"].append(sw)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        mode = argv[0]
        p = argparse.ArgumentParser(prog=f"cp.py {mode}")
        p.add_argument("--addr")
        p.add_argument("--name", default="host-a")
        p.add_argument("--secret-hex")
        p.add_argument("--cp")
        p.add_argument("--terminals", type=int, default=1)
        p.add_argument("--window", type=int, default=8)
        p.add_argument("--duration", type=float, default=5.0)
        p.add_argument("--watch", default="{}")
        p.add_argument("--rate", type=float, default=0.0)
        a = p.parse_args(argv[1:])
        fn = {"_host": host_main, "_echo": echo_main, "_load": load_main, "_fleet": fleet_main}[mode]
        import logging

        logging.disable(logging.CRITICAL)
        hsb_loop.run(fn(a))
        return 0

    p = argparse.ArgumentParser(prog="bench/cp.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick", action="store_true", help="Shorter runs, one repetition (a smoke test of the bench; BENCHMARKS.md is left alone unless --write)."
    )
    p.add_argument("--only", default="", help="Comma list of throughput, ack, switch, memory (default: all but ack).")
    p.add_argument(
        "--ack-rates",
        default="2000",
        help="With --only ack: offered msg/s (in all, open loop) at which durable and memory-only ack latency are compared, at each of --sizes.",
    )
    p.add_argument("--duration", type=float, default=None, help="Seconds of sending per load run (default 5; quick 2).")
    p.add_argument("--reps", type=int, default=None, help="Load runs per size and mode (default 3; quick 1).")
    p.add_argument("--switch-reps", type=int, default=None, help="Switchover rounds per size (default 5; quick 2).")
    p.add_argument(
        "--windows",
        default="8,64",
        help="Messages each terminal keeps outstanding; each size is run at each window, and the peak (best window) of each side is compared too.",
    )
    p.add_argument("--sizes", default="1,100,1000", help="Terminal counts for the round-trip runs.")
    p.add_argument("--switch-sizes", default="1000,10000", help="Session counts for the switchover runs.")
    p.add_argument("--json", default=str(RESULTS), help="Write the raw results (every run) here (default: %(default)s).")
    p.add_argument("--render", metavar="JSON", help="Do not measure: render the results saved with --json.")
    p.add_argument("--no-write", dest="write", action="store_false", help="Do not update BENCHMARKS.md.")
    p.add_argument("--write", dest="force_write", action="store_true", help="Update BENCHMARKS.md even with --quick.")
    p.add_argument("--keep", action="store_true", help="Keep the work dir (configs, logs).")
    p.add_argument(
        "--quiet-wait", type=float, default=0.0, help="Before each size, wait up to this many seconds for other load to drop (shared machines)."
    )
    p.add_argument("--quiet-below", type=float, default=0.15, help="Cores of other load that count as quiet.")
    p.add_argument(
        "--max-other", type=float, default=0.25, help="A load run during which other processes (and steal) used more cores than this is repeated."
    )
    p.add_argument("--retries", type=int, default=3, help="How many times a disturbed load run is repeated at most.")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    if a.quick:
        a.write = a.write and a.force_write
    a.duration = a.duration if a.duration is not None else (2.0 if a.quick else 5.0)
    a.reps = a.reps if a.reps is not None else (1 if a.quick else 3)
    a.switch_reps = a.switch_reps if a.switch_reps is not None else (2 if a.quick else 5)
    a.sizes = [int(x) for x in a.sizes.split(",") if x]
    a.windows = [int(x) for x in a.windows.split(",") if x]
    a.ack_rates = [float(x) for x in a.ack_rates.split(",") if x]
    a.switch_sizes = [int(x) for x in a.switch_sizes.split(",") if x]
    a.machine = machine()
    if not a.render:  # the benchmark's own process serves connections too (floor, hosts): on uvloop, as hsb.loop runs it
        import uvloop

        sys.setswitchinterval(hsb_loop.SWITCH_INTERVAL)
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return run_or_render(a, SECTION, lambda saved: render(saved["results"], a), amain)  # (SIGTERM, SIGINT: stops its children, 128 + the signal)


async def amain(a: argparse.Namespace) -> int:
    res = await orchestrate(a)
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": a.machine, "command": a.command, "results": res}, indent=1) + "\n")
    text = render(res, a)
    print()
    print(text)
    print(f"raw results: {a.json}", file=sys.stderr)
    if a.write:
        write_section(SECTION, text)
        print("written to BENCHMARKS.md", file=sys.stderr)
    bad = sum(
        1 for t in res["throughput"] for side in ("cp", "direct", "memory_only") for r in (t.get(side) or {}).get("runs", []) if not r.get("ok", True)
    )
    bad += sum(1 for t in res.get("ack", []) for side in ("cp", "memory_only") for r in t[side]["runs"] if not r.get("ok", True))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
