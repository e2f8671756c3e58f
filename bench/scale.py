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
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import rss_kib  # noqa: E402
from _sandbox import (  # noqa: E402
    Child,
    Logs,
    fmt_ms,
    host_by_role,
    machine,
    machine_line,
    others_cpu,
    raw_name,
    reap,
    run_or_render,
    sandbox_down,
    say,
    start_load,
    status,
    table,
    until,
    wait_dead,
    write_section,
)

from hsb.ctl import sandbox  # noqa: E402
from hsb.ctl.gather import ask  # noqa: E402
from hsb.ops.limits import SPARE, terminals_fit  # noqa: E402
from hsb.wire.auth import load_secret  # noqa: E402

COMMAND = ".venv/bin/python bench/scale.py"
RESULTS = Path(__file__).resolve().parent / "results" / "scale.json"
SECTION = "Scale: real processes up to this machine's descriptor limit (`bench/scale.py`)"
PHASES = ("steady", "failover", "switchover", "cp_restart")
TITLES = {"steady": "steady load", "failover": "SIGKILL failover", "switchover": "planned switchover", "cp_restart": "CP restart (journal)"}
HEADERS = [
    "phase",
    "verdict",
    "lost / dup / unexpected / unacked",
    "disconnects",
    "worst pause ms",
    "p99 ms",
    "back ms",
    "re-established s",
    "log on s (+ standby)",
    "RSS MiB CP / active / standby",
    "KiB per terminal CP / active / standby",
    "load child peak MiB",
]
COUNTS = ("lost", "duplicates", "unexpected", "unacked", "bad_data", "protocol_errors", "unexpected_acks", "not_back")

_KIDS: list[Child] = []  # every load child alive, and every sandbox up: killed on any exit
_BOXES: list[Path] = []


