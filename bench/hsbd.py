"""hsbd pair benchmark: standby start → hot standby established, and the sequential lag.

    .venv/bin/python bench/hsbd.py [--quick] [--sizes 1000,10000] [--reps 5] [--rate 500]
                                   [--poll-intervals 0.05,0.01] [--json FILE] [--no-write]
                                   [--render FILE]

Everything runs on 127.0.0.1 in a sandbox (`hsb.ctl.sandbox`: hsbcpd, host-a active, host-b
standby, real processes, echo service, default timing).

1. **Standby start → hot standby established**, for N logged-on terminals (1,000 and 10,000).
   A load child (`bench/_load.py load`) logs all N terminals on and keeps a light load
   (`--load-rate` messages/s in total) going. Then, `--reps` times: SIGKILL the standby
   (host-b), wait until the CP and the active have noticed, restart it with
   `sandbox.start_host(dir, "host-b", "standby")` and time from the restart to
   `hot_standby_established` in host-b's log (logged after the batch read *and* after the CP
   has answered every standby-session open). The phases come from the two hosts' logs:
   process start (→ `host_started`), links up and STANDBY STARTUP (→ `standby_startup_sent`),
   the active's batch write (`batch_write_complete` ms), the standby's batch read
   (`batch_read_complete` ms), and the N standby-session opens at the CP (batch read complete →
   established).

2. **Sequential lag**: active session open → standby session open at the CP, at a steady
   `--rate` logons per second (and as many logoffs: each session is held `--hold` s, then the
   terminal sends bye; a pool of `--pool` terminals cycles). A churn child process logs
   terminals on and off and records, per logon, the moment its terminal received
   {"t":"session","state":"open"} (the CP sends it when the active's open arrives). Meanwhile
   this process polls the CP's admin `{"t":"sessions"}` on one kept-open connection every
   `--poll` s and notes when each terminal's standby session appears. Lag = (midpoint of the
   last poll without and the first poll with the standby session) − the terminal's open; the
   polling resolution (half the spacing of those two polls) is the measurement error and is
   reported. Repeated for each `--poll-intervals` value of host-b's `ring_poll_interval`
   (default 50 ms, then 10 ms) to show what the lag is made of.

The light load of part 1 has the strict verdict of hsb.term (nothing lost, duplicated,
unexpected, wrong or unacknowledged, no terminal disconnected while the standby restarts): a
failed load is recorded, shown in the table, and the bench exits 1. The raw results go to
`bench/results/hsbd.json` (`--json FILE` elsewhere); `--render FILE` rebuilds the section
"hsbd pair (`bench/hsbd.py`)" of BENCHMARKS.md from such a file alone, without measuring.
The sequential lag and its churn child are in bench/_hsbd_lag.py, the report in
bench/_hsbd_render.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import (  # noqa: E402
    Child,
    Logs,
    fmt_ms,
    machine,
    run_or_render,
    sandbox,
    sandbox_down,
    say,
    start_load,
    status,
    until,
    wait_dead,
    wait_quiet,
    write_section,
)

from bench._hsbd_lag import churn_mode, seq_lag  # noqa: E402
from bench._hsbd_render import RESULTS, load_failed, render  # noqa: E402

COMMAND = ".venv/bin/python bench/hsbd.py"
SECTION = "hsbd pair (`bench/hsbd.py`)"


async def wait_log(tail: Any, name: str, after: float, timeout: float, **match: Any) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        e = tail.find(name, after=after, **match)
        if e is not None or time.monotonic() > deadline:
            return e
        await asyncio.sleep(0.01)


# =========================================================================== 1. standby start


async def standby_start(base: Path, n: int, reps: int, a: argparse.Namespace) -> list[dict[str, Any]]:
    d = base / f"standby-start-{n}"
    say(f"== standby start → established, {n:,} logged-on terminals ({d})")
    out: list[dict[str, Any]] = []
    load: Child | None = None
    try:
        info = await sandbox.aup(d, terminals=n, service="echo", timeout=180)
        load = await start_load(info["cp"]["terminal"], n, a.load_rate, d / "load.log", settle=5)
        ev = await load.read(timeout=180)
        assert ev["ev"] == "sending", ev
        await until(
            lambda: status(d),
            lambda s: s["established"] and s["cp"]["terminals"]["active_sessions"] == n and s["cp"]["terminals"]["standby_sessions"] == n,
            120,
            f"{n} active and standby sessions",
            0.2,
        )
        logs = Logs(d)
        for rep in range(1, reps + 1):
            st = sandbox.load_state(d)
            pid = st["hosts"]["host-b"]["pid"]
            os.kill(pid, signal.SIGKILL)
            if not await wait_dead(pid, 10):
                raise RuntimeError(f"host-b (pid {pid}) did not die")
            await until(
                lambda: status(d),
                lambda s: (
                    s["cp"].get("standby") is None
                    and s["cp"]["terminals"]["standby_sessions"] == 0
                    and any(h["name"] == "host-a" and h.get("state") == "serving" for h in s["hosts"])
                ),
                30,
                "the CP and the active to notice the standby is gone",
                0.05,
            )
            other = await wait_quiet(a.max_other, a.quiet_wait) if a.quiet_wait > 0 else None
            logs.mark()
            t0 = time.time()
            sandbox.start_host(d, "host-b", "standby")
            est = await wait_log(logs["host-b"], "hot_standby_established", t0, 180)
            if est is None:
                raise RuntimeError(f"host-b not established within 180 s; see {d}/host-b.log")
            t_est = est["_t"]
            st2 = await until(lambda: status(d), lambda s: s["established"], 30, "established in status", 0.05)
            b, act = logs["host-b"], logs["host-a"]
            started = b.find("host_started", after=t0)
            sent = b.find("standby_startup_sent", after=t0)
            recv = act.find("standby_startup_received", after=t0)
            bwc = act.find("batch_write_complete", after=t0)
            brc = b.find("batch_read_complete", after=t0)
            est_a = act.find("hot_standby_established", after=t0)
            r = {
                "n": n,
                "rep": rep,
                "total_ms": round((t_est - t0) * 1000, 1),
                "process_start_ms": round((started["_t"] - t0) * 1000, 1) if started else None,
                "to_standby_startup_ms": round((sent["_t"] - started["_t"]) * 1000, 1) if sent and started else None,
                "startup_to_batch_complete_ms": round((bwc["_t"] - sent["_t"]) * 1000, 1) if bwc and sent else None,
                "batch_write_ms": bwc.get("ms") if bwc else None,
                "batch_entries": bwc.get("entries") if bwc else None,
                "batch_read_ms": brc.get("ms") if brc else None,
                "read_entries": brc.get("entries") if brc else None,
                "opens_ms": round((t_est - brc["_t"]) * 1000, 1) if brc else None,
                "active_established_ms": round((est_a["_t"] - t0) * 1000, 1) if est_a else None,
                "cp_standby_sessions": st2["cp"]["terminals"]["standby_sessions"],
                "recv_delay_ms": round((recv["_t"] - sent["_t"]) * 1000, 1) if recv and sent else None,
                "others_cpu": None if other is None else round(other, 2),
            }
            out.append(r)
            say(
                f"   #{rep}: {r['total_ms']:,.0f} ms (process {fmt_ms(r['process_start_ms'])}, links+startup {fmt_ms(r['to_standby_startup_ms'])},"
                f" batch write {fmt_ms(r['batch_write_ms'], 1)} [{r['batch_entries']}], batch read {fmt_ms(r['batch_read_ms'], 1)},"
                f" {n} standby opens {fmt_ms(r['opens_ms'])}); CP standby sessions {r['cp_standby_sessions']}"
            )
        await load.send({"cmd": "stop"})
        rep_ev = await load.read(timeout=60)
        while rep_ev.get("ev") != "report":
            rep_ev = await load.read(timeout=60)
        rr = rep_ev["report"]
        for r in out:  # one load run for all the restarts at this size: its verdict is each one's
            r["load_lost"] = rr["lost"]
            r["load_disconnects"] = rr["disconnects"]
            r["load_ok"] = rr["ok"]
            r["load_failures"] = rr["failures"]
        if not rr["ok"]:
            say(f"   load at {n:,} terminals FAILED: {'; '.join(rr['failures'])}")
    finally:
        if load is not None:
            await load.stop()
        sandbox_down(d)
    return out


async def amain(a: argparse.Namespace) -> int:
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="hsb-bench-hsbd-"))
    base.mkdir(parents=True, exist_ok=True)
    say(f"logs and sandboxes under {base}")
    start: list[dict[str, Any]] = []
    lag: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def dump() -> None:
        path = Path(a.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"machine": a.machine, "command": a.command, "load_rate": a.load_rate, "results": {"standby_start": start, "seq_lag": lag}}, indent=1
            )
        )

    if "start" in a.parts:
        for n in a.sizes:
            start += await standby_start(base, n, a.reps, a)
            dump()
    if "lag" in a.parts:
        d = base / "seq-lag"
        try:
            for pi in a.poll_intervals:
                lag.append(await seq_lag(base, pi, a, d))
                dump()
        finally:
            sandbox_down(d)
    say(f"total {time.monotonic() - t0:.0f} s")
    text = render(start, lag, a)
    print()
    print(text)
    say(f"raw results: {a.json}")
    if a.write:
        write_section(SECTION, text)
        say("written to BENCHMARKS.md")
    return 1 if load_failed(start) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_churn":
        return churn_mode(argv)
    p = argparse.ArgumentParser(prog="bench/hsbd.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1,000 terminals, 2 restarts, 5 s of churn, one poll interval")
    p.add_argument("--parts", default="start,lag", help="start, lag or both")
    p.add_argument("--sizes", default=None, help="logged-on terminals for the standby start (default 1000,10000)")
    p.add_argument("--reps", type=int, default=None, help="standby restarts per size (default 5)")
    p.add_argument("--load-rate", type=float, default=200.0, help="messages/s of light load while the standby restarts")
    p.add_argument("--rate", type=float, default=500.0, help="logons per second (and as many logoffs)")
    p.add_argument("--hold", type=float, default=0.5, help="seconds each session stays open")
    p.add_argument("--pool", type=int, default=1000, help="terminals cycling through logon/logoff")
    p.add_argument("--duration", type=float, default=None, help="seconds of churn per poll interval (default 20)")
    p.add_argument("--poll", type=float, default=0.0, help="pause between two CP sessions polls (0: back to back)")
    p.add_argument("--poll-intervals", default=None, help="host-b ring_poll_interval values, s (default 0.05,0.01)")
    p.add_argument("--max-other", type=float, default=0.3, help="before each measurement, wait until other processes use < this many cores")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="... but at most this long (0: do not wait)")
    p.add_argument("--dir")
    p.add_argument("--json", default=str(RESULTS), help="write the raw results to this file (default: %(default)s)")
    p.add_argument("--render", metavar="JSON", help="do not measure: render the results saved with --json")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update BENCHMARKS.md")
    p.add_argument("--write", dest="force_write", action="store_true", help="update BENCHMARKS.md even with --quick")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    if a.quick:
        a.write = a.write and a.force_write
        a.sizes = a.sizes or "1000"
        a.reps = a.reps or 2
        a.duration = a.duration or 5.0
        a.poll_intervals = a.poll_intervals or "0.05"
    a.sizes = [int(x) for x in (a.sizes or "1000,10000").split(",") if x]
    a.reps = a.reps or 5
    a.duration = a.duration or 20.0
    a.poll_intervals = [float(x) for x in (a.poll_intervals or "0.05,0.01").split(",") if x]
    a.parts = [x for x in a.parts.split(",") if x]
    a.machine = machine()

    def rerender(saved: dict[str, Any]) -> str:
        a.load_rate = saved.get("load_rate", a.load_rate)
        res = saved.get("results", saved)  # files written before the "results" key: both lists at the top
        return render(res["standby_start"], res["seq_lag"], a)

    return run_or_render(a, SECTION, rerender, amain)


if __name__ == "__main__":
    sys.exit(main())
