"""bench/scale.py's runs: one size's sandbox (one_size) and its phases, each a load run of its
own over several load children (run_phase: log on, load, the operation, every terminal logged
off; operate: the failover, switchover or CP restart and the pair whole again), the RSS sampled
meanwhile (Sampler), the strict verdict (judge), the raw results saved as they come (save), and
every load child and sandbox killed on any exit (kill_everything).
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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import rss_kib  # noqa: E402
from bench._load import start_load  # noqa: E402
from bench._procs import Child, others_cpu, reap, wait_dead  # noqa: E402
from bench._report import fmt_ms, say  # noqa: E402
from bench._sandbox import Logs, host_by_role, sandbox_down, status, until  # noqa: E402
from hsb.ctl import sandbox  # noqa: E402
from hsb.ctl.gather import ask  # noqa: E402
from hsb.ops.limits import SPARE, terminals_fit  # noqa: E402
from hsb.wire.auth import load_secret  # noqa: E402

PHASES = ("steady", "failover", "switchover", "cp_restart")
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
