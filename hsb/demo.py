"""`scripts/demo`: the main job. A sandbox (hsbcpd, host A active, host B standby)
with 200 terminals under load; SIGKILL the active; restart it as standby; hot
standby again; a readable report of the failover timeline, the worst pause a
terminal saw and the strict delivery verdict. Then the same failover in
conventional mode (no standby sessions, the classic reconnect of [0002]) and
both side by side. Act three kills hsbcpd itself under load and starts it again
on its journal: every terminal resumes, nothing lost. Act four runs the `ledger`
service (SQLite in the demo's folder, or PostgreSQL with --dsn) under transfers,
SIGKILLs the active, and checks the books: balanced, every transfer applied
exactly once, every reply the one stored first.

Exit status 1 if any promise was broken (hsb.term.report: anything lost,
duplicated, unexpected, with the wrong data, never acknowledged, or a
fast-switch terminal disconnected).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from hsb.plural import many
from hsb.term.load import background_load


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _events(lines: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The lines of a log (`_log`) of the event `name`."""
    return [e for e in lines if e.get("event") == name]


def _log(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a daemon's log with a timestamp (read once per act: its checks filter them)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if isinstance(e, dict) and "timestamp" in e:
                out.append(e)
    return out


_status = sandbox.status
_until = sandbox.until
_actives = sandbox.actives
_sleep = asyncio.sleep  # (the acts' load before and after the fault: tests run the acts without it)


def _dead(d: Path) -> list[str]:
    """The daemons of the sandbox (its CP, or the CP's master, and each host as last started)
    that are not running: each act checks this before it stops them."""
    st = sandbox.load_state(d)
    procs = {"hsbcpd": st["cp"], **st["hosts"]}
    return [name for name, proc in procs.items() if not sandbox._alive(int(proc["pid"]))]


def _down(d: Path) -> None:
    """Stop the act's sandbox, however far it got (nothing to stop if it never started)."""
    try:
        sandbox.down(d)
    except sandbox.SandboxError:
        pass


def _between(events: list[dict[str, Any]], t0: float, t1: float) -> list[dict[str, Any]]:
    """The events logged from `t0` to `t1` (wall time): the log may hold earlier runs and the teardown."""
    return [e for e in events if t0 <= _ts(e["timestamp"]) <= t1]


# the lines of hsbcpd --supervise's master for a worker that ended (hsb.cp.supervise): a death, a
# death in a crash loop (started again after a wait), a start that failed
WORKER_ENDS = frozenset({"cp_worker_died", "cp_worker_crash_loop", "cp_worker_failed"})


def one_restart_failures(events: Iterable[dict[str, Any]], *, supervised: bool) -> list[str]:
    """The CP's log lines from one fault on (a kill, a cut), against one restart on its journal:
    one `journal_recovered` and one `cp_started`; under --supervise also one worker's end and one
    worker forked, and none of either without it. A new CP that died too (in its recovery, say)
    before it welcomed any terminal is a second restart that the terminals' counts cannot show
    (act three here, bench/cprestart.py and bench/cpfailover.py judge their fault by this)."""
    n = Counter(str(e.get("event")) for e in events)
    ends, forks = sum(n[k] for k in WORKER_ENDS), n["cp_worker_started"]
    want = 1 if supervised else 0
    if (ends, forks, n["cp_started"], n["journal_recovered"]) == (want, want, 1, 1):
        return []
    return [
        f"not one restart of the CP on its journal: {ends} worker deaths, {forks} workers forked, {n['cp_started']} starts,"
        f" {n['journal_recovered']} journal recoveries"
    ]


async def _background_load(
    cp: Any, *, terminals: int, rate: float, settle: float = 20, **kw: Any
) -> tuple[Any, asyncio.Event, list[tuple[str, float]]]:
    """One act's load, sending once this returns; `marks` takes the act's operations (the
    report's worst pause is measured from them)."""
    marks: list[tuple[str, float]] = []
    load, stop = await background_load(cp, terminals=terminals, rate=rate, duration=3600, settle=settle, marks=marks, **kw)
    return load, stop, marks


async def _stop_load(load: asyncio.Future[Any] | None) -> None:
    """An act's load that is still running when the act ends (a wait timed out, a daemon would not
    start): cancelled, and its terminals logged off, before the act's daemons are stopped, not
    left reconnecting through the next act."""
    if load is None or load.done():
        return
    load.cancel()
    await asyncio.wait([load])  # (its own end; a cancel of this act still ends this wait)
    if not load.cancelled():
        load.exception()  # (retrieved: the act's own error is the one said)


async def scenario(d: Path, *, conventional: bool, terminals: int, rate: float, say: Any) -> dict[str, Any]:
    mode = "conventional" if conventional else "fast switch"
    say(f"\n== {mode}: starting hsbcpd, host-a (active), host-b (standby), {terminals} terminals ==")
    load = None
    try:
        info = await sandbox.aup(d, terminals=terminals, service="journal", conventional=conventional, timeout=60)
        load, stop, marks = await _background_load(info["cp"]["terminal"], terminals=terminals, rate=rate, expect_disconnects=conventional)
        if not conventional:
            await _until(d, lambda s: s["cp"]["terminals"]["standby_sessions"] == terminals, 30, "standby sessions")
        await _until(d, lambda s: _actives(s) == ["host-a"], 30, "host-a the active")  # the host about to be killed
        say(f"   hot standby established; load running at {rate:.0f} msg/s")
        await _sleep(1.5)
        pid = sandbox.load_state(d)["hosts"]["host-a"]["pid"]
        t_kill = time.time()
        marks.append(("SIGKILL of the active", t_kill))
        os.kill(pid, signal.SIGKILL)
        say(f"   SIGKILL host-a (pid {pid})")
        await _until(d, lambda s: _actives(s) == ["host-b"], 30, "host-b active")
        say("   host-b is active; restarting host-a as standby")
        sandbox.start_host(d, "host-a", "standby")
        st = await _until(d, lambda s: s["established"], 60, "hot standby again")
        t_est = time.time()
        say("   hot standby established again, roles reversed")
        await _sleep(1.0)
        stop.set()
        rep = await load
        report = rep.to_dict()
        dead = _dead(d)
    finally:
        await _stop_load(load)
        _down(d)
    cp_log = _log(d / "cp.log")
    lost = _between(_events(cp_log, "active_host_link_lost"), t_kill, t_est)
    granted = _between(_events(cp_log, "switchover_granted"), t_kill, t_est)
    complete = _between(_events(cp_log, "switchover_complete"), t_kill, t_est)
    rec = st["cp"].get("last_switchover") or {}
    # the act's own checks: the failover it reports is the one it caused, and nothing else died
    checks = []
    if rec.get("kind") != "failover" or rec.get("to") != "host-b" or float(rec.get("at") or 0) < t_kill:
        checks.append(f"the CP's last switch is not this failover to host-b: { ({k: rec.get(k) for k in ('kind', 'from', 'to', 'at')}) }")
    # (sessions switched, reconnected or asked for anew): all one way
    got = (rec.get("switched"), (rec.get("classic") or 0) + (rec.get("requested") or 0))
    want = (0, terminals) if conventional else (terminals, 0)
    if got != want:
        checks.append(f"sessions switched / reconnected {got[0]} / {got[1]}, not {want[0]} / {want[1]}")
    if dead:
        checks.append(f"daemons not running at the end: {', '.join(dead)}")
    t_grant = _ts(granted[-1]["timestamp"]) if granted else None

    def rel(t: float | None) -> float | None:
        return None if t is None else round((t - t_kill) * 1000, 1)

    timeline = {
        "killed": 0.0,
        "loss_detected": rel(_ts(lost[-1]["timestamp"])) if lost else None,
        "switch_granted": rel(t_grant),
        "sessions_switched": rel(_ts(complete[-1]["timestamp"])) if complete else None,
        "first_redelivered_answered": rel(t_grant + rec["first_redelivered_reply_ms"] / 1000)
        if t_grant and rec.get("first_redelivered_reply_ms") is not None
        else None,
        "last_terminal_served": rel(t_grant + rec["all_served_ms"] / 1000) if t_grant and rec.get("all_served_ms") is not None else None,
        "standby_again": rel(t_est),
    }
    pause = rep.pause or {}
    return {
        "mode": mode,
        "terminals": terminals,
        "timeline_ms": timeline,
        "switched": rec.get("switched"),
        "reconnected": rec.get("classic"),
        "switch_ms": rec.get("switch_ms"),
        "worst_pause_ms": pause.get("worst_ms"),
        "p99_pause_ms": pause.get("p99_ms"),
        "all_served_ms": pause.get("all_served_ms"),
        "service_gap_ms": report["service_gap"]["ms"],
        "disconnected_terminals": len(report["per_terminal_disconnects"]),
        "verdict": {
            k: report[k] for k in ("sent", "acked", "replied", "lost", "duplicates", "unexpected", "bad_data", "unacked", "disconnects", "switched")
        },
        "ok": rep.ok and not checks,
        "failures": rep.failures + checks,
        "latency_ms": report["latency_ms"],
        "dir": str(d),
    }


def render(results: list[dict[str, Any]], not_completed: list[str] | None = None) -> str:
    rows = [
        ("killed (SIGKILL host-a)", lambda r: r["timeline_ms"]["killed"]),
        ("loss detected by the CP", lambda r: r["timeline_ms"]["loss_detected"]),
        ("switch granted", lambda r: r["timeline_ms"]["switch_granted"]),
        ("sessions switched", lambda r: r["timeline_ms"]["sessions_switched"]),
        ("first re-delivered msg answered", lambda r: r["timeline_ms"]["first_redelivered_answered"]),
        ("hot standby again (roles reversed)", lambda r: r["timeline_ms"]["standby_again"]),
    ]
    w = 36
    head = f"{'':<{w}}" + "".join(f"{r['mode']:>18}" for r in results)
    out = ["", "=" * len(head), "Failover report (times in ms after the kill)", "=" * len(head), head]

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:,.1f}" if isinstance(v, float) else f"{v:,}"

    def line(label: str, fn: Any) -> None:
        out.append(f"{label:<{w}}" + "".join(f"{fn(r):>18}" for r in results))

    for label, fn in rows:
        line(label, lambda r, fn=fn: fmt(fn(r)))
    out.append("")
    out.append("What the terminals saw (the headline):")
    line("worst pause, max (ms)", lambda r: fmt(r["worst_pause_ms"]))
    line("worst pause, p99 (ms)", lambda r: fmt(r["p99_pause_ms"]))
    line("every terminal served again (ms)", lambda r: fmt(r["all_served_ms"]))
    line("terminals disconnected", lambda r: f"{r['disconnected_terminals']:,} of {r['terminals']:,}")
    line("sessions switched / reconnected", lambda r: f"{r['switched']} / {r['reconnected']}")
    out.append("")
    for k in ("sent", "acked", "replied", "lost", "duplicates", "unexpected", "bad_data", "unacked"):
        line(k, lambda r, k=k: fmt(r["verdict"][k]))
    out.append(f"{'(aggregated service gap, ms) ¹':<{w}}" + "".join(f"{fmt(r['service_gap_ms']):>18}" for r in results))
    out.append("")
    out.append("¹ the longest stretch in which no terminal at all got a reply; it hides pauses that hit")
    out.append("  only some terminals, so the worst pause above is the figure to read.")
    if len(results) == 2 and results[0]["worst_pause_ms"] and results[1]["worst_pause_ms"] and all(r["ok"] for r in results):
        ratio = results[1]["worst_pause_ms"] / results[0]["worst_pause_ms"]
        out.append("")
        out.append(f"conventional / fast-switch worst pause: {ratio:.1f}x")
    conv = next((r for r in results if r["mode"] == "conventional"), None)
    if conv is not None:
        out.append(
            f"conventional mode disconnected {conv['disconnected_terminals']:,} of {conv['terminals']:,} terminals"
            + (" (every one)" if conv["disconnected_terminals"] == conv["terminals"] else "")
            + "; fast switch disconnected "
            + f"{next((r['disconnected_terminals'] for r in results if r['mode'] == 'fast switch'), '-')}."
        )
    out.append("")
    bad = [f"{r['mode']}: {f}" for r in results for f in r["failures"]] + list(not_completed or [])  # (an act that did not complete proves nothing)
    out.append("VERDICT: " + ("every acknowledged message answered exactly once, nothing unexpected" if not bad else "FAILED"))
    out += [f"  - {b}" for b in bad]
    return "\n".join(out)


