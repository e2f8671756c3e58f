"""Where a long-lived pair's memory goes: `.venv/bin/python bench/hostmem.py [--rounds 110] [--terminals 100]`.

hsbcpd and both hosts run in this one process (as tests/test_gc_cycles_host.py runs them) on
loopback, with terminals sending all the time and a planned switchover per round, so the
hosts live through every round. With full collections off (hsb/gcpolicy.py, as in the
daemons), tracemalloc compares the memory allocated by hsb code between the round 40 before
the end and the last one: what grows per switchover shows at the top. Bounded histories (the
CP keeps its last 50 switchovers) fill during the first rounds, hence the late baseline.

The raw results (traced memory, queue sizes, what a full collection finds, the top growth) go
to `bench/results/hostmem.json` (`--json FILE` elsewhere); the section "Host memory over planned
switchovers (`bench/hostmem.py`)" of BENCHMARKS.md is written from them (not with `--no-write`),
and `--render FILE` rebuilds it from such a file alone, without measuring.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import machine, machine_line, raw_name, report, result_args, run_or_render, table, write_json  # noqa: E402

from hsb import gcpolicy, logs  # noqa: E402
from hsb.config import load  # noqa: E402
from hsb.cp.config import CPConfig  # noqa: E402
from hsb.cp.server import CPServer  # noqa: E402
from hsb.host.server import HostServer  # noqa: E402
from hsb.service.builtin import EchoService  # noqa: E402
from hsb.wire.client import request  # noqa: E402
from tests.support.hostclient import FakeTerminal  # noqa: E402
from tests.support.inproc import start_pair  # noqa: E402
from tests.support.procs import SECRET, addr, cp_config  # noqa: E402

COMMAND = ".venv/bin/python bench/hostmem.py"
RESULTS = Path(__file__).resolve().parent / "results" / "hostmem.json"
SECTION = "Host memory over planned switchovers (`bench/hostmem.py`)"


async def until(cond: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


async def measure(rounds: int, n: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="hsb-hostmem-"))
    res: dict[str, Any] = {"rounds": rounds, "terminals": n, "traced_kib": {}}
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
            res["traced_kib"][str(r + 1)] = kib = tracemalloc.get_traced_memory()[0] // 1024
            print(f"round {r + 1}: {kib} KiB traced", flush=True)

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

    res["sizes"] = sizes()
    print("queues and tables (all bounded by the terminal count or a history length):", res["sizes"])
    before = tracemalloc.get_traced_memory()[0]
    gc.set_debug(gc.DEBUG_SAVEALL)
    found = gc.collect()
    kinds = Counter(type(o).__qualname__ for o in gc.garbage)
    gc.set_debug(0)
    gc.garbage.clear()
    gc.collect()
    freed = (before - tracemalloc.get_traced_memory()[0]) // 1024
    res["full_collection"] = {"found": found, "freed_kib": freed, "kinds": kinds.most_common(12)}
    print(f"a full collection finds {found} unreachable objects, frees {freed} KiB: {kinds.most_common(12)}")
    for t in keep:
        t.cancel()
    only_hsb = [tracemalloc.Filter(True, "*/hsb/*")]
    res["base_round"] = base + 1
    res["hsb_traced_kib"] = {
        str(r + 1): sum(st.size for st in snaps[r].filter_traces(only_hsb).statistics("filename")) // 1024 for r in sorted(snaps)
    }
    res["growth"] = []
    print(f"\nhsb code, round {base + 1} -> {rounds} (top 12 by growth):")
    for st in snaps[rounds - 1].filter_traces(only_hsb).compare_to(snaps[base].filter_traces(only_hsb), "lineno")[:12]:
        print(" ", st)
        fr = st.traceback[0]
        where = fr.filename[fr.filename.rfind("/hsb/") + 1 :] if "/hsb/" in fr.filename else fr.filename
        res["growth"].append(
            {"where": f"{where}:{fr.lineno}", "size_diff_b": st.size_diff, "size_b": st.size, "count_diff": st.count_diff, "count": st.count}
        )
    return res


def render(saved: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (the whole saved JSON)."""
    r = saved["results"]
    base, last = str(r["base_round"]), str(r["rounds"])
    hsb_kib = r.get("hsb_traced_kib") or {}
    fc = r["full_collection"]
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this table).",
        "",
        f"Machine: {machine_line(a.machine)}.",
        "",
        f"hsbcpd and both hosts in one process (as tests/test_gc_cycles_host.py runs them), {r['terminals']:,} terminals"
        f" sending all the time, {r['rounds']:,} planned switchovers (one per round, so both hosts live through every"
        " round), full collections off (hsb/gcpolicy.py, as in the daemons). tracemalloc compares what hsb code had"
        f" allocated at round {base}"
        + (" (late, so that bounded histories such as the CP's last 50 switchovers are full)" if int(base) > 1 else "")
        + f" with round {last}.",
        "",
    ]
    if base in hsb_kib and last in hsb_kib:
        d = hsb_kib[last] - hsb_kib[base]
        out.append(
            f"Memory allocated by hsb code: {hsb_kib[base]:,} KiB at round {base}, {hsb_kib[last]:,} KiB at round"
            f" {last} (**{d:+,} KiB** over {int(last) - int(base)} switchovers); all traced memory"
            f" {r['traced_kib'].get(base, 0):,} → {r['traced_kib'].get(last, 0):,} KiB."
        )
    kinds = ", ".join(f"{k} ×{v}" for k, v in fc["kinds"]) or "none"
    out.append(f"A full collection at the end finds **{fc['found']:,} unreachable objects** and frees {fc['freed_kib']:,} KiB ({kinds}).")
    out += ["", f"Top growth of hsb code, round {base} → {last}:", ""]
    rows = [[f"`{g['where']}`", f"{g['size_diff_b'] / 1024:+,.1f}", f"{g['size_b'] / 1024:,.1f}", f"{g['count_diff']:+,}"] for g in r["growth"]]
    out.append(table(["where", "KiB grown", "KiB now", "blocks grown"], rows))
    out += [
        "",
        "Queues and tables at the end (all bounded by the terminal count or a history length): "
        + ", ".join(f"{k} {v:,}" for k, v in r["sizes"].items())
        + ".",
    ]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    logs.setup(os.environ.get("HOSTMEM_LOG", "error"))
    tracemalloc.start(1)
    res = await measure(a.rounds, a.terminals)
    saved = {"machine": a.machine, "command": a.command, "results": res}
    write_json(a, saved)
    text = render(saved, a)
    report(a, SECTION, text)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/hostmem.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=110)
    ap.add_argument("--terminals", type=int, default=100)
    result_args(ap, RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    if not a.render:  # the daemons run in this process: on uvloop, as they always do
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return run_or_render(a, SECTION, lambda saved: render(saved, a), amain)


if __name__ == "__main__":
    sys.exit(main())
