"""Scale with real processes: sandboxes up to this machine's descriptor limit, each under a
steady load, a SIGKILL failover, a planned switchover and a CP restart on its journal.

    .venv/bin/python bench/scale.py [--sizes 5000,10000,19000] [--rate 2000] [--per-child 9000]
                                    [--quick] [--json FILE] [--no-write] [--render FILE]

Per size N: a fresh sandbox (`hsbctl sandbox up` in-process: hsbcpd, host-a active, host-b
standby, real processes on 127.0.0.1, fast switch, standby-capable terminals, the CP's journal
with `durability = "fsync"`, echo service, default timing). Its idle memory (N terminals
configured, none connected) is read first. Then four phases, each one load run of its own: the
load is spread over ceil(N / --per-child) load children (bench/_load.py, its own process and
strict verdict each, a share of the terminal table and of the rate each, each connecting from a
loopback address of its own, 127.0.0.2, .3, ..., a new one per phase: one address has ~28,000
ephemeral ports, and no child holds more than --per-child sockets). Each phase logs all N terminals on (timed: until
the CP has N active sessions, then N standby sessions), runs the load throughout, and ends it
(every terminal logs off) before the next phase:

1. **steady**: --steady seconds of load; the headline is the worst reply latency of the messages
   sent in that time (max over children; p99 is the worst child's);
2. **SIGKILL failover**: SIGKILL of the active; the standby takes over; every terminal has its
   `switched` notice; the killed host is restarted as standby and hot standby is re-established
   (established, all N standby sessions open again);
3. **planned switchover**: the active asked to hand over over its admin link (what `hsbctl switchover`
   does); every terminal switched; re-established;
4. **CP restart**: SIGKILL of hsbcpd and a new one started at once on the same journal (as
   bench/cprestart.py; with --supervise: SIGKILL of the CP, and its master forks the next);
   every terminal reconnects and resumes; re-established.

For phases 2-4 the headline is the worst pause a terminal saw (hsb.term.timeline: the reply
latency of every message in flight at the operation or sent in the second after it; max over the
children). The verdict is strict: any lost, duplicated, unexpected, wrong-data or unacknowledged
reply fails a phase, and so do (failover, switchover) any disconnect and (all three) a terminal
not back or a pair not re-established in time. A CP restart necessarily disconnects every
terminal: there only the disconnects the CP's absence explains are expected, and no session may
close (hsbterm --expect-cp-restart, as in bench/cprestart.py); the terminals that came back are
counted ("resumed").

Memory is the resident set (VmRSS of /proc/PID/status) of hsbcpd, both hosts and each load child,
sampled every 0.5 s (peak per phase) and at the phase's end (by role). "KiB per terminal" is
(RSS at the phase's end - the same role's RSS in the idle sandbox) / N: what N connected
terminals with their sessions and the load add; the idle figure (the configured terminal table,
the interpreter) is given beside it.

The rate is the total over all terminals (default 2,000 msg/s, ~0.1 msg/s per terminal at
19,000): the point is what the number of terminals costs, not throughput, so the load stays
modest enough that the shared 2 cores are not saturated. A size whose terminals do not fit the
hard open-files limit (hsbcpd holds one socket per terminal; hsb.ops.limits.SPARE besides) is
skipped with the reason. Every load child and sandbox is killed on any exit (error, Ctrl-C,
SIGTERM); the logs stay in the run's folder. Raw results: bench/results/scale.json (`--render`
rebuilds the section from them alone).

A size and its phases are run by bench/_scale_runs.py, the section rendered by
bench/_scale_render.py.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import machine, run_or_render, say, write_section  # noqa: E402

from bench._scale_render import RESULTS, render  # noqa: E402
from bench._scale_runs import PHASES, kill_everything, one_size  # noqa: E402

COMMAND = ".venv/bin/python bench/scale.py"
SECTION = "Scale: real processes up to this machine's descriptor limit (`bench/scale.py`)"


async def amain(a: argparse.Namespace) -> int:
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="hsb-bench-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    say(f"sandboxes and logs under {base}")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cfg = {
        "rate": a.rate,
        "per_child": a.per_child,
        "steady": a.steady,
        "after": a.after,
        "service": a.service,
        "host_timeout": a.host_timeout,
        "nofile": [soft, hard],
        "supervise": a.supervise,
    }
    out: dict[str, Any] = {"machine": a.machine, "command": a.command, "config": cfg, "sizes": []}
    try:
        for n in a.sizes:
            await one_size(base, n, a, out)
    finally:
        kill_everything()
    text = render(out, a)
    print(text)
    say(f"raw results: {a.json}")
    if a.write:
        write_section(SECTION, text)
        say("written to BENCHMARKS.md")
    done = [r for s in out["sizes"] for r in s["phases"]]
    whole = all(len(s["phases"]) == len(a.phases) for s in out["sizes"] if not s.get("skipped"))
    return 0 if done and whole and all(r["ok"] for r in done) else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default=None, help="comma-separated terminal counts (default 5000,10000,19000)")
    p.add_argument("--rate", type=float, default=None, help="messages per second over all terminals (default 2000; --quick 500)")
    p.add_argument("--per-child", type=int, default=None, help="at most this many terminals per load child (default 9000; --quick 150)")
    p.add_argument("--steady", type=float, default=5.0, help="seconds of steady load (phase 1, and before each operation)")
    p.add_argument("--after", type=float, default=2.0, help="seconds of load after the pair is whole again")
    p.add_argument("--settle", type=float, default=20.0, help="seconds each child waits for outstanding replies at the end")
    p.add_argument("--service", default="echo", choices=["echo", "journal"])
    p.add_argument(
        "--host-timeout",
        type=float,
        default=0.5,
        help="the CP's host_timeout and the hosts' heartbeat_timeout (default 0.5 s, the shipped default; the lease stays 0.35 s)",
    )
    p.add_argument("--phases", default=",".join(PHASES), help="which phases, in this order (default: %(default)s)")
    p.add_argument("--logon-timeout", type=float, default=300.0)
    p.add_argument("--term-keepalive", type=int, default=None, help="the terminals' TCP keepalive idle seconds (default: hsbterm's; 0: none)")
    p.add_argument("--switch-timeout", type=float, default=30.0)
    p.add_argument("--recover-timeout", type=float, default=120.0)
    p.add_argument("--reestablish-timeout", type=float, default=300.0)
    p.add_argument("--supervise", action="store_true", help="hsbcpd --supervise: the CP restart kills the worker and its master forks the next")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 terminals over 2 load children, nothing written to BENCHMARKS.md")
    p.add_argument("--dir", help="sandboxes and logs here (default: a new temp folder)")
    p.add_argument("--json", default=str(RESULTS), help="raw results (default: %(default)s)")
    p.add_argument("--render", metavar="JSON", help="do not measure: render the results saved with --json")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update BENCHMARKS.md")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    if a.quick:
        a.write = False
        a.sizes, a.rate, a.steady = a.sizes or "300", a.rate or 500.0, min(a.steady, 2.0)
        a.per_child = a.per_child or 150
    a.sizes = [int(x) for x in (a.sizes or "5000,10000,19000").split(",") if x]
    a.phases = [x for x in a.phases.split(",") if x]
    if not a.phases or any(x not in PHASES for x in a.phases) or len(set(a.phases)) != len(a.phases):
        p.error(f"--phases: each of {', '.join(PHASES)} at most once")
    a.rate = a.rate or 2000.0
    a.per_child = a.per_child or 9000
    a.machine = machine()

    def rerender(saved: dict[str, Any]) -> str:
        return render(saved, a)

    try:  # (SIGTERM, SIGINT: run_or_render unwinds, stops what is left and returns 128 + the signal)
        code = run_or_render(a, SECTION, rerender, amain)
    finally:
        kill_everything()
    if code > 128:
        say(f"interrupted: every load child and sandbox stopped; partial results in {a.json}")
    return code


if __name__ == "__main__":
    sys.exit(main())