async def cp_restart(d: Path, *, terminals: int, rate: float, say: Any) -> dict[str, Any]:
    """Act three: the CP itself is SIGKILLed under load, and its master (`hsbcpd --supervise`, as
    the systemd unit runs it) forks it again at once on its journal."""
    say(f"\n== the CP itself: starting hsbcpd --supervise, host-a (active), host-b (standby), {terminals} resuming terminals ==")
    load = None
    try:
        info = await sandbox.aup(d, terminals=terminals, service="journal", timeout=60, supervise=True)
        # "cp": only drops a new CP process explains pass (not sessions closed, nor a drop while
        # the same CP is there, nor one during a logon), as bench/cprestart.py judges the same fault
        load, stop, marks = await _background_load(info["cp"]["terminal"], terminals=terminals, rate=rate, expect_disconnects="cp")
        await _until(d, lambda s: s["cp"]["terminals"]["standby_sessions"] == terminals, 30, "standby sessions")
        before = _actives(await _until(d, lambda s: _actives(s) == ["host-a"], 30, "host-a the active"))
        say(f"   hot standby established; load running at {rate:.0f} msg/s")
        await _sleep(1.5)
        pid = sandbox.cp_process(sandbox.load_state(d))
        t_kill = time.time()
        marks.append(("SIGKILL of hsbcpd", t_kill))
        os.kill(pid, signal.SIGKILL)
        say(f"   SIGKILL the CP (pid {pid}); its master forks it again at once on its journal")

        def back(s: dict[str, Any]) -> bool:  # connected too: the active's sessions are kept before the terminals return
            t = (s.get("cp") or {}).get("terminals") or {}  # none while the CP is away
            return bool(s.get("established")) and t.get("active_sessions") == t.get("connected") == terminals

        st = await _until(d, back, 30, "every terminal served again")
        t_back = time.time()
        say("   every terminal resumed; hot standby established again")
        await _sleep(1.0)
        stop.set()
        rep = await load
        t_end = time.time()  # (the teardown's lines come after)
        dead = _dead(d)
    finally:
        await _stop_load(load)
        _down(d)
    cp_log = _log(d / "cp.log")
    recovered = _between(_events(cp_log, "journal_recovered"), t_kill, t_back)
    rec = recovered[-1] if recovered else {}
    started = [_ts(e["timestamp"]) for e in _between(_events(cp_log, "cp_started"), t_kill, t_back)]
    pause = rep.pause or {}
    report = rep.to_dict()
    resumed = len(report["per_terminal_disconnects"])  # terminals (not events) cut off and back
    # (every line from the kill to the act's end: a second death after t_back counts too)
    checks = one_restart_failures(_between(cp_log, t_kill, t_end), supervised=True)
    if resumed != terminals:
        checks.append(f"{resumed} of {terminals} terminals were cut off and resumed (the CP's crash cuts off every one)")
    if report["cp_reconnects"] > terminals:
        checks.append(f"{report['cp_reconnects']} changes of CP process seen by {terminals} terminals: more than the one crash explains")
    if _actives(st) != before:
        checks.append(f"the active changed across the CP's restart: {before} before, {_actives(st)} after")
    if dead:
        checks.append(f"daemons not running at the end: {', '.join(dead)}")
    return {
        "mode": "CP restart",
        "terminals": terminals,
        "recovered": {k: rec.get(k) for k in ("held", "replies_kept", "terminals", "epoch", "active", "ms")},
        "active_after": _actives(st),
        "worst_pause_ms": pause.get("worst_ms"),
        "p99_pause_ms": pause.get("p99_ms"),
        "all_served_ms": pause.get("all_served_ms"),
        "listening_ms": round((started[0] - t_kill) * 1000) if started else None,
        "active_before": before,
        "resumed": resumed,
        "verdict": {k: report[k] for k in ("sent", "acked", "replied", "lost", "duplicates", "unexpected", "bad_data", "unacked")},
        "ok": rep.ok and not checks,
        "failures": rep.failures + checks,
        "dir": str(d),
    }


