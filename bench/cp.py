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

Hidden modes run the child processes: `_host`, `_echo`, `_load`, `_fleet` (bench/_cp_children.py).
The load runs are in bench/_cp_runs.py, the switchover and its floors in bench/_cp_switch.py, the
report in bench/_cp_render.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import machine, machine_line, run_or_render, write_section  # noqa: E402

from bench._cp_children import child_mode  # noqa: E402
from bench._cp_render import RESULTS, render  # noqa: E402
from bench._cp_runs import await_quiet, bench_ack, bench_throughput, fdatasync_floor  # noqa: E402
from bench._cp_switch import bench_floor, bench_switch, kernel_floor  # noqa: E402
from hsb import loop as hsb_loop  # noqa: E402

COMMAND = ".venv/bin/python bench/cp.py"
SECTION = "Communications processor, hsbcpd (`bench/cp.py`)"


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
        return child_mode(argv)

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