def kill_everything() -> None:
    """SIGKILL every load child (its process group) and take every sandbox down; idempotent."""
    for k in list(_KIDS):
        if k.proc.returncode is None:
            try:
                os.killpg(k.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for d in list(_BOXES):
        sandbox_down(d)
        _BOXES.remove(d)


def rss(pid: int | None) -> int | None:
    try:
        return rss_kib(pid) if pid else None
    except (OSError, RuntimeError, ValueError):
        return None


def split(n: int, per_child: int) -> list[tuple[int, int]]:
    """(first terminal number, count) per load child: as few children as --per-child allows, even shares."""
    k = max(1, math.ceil(n / per_child))
    sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
    return [(1 + sum(sizes[:i]), s) for i, s in enumerate(sizes)]


def src(phase: str, i: int, k: int) -> str:
    """Load child i's source address: one of its own per child and phase (127.0.0.2, .3, ...), so
    that no phase's connects meet the previous phase's closed connections (TIME_WAIT)."""
    return f"127.0.0.{2 + PHASES.index(phase) * k + i}"


def counts(s: dict[str, Any]) -> tuple[int, int, int]:
    """(connected, active sessions, standby sessions) at the CP; zeros while it cannot be asked."""
    t = (s.get("cp") or {}).get("terminals") or {}
    return t.get("connected", 0), t.get("active_sessions", 0), t.get("standby_sessions", 0)


def full(s: dict[str, Any], n: int) -> bool:
    # connected too: after a CP restart the active's sessions are kept (adopted) before their terminals are back
    return bool(s.get("established")) and counts(s) == (n, n, n)


def alive(kids: list[Child]) -> bool:
    """True while every load child runs (a poll for the terminals must not outwait a dead one)."""
    dead = [f"load {i + 1} ({k.log})" for i, k in enumerate(kids) if k.proc.returncode is not None]
    if dead:
        raise RuntimeError(f"load child exited: {', '.join(dead)}")
    return True


async def poll(d: Path, pred: Any, timeout: float, what: str) -> float:
    """Until `pred(status)`; returns the wall time it first held."""
    await until(lambda: status(d), pred, timeout, what, interval=0.1)
    return time.time()


async def read_until(k: Child, ev: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        m = await k.read(timeout=max(0.1, deadline - time.monotonic()))
        if m.get("ev") == ev:
            return m


class Sampler:
    """Peak and last RSS (KiB) of the sandbox's daemons and the load children, every 0.5 s."""

    def __init__(self, d: Path, kids: list[Child]) -> None:
        self.d, self.kids = d, kids
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self.task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        st = sandbox.load_state(self.d)
        pids = {"cp": sandbox.cp_process(st), **{n: h["pid"] for n, h in st["hosts"].items()}}
        pids.update({f"load-{i + 1}": k.pid for i, k in enumerate(self.kids)})
        for name, pid in pids.items():
            v = rss(pid)
            if v is not None:
                self.peak[name] = max(self.peak.get(name, 0), v)
                self.last[name] = v

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.5)

    def __enter__(self) -> Sampler:
        self.task = asyncio.ensure_future(self.run())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.task.cancel()


def judge(phase: str, n: int, reports: list[dict[str, Any]], problems: list[str]) -> dict[str, Any]:
    """The phase's verdict from every child's report (and what the bench itself saw go wrong)."""
    tot = {c: sum(int(r.get(c) or 0) for r in reports) for c in (*COUNTS, "disconnects", "sent", "acked", "replied", "welcomed", "cp_reconnects")}
    tot["resumed"] = sum(int((r.get("extras") or {}).get("back") or 0) for r in reports)
    failures = [f"load {i + 1}: {f}" for i, r in enumerate(reports) for f in r.get("failures") or []]
    failures += [f"load {i + 1}: verdict not OK" for i, r in enumerate(reports) if not r.get("ok") and not r.get("failures")]
    # the same promises counted again here, so that a phase can never pass on a child's say-so alone
    failures += [f"{c}: {tot[c]} in all" for c in COUNTS if tot[c]]
    if phase in ("steady", "failover", "switchover") and tot["disconnects"]:
        failures.append(f"disconnects: {tot['disconnects']} (none allowed here)")
    if sum(int(r.get("terminals") or 0) for r in reports) == n and tot["welcomed"] < n:  # (a missing report is said below)
        failures.append(f"not logged on: {n - tot['welcomed']} of {n}")
    if phase != "steady" and reports and tot["resumed"] < n:
        failures.append(f"back after the {phase}: {tot['resumed']} of {n} terminals")
    failures += problems
    return {**tot, "ok": not failures and bool(reports), "failures": failures or ([] if reports else ["no load report"])}


async def run_phase(d: Path, info: dict[str, Any], n: int, phase: str, a: argparse.Namespace, idle: dict[str, int]) -> dict[str, Any]:
    res: dict[str, Any] = {"n": n, "phase": phase}
    problems: list[str] = []
    shares = split(n, a.per_child)
    kids: list[Child] = []
    reports: list[dict[str, Any]] = []
    logs = Logs(d)
    with Sampler(d, kids) as mem:
        try:
            t_start = time.time()
            for i, (first, count) in enumerate(shares):
                k = await start_load(
                    info["cp"]["terminal"],
                    count,
                    a.rate * count / n,
                    d / f"load-{phase}-{i + 1}.log",
                    settle=a.settle,
                    after_s=a.steady if phase == "steady" else 1.0,
                    expect_cp_restart=phase == "cp_restart",
                    connect_timeout=a.logon_timeout,
                    source=src(phase, i, len(shares)),
                    start=first,
                    keepalive=a.term_keepalive,
                )
                kids.append(k)
                _KIDS.append(k)
            try:
                t_act = await poll(d, lambda s: alive(kids) and counts(s)[:2] == (n, n), a.logon_timeout, f"{n} active sessions")
                t_sb = await poll(d, lambda s: alive(kids) and full(s, n), a.reestablish_timeout, f"{n} standby sessions")
                res["logon_s"], res["standby_open_s"] = round(t_act - t_start, 2), round(t_sb - t_act, 2)
                await asyncio.gather(*(read_until(k, "sending", a.logon_timeout) for k in kids))
                res["others_cpu"] = round(await others_cpu(min(1.0, a.steady)), 2)
                await asyncio.sleep(max(0.0, a.steady - 1.0))
                if phase == "steady":  # the window: messages sent in the next --steady seconds
                    res["t_op"] = t_op = time.time()
                    for k in kids:
                        await k.send({"cmd": "mark", "label": phase, "t": t_op})
                    await asyncio.sleep(a.steady)
                else:
                    await operate(d, n, phase, a, kids, logs, res, problems)
                    await asyncio.sleep(a.after)
            except Exception as exc:  # noqa: BLE001 - the phase failed; its load still reports its verdict
                problems.append(f"{type(exc).__name__}: {exc}")
                res["error"] = problems[-1]
            t_logoff = time.time()  # every terminal logs off: the logoff storm (hsb.cp.logons)
            for k in kids:
                try:
                    await k.send({"cmd": "stop"})
                except (OSError, RuntimeError):  # it has exited: its read below says so
                    pass
            got = await asyncio.gather(*(read_until(k, "report", a.settle + 120) for k in kids), return_exceptions=True)
            for i, g in enumerate(got):
                if isinstance(g, BaseException):
                    problems.append(f"load {i + 1} gave no report: {type(g).__name__}: {g}")
                else:
                    reports.append(g["report"])
        finally:
            for k in kids:
                await k.stop(timeout=10)
                _KIDS.remove(k)
            mem.sample()
    s = await status(d)
    roles = {"cp": "cp", "active": host_by_role(s, "active"), "standby": host_by_role(s, "standby")}
    res["rss_peak_kib"] = mem.peak
    res["rss_end_kib"] = {r: mem.last.get(name) for r, name in roles.items() if name}
    res["kib_per_terminal"] = {r: round((v - idle[r]) / n, 2) for r, v in res["rss_end_kib"].items() if v and idle.get(r)}
    res["roles_end"] = roles
    for r in reports:
        r["disconnected_terminals"] = len(r.pop("per_terminal_disconnects", None) or {})
    res["reports"] = reports
    ops = [(r.get("operations") or [{}])[0] for r in reports]
    res["worst_ms"] = max((o["worst_ms"] for o in ops if o.get("worst_ms") is not None), default=None)
    res["p99_ms"] = max((o["p99_ms"] for o in ops if o.get("p99_ms") is not None), default=None)
    res["all_served_ms"] = max((o["all_served_ms"] for o in ops if o.get("all_served_ms") is not None), default=None)
    # where the worst pause was (hsb.term.timeline): the longest wait of the messages in flight at the
    # operation, then of those sent in each 100 ms after it, max over the children
    by = [o["worst_by_100ms"] for o in ops if o.get("worst_by_100ms")]
    res["worst_by_100ms"] = [max(col) for col in zip(*by, strict=False)] if by else None
    worst_op = max((o for o in ops if o.get("worst_ms") is not None), key=lambda o: o["worst_ms"], default=None)
    res["worst_sent_ms"] = worst_op.get("worst_sent_ms") if worst_op else None
    res["unanswered_in_window"] = sum(int(o.get("unanswered") or 0) for o in ops)  # never answered: no finite worst
    if res["unanswered_in_window"]:
        res["worst_ms"] = res["p99_ms"] = float("inf")
    res["children"] = [{"source": src(phase, i, len(shares)), "first": f, "terminals": c} for i, (f, c) in enumerate(shares)]
    res.update(judge(phase, n, reports, problems))
    # the pair must be ready for the next phase: every terminal gone (logged off)
    try:
        await poll(d, lambda s: counts(s)[:2] == (0, 0), 120, "every terminal logged off")
        res["logoff_s"] = round(time.time() - t_logoff, 2)
        res["standby_sessions_after_logoff"] = counts(await status(d))[2]
    except TimeoutError as exc:
        res["after_logoff"] = str(exc)
    res["logoff"] = logoff_storm(logs, t_logoff)
    return res


def logoff_storm(logs: Logs, t0: float) -> dict[str, Any]:
    """What the logoff at the phase's end did to the pair, from the daemons' logs: the CP's loop
    stalls (logged past host_timeout / 2) and hosts that dropped their CP link."""
    stalls = [e["stalled_ms"] for e in logs["cp"].read() if e.get("event") == "cp_loop_stalled" and e.get("_t", 0) >= t0]
    drops = [f"{h}: {e.get('reason')}" for h in sandbox.HOSTS for e in logs[h].read() if e.get("event") == "cp_link_down" and e.get("_t", 0) >= t0]
    return {"cp_stalls_ms": stalls, "host_link_drops": drops}


async def operate(
    d: Path, n: int, phase: str, a: argparse.Namespace, kids: list[Child], logs: Logs, res: dict[str, Any], problems: list[str]
) -> None:
    """Arm the children, carry out the operation, mark it, and wait until every terminal is back
    and hot standby is re-established (times in `res`, seconds from the operation)."""
    s = await status(d)
    old = host_by_role(s, "active")
    if old is None or not full(s, n):
        raise RuntimeError(f"not hot standby with {n} sessions before the {phase}: {counts(s)}")
    new = "host-b" if old == "host-a" else "host-a"
    logs.mark()
    for k in kids:
        await k.send({"cmd": "arm"})
    for k in kids:
        await read_until(k, "armed", 30)
    st = sandbox.load_state(d)
    pid = sandbox.cp_process(st) if phase == "cp_restart" else st["hosts"][old]["pid"]
    res["t_op"] = t_op = time.time()
    if phase == "switchover":  # what hsbctl switchover asks, without its process start in the measured window
        ans = await ask(st["hosts"][old]["admin"], load_secret(str(d / "secret")), {"t": "switchover"}, timeout=30, ssl=sandbox.client_ssl(d))
        if not ans.get("ok"):
            raise RuntimeError(f"switchover refused: {ans}")
    else:
        os.kill(pid, signal.SIGKILL)
    for k in kids:
        await k.send({"cmd": "mark", "label": phase, "t": t_op})
    if phase == "cp_restart":
        await wait_dead(pid, 10)
        if not a.supervise:  # else its master forks the next one by itself
            reap([pid])
            sandbox.start_cp(d)
    elif phase == "failover":
        t = await poll(d, lambda s: host_by_role(s, "active") == new and (s.get("cp") or {}).get("state") == "serving", a.switch_timeout, "takeover")
        res["served_s"] = round(t - t_op, 3)
    got = await asyncio.gather(*(read_until(k, "recovered", a.recover_timeout) for k in kids), return_exceptions=True)
    backs = [b["t"] for b in got if isinstance(b, dict)]
    if len(backs) < len(kids):
        problems.append(f"not every terminal back within {a.recover_timeout:.0f} s")
    else:
        res["all_back_s"] = round(max(backs) - t_op, 3)
    if phase == "failover":  # the killed host comes back as the standby
        await wait_dead(pid, 10)
        reap([pid])
        res["t_restart"] = time.time()
        sandbox.start_host(d, old, "standby")
    t = await poll(d, lambda s: full(s, n), a.reestablish_timeout, f"hot standby with {n} standby sessions again")
    res["reestablished_s"] = round(t - t_op, 2)
    if phase == "cp_restart":
        rec, started = logs.cp.find("journal_recovered", after=t_op), logs.cp.find("cp_started", after=t_op)
        res["journal_recovery_ms"] = rec.get("ms") if rec else None
        res["listening_s"] = round(started["_t"] - t_op, 3) if started else None
    else:  # the CP's own record of the switch (hsb.cp.switchrec)
        sw = ((await status(d)).get("cp") or {}).get("last_switchover") or {}
        res["cp_switchover"] = {k: sw.get(k) for k in ("switch_ms", "worst_pause_ms", "p99_pause_ms", "all_served_ms", "notices_sent_ms")}


async def one_size(base: Path, n: int, a: argparse.Namespace, out: dict[str, Any]) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    hard = -1 if hard == resource.RLIM_INFINITY else hard
    size: dict[str, Any] = {"n": n, "phases": []}
    out["sizes"].append(size)
    why = terminals_fit(n, hard)
    share = max(c for _, c in split(n, a.per_child))
    if why is None and hard >= 0 and share + SPARE > hard:
        why = f"a load child of {share} terminals needs about {share + SPARE} open files, the limit is {hard}: lower --per-child"
    if why:
        size["skipped"] = f"hard open-files limit {hard}: {why}"
        say(f"== {n:,} terminals: skipped ({size['skipped']})")
        return
    d = base / f"n{n}"
    say(f"== {n:,} terminals: sandbox in {d}")
    _BOXES.append(d)
    try:
        t0 = time.time()
        info = await sandbox.aup(
            d,
            terminals=n,
            service=a.service,
            durability="fsync",
            timeout=a.reestablish_timeout,
            host_timeout=a.host_timeout,
            host_options={"heartbeat_timeout": a.host_timeout},
            supervise=a.supervise,
        )
        size["up_s"] = round(time.time() - t0, 2)
        await asyncio.sleep(1.0)
        st = sandbox.load_state(d)
        size["idle_rss_kib"] = idle = {
            "cp": rss(sandbox.cp_process(st)),
            "active": rss(st["hosts"]["host-a"]["pid"]),
            "standby": rss(st["hosts"]["host-b"]["pid"]),
        }
        for phase in a.phases:
            r = await run_phase(d, info, n, phase, a, {k: v for k, v in idle.items() if v})
            size["phases"].append(r)
            save(a, out)
            say(
                f"   {phase:<10} {'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['failures'])}: worst {fmt_ms(r['worst_ms'], 1)} ms,"
                f" back {r.get('all_back_s')} s, re-established {r.get('reestablished_s')} s, logon {r.get('logon_s')} s"
                f" + standby {r.get('standby_open_s')} s; RSS {r['rss_end_kib']}"
            )
            if r.get("error"):  # the pair may not be whole: the remaining phases would measure nothing
                size["stopped"] = f"after {phase}: {r['error']}"
                break
    except Exception as exc:  # noqa: BLE001 - this size failed (say why); the next may still run
        size["stopped"] = f"{type(exc).__name__}: {exc}"
        say(f"   !! {size['stopped']}; logs kept in {d}")
    finally:
        sandbox_down(d)
        if d in _BOXES:
            _BOXES.remove(d)
        save(a, out)


def save(a: argparse.Namespace, out: dict[str, Any]) -> None:
    p = Path(a.json)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(out, indent=1))