def render_cp(r: dict[str, Any]) -> str:
    rec = r["recovered"]
    held = many(rec.get("held"), "held message")
    replies = many(rec.get("replies_kept"), "unconfirmed reply", "unconfirmed replies")
    acked = many(rec.get("terminals"), "terminal's acknowledged id", "terminals' acknowledged ids")
    out = [
        "",
        "Act three: the CP itself SIGKILLed under load, forked again at once by its master (hsbcpd --supervise)",
        f"  listening again {r['listening_ms']} ms after the kill",
        f"  journal recovered in {rec.get('ms')} ms: {held}, {replies}, {acked}, epoch {rec.get('epoch')}, active {rec.get('active')}",
        f"  terminals resumed: {r['resumed']:,} of {r['terminals']:,} (reconnected and resumed: nothing resent twice)",
        f"  active afterwards: {', '.join(r['active_after'])}"
        + (" (the same host, no operator action)" if r["active_after"] == r["active_before"] else f" (before: {', '.join(r['active_before'])})"),
        f"  worst pause {r['worst_pause_ms']} ms (p99 {r['p99_pause_ms']} ms); "
        + (
            f"every terminal with something in flight served again after {r['all_served_ms']} ms"
            if r["all_served_ms"] is not None
            else "no message was in flight at the kill itself (the pause is of those sent just after it)"
        ),
        "  " + ", ".join(f"{k} {v:,}" for k, v in r["verdict"].items()),
        "  VERDICT: "
        + ("every acknowledged message answered exactly once across the CP's own crash" if r["ok"] else "FAILED: " + "; ".join(r["failures"])),
    ]
    return "\n".join(out)


