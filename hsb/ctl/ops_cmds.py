"""`hsbctl stop | pause | resume | history`: operator intents and the record of every switch,
over the admin links only (the daemons act; hsbctl asks and reports)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime
from typing import Any

import click

from hsb.ctl.gather import ask, machine_state, serving_cp, status_all, unasked, unheard, untold
from hsb.ctl.refused import refused_line
from hsb.ctl.status import down_line
from hsb.ctl.target import Target
from hsb.ctl.verdict import cp_named_twice, superseded_cps
from hsb.wire.auth import load_secret


class Bounded(click.ParamType):  # type: ignore[type-arg, unused-ignore]  # (generic from click 8.5)
    """A number within bounds, NaN refused (click.FloatRange lets NaN through: a wait that never ends)."""

    name = "number"

    def __init__(self, lo: float, hi: float, lo_open: bool, what: str) -> None:
        self.lo, self.hi, self.lo_open, self.what = lo, hi, lo_open, what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of {self.what}", param, ctx)
        if not ((self.lo < v) if self.lo_open else (self.lo <= v)) or not v <= self.hi:
            self.fail(f"{value!r}: give {self.what} {'above' if self.lo_open else 'from'} {self.lo:g} up to {self.hi:g}", param, ctx)
        return v


SECONDS = Bounded(0, 86_400, True, "seconds")
# what a request taken and not answered in time leaves known (gather.untold)
NOT_KNOWN = ": whether {} is not known; see 'hsbctl status'"


def say_unknown(unknown: list[dict[str, Any]]) -> int | None:
    """One line per daemon that could not be asked or did not answer, and exit status 3; None:
    every daemon answered."""
    for u in unknown:
        click.echo(f"error: {unasked(u['name'], u)}", err=True)
    return 3 if unknown else None


def say_down(absent: list[dict[str, Any]]) -> None:
    """One line per host that could not be asked and holds no role at the CP (down: status
    counts it so), before an error that no host could do what was asked."""
    for u in absent:
        click.echo(down_line(u), err=True)


def _gone(why: str) -> bool:
    """Why a daemon could not be asked says it is gone: nothing listens there any more (a host
    merely slow to answer, or one its machine cannot be reached at, is not known to have stopped)."""
    return why.startswith("connection refused")


async def _stop(t: Target, host: str | None, takeover: bool, timeout: float) -> int:
    assert t.secret_file is not None
    st = await status_all(t.cp, t.hosts, t.secret_file, cp_machines=t.cps)
    hosts = [h for h in st["hosts"] if h.get("reachable")]
    if host is not None:
        target = next((h for h in hosts if h.get("name") == host), None)
        if target is None:
            code = say_unknown(st.get("unknown") or [])
            say_down(st.get("absent") or [])
            click.echo(f"error: no reachable host named {host!r} (known: {', '.join(h['name'] for h in hosts) or 'none'})", err=True)
            return code or 1
    else:
        # the serving active first: one cut off from the CP (its lease lost) still says "active"
        actives = sorted((h for h in hosts if h.get("role") == "active"), key=lambda h: not h.get("serving", True))
        target = actives[0] if actives else None
        if target is None:
            code = say_unknown(st.get("unknown") or [])
            say_down(st.get("absent") or [])
            click.echo("error: no reachable active host to stop; name one with --host", err=True)
            return code or 1
    name = target["name"]
    ans = await ask(target["addr"], load_secret(t.secret_file), {"t": "stop", "takeover": takeover})
    if ans.get("unanswered"):  # (it may be stopping, or handing over first: not known)
        click.echo(f"error: {untold(name, ans, 'the stop request', NOT_KNOWN.format('it stops'))}", err=True)
        return 3
    if ans.get("reachable") is False:
        click.echo(f"error: {unasked(name, ans)}", err=True)
        return 3
    if not ans.get("ok"):
        click.echo(f"error: {ans.get('msg') or ans.get('error')}", err=True)
        return 1
    click.echo(ans["msg"])
    deadline = time.monotonic() + timeout
    stopped = False
    stopped_at = deadline
    while time.monotonic() < deadline:
        st = await status_all(t.cp, t.hosts, t.secret_file, timeout=1.0, cp_machines=t.cps)
        # gone: nothing listens at its admin address any more (one merely slow to answer, while
        # it hands over, say, has not stopped)
        was_stopped = stopped
        stopped = stopped or any(
            u.get("addr") == target["addr"] and _gone(str(u.get("error", ""))) for u in [*st.get("unknown", []), *st.get("absent", [])]
        )
        if stopped and not was_stopped:
            stopped_at = time.monotonic()
        if stopped:
            active = next((h["name"] for h in st["hosts"] if h.get("reachable") and h.get("role") == "active" and h.get("serving")), None)
            unaware = ans.get("cp_unaware") is True and ans.get("hands_over") is not True
            if unaware and active is None and time.monotonic() < min(deadline, stopped_at + UNAWARE_WAIT_S):
                # its CP link was down: the CP takes its end for a loss, and the standby may take over
                await asyncio.sleep(0.1)
                continue
            if ans.get("hands_over") is not True:
                click.echo(f"{name} stopped; " + (f"{active} is the active host" if active else f"no host serves now ({_way_on(st)})"))
                return 0
            active = active or _named_by_cp(st, name)
            if active is not None:
                click.echo(f"{name} stopped; {active} is the active host")
                return 0
            # (the standby may still be taking over: it serves a few hundred ms after the host is gone)
        await asyncio.sleep(0.1)
    if not stopped:
        click.echo(f"error: {name} did not stop within {timeout:.0f} s; see 'hsbctl status'", err=True)
        return 1
    if ans.get("hands_over") is not True:  # (its CP link down, and no standby took over by the deadline)
        click.echo(f"{name} stopped; no host serves now ({_way_on(st)})")
        return 0
    cp = st.get("cp") or {}
    if not cp.get("reachable"):
        click.echo(f"error: {name} stopped; whether its handover completed is not known (the CP {unheard(cp)})", err=True)
        return 3
    click.echo(
        f"error: {name} stopped, but its handover did not complete: no host serves now"
        " (see its log, stop_handover_failed; start one, or 'hsbctl promote')",
        err=True,
    )
    return 1


# a stop the CP could not be told of (the host's CP link down): how long hsbctl waits for the
# standby to take over by itself (the CP's wait for an unwitnessed loss, 3 s, and the takeover)
UNAWARE_WAIT_S = 8.0


def _way_on(st: dict[str, Any]) -> str:
    """What to do when a stop left no host serving: promote only while there is a standby to
    promote (one that answers as the standby, or the CP's); else promote can only fail."""
    cp = st.get("cp") or {}
    if cp.get("standby") or any(h.get("reachable") and h.get("role") == "standby" for h in st["hosts"]):
        return "start one, or 'hsbctl promote'"
    return "start one: there is no standby to promote"


def _named_by_cp(st: dict[str, Any], stopped: str) -> str | None:
    """The active the CP names, its link up, unless it is the host that stopped or one asked here
    (none asked serves when this is asked): a host not asked, or not named; else None."""
    cp = st.get("cp") or {}
    cp_active = (cp.get("active") or {}) if cp.get("reachable") else {}
    by_cp = cp_active.get("name") if cp_active.get("connected", True) else None
    asked = {h["name"] for h in st["hosts"] if h.get("reachable")}
    return by_cp if by_cp is not None and by_cp != stopped and by_cp not in asked else None


def run_stop(t: Target, host: str | None, takeover: bool, timeout: float) -> int:
    return asyncio.run(_stop(t, host, takeover, timeout))


def _the_cp(t: Target) -> str | None:
    """The CP to ask: the serving one of two CP machines (of two that say so, the newest
    generation's, as hsbctl status has it), else the one named; None, said in one line, when
    neither of two serves: a pause, a resume or a history is for the CP that serves (one that
    waits answers none; one that stops would take a pause with it)."""
    if len(t.cps) > 1:
        assert t.secret_file is not None
        chosen, seen = asyncio.run(serving_cp(t.cps, load_secret(t.secret_file)))
        for e in superseded_cps({}, [], seen) + cp_named_twice(seen):
            click.echo(f"warning: {e}", err=True)
        if chosen is None:
            states = ", ".join(machine_state(m) if m.get("reachable") else f"{m['addr']} {unheard(m)} ({m.get('error')})" for m in seen)
            unknown = not all(m.get("reachable") for m in seen)  # (that one may serve: hsbctl cannot tell)
            click.echo(
                f"error: {'no CP machine hsbctl could ask serves' if unknown else 'neither CP machine serves'}: {states}; nothing was done:"
                + (" fix what keeps hsbctl from asking the other; if" if unknown else " if")
                + " no machine holds the virtual address, look at keepalived on both (systemctl status keepalived);"
                " ask again once 'hsbctl status' shows one SERVING (§18)",
                err=True,
            )
        return chosen
    if not t.cp:
        click.echo("error: the CP's admin address is needed (cp in the ctl config, or --cp)", err=True)
    return t.cp


def run_pause(t: Target, paused: bool) -> int:
    assert t.secret_file is not None
    cp = _the_cp(t)
    if not cp:
        return 3
    ans = asyncio.run(ask(cp, load_secret(t.secret_file), {"t": "pause" if paused else "resume"}))
    if ans.get("unanswered"):
        click.echo(f"error: {untold('the CP', ans, 'the request', NOT_KNOWN.format('it applied') + ' (its PAUSED line)')}", err=True)
        return 3
    if ans.get("reachable") is False:
        click.echo(f"error: {unasked('the CP', ans)}", err=True)
        return 3
    if not ans.get("ok"):  # (a refusal goes where every other command's does: stderr, said as an error)
        click.echo(f"error: the CP refused: {ans.get('msg') or ans.get('error') or ans}", err=True)
        return 1
    click.echo(ans.get("msg", ans))
    return 0


def _when(at: float | None) -> str:
    return "-" if not at else datetime.fromtimestamp(at).strftime("%Y-%m-%d %H:%M:%S")


def run_history(t: Target, as_json: bool) -> int:
    assert t.secret_file is not None
    cp = _the_cp(t)
    if not cp:
        return 3
    ans = asyncio.run(ask(cp, load_secret(t.secret_file), {"t": "history"}))
    if ans.get("reachable") is False:
        click.echo(f"error: {unasked('the CP', ans)}", err=True)
        return 3
    entries: list[dict[str, Any]] = ans.get("data", [])
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return 0
    for line in history_lines(entries):
        click.echo(line)
    return 0


def history_lines(entries: list[dict[str, Any]]) -> list[str]:
    """`hsbctl history`'s table: a row per entry, and under a switchover's the terminals the
    standby refused a standby session (as `hsbctl switchover` says them)."""
    if not entries:
        return ["no failover, switchover, promote or fence yet"]
    out = [f"{'when':<19}  {'kind':<10} {'epoch':>5}  {'what':<28} {'took':>9} {'worst pause':>12}  reason"]
    for e in entries:
        kind = e.get("kind", "?")
        if kind in ("failover", "switchover", "promote", "undone"):
            frm = e.get("from") or (f"({e['stopped']} stopped)" if e.get("stopped") else "-")  # (nobody: the one that had stopped normally)
            what = f"{frm} -> {e.get('to')}"
        elif kind == "fence":
            what = f"{e.get('host')} fenced"
        else:
            what = ""
        took = "-" if e.get("duration_ms") is None else f"{e['duration_ms']:.0f} ms"
        wp = "-" if e.get("worst_pause_ms") is None else f"{e['worst_pause_ms']:.1f} ms"
        reason = str(e.get("reason") or "") + (f" ({e['why']})" if e.get("why") else "")
        out.append(f"{_when(e.get('at')):<19}  {kind:<10} {e.get('epoch', ''):>5}  {what:<28} {took:>9} {wp:>12}  {reason}")
        refused = refused_line(e, " " * 21)  # (from the kind column; an entry of an older hsbcpd has none)
        if refused:
            out.append(refused)
    return out


def register(main: click.Group, obj_type: Any) -> None:
    pass_obj = click.make_pass_decorator(obj_type)

    @main.command()
    @click.option("--no-takeover", is_flag=True, help="The normal termination: nobody takes over (the patent's; see 'hsbctl promote').")
    @click.option("--host", "host", default=None, help="The host to stop, by name (default: the active).")
    @click.option(
        "--timeout", default=60.0, show_default=True, type=SECONDS, help="Seconds to wait for the host to stop (as hsbd@.service's TimeoutStopSec)."
    )
    @pass_obj
    def stop(obj: Any, no_takeover: bool, host: str | None, timeout: float) -> None:
        """Stop a host: the active hands over to an established standby first (as on SIGTERM)."""
        sys.exit(run_stop(obj.target(), host, not no_takeover, timeout))

    @main.command()
    @pass_obj
    def pause(obj: Any) -> None:
        """No automatic failover until 'hsbctl resume' (kept by the CP across its restarts)."""
        sys.exit(run_pause(obj.target(), True))

    @main.command()
    @pass_obj
    def resume(obj: Any) -> None:
        """Automatic failover on again after 'hsbctl pause'."""
        sys.exit(run_pause(obj.target(), False))

    @main.command()
    @click.option("--json", "as_json", is_flag=True, help="One JSON list.")
    @pass_obj
    def history(obj: Any, as_json: bool) -> None:
        """Every failover, switchover, promote and fence, kept by the CP (in its journal)."""
        sys.exit(run_history(obj.target(), as_json))