def pause(v: float | None) -> str:
    return "∞ (never answered)" if v == float("inf") else fmt_ms(v, 1)


def mib(v: int | None) -> str:
    return "–" if v is None else f"{v / 1024:,.0f}"


def render(data: dict[str, Any], a: argparse.Namespace) -> str:
    c = data["config"]
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}; open-files limit {c['nofile'][0]:,} (soft) / {c['nofile'][1]:,} (hard) per process."
        " hsbcpd, both hosts, the load children and the benchmark share the cores.",
        f"Per size a fresh sandbox (fast switch, {c['service']} service, the CP's journal with fsync, "
        + ("default timing" if c.get("host_timeout", 0.5) == 0.5 else f"host_timeout and heartbeat_timeout {c['host_timeout']:g} s")
        + (", hsbcpd under its master (`--supervise`: the CP restart kills the CP and the master forks the next)" if c.get("supervise") else "")
        + "); per phase a load"
        f" run of its own: {c['rate']:,.0f} msg/s in total over all N terminals, split over load children of at most"
        f" {c['per_child']:,} terminals, each from a 127.0.0.x of its own; strict verdict. **Worst pause**: the longest reply latency"
        " over the messages in flight at the operation or sent in the second after it (steady: sent in the"
        f" {c['steady']:g} s window), max over the children; p99 is the worst child's. **Back**: operation → every terminal"
        " switched (or its session open again after the CP restart). **Re-established**: operation → hot standby with all N"
        " standby sessions (after the failover, the killed host restarted as standby first). **Log on**: load started → N active"
        " sessions at the CP, + then → N standby sessions. RSS = VmRSS at the phase's end by role (active, standby after it);"
        " KiB per terminal = (that RSS − the same role's RSS in the idle sandbox, N terminals configured, none connected) / N.",
    ]
    for size in data["sizes"]:
        n = size["n"]
        out += ["", f"**{n:,} terminals**" + (f": skipped ({size['skipped']})." if size.get("skipped") else "")]
        if size.get("skipped"):
            continue
        ph = size["phases"]
        kids = ph[0]["children"] if ph else []
        idle = size.get("idle_rss_kib") or {}
        out.append(
            f"{len(kids)} load child{'ren' if len(kids) != 1 else ''} per phase ({' + '.join(format(k['terminals'], ',') for k in kids)}"
            f" terminals, each from an address of its own, {kids[0]['source'] if kids else '?'} up); sandbox up in {size.get('up_s')} s;"
            f" idle RSS: CP {mib(idle.get('cp'))} MiB,"
            f" active {mib(idle.get('active'))} MiB, standby {mib(idle.get('standby'))} MiB."
        )
        out.append("")
        rows = []
        for r in ph:
            e, k = r.get("rss_end_kib") or {}, r.get("kib_per_terminal") or {}
            load_peak = [v for name, v in (r.get("rss_peak_kib") or {}).items() if name.startswith("load-")]
            disc = f"{r.get('disconnects', 0):,}" + (f" (resumed {r.get('resumed', 0):,})" if r["phase"] == "cp_restart" else "")
            rows.append(
                [
                    TITLES[r["phase"]],
                    "OK" if r["ok"] else "**FAIL**",
                    " / ".join(f"{r.get(x, 0):,}" for x in ("lost", "duplicates", "unexpected", "unacked")),
                    disc,
                    pause(r.get("worst_ms")),
                    pause(r.get("p99_ms")),
                    "–" if r.get("all_back_s") is None else f"{r['all_back_s'] * 1000:,.0f}",
                    "–" if r.get("reestablished_s") is None else f"{r['reestablished_s']:.1f}",
                    f"{r.get('logon_s', '–')} + {r.get('standby_open_s', '–')}",
                    " / ".join(mib(e.get(x)) for x in ("cp", "active", "standby")),
                    " / ".join("–" if k.get(x) is None else f"{k[x]:.1f}" for x in ("cp", "active", "standby")),
                    mib(max(load_peak)) if load_peak else "–",
                ]
            )
        out.append(table(HEADERS, rows, "llrrrrrrrrrr"))
        for r in ph:
            if r["failures"]:
                out.append(f"\n- {TITLES[r['phase']]} failed: " + "; ".join(r["failures"][:6]))
        by = {r["phase"]: r for r in ph}
        served, listening = (by.get("failover") or {}).get("served_s"), (by.get("cp_restart") or {}).get("listening_s")
        out.append(
            f"\nSIGKILL failover: the standby served after {fmt_ms(None if served is None else served * 1000)} ms. CP restart: the new"
            f" hsbcpd listening after {fmt_ms(None if listening is None else listening * 1000)} ms (its journal recovery"
            f" {fmt_ms((by.get('cp_restart') or {}).get('journal_recovery_ms'), 1)} ms). Other processes' CPU (not this benchmark's)"
            f" before each phase: {' / '.join(fmt_ms(r.get('others_cpu'), 2) for r in ph)} cores."
        )
        offs = [r for r in ph if r.get("logoff") is not None]
        if offs:
            out.append(
                "\nEvery terminal logging off at each phase's end (a logoff storm): "
                + "; ".join(
                    f"{TITLES[r['phase']]}: logged off in {fmt_ms(None if r.get('logoff_s') is None else r['logoff_s'] * 1000)} ms,"
                    f" CP loop stalls {', '.join(f'{x:,.0f}' for x in r['logoff']['cp_stalls_ms']) or 'none'} ms,"
                    f" host links dropped {len(r['logoff']['host_link_drops'])}"
                    for r in offs
                )
                + " (a stall is logged past host_timeout / 2)."
            )
        if size.get("stopped"):
            out.append(f"\n- stopped {size['stopped']}")
    return "\n".join(out)


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
