"""Where a long-lived pair's memory goes: `.venv/bin/python bench/hostmem.py [--rounds 110] [--terminals 100]`.

hsbcpd and both hosts run in this one process (as tests/test_gc_cycles_host.py runs them) on
loopback, with terminals sending all the time and a planned switchover per round, so the
hosts live through every round. With full collections off (hsb/gcpolicy.py, as in the
daemons), tracemalloc compares the memory allocated by hsb code between the round 40 before
the end and the last one: what grows per switchover shows at the top. Bounded histories (the
CP keeps its last 50 switchovers) fill during the first rounds, hence the late baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hsb import gcpolicy, logs  # noqa: E402
from hsb.config import load  # noqa: E402
from hsb.cp.config import CPConfig  # noqa: E402
from hsb.cp.server import CPServer  # noqa: E402
from hsb.host.server import HostServer  # noqa: E402
from hsb.host.service import EchoService  # noqa: E402
from hsb.wire.client import request  # noqa: E402
from tests.support.hostclient import FakeTerminal  # noqa: E402
from tests.support.inproc import start_pair  # noqa: E402
from tests.support.procs import SECRET, addr, cp_config  # noqa: E402


async def until(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def main(rounds: int, n: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="hsb-hostmem-"))
    cp = CPServer(load(cp_config(tmp, terminals=n, host_timeout=0.5), CPConfig), SECRET)
    hosts: dict[str, HostServer] = {}
    keep: list[asyncio.Task[Any]] = []
    await start_pair(tmp, cp, hosts, keep, records=256, service=EchoService, terminals=n)

    def established(since: float = 0.0) -> bool:
        return all(h.ha.state == "established" and (h.ha.established_since or 0) > since for h in hosts.values())

    await until(established, "hot standby")
    terms = [await FakeTerminal.connect(cp.bound["terminal"], f"T{i:05d}") for i in range(1, n + 1)]
    for t in terms:
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")

    async def traffic() -> None:
        mid = 0
        while True:
            mid += 1
            for t in terms:
                t.send({"t": "msg", "id": mid, "data": "x"})
            await asyncio.sleep(0.05)
            for t in terms:
                t.inbox.clear()

    keep.append(asyncio.ensure_future(traffic()))
    gcpolicy.apply()
    base, snaps = max(0, rounds - 41), {}
    sender = keep[-1]
    for r in range(rounds):
        if sender.done():  # the terminals' messages stopped: the figures would be of an idle pair
            raise RuntimeError(f"traffic stopped: {sender.exception()!r}")
        # every terminal's standby session in place first (a switchover right after the logons,
        # before the standby has followed the ring, sends the rest down the classic path)
        await until(lambda: sum(t.standby is not None for t in cp.cp.terms.values()) == n, "standby sessions")
        active = next(h for h in hosts.values() if h.ha.role == "active")
        t0 = time.time()
        ans = await request(*addr(active.bound["admin"]), SECRET, {"t": "switchover"})
        if not ans.get("ok"):
            raise RuntimeError(f"switchover refused: {ans}")
        await until(lambda: active.ha.role == "standby" and established(t0), "switchover")
        await asyncio.sleep(0.3)  # traffic through the new active
        if r in (base, rounds - 1):
            gc.collect(1)
            snaps[r] = tracemalloc.take_snapshot()
            print(f"round {r + 1}: {tracemalloc.get_traced_memory()[0] // 1024} KiB traced", flush=True)
    def sizes() -> dict[str, int]:
        out = {"inboxes": sum(len(t.inbox) for t in terms), "term_pending": sum(len(t.fs._pending) for t in terms)}
        for name, h in hosts.items():
            out[f"{name}.events"] = len(h.ha.events)
            out[f"{name}.delivery_q"] = sum(len(q) for q in h.delivery.queues.values())
            out[f"{name}.hooks"] = sum(len(q) for q in h.sessions_ctl.hooks.values())
            out[f"{name}.cp_pending"] = len(h.cp.fs._pending) if h.cp.fs is not None else -1
            out[f"{name}.tio_pending"] = len(h.takeover.pending)
            out[f"{name}.refused"] = len(h.sessions_ctl.refused)
            out[f"{name}.pending_standby"] = len(h.sessions_ctl.pending_standby)
        out["cp.held"] = sum(len(t.held) for t in cp.cp.terms.values())
        out["cp.switchovers"] = len(cp.cp.switchovers)
        return out
    print("queues and tables (all bounded by the terminal count or a history length):", sizes())
    before = tracemalloc.get_traced_memory()[0]
    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()
    print(f"a full collection finds {found} unreachable objects, frees {(before - tracemalloc.get_traced_memory()[0]) // 1024} KiB: {kinds.most_common(12)}")
    for t in keep:
        t.cancel()
    only_hsb = [tracemalloc.Filter(True, "*/hsb/*")]
    print(f"\nhsb code, round {base + 1} -> {rounds} (top 12 by growth):")
    for st in snaps[rounds - 1].filter_traces(only_hsb).compare_to(snaps[base].filter_traces(only_hsb), "lineno")[:12]:
        print(" ", st)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=110)
    ap.add_argument("--terminals", type=int, default=100)
    a = ap.parse_args()
    logs.setup(os.environ.get("HOSTMEM_LOG", "error"))
    tracemalloc.start(1)
    import uvloop

    uvloop.run(main(a.rounds, a.terminals))
