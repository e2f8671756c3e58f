"""`hsbctl switchover`: a planned role swap, over the admin links only.

The active is asked to hand over; it stops taking new deliveries (the CP holds
what arrives), finishes what it has, and the CP switches every session to the
standby without touching a terminal connection. The old active then runs the
standby procedure until hot standby is established again. We report the
worst pause the CP measured over the traffic the switch kept waiting (from
each message's ack to its reply; hsb.cp.switchrec).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from hsb.ctl.gather import ask, status_all, unasked, unheard, untold
from hsb.ctl.ops_cmds import say_unknown
from hsb.ctl.refused import refused_line
from hsb.ctl.target import Target
from hsb.plural import many
from hsb.wire.auth import load_secret


def refused_or_unasked(ans: dict[str, Any], host: dict[str, Any]) -> int | None:
    """The exit status of a request (promote, switchover) the host did not carry out, with its
    line on stderr: 3 when it could not be asked or answered with an error frame instead of an
    answer (another version's, say: nothing done; docs/operations.md §17), 1 when it refused;
    None when it accepted (its message, if any, said on stdout), or took it and did not answer in
    time (said here: the caller watches the pair's status for the outcome, as after an answer)."""
    if ans.get("unanswered"):
        click.echo(untold(str(host.get("name")), ans, "the request", "; watching the pair's status for what it did"), err=True)
        return None
    if ans.get("reachable") is False:
        click.echo(f"error: {unasked(str(host.get('name')), ans)}", err=True)
        return 3
    if not ans.get("ok"):
        click.echo(f"error: {ans.get('msg') or ans.get('error')}", err=True)
        return 1
    if ans.get("msg"):
        click.echo(ans["msg"])
    return None


def not_ready(st: dict[str, Any]) -> list[str]:
    """Why the pair is not in hot standby though the hosts may both say established: the status's
    own `not_ready` (every reason, while the CP serves), after what it leaves to its verdict line:
    the roles changing, the CP not serving (its state, its journal)."""
    if not any(h.get("reachable") and h.get("role") == "standby" and h.get("state") == "established" for h in st["hosts"]):
        return st.get("not_ready") or []  # (the states shown say the rest)
    cp = st.get("cp") or {}
    out = [f"the roles are changing: {st['changing']}"] if st.get("changing") else []
    if not st.get("serving") and cp.get("reachable"):
        journal = cp["journal"] if isinstance(cp.get("journal"), dict) else {}
        out.append(
            f"the CP is not serving (state {cp.get('state')}, journal {journal.get('state', 'ok')}): it acknowledges nothing new;"
            " see 'hsbctl status' and the CP's log"
        )
    said = [*out, *(st.get("not_ready") or [])]
    return said or ["the status did not say why: try again in a moment, or see 'hsbctl status'"]


def complete_line(rec: dict[str, Any]) -> str:
    """What a switchover that completed says, from the CP's record of it (its last_switchover)."""
    worst = rec.get("worst_pause_ms")
    return (
        f"switchover complete: {many(rec.get('switched'), 'session')} switched, {rec.get('classic')} reconnected; "
        + (
            f"worst pause {worst:.1f} ms (p99 {rec.get('p99_pause_ms'):.1f} ms) over"
            f" {many(rec.get('in_flight_terminals'), 'terminal')} with messages in flight"
            if worst is not None
            else "no pause to measure (nothing was in flight)"
        )
        + "; hot standby established again"
    )


async def _switchover(t: Target, yes: bool, timeout: float) -> int:
    assert t.secret_file is not None
    st = await status_all(t.cp, t.hosts, t.secret_file, cp_machines=t.cps)
    unknown = st.get("unknown") or []
    cp_known = not any(u["name"] == "CP" for u in unknown)
    actives = [h for h in st["hosts"] if h.get("reachable") and h.get("role") == "active"]
    # the CP answered that no standby is registered: that settles it, whatever host could not be
    # asked; anything else with a host unknown is not known
    cp_says_none = cp_known and not st["cp"].get("standby")
    if unknown and not cp_says_none:
        # not knowing is not "no standby": say who could not be asked, and why
        return say_unknown(unknown) or 3
    if not st["established"] or not actives:
        # the CP answered: what it says (no standby registered, say) settles it
        states = ", ".join(
            f"{h['name']} {h.get('role')}/{h.get('state')}" if h.get("reachable") else f"{h['name']} {unheard(h)}" for h in st["hosts"]
        )
        click.echo(
            f"error: switchover refused: no established standby ({states}); wait for hot standby or use 'hsbctl promote' after a normal stop",
            err=True,
        )
        for why in not_ready(st):  # (both may say established: why it is not ready)
            click.echo(f"  {why}", err=True)
        for u in [*unknown, *(st.get("absent") or [])]:
            click.echo(f"  {u['name']} at {u['addr']}: {u['error']}", err=True)
        return 1
    old = actives[0]
    new = next(h for h in st["hosts"] if h.get("reachable") and h.get("role") == "standby")
    if not yes:
        click.confirm(f"Move the service from {old['name']} to {new['name']}?", abort=True)
    if not yes:  # (the answer may have taken a while: what ended before the request is not ours)
        st = await status_all(t.cp, t.hosts, t.secret_file, timeout=1.0, cp_machines=t.cps)
        old = next((h for h in st["hosts"] if h.get("name") == old["name"]), old)
    before_epoch = st["cp"].get("epoch")
    if before_epoch is None:  # (the CP stopped answering while the operator confirmed)
        click.echo(f"error: cannot ask the CP at {st['cp'].get('addr', '-')} now; nothing was done: try again", err=True)
        return 3
    ended = old.get("switchovers_ended")
    ans = await ask(old["addr"], load_secret(t.secret_file), {"t": "switchover"})
    failed = refused_or_unasked(ans, old)
    if failed is not None:
        return failed
    deadline = time.monotonic() + timeout
    switched_at: float | None = None
    last: dict[str, Any] = st
    while time.monotonic() < deadline:
        left = max(0.05, min(1.0, deadline - time.monotonic()))  # a poll does not outlast the deadline
        last = await status_all(t.cp, t.hosts, t.secret_file, timeout=left, cp_machines=t.cps)
        roles = {h.get("name"): h.get("role") for h in last["hosts"]}
        was: dict[str, Any] = next((h for h in last["hosts"] if h.get("name") == old["name"]), {})
        epoch = last["cp"].get("epoch") if isinstance(last["cp"].get("epoch"), int) else 0
        grew = isinstance(ended, int) and isinstance(was.get("switchovers_ended"), int) and was["switchovers_ended"] > ended
        rec_now = last["cp"].get("last_switchover")
        cp_active = last["cp"].get("active") if isinstance(last["cp"].get("active"), dict) else {}
        if (
            last["cp"].get("reachable", True)
            and epoch > before_epoch
            # (the CP's word: granted, a link that dropped before the old active heard of it also
            # leaves it saying active, its count up, but not serving and not the CP's active)
            and cp_active.get("name") == old["name"]
            and roles.get(old["name"]) == "active"
            and was.get("serving") is True
            and roles.get(new["name"]) != "active"
            and (grew or (isinstance(rec_now, dict) and rec_now.get("kind") == "undone" and rec_now.get("epoch") == epoch))
        ):
            # undone: granted, the standby lost before the grant took effect, and the role given
            # back to the old active at a newer epoch: it serves on, and nothing more will come
            why = was.get("last_error") or (rec_now or {}).get("reason") or "the switchover was undone"
            click.echo(f"error: {why}; {old['name']} has the role back and is still the active (epoch {epoch})", err=True)
            return 1
        if switched_at is None and epoch > before_epoch and roles.get(new["name"]) == "active":
            switched_at = time.monotonic()
            click.echo(f"{new['name']} is active at epoch {last['cp']['epoch']}; {old['name']} is becoming the standby")
        elif switched_at is None and last["cp"].get("reachable", True) and epoch == before_epoch and grew:
            # the host took the request and it ended without a grant (the CP refused it, the link dropped);
            # a grant moves the epoch first (the host may still call its end "abandoned": its link dropped after)
            click.echo(f"error: {was.get('last_error') or 'the switchover ended without the grant'}; {old['name']} is still the active", err=True)
            return 1
        rec = (last["cp"].get("last_switchover") or {}) if switched_at else {}
        known = rec.get("all_served_ms") is not None or (switched_at and time.monotonic() - switched_at > 3)
        if switched_at and last["established"] and roles.get(old["name"]) == "standby" and known:
            click.echo(complete_line(rec))
            refused = refused_line(rec)
            if refused:
                click.echo(refused)
            return 0
        await asyncio.sleep(0.1)
    swapped = swapped_but(last, new["name"]) if switched_at else ""
    click.echo(
        f"error: switchover did not complete within {timeout:.0f}s{swapped}; see 'hsbctl status' (CP epoch {last['cp'].get('epoch')})", err=True
    )
    return 1


def swapped_but(st: dict[str, Any], new: str) -> str:
    """What a switchover that swapped the roles and did not get hot standby back says after its
    "did not complete": that the roles did swap, the hosts' states and their last errors (the new
    active's batch writes failing: `batch write failed: [Errno 1] Operation not permitted: …`)."""
    hosts = [h for h in st["hosts"] if h.get("reachable")]
    states = ", ".join(f"{h['name']} {h.get('role')}/{h.get('state')}" for h in hosts)
    errors = "".join(f"; {h['name']}: {h['last_error']}" for h in hosts if h.get("last_error"))
    return f": the roles swapped ({new} is the active) but hot standby did not come back ({states}{errors})"


def run_switchover(t: Target, yes: bool, timeout: float) -> int:
    return asyncio.run(_switchover(t, yes, timeout))