async def ledger_act(d: Path, *, terminals: int, rate: float, dsn: str | None, say: Any) -> dict[str, Any]:
    """Act four: money. The ledger service under transfers; SIGKILL the active; the books."""
    from hsb.term.workload import LedgerWorkload

    where = "PostgreSQL" if dsn else "SQLite in the demo's folder"
    say(f"\n== the ledger: {terminals} terminals sending transfers, the books in {where} ==")
    w = LedgerWorkload(accounts=50)
    load = None
    try:
        info = await sandbox.aup(d, terminals=terminals, service="ledger", dsn=dsn, timeout=60)
        load, stop, marks = await _background_load(
            info["cp"]["terminal"], terminals=terminals, rate=rate, settle=30, workload=w, books=info["ledger"]
        )
        await _until(d, lambda s: s["cp"]["terminals"]["standby_sessions"] == terminals, 30, "standby sessions")
        await _until(d, lambda s: _actives(s) == ["host-a"], 30, "host-a the active")  # the host about to be killed
        say(f"   {w.n} accounts opened and funded; transfers at {rate:.0f} msg/s")
        await _sleep(1.5)
        pid = sandbox.load_state(d)["hosts"]["host-a"]["pid"]
        marks.append(("SIGKILL of the active", time.time()))
        os.kill(pid, signal.SIGKILL)
        say(f"   SIGKILL host-a (pid {pid}) with transfers in flight")
        st = await _until(d, lambda s: _actives(s) == ["host-b"], 30, "host-b active")
        await _sleep(1.5)
        stop.set()
        rep = await load
        dead = [n for n in _dead(d) if n != "host-a"]  # (host-a was killed and stays down in this act)
    finally:
        await _stop_load(load)
        _down(d)
    checks = [f"daemons not running at the end: {', '.join(dead)}"] if dead else []
    if not rep.books:  # (the load checks them only if given the database: else "the books balance" unchecked)
        checks.append("the books were not checked: the load was given no ledger database to check")
    pause = rep.pause or {}
    return {
        "mode": "ledger",
        "database": "postgresql" if dsn else "sqlite",
        "terminals": terminals,
        "active_after": _actives(st),
        "worst_pause_ms": pause.get("worst_ms"),
        "books": rep.books,
        "ok": rep.ok and not checks,
        "failures": rep.failures + checks,
    }


