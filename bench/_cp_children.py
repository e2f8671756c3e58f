"""bench/cp.py's child processes, run by its hidden modes (`cp.py _host`, `_echo`, `_load`,
`_fleet`): the host that answers at once, the direct echo server, one load run with the CPU of
the processes it watches, and the idle fleet of terminals the switchover and the floors drive.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import BenchHost, EchoProtocol, Fleet, cpu_sample, emit, loop_cpu_seconds, stdin_lines  # noqa: E402
from hsb import gcpolicy  # noqa: E402
from hsb import loop as hsb_loop  # noqa: E402
from hsb.term.load import run_load, terminal_names  # noqa: E402
from tests.support.procs import addr  # noqa: E402

ATTRS = {"protocol": "hsb1"}
THIS = str(Path(__file__).resolve().parent / "cp.py")  # the children are cp.py's hidden modes


def child_argv(mode: str, *args: str) -> list[str]:
    return [sys.executable, THIS, mode, *args]


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
    cpu: dict[str, float] = {}
    loop_cpu: dict[str, float] = {}  # hsbcpd's event loop's thread alone
    loops = {k: pid for k, pid in watch.items() if k == "hsbcpd"}
    if sending.is_set() and not task.done():
        c0, t0, l0 = cpu_sample(watch), time.monotonic(), {k: loop_cpu_seconds(p) for k, p in loops.items()}
        await asyncio.sleep(a.duration)
        c1, t1, l1 = cpu_sample(watch), time.monotonic(), {k: loop_cpu_seconds(p) for k, p in loops.items()}
        span = t1 - t0
        cpu = {k: round((c1[k] - c0[k]) / span, 3) for k in watch}
        loop_cpu = {k: round((l1[k] - l0[k]) / span, 3) for k in loops}
        # Everything else the machine did meanwhile (other sessions' tests, the kernel's share of
        # loopback I/O not charged to our processes), and the hypervisor's steal.
        cpu["other"] = round((c1["_busy"] - c0["_busy"]) / span - sum(cpu.values()), 3)
        cpu["steal"] = round((c1["_steal"] - c0["_steal"]) / span, 3)
    r = await task
    emit({"report": r.to_dict(), "cpu": cpu, "loop_cpu": loop_cpu})


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


def child_mode(argv: list[str]) -> int:
    """Run the hidden mode argv[0] (`_host`, `_echo`, `_load`, `_fleet`) with its arguments."""
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
