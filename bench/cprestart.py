"""The CP restarted on its journal: SIGKILL of hsbcpd under load, started again at once, and
how long until every terminal is served again; plus the recovery of a large journal alone.

    .venv/bin/python bench/cprestart.py [--sizes 1000,10000] [--reps 3] [--rate 2000]
                                        [--recovery 100000] [--json FILE] [--no-write] [--render FILE]
                                        [--profile DIR [--profile-tool py-spy|perf]]

Per size: one sandbox (hsbcpd, host-a active, host-b standby, journal service, default timing,
`durability = "fsync"`); per repetition a load child (bench/_load.py, 2,000 msg/s, resuming
terminals, strict verdict in its CP-restart mode: only the CP's absence may disconnect a terminal,
no session may close) and, once hot standby is established and
the load steady, SIGKILL of hsbcpd and a new hsbcpd started at once on the same journal (what
systemd's `Restart=always` does). From the kill, on the wall clock (the daemons' JSON logs and
the load child): the new process's first log line (process start), `journal_recovered` (its
own duration beside it; exactly one, as one `cp_started` and, under --supervise, one worker
dead and one forked: a second death fails the run), `cp_started` (listening), the active's registration (`host_registered`
with role active), every terminal with its session back (reconnected, resumed, the active's
session open), and the terminals' headline: the worst pause (reply latency of every message in
flight at the kill or sent in the second after it) and all served (the last reply to a message in
flight at the kill). Goal at 10,000 terminals: every terminal served again ≤ 1 s; 0 lost, 0
duplicate replies.

`--recovery N` also measures, in this process, reading back a journal of N outstanding messages
(and N/10 kept replies) and restoring the CP from it, the work hsbcpd does before it listens.
Goal: ≤ 0.5 s at 100,000. Raw results: bench/results/cprestart.json.
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
    Logs,
    fault_window_failures,
    fmt_ms,
    machine,
    machine_line,
    median,
    proc_cpu,
    raw_name,
    result_args,
    run_ok,
    run_or_render,
    run_verdict,
    sandbox,
    sandbox_down,
    say,
    start_load,
    status,
    table,
    until,
    wait_dead,
    write_section,
)

from bench._common import counters_delta, finished, scratch, tcp_counters  # noqa: E402
from hsb.demo import one_restart_failures  # noqa: E402

COMMAND = ".venv/bin/python bench/cprestart.py"
RESULTS = Path(__file__).resolve().parent / "results" / "cprestart.json"
SECTION = "The CP restarted on its journal (`bench/cprestart.py`)"


def rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000, 1)


MODES = {"plain": "a new hsbcpd", "supervise": "its master (--supervise)"}


async def ensure_mode(d: Path, n: int, mode: str) -> None:
    """The sandbox's hsbcpd in `mode`: "plain" (hsbcpd alone, a new one started after the kill,
    as systemd's Restart=always does) or "supervise" (hsbcpd --supervise: its master forks the
    next CP at once). A change stops the running hsbcpd cleanly and starts one in that mode."""
    st = sandbox.load_state(d)
    want = mode == "supervise"
    if bool(st["cp"].get("supervise")) == want:
        return
    pid = st["cp"]["pid"]
    os.kill(pid, signal.SIGTERM)
    await wait_dead(pid, 30)
    st = sandbox.load_state(d)
    st["cp"]["supervise"] = want
    sandbox.save_state(d, st)
    sandbox.start_cp(d)
    await until(lambda: status(d), lambda s: s["established"], 180, "hot standby (no terminal connected)", 0.2)


async def one(d: Path, n: int, a: argparse.Namespace, rep: int, mode: str = "plain") -> dict[str, Any]:
    await ensure_mode(d, n, mode)
    logs = Logs(d)
    load = await start_load(sandbox.load_state(d)["cp"]["terminal"], n, a.rate, d / f"load-{rep}.log", settle=30, expect_cp_restart=True)
    try:
        assert (await load.read(timeout=180))["ev"] == "sending"
        await until(lambda: status(d), lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] == n, 180, "hot standby", 0.2)
        await asyncio.sleep(a.steady)
        logs.mark()
        await load.send({"cmd": "arm"})
        assert (await load.read(timeout=30))["ev"] == "armed"
        pid = sandbox.cp_process(sandbox.load_state(d))  # supervised: the master's worker
        tcp0 = tcp_counters()
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL)
        await load.send({"cmd": "mark", "label": "SIGKILL hsbcpd", "t": t_kill})
        await wait_dead(pid, 10)
        t_spawn = time.time()
        if mode == "plain":
            new_pid = sandbox.start_cp(d)
        else:  # the master forks the next worker by itself
            st = sandbox.load_state(d)
            new_pid = await until(
                lambda: asyncio.sleep(0, sandbox.cp_process(st)), lambda p: p not in (pid, st["cp"]["pid"]), 10, "the next worker", 0.001
            )
        st = sandbox.load_state(d)
        pids = {"hsbcpd": new_pid, "active": st["hosts"]["host-a"]["pid"], "standby": st["hosts"]["host-b"]["pid"], "load": load.pid}
        spies = start_spies(a.profile, a.profile_tool, {k: pids[k] for k in ("hsbcpd", "load", "active")}, rep) if a.profile else []
        cpu0 = cpu_seconds(pids)
        if mode == "supervise":
            cpu0["hsbcpd"] = cpu0["hsbcpd_sys"] = 0.0  # a new process: all of its CPU is this restart's
        cpu = None
        back = None
        tcp: dict[str, int] = {}
        try:
            while (ev := await load.read(timeout=60))["ev"] != "recovered":
                pass
            back = ev["t"]
            cpu1 = cpu_seconds(pids)
            await stop_spies(spies)
            cpu = {k: round(cpu1[k] - cpu0[k], 3) for k in cpu1}
            cpu["window"] = round(back - t_spawn, 3)
            tcp = counters_delta(tcp0, tcp_counters())
        except TimeoutError:
            say("   (not every terminal was back within 60 s)")
        finally:
            await stop_spies(spies)
        await asyncio.sleep(a.after)
        await load.send({"cmd": "stop"})
        while (ev := await load.read(timeout=120))["ev"] != "report":
            pass
        report = ev["report"]
    finally:
        await load.stop()
    cp = logs.cp.read()
    if mode == "supervise":
        # the master forked the next worker when it read the death, before this process saw it
        # (wait_dead polls): its own line says when, and its lines are not the new process's
        forked = logs.cp.find("cp_worker_started", after=t_kill, pid=new_pid)
        if forked is not None:
            t_spawn = forked["_t"]
    first_line = min((e["_t"] for e in cp if "_t" in e and e["_t"] >= t_spawn and not master_line(e)), default=None)
    rec = logs.cp.find("journal_recovered", after=t_kill)
    started = logs.cp.find("cp_started", after=t_kill)
    reg = logs.cp.find("host_registered", after=t_kill, role="active")
    op = (report.get("operations") or [{}])[0]
    extra_failures = run_failures(report, n, cp, t_kill, mode)
    return {
        "terminals": n,
        "rep": rep,
        "mode": mode,
        "kill_to_process_start_ms": rel(first_line, t_kill),
        "recovery_ms": rec.get("ms") if rec else None,
        "recovered_held": rec.get("held") if rec else None,
        "recovered_replies": rec.get("replies_kept") if rec else None,
        "kill_to_listening_ms": rel(started["_t"], t_kill) if started else None,
        "kill_to_active_registered_ms": rel(reg["_t"], t_kill) if reg else None,
        "kill_to_all_back_ms": rel(back, t_kill),
        "worst_ms": op.get("worst_ms"),
        "p99_ms": op.get("p99_ms"),
        "all_served_ms": op.get("all_served_ms"),
        "unanswered": op.get("unanswered"),
        "in_flight": op.get("in_flight"),
        "cp_reconnects": report.get("cp_reconnects"),
        # CPU seconds from the new hsbcpd's start to every terminal back: each process, and the
        # machine ("busy": every core's non-idle time; "cores": what the machine has)
        "cpu_s": cpu,
        # this namespace's accept-queue overflows and SYN retransmissions from the kill to every
        # terminal back (bench/_common.tcp_counters): each overflow is a terminal a second late
        "tcp": tcp,
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        "unexpected": report["unexpected"],
        "acked": report["acked"],
        **run_verdict(report, extra_failures),
    }


def run_failures(report: dict[str, Any], n: int, cp: list[dict[str, Any]], t_kill: float, mode: str) -> list[str]:
    """What a run fails on beside the load's verdict: its fault window (a drop before the kill,
    more changes of CP process than one per terminal) and the CP's log from the kill on (`cp`,
    as Logs reads it): one restart on the journal, under --supervise one worker dead and one
    forked (a second death before any terminal came back, in the recovery say, adds no change
    of CP process that the terminals could count)."""
    after = [e for e in cp if e.get("_t", 0.0) >= t_kill]
    return fault_window_failures(report, n) + one_restart_failures(after, supervised=mode == "supervise")


def start_spies(where: str, tool: str, pids: dict[str, int], rep: int) -> list[Any]:
    """--profile: py-spy (the venv's; `tool` "perf": perf record, native symbols and the
    kernel's part) on each of `pids` from now until every terminal is back: py-spy's raw folded
    stacks to `where`/<name>-<rep>.txt, perf's data to <name>-<rep>.perf, written on SIGINT."""
    import subprocess

    spy = Path(sys.executable).parent / "py-spy"
    Path(where).mkdir(parents=True, exist_ok=True)
    out = []
    for name, pid in pids.items():
        argv = [str(spy), "record", "--nonblocking", "-r", "200", "-f", "raw", "-p", str(pid), "-o", str(Path(where) / f"{name}-{rep}.txt")]
        if tool == "perf":
            argv = ["perf", "record", "-q", "-F", "1000", "-p", str(pid), "-o", str(Path(where) / f"{name}-{rep}.perf")]
        out.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return out


async def stop_spies(spies: list[Any]) -> None:
    """Stop the --profile recorders (SIGINT: each writes its file) and wait for them."""
    for p in spies:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in spies:
        for _ in range(1000):
            if p.poll() is not None:
                break
            await asyncio.sleep(0.01)
        else:
            p.kill()
            p.wait()
    spies.clear()


def master_line(e: dict[str, Any]) -> bool:
    """A line of hsbcpd's master (`--supervise`), not of a worker."""
    ev = str(e.get("event", ""))
    return ev.startswith("cp_worker_") or ev == "applied_config_not_kept"


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system, s) of each process so far, its system time (<name>_sys), and the
    whole machine's ("busy")."""
    out = {k: proc_cpu([pid]) for k, pid in pids.items()}
    for k, pid in pids.items():  # the kernel's part of each (system time)
        try:
            raw = Path(f"/proc/{pid}/stat").read_bytes()
            out[f"{k}_sys"] = int(raw[raw.rindex(b")") + 2 :].split()[12]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            out[f"{k}_sys"] = 0.0
    cpu = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
    out["busy"] = (sum(cpu) - cpu[3] - cpu[4]) / os.sysconf("SC_CLK_TCK")  # not idle, not iowait
    return out


GROUP_RECORDS = 5  # records per group commit: what hsbcpd wrote at 2,000 msg/s from 10,000 terminals


def recovery_bench(n: int, group: int = GROUP_RECORDS) -> dict[str, Any]:
    """Read back a journal of `n` outstanding messages (and n/10 kept replies) and restore a CP.
    The journal is written as hsbcpd writes it: `group` records per group commit (1: each alone,
    as at a trickle of messages)."""
    from hsb import gcpolicy
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP
    from hsb.cp.journal.format import group as framed_group
    from hsb.cp.journal.format import packer
    from hsb.cp.journal.recovery import recover, segment_name

    terminals = max(1, n // 10)
    with tempfile.TemporaryDirectory(prefix="hsb-bench-recovery-") as tmp:
        d = Path(tmp) / "cp-journal"
        d.mkdir()
        recs = [["ck", 7, "host-a", 0, {}]]
        for i in range(n):
            recs.append(["a", f"T{i % terminals:06d}", i // terminals + 1, b"x" * 64])
        for t in range(terminals):
            recs.append(["r", f"T{t:06d}", 1, b"y" * 64])  # the first message of each: answered, reply kept
        pack = packer()
        bodies = [pack(r) for r in recs]
        blob = b"".join(framed_group(bodies[k : k + group]) for k in range(0, len(bodies), group))
        (d / segment_name(1)).write_bytes(blob)
        (Path(tmp) / "s").write_text("secret\n")
        (Path(tmp) / "s").chmod(0o600)
        cfgp = Path(tmp) / "cp.toml"
        cfgp.write_text(f'[cp]\nsecret_file = "s"\n[[terminal_groups]]\nprefix = "T"\nwidth = 6\nstart = 0\ncount = {terminals}\n')
        cfg = load(cfgp, CPConfig)
        with gcpolicy.paused():  # as hsbcpd recovers (hsb.cp.taking_over.take_over)
            t0 = time.perf_counter()
            r = recover(d)
            t1 = time.perf_counter()
            cp = CP(cfg)
            cp.restore(r)
            t2 = time.perf_counter()
        held = sum(len(t.held) for t in cp.terms.values())
        return {
            "outstanding_messages": held,
            "kept_replies": sum(len(t.replies) for t in cp.terms.values()),
            "terminals": terminals,
            "journal_mib": round(len(blob) / 1048576, 1),
            "records_per_group": group,
            "read_s": round(t1 - t0, 3),
            "restore_s": round(t2 - t1, 3),
            "total_s": round(t2 - t0, 3),
        }


def served_again_ms(r: dict[str, Any]) -> float:
    """One run's "every terminal served again" (ms from the kill): every session back, the worst
    pause and the last reply to what was in flight at the kill (none in flight: no such figure);
    infinite if a session never came back or a message of the window was never answered."""
    if r.get("kill_to_all_back_ms") is None or r.get("unanswered") or r.get("worst_ms") is None:
        return float("inf")
    return float(max(r.get(k) or 0 for k in ("kill_to_all_back_ms", "worst_ms", "all_served_ms")))


def render(data: dict[str, Any], a: argparse.Namespace) -> str:
    rows = data.get("results", [])
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}. hsbcpd, both hosts (journal service), the load child (resuming"
        f" terminals, {data.get('rate', a.rate):,.0f} msg/s) and the benchmark share the 2 cores. Per run: SIGKILL of hsbcpd,"
        " a new hsbcpd started at once on the same journal. Times in ms from the kill, median (worst run).",
        "",
    ]
    body = []
    modes = sorted({r.get("mode", "plain") for r in rows}, key=["plain", "supervise"].index)
    for n, mode in [(n, m) for n in sorted({r["terminals"] for r in rows}) for m in modes]:
        rs = [r for r in rows if r["terminals"] == n and r.get("mode", "plain") == mode]
        if not rs:
            continue

        def mm(k: str) -> str:
            # a run without the figure never got there (a terminal not back within the wait, a
            # message never answered): infinite, not left out of the median or the worst. A run
            # with nothing in flight at the kill has no "all served" to give: left out, not infinite
            v = [r[k] if r.get(k) is not None else float("inf") for r in rs if k in r and not (k == "all_served_ms" and r.get("in_flight") == 0)]
            return f"{fmt_ms(median(v), 1)} ({fmt_ms(max(v), 1)})" if v else "–"

        body.append(
            [
                f"{n:,}",
                MODES[mode],
                str(len(rs)),
                mm("kill_to_process_start_ms"),
                mm("recovery_ms"),
                mm("kill_to_listening_ms"),
                mm("kill_to_active_registered_ms"),
                mm("kill_to_all_back_ms"),
                mm("worst_ms"),
                mm("all_served_ms"),
                str(sum(r["lost"] for r in rs)),
                str(sum(r["duplicates"] for r in rs)),
                "all OK" if all(run_ok(r) for r in rs) else "**FAILED**",
            ]
        )
    out.append(
        table(
            [
                "terminals",
                "restarted by",
                "runs",
                "new process logs",
                "journal recovery (its own ms)",
                "listening",
                "active registered",
                "every terminal's session back",
                "worst pause",
                "all served",
                "lost",
                "dup",
                "verdict",
            ],
            body,
            "rlrrrrrrrrrrl",
        )
    )
    big = max((r["terminals"] for r in rows), default=0)
    for mode in modes:
        runs = [r for r in rows if r["terminals"] == big and r.get("mode", "plain") == mode]
        if not runs:
            continue
        # "served again": every terminal's session back, and every message of the window around
        # the kill answered (the worst pause, the last of those served): a session reopened
        # while held messages still wait is not service. A run without one of these figures
        # (not every terminal back, a message never answered) is the worst run, never left out
        back = [served_again_ms(r) for r in runs]
        failed = sum(1 for r in runs if not run_ok(r))
        met = max(back) <= 1000 and not failed
        out += [
            "",
            f"Goal at {big:,} terminals ({MODES[mode]}): every terminal served again ≤ 1 s after the kill (its session back, and the worst pause and the last reply of the messages around the kill): worst run {fmt_ms(max(back))} ms"
            + (f", {failed} of {len(runs)} runs failed the verdict" if failed else "")
            + f" (**{'met' if met else 'missed'}**); lost {sum(r['lost'] for r in rows)}, duplicates"
            f" {sum(r['duplicates'] for r in rows)}.",
        ]
    for mode in modes:
        cpu_rows = [r for r in rows if r["terminals"] == big and r.get("cpu_s") and r.get("mode", "plain") == mode]
        if not cpu_rows:
            continue
        keys = ["hsbcpd", "active", "standby", "load"]
        med = {k: median([r["cpu_s"][k] for r in cpu_rows]) for k in [*keys, "busy"]}
        wall = median([r["cpu_s"]["window"] for r in cpu_rows])
        out += [
            "",
            f"Where the time goes at {big:,} terminals, {MODES[mode]} (CPU seconds from the new process's spawn to every terminal back, median"
            f" of {len(cpu_rows)} runs): hsbcpd {med['hsbcpd']:.2f}, the active {med['active']:.2f}, the standby"
            f" {med['standby']:.2f}, the terminals' process {med['load']:.2f}; the machine's two cores were busy"
            f" {med['busy']:.2f} s of {2 * wall:.2f} s ({med['busy'] / (2 * wall) * 100:.0f} %).",
        ]
        tcp_rows = [r for r in cpu_rows if r.get("tcp")]
        if tcp_rows:
            over = ", ".join(f"{r['tcp'].get('ListenOverflows', 0):,}" for r in tcp_rows)
            syn = ", ".join(f"{r['tcp'].get('TCPSynRetrans', 0):,}" for r in tcp_rows)
            out[-1] += (
                f" Accept-queue overflows from the kill to every terminal back, by run: {over} (SYN retransmissions {syn}); each"
                " overflow is a terminal whose SYN TCP retries a second later (net.core.somaxconn, configs/sysctl/)."
            )
    rb = data.get("recovery")
    if rb:
        out += [
            "",
            f"Recovery alone (in-process, `--recovery {rb['outstanding_messages']}`): a journal of {rb['journal_mib']} MiB holding"
            f" {rb['outstanding_messages']:,} outstanding messages and {rb['kept_replies']:,} kept replies of {rb['terminals']:,}"
            f" terminals ({rb.get('records_per_group', 1)} records per group commit)"
            f" read back in {rb['read_s'] * 1000:.0f} ms and restored into the CP in {rb['restore_s'] * 1000:.0f} ms:"
            f" {rb['total_s'] * 1000:.0f} ms in all (goal ≤ 500 ms: **{'met' if rb['total_s'] <= 0.5 else 'missed'}**).",
        ]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    data: dict[str, Any] = {"machine": a.machine, "command": a.command, "rate": a.rate, "results": []}

    def save() -> None:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(data, indent=1))

    if a.recovery:
        data["recovery"] = recovery_bench(a.recovery)
        say(f"   recovery of {a.recovery:,} outstanding: {data['recovery']}")
        save()
    base = scratch("hsb-bench-cprestart-")
    for n in a.sizes:
        d = base / f"n{n}"
        cap = a.machine.get("somaxconn", -1)
        if 0 <= cap < n:  # (the CP says it too, accept_queue_too_small: these figures then hold TCP's SYN retries)
            say(
                f"   net.core.somaxconn is {cap:,}, below {n:,} terminals: reconnects past the accept queue wait a second for TCP (configs/sysctl/90-hsbcpd.conf)"
            )
        await sandbox.aup(d, terminals=n, service="journal", timeout=180)
        try:
            for rep, mode in [(rep, m) for rep in range(1, a.reps + 1) for m in a.modes]:
                r = await one(d, n, a, rep, mode)
                data["results"].append(r)
                say(
                    f"   N={n} #{rep}: process {fmt_ms(r['kill_to_process_start_ms'], 0)} ms, recovery {r['recovery_ms']} ms,"
                    f" listening {fmt_ms(r['kill_to_listening_ms'], 0)}, active {fmt_ms(r['kill_to_active_registered_ms'], 0)},"
                    f" all back {fmt_ms(r['kill_to_all_back_ms'], 0)} ms; worst pause {fmt_ms(r['worst_ms'], 0)} ms;"
                    f" {'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['failures'])}"
                )
                save()
        finally:
            sandbox_down(d)
    text = render(data, a)
    print(text)
    if a.write:
        write_section(SECTION, text)
    ok = all(run_ok(r) for r in data["results"])
    finished(base, ok, a.keep)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/cprestart.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument(
        "--modes",
        default="plain",
        help="comma list, alternated in each repetition: plain (a new hsbcpd started after the kill) and supervise (hsbcpd --supervise)",
    )
    p.add_argument("--steady", type=float, default=2.0)
    p.add_argument("--after", type=float, default=2.0)
    p.add_argument("--recovery", type=int, default=100_000, help="also time recovering a journal of this many outstanding messages (0: no)")
    result_args(p, RESULTS)
    p.add_argument(
        "--profile",
        metavar="DIR",
        help="profile the new hsbcpd, the load child and the active from the new hsbcpd's start to every terminal back, into DIR"
        " (py-spy: raw folded stacks, 200 Hz, non-blocking)",
    )
    p.add_argument(
        "--profile-tool", choices=["py-spy", "perf"], default="py-spy", help="--profile's recorder (perf: native symbols and the kernel's part)"
    )
    p.add_argument("--keep", action="store_true", help="keep the working directory (logs, journals) even when every run passed")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    a.sizes = [int(x) for x in a.sizes.split(",") if x]
    a.modes = [m for m in a.modes.split(",") if m]
    if not a.modes or any(m not in MODES for m in a.modes):
        p.error(f"--modes: a comma list of {', '.join(MODES)}")
    a.machine = machine()

    def rerender(saved: dict[str, Any]) -> str:
        return render(saved, a)

    return run_or_render(a, SECTION, rerender, amain)


if __name__ == "__main__":
    sys.exit(main())