def render_ledger(r: dict[str, Any]) -> str:
    b = r["books"] or {}
    out = [
        "",
        f"Act four: the ledger service on {r['database']}, the active SIGKILLed under transfers",
        f"  active afterwards: {', '.join(r['active_after'])}; worst pause {r['worst_pause_ms']} ms",
    ]
    if "error" in b:
        out.append(f"  books: could not be checked: {b['error']}")
    elif b:
        out.append(
            f"  books: {b['accounts']} accounts hold {b['total']:,} of {b['expected_total']:,} deposited;"
            f" {b['transfers_ok']:,} transfers told ok, {b['transfers_refused']:,} refused, {b['entries']:,} entries"
        )
    out.append(
        "  VERDICT: "
        + ("the books balance: every transfer applied exactly once, every reply the stored one" if r["ok"] else "FAILED: " + "; ".join(r["failures"]))
    )
    return "\n".join(out)


async def amain(args: argparse.Namespace) -> int:
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="hsb-demo-"))
    say = (lambda s: print(s, file=sys.stderr)) if args.json else print
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGHUP):  # as Ctrl-C: each act's daemons are stopped on the way out
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    broken: list[str] = []  # acts that could not run to their verdict

    async def act(name: str, run: Any) -> Any:
        try:
            return await run
        except (TimeoutError, sandbox.SandboxError, OSError) as exc:
            broken.append(f"{name}: did not complete: {type(exc).__name__}: {exc}")
            say(f"   {name} did not complete: {exc}")
            return None

    results = []
    for conventional in (False, True) if not args.fast_only else (False,):
        name = "conventional" if conventional else "fast switch"
        d = base / ("conventional" if conventional else "fast")
        r = await act(name, scenario(d, conventional=conventional, terminals=args.terminals, rate=args.rate, say=say))
        if r is not None:
            results.append(r)
    cp = None if args.no_cp_restart else await act("CP restart", cp_restart(base / "cp-restart", terminals=args.terminals, rate=args.rate, say=say))
    money = (
        None
        if args.no_ledger
        else await act("ledger", ledger_act(base / "ledger", terminals=args.terminals, rate=min(args.rate, 400.0), dsn=args.dsn, say=say))
    )
    ok = not broken and all(r["ok"] for r in results) and (cp is None or cp["ok"]) and (money is None or money["ok"])
    if args.json:
        print(json.dumps({"ok": ok, "results": results, "cp_restart": cp, "ledger": money, "not_completed": broken}, indent=2))
    else:
        if results:
            print(render(results, [b for b in broken if b.startswith(("fast switch", "conventional"))]))
        if cp is not None:
            print(render_cp(cp))
        if money is not None:
            print(render_ledger(money))
        if broken:
            print("\nACTS THAT DID NOT COMPLETE (FAILED):")
            print("\n".join(f"  - {b}" for b in broken))
        if args.dir or not ok:
            print(f"logs and configs: {base}")
    if not args.dir and ok:
        shutil.rmtree(base, ignore_errors=True)  # nothing to look at: leave no folder behind
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--terminals", type=int, default=200)
    p.add_argument("--rate", type=float, default=1000.0, help="messages per second over all terminals")
    p.add_argument("--dir", help="keep configs and logs here (default: a new temp folder)")
    p.add_argument("--fast-only", action="store_true", help="skip the conventional-mode comparison")
    p.add_argument("--no-cp-restart", action="store_true", help="skip act three (hsbcpd killed and restarted)")
    p.add_argument("--no-ledger", action="store_true", help="skip act four (the ledger service and its books)")
    p.add_argument("--dsn", help="act four on this PostgreSQL database instead of SQLite in the demo's folder")
    args = p.parse_args(argv)
    from hsb import logs, loop

    logs.setup("warning")
    try:
        return loop.run(amain(args))
    except (asyncio.CancelledError, KeyboardInterrupt):  # a signal: each act's daemons were stopped on the way out
        print("demo stopped before its end (a signal); FAILED", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
