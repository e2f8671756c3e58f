"""bench/cp.py's switchover runs: N sessions flipped inside hsbcpd, timed by hsbcpd and at the
terminals, with hsbcpd's memory as terminals connect (bench_switch); and the two floors beside
it, one frame per socket from a bare uvloop server (bench_floor) and one `socket.send` per socket
with nobody reading (kernel_floor).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import BenchHost, Child, EchoProtocol, background_cpu, rss_kib  # noqa: E402
from bench._cp_children import ATTRS, child_argv  # noqa: E402
from bench._cp_runs import median, start_cp  # noqa: E402
from hsb.term.load import terminal_names  # noqa: E402
from hsb.wire.client import request  # noqa: E402
from tests.support.procs import SECRET, addr  # noqa: E402


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
