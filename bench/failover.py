"""Failover benchmark: kill the active host under load, fast switch beside conventional.

    .venv/bin/python bench/failover.py [--quick] [--sizes 100,1000,10000] [--reps 100=5,1000=4,10000=3]
                                       [--rate 2000] [--json FILE] [--no-write] [--render FILE]

For each N (terminals) and each repetition, the two modes are interleaved: a fresh sandbox on
127.0.0.1 in fast-switch mode (hsbcpd, host-a active, host-b standby, real processes, default
timing: heartbeat 100 ms, peer timeout 500 ms, CP host timeout 500 ms, echo service), then one in
conventional mode (`fast_switch = false`, the classic reconnect of [0002]). In each sandbox the
active gets SIGKILL and (after the old active was restarted as standby and hot standby is
established again) the new active gets SIGSTOP, in alternating order per repetition:

1. a load child (`bench/_load.py load`, its own process, the strict verdict of hsb.term)
   logs all N terminals on and sends `--rate` messages per second in total, each terminal on its
   own schedule (window 8); the run waits until every terminal has its active session and (fast
   switch) its standby session at the CP;
2. after `--steady` seconds the child marks the operation and the active host gets the signal;
3. the run waits until every terminal is back (its `switched` notice, or its session open again
   after reconnecting), keeps the load on `--after` seconds, ends sending, lets outstanding
   replies settle and reads the load report;
4. a SIGSTOPped host gets SIGCONT (it must find itself fenced and exit); the old active is
   restarted as standby and the run waits for hot standby again (roles reversed).

The headline, per failover, is what the terminals saw (hsb.term.timeline): the **worst pause**,
the reply latency of every message in flight at the kill or sent in the second after it (max
and p99 over those messages), and **every terminal served again**, kill → the last reply to a
message the failover kept waiting. Beside it, on the wall clock from the daemons' JSON logs:
detection (the CP's `active_host_link_lost` / `_silent`, the standby's `switchover_requested`),
the grant, the CP's own `switch_ms`. The verdict is strict: lost, duplicated, unexpected, wrong or
unacknowledged replies and (fast switch) any disconnect fail the run. The raw results go to
`bench/results/failover.json`; `--render` rebuilds the tables from such a file.
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
    fmt_ms,
    host_by_role,
    latencies,
    machine,
    machine_line,
    median,
    raw_name,
    run_or_render,
    sandbox,
    sandbox_down,
    say,
    start_load,
    status,
    table,
    until,
    wait_dead,
    wait_quiet,
    write_section,
)

COMMAND = ".venv/bin/python bench/failover.py"
RESULTS = Path(__file__).resolve().parent / "results" / "failover.json"
SECTION = "Failover: fast switch beside conventional (`bench/failover.py`)"
DEFAULT_REPS = {100: 5, 1000: 4, 10000: 3}
QUICK_REPS = {100: 1, 1000: 1}
GOAL_N = 10_000  # the goals (SIGKILL ≤ 100 ms, SIGSTOP ≤ 700 ms) are set at this many terminals


def rel_ms(t: float | None, t0: float) -> float | None:
    return None if t is None else round((t - t0) * 1000.0, 2)


async def wait_sessions(d: Path, n: int, standby: bool, timeout: float) -> None:
    def ok(st: dict[str, Any]) -> bool:
        t = st["cp"].get("terminals") or {}
        return t.get("active_sessions") == n and (not standby or t.get("standby_sessions") == n) and st["established"]

    await until(lambda: status(d), ok, timeout, f"{n} active{' and standby' if standby else ''} sessions", interval=0.2)


async def wait_log(tail: Any, name: str, after: float, timeout: float, **match: Any) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        e = tail.find(name, after=after, **match)
        if e is not None or time.monotonic() > deadline:
            return e
        await asyncio.sleep(0.02)


async def one_failover(d: Path, n: int, mode: str, sig: str, rate: float, a: argparse.Namespace, rep: int) -> dict[str, Any]:
    logs = Logs(d)
    st = await status(d)
    active, standby = host_by_role(st, "active"), host_by_role(st, "standby")
    if not st["established"] or active is None or standby is None:
        raise RuntimeError(f"not established before the failover: {[(h['name'], h.get('role'), h.get('state')) for h in st['hosts']]}")
    load = await start_load(
        sandbox.load_state(d)["cp"]["terminal"],
        n,
        rate,
        d / f"load-{mode}-{sig}-{rep}.log",
        settle=a.settle,
        expect_disconnects=(mode == "conventional"),
    )
    res: dict[str, Any] = {"n": n, "mode": mode, "signal": sig, "rep": rep, "from": active, "to": standby}
    try:
        ev = await load.read(timeout=180)
        assert ev["ev"] == "sending", ev
        await wait_sessions(d, n, mode == "fast", timeout=120)
        res["others_cpu"] = round(await wait_quiet(a.max_other, a.quiet_wait), 2) if a.quiet_wait > 0 else None
        await asyncio.sleep(a.steady)
        logs.mark()
        pid = sandbox.load_state(d)["hosts"][active]["pid"]
        await load.send({"cmd": "arm"})
        armed = await load.read(timeout=30)  # the child counts terminals coming back from here on
        assert armed["ev"] == "armed", armed
        t_kill = time.time()
        os.kill(pid, signal.SIGKILL if sig == "KILL" else signal.SIGSTOP)
        await load.send({"cmd": "mark", "label": f"SIG{sig}", "t": t_kill})
        res["t_kill"] = t_kill
        # the switch: the CP logs it when every session has been moved
        done = await wait_log(logs.cp, "switchover_complete", t_kill, timeout=a.switch_timeout)
        if done is None:
            st = await status(d)
            res.update(failed=True, lost=0, duplicates=0, disconnected_terminals=0, worst_ms=None, ok=False)
            raise NotReestablished(
                f"NO FAILOVER: no switchover within {a.switch_timeout:.0f} s of SIG{sig} to {active} "
                f"({[(h['name'], h.get('role'), h.get('state'), h.get('last_error')) for h in st['hosts']]})",
                res,
            )
        try:
            while (await load.read(timeout=a.recover_timeout))["ev"] != "recovered":  # every terminal back
                pass
        except TimeoutError:
            say(f"   (not every terminal was back within {a.recover_timeout:.0f} s)")
        await asyncio.sleep(a.after)
        await load.send({"cmd": "stop"})
        rep_ev = await load.read(timeout=a.settle + 60)
        while rep_ev.get("ev") != "report":
            rep_ev = await load.read(timeout=a.settle + 60)
        report = rep_ev["report"]
    finally:
        await load.stop()
    granted = logs.cp.find("switchover_granted", after=t_kill)
    # the CP's own detection, if it came before it granted (a standby's request can be granted first)
    lost = [
        e
        for e in (logs.cp.find("active_host_link_lost", after=t_kill), logs.cp.find("active_host_link_silent", after=t_kill))
        if e is not None and (granted is None or e["_t"] <= granted["_t"] + 0.001)
    ]
    cp_lost = min(lost, key=lambda e: e["_t"]) if lost else None
    notices = logs.cp.find("switch_notices_sent", after=t_kill)
    asked = logs[standby].find("switchover_requested", after=t_kill)
    x = report["extras"]
    op = (report.get("operations") or [{}])[0]
    t_grant = granted["_t"] if granted else None
    res.update(
        detect_cp_ms=rel_ms(cp_lost["_t"], t_kill) if cp_lost else None,
        detect_cp_event=cp_lost["event"] if cp_lost else None,
        asked_ms=rel_ms(asked["_t"], t_kill) if asked else None,
        asked_reason=asked.get("reason") if asked else None,
        grant_ms=rel_ms(t_grant, t_kill),
        switch_ms=done.get("switch_ms"),
        notices_sent_ms=notices.get("notices_sent_ms") if notices else None,
        switched=done.get("switched"),
        classic=done.get("classic"),
        last_switched_ms=rel_ms(x.get("last_back"), t_grant) if t_grant and mode == "fast" else None,
        all_back_ms=rel_ms(x.get("last_back"), t_kill),
        back=x.get("back"),
        worst_ms=op.get("worst_ms"),
        p99_ms=op.get("p99_ms"),
        all_served_ms=op.get("all_served_ms"),
        unanswered=op.get("unanswered"),
        window_messages=op.get("messages"),
        terminals_in_flight=op.get("terminals_in_flight"),
        steady_p99_ms=op.get("steady_p99_ms"),
        gap_ms=report["service_gap"]["ms"],
        latency_ms=report["latency_ms"],
        sent=report["sent"],
        acked=report["acked"],
        replied=report["replied"],
        lost=report["lost"],
        duplicates=report["duplicates"],
        unexpected=report["unexpected"],
        unacked=report["unacked"],
        bad_data=report["bad_data"],
        disconnects=report["disconnects"],
        disconnected_terminals=len(report.get("per_terminal_disconnects") or {}),
        switched_notices=x.get("switched_after"),
        ok=report["ok"],
        failures=report["failures"],
    )
    # bring the pair back: the old active restarts as standby (a stopped one must see it was fenced)
    if sig == "STOP":
        os.kill(pid, signal.SIGCONT)
        exited = await wait_dead(pid, 10.0)
        ended = await wait_log(logs[active], "host_exit", t_kill, 5.0)
        fenced = logs[active].find("fenced", after=t_kill)
        res["old_active_fenced_and_exited"] = bool(exited and fenced and ended and ended.get("code") == 75)
    if not await wait_dead(pid, 0.01):
        os.kill(pid, signal.SIGKILL)
        await wait_dead(pid, 5.0)
    t_restart = time.time()
    sandbox.start_host(d, active, "standby")
    try:
        await until(
            lambda: status(d), lambda s: s["established"] and host_by_role(s, "standby") == active, a.reestablish_timeout, "hot standby again", 0.1
        )
    except TimeoutError:
        st = await status(d)
        res["standby_again_s"] = None
        raise NotReestablished(
            f"{active} restarted as standby after SIG{sig} #{rep} did not re-establish within {a.reestablish_timeout:.0f} s "
            f"({[(h['name'], h.get('role'), h.get('state'), (h.get('peer_link') or {}).get('up')) for h in st['hosts']]})",
            res,
        ) from None
    res["standby_again_s"] = round(time.time() - t_restart, 2)
    return res


def brief(r: dict[str, Any]) -> str:
    return (
        f"   {r['mode']:<12} N={r['n']:<6} SIG{r['signal']:<4} #{r['rep']}: worst pause {fmt_ms(r['worst_ms'], 1)} ms"
        f" (p99 {fmt_ms(r['p99_ms'], 1)}), all served {fmt_ms(r['all_served_ms'], 1)} ms; detect {fmt_ms(r['detect_cp_ms'], 1)} ms,"
        f" grant {fmt_ms(r['grant_ms'], 1)} ms, switch {fmt_ms(r['switch_ms'], 1)} ms, all back {fmt_ms(r['all_back_ms'], 0)} ms;"
        f" {'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['failures'])}; disconnected {r['disconnected_terminals']};"
        f" others' CPU {r.get('others_cpu')}"
    )


class NotReestablished(RuntimeError):
    """The pair did not come back (no switchover, or no hot standby again): args = (text, partial result)."""


async def run_cell(base: Path, n: int, mode: str, rep: int, a: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    """One repetition of one mode: a fresh sandbox, a SIGKILL and a SIGSTOP failover (order alternating per rep)."""
    sigs = ["KILL", "STOP"] if rep % 2 else ["STOP", "KILL"]
    d = base / f"{mode}-{n}-{rep}"
    say(f"== {mode}, {n} terminals, repetition {rep}: sandbox in {d}")
    try:
        await sandbox.aup(d, terminals=n, service="echo", conventional=(mode == "conventional"), timeout=180)
        for sig in sigs:
            try:
                r = await one_failover(d, n, mode, sig, a.rate, a, rep)
            except NotReestablished as exc:
                say(f"   !! {exc}; logs kept in {d}")
                a.incidents.append({"n": n, "mode": mode, "signal": sig, "rep": rep, "dir": str(d), "what": str(exc)})
                out.append(exc.args[1])
                break
            out.append(r)
            say(brief(r))
            save(a, out)
    finally:
        sandbox_down(d)


def save(a: argparse.Namespace, out: list[dict[str, Any]]) -> None:
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": a.machine, "command": a.command, "rate": a.rate, "results": out, "incidents": a.incidents}, indent=1))


def agg(rs: list[dict[str, Any]], key: str, fn: Any) -> float | None:
    """`fn` over the runs' reply latencies (`key`); a run with a message never answered counts as
    infinite, never as a run without the figure."""
    vals = latencies(rs, key)
    return fn(vals) if vals else None


def detected(r: dict[str, Any]) -> float | None:
    """Kill → the first sign of the loss: the CP's lost/silent event or the standby's switchover request."""
    v = [x for x in (r.get("detect_cp_ms"), r.get("asked_ms")) if x is not None]
    return min(v) if v else None


def worst(rs: list[dict[str, Any]], key: str) -> float | None:
    """The worst run's figure; a failed run (no failover) or one with a message never answered
    (hsb.term.timeline gives no figure then) counts as infinite, a run without the figure for
    another reason (nothing was in flight at the kill, say) does not count."""
    vals = [float("inf") for r in rs if r.get("failed")] + latencies([r for r in rs if not r.get("failed")], key)
    return max(vals) if vals else None


def render(results: list[dict[str, Any]], a: argparse.Namespace) -> str:
    for r in results:
        r["detect_ms"] = detected(r)
    m = a.machine
    sizes = sorted({r["n"] for r in results})

    def f(v: float | None, digits: int = 1) -> str:
        return "∞ (no failover, or a message never answered)" if v == float("inf") else fmt_ms(v, digits)

    lines = [
        f"Command: {a.command}" if "`" in a.command else f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds these tables).",
        "",
        f"Machine: {machine_line(m)}. **Everything shares the 2 cores**: hsbcpd, both hsbd, the load generator"
        " (one process, all N terminals) and the benchmark itself.",
        f"Load: {a.rate:,.0f} messages/s in total, each terminal on its own schedule (window 8), echo service,"
        " default timing (heartbeat 100 ms, peer timeout 500 ms, CP host timeout 500 ms, ring poll 50 ms).",
        "Per N and repetition the two modes are interleaved (fresh sandbox each); in each, one SIGKILL and one"
        " SIGSTOP of the active. **Worst pause**: the reply latency of every message in flight at the kill or sent"
        " in the second after it, max and p99 over those messages (hsb.term.timeline). **All served**: kill → the"
        " moment the last terminal that had a message in flight at the kill got its reply. Figures are medians over the runs, with the worst run"
        " in brackets; every run had the strict verdict (lost, duplicated, unexpected, wrong or unacknowledged"
        " replies, and in fast switch any disconnect, fail it).",
        "",
    ]
    rows = []
    for n in sizes:
        for sig in ("KILL", "STOP"):
            rs = [r for r in results if r["n"] == n and r["signal"] == sig and r["mode"] == "fast"]
            if not rs:
                continue

            def mm(key: str, digits: int = 1) -> str:
                return f"{fmt_ms(agg(rs, key, median), digits)} ({f(worst(rs, key), digits)})"

            nf = sum(1 for r in rs if not r.get("ok"))
            rows.append(
                [
                    f"{n:,}",
                    f"SIG{sig}",
                    str(len(rs)),
                    mm("worst_ms"),
                    mm("p99_ms"),
                    mm("all_served_ms"),
                    mm("detect_ms"),
                    mm("grant_ms"),
                    mm("switch_ms"),
                    mm("notices_sent_ms"),
                    str(sum(r["lost"] for r in rs)),
                    str(sum(r.get("unexpected", 0) for r in rs)),
                    str(max(r["disconnected_terminals"] for r in rs)),
                    "all OK" if not nf else f"**{nf} FAILED**",
                ]
            )
    lines.append("**Fast switch** (standby sessions pre-opened at the CP), ms from the kill:")
    lines.append("")
    lines.append(
        table(
            [
                "N",
                "signal",
                "runs",
                "worst pause",
                "p99 pause",
                "all served",
                "detected",
                "granted",
                "CP switch_ms",
                "CP notices written",
                "lost",
                "unexpected",
                "disconnected (max/run)",
                "verdict",
            ],
            rows,
            "rlrrrrrrrrrrrl",
        )
    )
    crow = []
    for n in sizes:
        for sig in ("KILL", "STOP"):
            fr = [r for r in results if r["n"] == n and r["signal"] == sig and r["mode"] == "fast"]
            cr = [r for r in results if r["n"] == n and r["signal"] == sig and r["mode"] == "conventional"]
            if not fr or not cr:
                continue
            fw, cw = agg(fr, "worst_ms", median), agg(cr, "worst_ms", median)
            fa, ca = agg(fr, "all_served_ms", median), agg(cr, "all_served_ms", median)

            def ratio(x: float | None, y: float | None) -> str:
                return "–" if not x or y is None or float("inf") in (x, y) else f"{y / x:.1f}×"

            crow.append(
                [
                    f"{n:,}",
                    f"SIG{sig}",
                    f"{len(fr)} / {len(cr)}",
                    f"{fmt_ms(fw, 1)} / {fmt_ms(cw, 1)}",
                    ratio(fw, cw),
                    f"{fmt_ms(fa, 1)} / {fmt_ms(ca, 1)}",
                    ratio(fa, ca),
                    f"{max(r['disconnected_terminals'] for r in fr)} / {max(r['disconnected_terminals'] for r in cr)} of {n:,}",
                    f"{sum(r['lost'] for r in fr)} / {sum(r['lost'] for r in cr)}",
                    "all OK" if all(r.get("ok") for r in fr + cr) else "**FAILED**",
                ]
            )
    if crow:
        lines += [
            "",
            "**Fast switch / conventional** (interleaved, medians; conventional = `fast_switch = false`:"
            " the CP disconnects **every** terminal and each logs on again through the new active):",
            "",
        ]
        lines.append(
            table(
                [
                    "N",
                    "signal",
                    "runs",
                    "worst pause (ms)",
                    "ratio",
                    "all served (ms)",
                    "ratio",
                    "terminals disconnected (max/run)",
                    "lost",
                    "verdict",
                ],
                crow,
                "rlrrrrrrrl",
            )
        )
    g = []
    for sig, goal in (("KILL", 100.0), ("STOP", 700.0)):
        rs = [r for r in results if r["n"] == GOAL_N and r["signal"] == sig and r["mode"] == "fast"]
        if not rs:
            g.append(f"- SIG{sig}: the goal (≤ {goal:.0f} ms at {GOAL_N:,} terminals) was not measured in this run.")
            continue
        wmax, pmax = worst(rs, "worst_ms"), worst(rs, "p99_ms")
        failed = sum(1 for r in rs if not r.get("ok"))
        met = wmax is not None and wmax <= goal and not failed
        g.append(
            f"- SIG{sig} at {GOAL_N:,} terminals: worst pause {f(wmax)} ms, p99 {f(pmax)} ms in the worst of {len(rs)} runs"
            + (f", {failed} of them failed the verdict" if failed else "")
            + f" (goal ≤ {goal:.0f} ms: **{'met' if met else 'missed'}**"
            + ("" if met or failed or pmax is None or pmax > goal else "; the p99 meets it")
            + ")."
        )
    fast = [r for r in results if r["mode"] == "fast"]
    if fast:
        lost = sum(r["lost"] for r in fast)
        unx = sum(r.get("unexpected", 0) for r in fast)
        disc = sum(r["disconnected_terminals"] for r in fast)
        dup = sum(r["duplicates"] for r in fast)
        other = sum((r.get("unacked") or 0) + (r.get("bad_data") or 0) for r in fast)
        clean = lost == 0 and dup == 0 and unx == 0 and disc == 0 and other == 0 and all(r.get("ok") for r in fast)
        g.append(
            f"- Fast switch, all {len(fast)} failovers: {lost} lost, {dup} duplicated, {unx} unexpected, {other} unacknowledged or wrong, "
            f"{disc} terminals disconnected (goal 0 and every verdict OK: **{'met' if clean else 'missed'}**)."
        )
        stopped = [r for r in results if r["signal"] == "STOP"]
        ok = sum(1 for r in stopped if r.get("old_active_fenced_and_exited"))
        g.append(f"- After each SIGSTOP + SIGCONT the old active found itself fenced and exited: {ok} of {len(stopped)}.")
    oc = [r["others_cpu"] for r in results if r.get("others_cpu") is not None]
    if oc:
        g.append(f"- Other processes on the machine (not this benchmark) just before each kill: median {median(oc):.2f}, max {max(oc):.2f} cores.")
    if g:
        lines += ["", "Goals:", ""] + g
    inc = getattr(a, "incidents", None) or []
    if inc:
        lines += ["", f"Incidents ({len(inc)}):", ""]
        lines += [f"- {x['mode']} N={x['n']:,} SIG{x['signal']} #{x['rep']}: {x['what']}" for x in inc]
    return "\n".join(lines)


async def amain(a: argparse.Namespace) -> int:
    base = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="hsb-bench-failover-"))
    base.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    say(f"logs and sandboxes under {base}")
    t0 = time.monotonic()
    try:
        for n in a.sizes:
            for rep in range(1, a.reps.get(n, 3) + 1):
                for mode in a.modes:  # interleaved: fast, conventional, fast, conventional, ...
                    await run_cell(base, n, mode, rep, a, results)
    finally:
        say(f"total {time.monotonic() - t0:.0f} s")
    text = render(results, a)
    print()
    print(text)
    say(f"raw results: {a.json}")
    if a.write and results:
        write_section(SECTION, text)
        say("written to BENCHMARKS.md")
    bad = any(not r.get("ok") for r in results)
    return 1 if bad else 0


def parse_reps(text: str) -> dict[int, int]:
    out = {}
    for part in text.split(","):
        if part.strip():
            k, _, v = part.partition("=")
            out[int(k)] = int(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/failover.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 100 and 1,000 terminals, 2 failovers of each kind")
    p.add_argument("--sizes", default=None, help="comma-separated N (default 100,1000,10000)")
    p.add_argument("--reps", default=None, help="repetitions per N (each: one SIGKILL and one SIGSTOP per mode), e.g. 100=5,1000=4,10000=3")
    p.add_argument("--modes", default="fast,conventional")
    p.add_argument("--rate", type=float, default=2000.0, help="messages per second over all terminals")
    p.add_argument("--steady", type=float, default=1.5, help="seconds of steady load before the kill")
    p.add_argument("--after", type=float, default=1.0, help="seconds of load after every terminal is back")
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--recover-timeout", type=float, default=60.0)
    p.add_argument("--reestablish-timeout", type=float, default=60.0)
    p.add_argument("--switch-timeout", type=float, default=20.0, help="a failover with no switchover by then counts as failed")
    p.add_argument("--max-other", type=float, default=0.3, help="before each kill, wait until other processes use less than this many cores")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="... but at most this long (0: do not wait)")
    p.add_argument("--dir", help="sandboxes and logs here (default: a new temp folder)")
    p.add_argument("--json", default=str(RESULTS), help="write the raw results to this file (default: %(default)s)")
    p.add_argument("--render", metavar="JSON", help="do not measure: render the results saved with --json")
    p.add_argument("--no-write", dest="write", action="store_false", help="do not update BENCHMARKS.md")
    p.add_argument("--write", dest="force_write", action="store_true", help="update BENCHMARKS.md even with --quick")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    if a.quick:
        a.write = a.write and a.force_write
        a.sizes = a.sizes or "100,1000"
        a.reps = a.reps or ",".join(f"{k}={v}" for k, v in QUICK_REPS.items())
    a.sizes = [int(x) for x in (a.sizes or "100,1000,10000").split(",") if x]
    a.reps = {**DEFAULT_REPS, **(parse_reps(a.reps) if a.reps else {})}
    a.modes = [m for m in a.modes.split(",") if m]
    a.machine = machine()
    a.incidents = []

    def rerender(saved: dict[str, Any]) -> str:
        a.rate = saved.get("rate", a.rate)
        a.incidents = saved.get("incidents", [])
        return render(saved["results"], a)

    return run_or_render(a, SECTION, rerender, amain)


if __name__ == "__main__":
    sys.exit(main())
