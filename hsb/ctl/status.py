"""`hsbctl status [--json] [--watch]`: one view of the CP and both hosts.

Exit status, as monitoring plugins have it: 0 hot standby established, 1 serving without a
standby, 2 not serving (or the active's service failing: no message is answered; or two actives,
among them a CP split brain: two CPs serving, each with its own active), 3 unknown (a daemon could not be asked: down, a wrong address or port,
a wrong secret, a timeout; or the answers, asked again, still disagree on who is the active: a
role change under way), each unknown daemon named with its address, why and the fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
import time
from typing import Any

import click

from hsb.ctl.gather import status_all, unheard
from hsb.ctl.refused import refused_line
from hsb.ctl.target import Target
from hsb.plural import agree, many, span


def down_line(u: dict[str, Any]) -> str:
    """A host that could not be asked and holds no role at the CP (gather's `absent`): down. Said
    under status's verdict, and by promote and stop before they refuse."""
    return f"{u['name']} at {u['addr']}: {u['error']}; it holds no role at the CP, so it serves nothing: counted as down"


def _age(ts: float | None) -> str:
    if not ts:
        return "-"
    s = time.time() - ts
    if s < 120:
        return f"{s:.0f}s ago"
    if s < 7200:
        return f"{s / 60:.0f}m ago"
    return f"{s / 3600:.1f}h ago"


def _role_label(h: dict[str, Any]) -> str:
    """ACTIVE only for a host that serves as the active now (CP-made, lease valid): a cut-off or
    frozen old active is shown as what it is, so status never shows two actives for a handled
    partition."""
    role = str(h.get("role", "?"))
    if role != "active":
        return role.upper()
    if h.get("serving", True):
        return "ACTIVE"
    if h.get("state") == "fenced":
        return "FENCED"
    lease = h.get("lease") or {}
    if lease.get("lost_ms_ago") is not None:
        return "LEASE-LOST"
    return "NOT-SERVING"


def _pause(ls: dict[str, Any]) -> str:
    """The worst pause of a switch, measured only over traffic that was in flight (hsb.cp.switchrec)."""
    if ls.get("worst_pause_ms") is not None:
        # (the record ends at its deadline with terminals still waiting: no all-served time then)
        served = (
            f"all served after {ls['all_served_ms']:.1f} ms"
            if ls.get("all_served_ms") is not None
            else f"{ls.get('not_served', 'some')} not served when the record ended"
        )
        return (
            f"worst pause {ls['worst_pause_ms']:.1f} ms"
            + (f" (p99 {ls['p99_pause_ms']:.1f})" if ls.get("p99_pause_ms") is not None else "")
            + " over"
            f" {many(ls.get('in_flight_terminals', 0), 'terminal')} in flight, {served}, "
        )
    if ls.get("in_flight_terminals") == 0:
        return "nothing in flight (no pause to measure), "
    return "worst pause not measured yet, "


def _seconds_left(not_after: Any) -> float | None:
    """Seconds until `not_after` (a status's ISO time with its zone), None if it is not one."""
    try:
        na = dt.datetime.fromisoformat(not_after)
    except (TypeError, ValueError):
        return None
    return None if na.tzinfo is None else (na - dt.datetime.now(dt.UTC)).total_seconds()


def _tls_line(t: dict[str, Any], links: str) -> str:
    days = t.get("days_left")
    when = (t.get("not_after") or "?")[:10]
    warn = "  RENEW SOON" if days is not None and days < 14 else ""
    if days is None:
        return f"TLS on ({links})"
    # (the time left, as hsb.plural.span says it: rounded down, in hours under a day; or gone.
    # From the certificate's own not_after: days_left is rounded to 0.1 day, so an hour before
    # its expiry it says 0.0, which is neither "expired" nor a number of hours)
    secs = _seconds_left(t.get("not_after"))
    secs = days * 86400 if secs is None else secs
    left = span(secs) if secs > 0 else f"expired {span(-secs)} ago"
    return f"TLS on ({links}); certificate {', '.join(t.get('names') or [])} expires {when} ({left}){warn}"


PEER_LINK_DOWN = "SERVING, PEER LINK DOWN (a crash is still taken over; no switchover)"


def headline(st: dict[str, Any]) -> list[str]:
    """The verdict line, and a line for each daemon that could not be asked."""
    verdict = (
        "ESTABLISHED (hot standby ready)"
        if st["established"]
        else PEER_LINK_DOWN
        if st["serving"] and st.get("peer_link_down")
        else "SERVING WITHOUT A STANDBY"
        if st["serving"]
        else "NOT SERVING"
    )
    failing = st.get("service_failing") or []
    stalls = st.get("service_stalled") or []
    if failing:  # (exit 2: no message is answered, whatever the pair's state)
        verdict = f"SERVICE FAILING on the active: no message is answered, each waits at the CP (the pair: {verdict})"
    elif stalls and st["serving"]:  # (exit 1 at least: one terminal waits, the others are served)
        first = stalls[0]
        age = f" for {first['oldest_call_s']:.0f} s" if first.get("oldest_call_s") is not None else ""
        verdict = (
            f"SERVICE STALLED on the active: a call has not returned{age}"
            f" (terminal {first.get('terminal') or '?'}'s later messages wait; others are served) (the pair: {verdict})"
        )
    why = [
        f"  {line}"
        for line in [
            *(st.get("journal_down") or []),
            *failing,
            *(x["why"] for x in stalls),
            *(st.get("not_ready") or []),
            *([st["peer_link_down"]] if st.get("peer_link_down") else []),
        ]
    ]
    # (answers that disagree on who is the active, asked again: no verdict from them)
    changing = (
        [f"  roles are changing (asked again, the answers still disagree; ask again in a moment): {st['changing']}"] if st.get("changing") else []
    )
    unknown = [f"  {u['name']} at {u['addr']}: {u['error']}" for u in st.get("unknown") or []]
    # (a host not asked that holds no role at the CP: down, said under the verdict it leaves standing)
    down = [f"  {down_line(u)}" for u in st.get("absent") or []]
    why = [*down, *why]
    if st.get("split_brain"):  # (critical, whatever else could not be asked: each such daemon's line follows)
        return [f"hsb: TWO ACTIVES: {st['split_brain']}", *unknown, *why]
    if st.get("two_actives"):  # (critical as well: the first line says it, not a verdict of 1 or 3)
        return [f"hsb: TWO ACTIVES: {_two_actives(st)}", *unknown, *why]
    if not st.get("unknown"):
        if changing:
            return ["hsb: UNKNOWN (a role change is under way)", *changing, *why]
        return [f"hsb: {verdict}", *why]
    # (those asked that did not answer in time apart from those that could not be asked)
    groups: dict[str, list[str]] = {}
    for u in st["unknown"]:
        groups.setdefault(unheard(u), []).append(u["name"])
    names = "; ".join(f"{', '.join(n)} {w}" for w, n in groups.items())
    if any(u["name"] == "CP" for u in st["unknown"]):
        # the CP decides who serves: without it no verdict, only what the hosts say of themselves
        said = [f"{h['name']} {_role_label(h)} ({h.get('state', '?')})" for h in st.get("hosts", []) if h.get("reachable")]
        first = f"hsb: UNKNOWN ({names}); the hosts say: {', '.join(said) or 'nothing (none answered)'}"
    else:
        first = f"hsb: UNKNOWN ({names}); from the others: {_unasked_active(st) or verdict}"
    return [first, *unknown, *changing, *why]


def _from_nobody(ls: dict[str, Any], kind: str) -> str:
    """Where a switch with no active before it came from: the host that had stopped normally."""
    if ls.get("stopped"):
        return f"(none: {ls['stopped']} had stopped normally)"
    return "(none: after a normal stop)" if kind == "promote" else "(none)"


def _unasked_active(st: dict[str, Any]) -> str | None:
    """What the others say when the host the CP hears as its active could not be asked: not NOT
    SERVING (the CP says its host link is up), but that whether it serves is not known."""
    a = st.get("cp_active_unasked")
    if not isinstance(a, dict) or st.get("serving"):
        return None
    ms = a.get("heard_ms_ago")
    heard = f", heard {ms:.0f} ms ago" if isinstance(ms, (int, float)) and not isinstance(ms, bool) else ""
    return f"the CP's active is {a.get('name') or '?'} (its host link up{heard}), not asked: whether it serves is not known"


def _two_actives(st: dict[str, Any]) -> str:
    """Two hosts serving as the active at one epoch (or the CP's active the older one), and what to do."""
    cp = st["cp"]
    named = (cp.get("active") or {}).get("name") if cp.get("reachable") else None
    whose = f"the CP's active is {named}" if named else "the CP names none" if cp.get("reachable") else "the CP cannot be asked"
    return (
        f"two hosts serve as the active with a valid lease at once: {', '.join(st['two_actives'])} ({whose});"
        " stop hsbd on the one that is not the CP's active ('systemctl stop' its unit on its machine) and report it (the lease rule, docs/operations.md §5)"
    )


def render(st: dict[str, Any]) -> str:
    out: list[str] = []
    out.extend(headline(st))
    if st["cp"].get("paused"):
        out.append("PAUSED: automatic failover is off ('hsbctl resume' turns it on; a planned switchover and promote still work)")
    out.extend(f"ERROR: {e}" for e in st.get("cp_errors") or [])
    out.extend(f"WARNING: {w}" for w in st.get("cp_warnings") or [])
    if st.get("cps"):  # two CP machines
        parts = []
        for m in st["cps"]:
            if not m.get("reachable"):
                parts.append(f"{m['addr']} {m.get('error')}" if m.get("error_answer") else f"{m['addr']} {unheard(m)} ({m.get('error')})")
            else:
                parts.append(
                    f"{m.get('name')} at {m['addr']} {('SUPERSEDED (says it serves)' if m.get('superseded') else 'SERVING') if m['state'] == 'serving' else m['state']}"
                    + (f" (the same hsbcpd as at {m['same_as']})" if m.get("same_as") else "")
                    + (
                        " JOURNAL MISSING: is the shared storage mounted?"
                        if m.get("journal_missing")
                        else f" JOURNAL NOT ANSWERING for {m['journal_unanswered_s']} s: does the shared storage hang?"
                        if m.get("journal_unanswered_s") is not None
                        else f" JOURNAL FAILING ({m['journal_error']}): can the shared storage be read?"
                        if m.get("journal_error")
                        else f" (generation {m.get('generation')})"
                    )
                )
        out.append("CP machines: " + "; ".join(parts))
    cp = st["cp"]
    if not cp.get("reachable"):
        out.append(f"  CP        {unheard(cp)} ({cp.get('addr', '-')})")
    else:
        t = cp["terminals"]
        out.append(
            f"  CP {cp.get('name') or '-':<7}epoch {cp['epoch']}"
            + (f" generation {cp['generation']}" if cp.get("generation") else "")
            + f"  terminals {t['connected']}/{t['defined']} connected  "
            f"sessions {t['active_sessions']} active / {t['standby_sessions']} standby  held {cp['held_messages']}"
            + (f"  back-pressured {t['backpressured']}" if t.get("backpressured") else "")
        )
        drops = (t.get("disconnects") or {}).get("recent") or {}
        if drops:  # (logoffs aside: hsb.cp.drops)
            n = sum(drops.values())
            out.append(
                f"            {n} terminal connection{'' if n == 1 else 's'} lost in the last {(t['disconnects'].get('recent_s') or 60):.0f} s: "
                + ", ".join(f"{why} {k}" for why, k in sorted(drops.items(), key=lambda x: -x[1]))
                + " (they reconnect and resume; docs/operations.md, terminals that drop)"
            )
        sup = cp.get("supervisor")
        if sup:  # hsbcpd --supervise
            died = sup.get("last_death")
            out.append(
                f"            supervised by pid {sup['master_pid']}: restarted {sup['restarts']} time{'' if sup['restarts'] == 1 else 's'}"
                + (f", last after {died['signal']} of pid {died['pid']} {_age(died['at'])}" if died else "")
            )
        for limit in ("open_files", "accept_queue"):
            if (cp.get(limit) or {}).get("warning"):
                out.append(f"            WARNING {cp[limit]['warning']}")
        hb = cp.get("held_bytes") or {}
        if hb.get("reached"):
            out.append(
                f"            WARNING held messages at the CP's bound ({_mib(hb['total'])} of {_mib(hb['bound'])}, until below 90 %): terminals whose"
                " messages wait for the active are not read until it answers them; raise [cp] held_total_bytes if the machine has the memory"
            )
        if (cp.get("tls") or {}).get("enabled"):
            out.append("            " + _tls_line(cp["tls"], "host and admin links" + (", terminals" if cp["tls"].get("terminals") else "")))
        ls = cp.get("last_switchover")
        if ls:
            kind = ls.get("kind") or ("switchover" if ls.get("planned") else "failover")
            frm = ls["from"] or _from_nobody(ls, kind)
            out.append(
                f"            last {kind}: {frm} -> {ls['to']} at epoch {ls['epoch']}, {_age(ls['at'])}, "
                + (f"silent {ls['silence_to_loss_ms']:.0f} ms before the CP noticed, " if ls.get("silence_to_loss_ms") is not None else "")
                + (f"noticed to grant {ls['loss_to_grant_ms']:.1f} ms, " if ls.get("loss_to_grant_ms") is not None else "")
                + _pause(ls)
                + f"switch {ls['switch_ms']:.1f} ms, {many(ls['switched'], 'session')} switched, {ls['classic']} reconnected ({ls['reason']})"
            )
            named = refused_line(ls, "            ")
            if named:
                out.append(named)
        j = cp.get("journal") or {}
        if j:
            if j.get("durability") == "none":
                out.append("            journal OFF (durability none): a restart of hsbcpd loses what it holds")
            else:
                sync = f"last sync {j['last_sync_ms']:.2f} ms {_age(j.get('last_sync_at'))}" if j.get("last_sync_ms") is not None else "no sync yet"
                state = j.get("state", "?")
                out.append(
                    f"            journal {'ok' if state == 'ok' else state.upper()} {j.get('dir')}  {(j.get('size_bytes') or 0) / 1024:.0f} KiB in"
                    f" {many(j.get('segments'), 'segment')}, {j.get('outstanding', 0)} outstanding, {sync}"
                    + (f" ({j['io']})" if j.get("io") else "")
                    + (f"  ERROR {j.get('error')}: acknowledgements stopped until it can be written" if state != "ok" else "")
                )
                waiting = j.get("acks_waiting_for_host")
                if isinstance(waiting, dict) and waiting.get("messages"):  # (none yet: nothing withheld, nothing to say)
                    out.append(
                        f"            ACKNOWLEDGEMENTS WAIT for a host to register with this CP ({many(waiting.get('messages'), 'message')}"
                        f"{', the first ' + _age(waiting['since']) if waiting.get('since') else ''}): a host registers only with the CP"
                        " whose journal and generation it follows"
                    )
        if cp.get("active_stopped_normally"):
            stopped = cp["active_stopped_normally"]
            # (no standby registered at the CP: there is none to promote, and promote would say only that)
            then = (
                "'hsbctl promote' moves the service to the standby"
                if cp.get("standby")
                else f"no standby is registered at the CP to promote: start {stopped} again, or start the other host and 'hsbctl promote' it"
            )
            out.append(f"            active {stopped} stopped normally; {then}")
    for h in st["hosts"]:
        if not h.get("reachable"):
            out.append(f"  {h.get('name', 'host'):<9} {unheard(h)} ({h.get('addr', '-')})")
            continue
        peer = h["peer_link"]
        hb = f"{peer['heartbeat_age_ms']:.0f} ms" if peer.get("heartbeat_age_ms") is not None else "-"
        # (started with --role active, the CP refused it: the unit's name says active, the host serves as the standby)
        rejoined = "  (unit role active: rejoined as the standby)" if h.get("rejoined_as_standby_of") and h.get("role") == "standby" else ""
        out.append(f"  {h['name']:<9} {_role_label(h):<11} {h['state']:<19} epoch {h['epoch']}  pid {h['pid']}{rejoined}")
        out.append(f"            {h['sentence']}")
        out.append(
            f"            peer link {'up' if peer['up'] else 'DOWN'} (heartbeat {hb})  CP link {h['cp_link']}  established since {_age(h.get('established_since'))}"
        )
        tf = h["takeover_file"]
        ring = ""
        if tf.get("ring_write"):
            ring = f"ring write gen {tf['ring_write']['generation']} seq {tf['ring_write']['last_seq']}"
        if tf.get("ring_read"):
            ring = f"ring read gen {tf['ring_read']['generation']} next {tf['ring_read']['next_seq']}" + (
                f" lag {h['ring_lag']}" if h.get("ring_lag") is not None else ""
            )
        sid = h["startup_id"]
        out.append(
            f"            takeover file {tf['path']} N={tf['records']} B={h['batch_records']['own']}"
            + (f" (partner B={h['batch_records']['partner']})" if h["batch_records"].get("partner") is not None else "")
            + f"  {ring}  storage {tf['storage']}"
        )
        fail = tf.get("ring_write_failing")
        if isinstance(fail, dict):  # (shown at once; hot standby is not ready once it lasts: the verdict's line)
            out.append(
                f"            RING WRITES FAILING since {_age(fail.get('since'))} ({many(fail.get('failures'), 'try', 'tries')}): {fail.get('error')};"
                f" {many(fail.get('pending'), 'session change')} not written, retried until the storage answers"
            )
        out.append(f"            startup id own {sid['own'] or '-'} partner {sid['partner'] or '-'}")
        if (h.get("tls") or {}).get("enabled"):
            out.append("            " + _tls_line(h["tls"], "peer, CP and admin links"))
        t = h["terminals"]
        out.append(
            f"            terminals defined {t['defined']} linked {t['linked']}  sessions {t['active_sessions']} active / {t['standby_sessions']} standby"
        )
        sv = h.get("service") or {}
        if sv.get("state") == "failing":
            out.append(
                f"            SERVICE FAILING ({sv.get('name')}): {sv.get('error')}; {many(sv.get('waiting_terminals'), 'terminal')} {agree(sv.get('waiting_terminals'), 'waits', 'wait')},"
                f" {agree(sv.get('waiting_terminals'), 'its', 'their')} messages held at the CP and retried ({many(sv.get('retries'), 'retry', 'retries')} so far)"
            )
        elif sv.get("state") == "stalled":
            out.append(
                f"            SERVICE STALLED ({sv.get('name')}): a call for {sv.get('oldest_call_terminal')} has not returned for"
                f" {sv.get('oldest_call_s') or 0:.0f} s ({many(sv.get('calls_in_progress'), 'call')} in progress); that terminal's later messages"
                " wait behind it, held at the CP, the others are served: what does the service wait on (a hung disk, its database)?"
            )
        refused = (h.get("open_failed") or {}).get("recent") or []
        if refused:  # (cleared for a terminal once its session opens)
            last = refused[-1]
            out.append(
                f"            SESSIONS REFUSED by the CP, not open here: {', '.join(r['terminal'] for r in refused)};"
                f" last {last['terminal']} ({last['kind']}) {_age(last.get('at'))}: {last['reason']}"
            )
        refusing = h.get("standby_refusing") or {}
        if refusing.get("count"):  # (an hsbd of before says nothing of them)
            first = refusing["terminals"][0]
            more = refusing["count"] - len(refusing["terminals"])
            out.append(
                f"            STANDBY SESSIONS REFUSED here: {', '.join(r['terminal'] for r in refusing['terminals'])}"
                + (f" and {more} more" if more > 0 else "")
                + f" ({first['reason']}); a switchover or failover disconnects {agree(refusing['count'], 'it', 'them')} (the classic path, nothing lost):"
                " make the attrs identical on both hosts and reload the one you change; a session opened before an attrs change keeps"
                " the attrs of before until its terminal logs on again (docs/operations.md §15)"
            )
        if h.get("file_mismatch"):
            out.append(f"            ERROR {h['file_mismatch']}")
        if h.get("last_error"):
            out.append(f"            last error: {h['last_error']}")
    return "\n".join(out)


def shown(st: dict[str, Any]) -> str:
    """`render(st)`, or, for answers of a shape it does not know (a daemon of another version),
    the verdict and the raw status with a line saying so: never a traceback."""
    try:
        return render(st)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        st["exit_status"] = 3
        return (
            f"hsb: UNKNOWN (a daemon answered a status this hsbctl cannot read: {type(exc).__name__} {exc};"
            " is it of another version?)\n" + json.dumps(st, indent=2, default=str)
        )


def run_status(target: Target, as_json: bool, watch: bool, interval: float = 0.5) -> int:
    assert target.secret_file is not None

    def once() -> dict[str, Any]:
        return asyncio.run(status_all(target.cp, target.hosts, target.secret_file, cp_machines=target.cps))  # type: ignore[arg-type]

    if not watch:
        try:
            st = once()
            text = json.dumps(st, indent=2, default=str) if as_json else shown(st)
        except Exception as exc:  # noqa: BLE001 - a verdict, never a traceback: exit 1 would read as a warning
            why = f"hsbctl could not make a verdict: {type(exc).__name__}: {exc}"
            click.echo(json.dumps({"exit_status": 3, "error": why}) if as_json else f"hsb: UNKNOWN ({why}; is a daemon of another version?)")
            return 3
        click.echo(text)
        return int(st["exit_status"])
    last = None
    try:
        while True:
            try:
                st = once()
            except Exception as exc:  # noqa: BLE001 - one poll that failed (a secret file being rotated, say): said, and on
                click.echo(f"-- {time.strftime('%H:%M:%S')} this poll failed: {type(exc).__name__}: {exc}", err=True)
                last = None
                time.sleep(interval)
                continue
            text = json.dumps(st, default=str) if as_json else shown(st)
            key = _stable(st)  # ignores fields that change every poll (ages, timestamps)
            if key != last:
                last = key
                if sys.stdout.isatty() and not as_json:
                    click.echo("\x1b[H\x1b[2J", nl=False)
                click.echo(text)
                if not as_json:
                    click.echo(f"-- {time.strftime('%H:%M:%S')} (watching; Ctrl-C to stop)")
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def _stable(st: dict[str, Any]) -> str:
    def strip(o: Any) -> Any:
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in ("heartbeat_age_ms", "heard_ms_ago", "uptime_s", "sentence_at")}
        if isinstance(o, list):
            return [strip(v) for v in o]
        return o

    return json.dumps(strip(st), sort_keys=True, default=str)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB"
