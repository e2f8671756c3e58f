"""Judge the status answers of the CP and both hosts: the verdict hsbctl status shows.

`summarize` takes what hsb.ctl.gather collected (the CP's answer, each host's, and both CP
machines' when the ctl config names two) and says whether the pair is in hot standby, serving
without a standby, not serving, or unknown, with the lines that say why: a standby that could
not take over, a ring the active cannot write, the service failing or stalled on the active,
two actives or a CP split brain, an answer this hsbctl cannot read. It asks nothing itself.
"""

from __future__ import annotations

from typing import Any

from hsb.ctl.agree import another_journal, claims_active, disagreement, hosts_refuse, roles_all_answered, split_brain, takeovers_apart, two_actives
from hsb.plural import many


def same_daemon(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two answers from one process (its name, pid and instance, random at each start): one
    daemon named by two addresses in the ctl config, not two daemons. Name and pid alone are not
    enough (two machines' daemons of one name, each in a container, often have the same pid), so
    answers without an instance (another version's) are never one."""
    pid, inst = a.get("pid"), a.get("instance")
    if not (a.get("reachable") and b.get("reachable") and isinstance(pid, int) and not isinstance(pid, bool) and pid > 0):
        return False
    if not (isinstance(inst, str) and inst):
        return False
    return isinstance(a.get("name"), str) and (a.get("name"), pid, inst) == (b.get("name"), b.get("pid"), b.get("instance"))


def cp_named_twice(machines: list[dict[str, Any]] | None) -> list[str]:
    """A warning for each CP machine the ctl config names twice (the same hsbcpd answered at both
    addresses), with the fix: the other CP machine is then never asked."""
    return [
        f"the ctl config's cp names {m.get('name')} twice ({m['same_as']} and {m['addr']}: the same hsbcpd, pid {m.get('pid')});"
        " name each CP machine's own admin address once (§18)"
        for m in machines or []
        if m.get("same_as")
    ]


def cp_address_twice(machines: list[dict[str, Any]] | None) -> list[str]:
    """A warning when a waiting CP's machine holds the virtual address while another CP serves:
    both machines hold it (a VRRP split brain, or keepalived dead or hung on the serving one,
    which keeps the address), and the address's traffic goes to whichever announced it last."""
    ms = [m for m in machines or [] if m.get("reachable") and not m.get("same_as")]
    serving = [m for m in ms if m.get("state") == "serving"]
    return [
        f"both CP machines hold the virtual address: {m.get('name')} at {m['addr']} ({m.get('state')}) holds it too, while"
        f" {serving[0].get('name')} serves: a VRRP split brain, or keepalived dead or hung on {serving[0].get('name')} (it keeps the"
        " address); terminals reach whichever machine announced the address last. Check keepalived on both"
        " ('systemctl status keepalived') and the VRRP link; woken there, the waiting CP takes the journal over after"
        " [cp] split_brain_takeover (§18)"
        for m in ms
        if serving and m is not serving[0] and m.get("state") != "serving" and m.get("holds_address")
    ]


def _storage_answers(h: dict[str, Any]) -> bool:
    tf = h.get("takeover_file")
    return not isinstance(tf, dict) or tf.get("responding", True) is not False


def _standby_unready(h: dict[str, Any], cp_said: bool, ring_said: bool) -> list[str]:
    """Why a standby that says established could not take over now, from its own answer: cut off
    from the CP, its view of the sessions stale, its takeover storage silent (but for what the
    CP's answer, `cp_said`, or the active's, `ring_said`, said of it already)."""
    out = []
    if h.get("registered_at_cp") is False and not cp_said:
        out.append(f"{h['name']} is not registered at the CP (its CP link is down or refused): it could not take over")
    if h.get("standby_view_stale") and not ring_said:
        out.append(f"{h['name']}'s view of the sessions is stale (the active's takeover ring unwritten or unread)")
    if not _storage_answers(h):
        out.append(f"{h['name']}'s takeover storage does not answer (a hung or lost mount): it follows no ring")
    return out


def _ring_unwritten(h: dict[str, Any]) -> str | None:
    """Why the standby's view of the sessions is stale (the active cannot write its takeover ring:
    a dead disk, a read-only or hung mount), with the fix; None if it is not."""
    if not h.get("standby_view_stale") or h.get("role") != "active":
        return None
    tf = h.get("takeover_file")
    fail = tf.get("ring_write_failing") if isinstance(tf, dict) else None
    fail = fail if isinstance(fail, dict) else {}
    path = tf.get("path") if isinstance(tf, dict) else None
    return (
        f"{h['name']} cannot write its takeover ring"
        + (f" ({fail['error']})" if fail.get("error") else "")
        + (f" for {fail['failing_s']:.0f} s" if isinstance(fail.get("failing_s"), (int, float)) else "")
        + (f", {many(fail['pending'], 'session change')} not written" if fail.get("pending") is not None else "")
        + ": the standby's view of the sessions is stale and a failover now would take over that view;"
        + f" check the takeover storage on {h['name']}"
        + (f" ({path}: the mount, its permissions, the NFS server)" if path else "")
    )


def _batch_unwritten(h: dict[str, Any]) -> str | None:
    """Why an active serves without a standby when its batch writes fail (the takeover file gone,
    truncated, another pair's), as its last error says it with the fix; None if they do not."""
    err = h.get("last_error")
    if h.get("state") != "serving" or not isinstance(err, str) or not err.startswith("batch write failed"):
        return None
    return f"{h['name']} serves without a standby: {err}"


def peer_link_cut(actives: list[dict[str, Any]], standbys: list[dict[str, Any]]) -> str | None:
    """Why the pair is not established when only the peer link is down: the active serves
    (`serving`, its peer link down) and the standby is ready otherwise (established, registered at
    the CP, following the ring). The CP still tells it of a crash, so a failover is possible;
    a planned switchover is not. None otherwise (the caller has ruled out every other cause)."""
    cut = [a for a in actives if a.get("state") == "serving" and isinstance(a.get("peer_link"), dict) and a["peer_link"].get("up") is False]
    ready = [h for h in standbys if h.get("state") == "established" and h.get("registered_at_cp", True) and _storage_answers(h)]
    if not cut or not ready:
        return None
    a, sb = cut[0], ready[0]
    return (
        f"the peer link between {a['name']} and {sb['name']} is down: {sb['name']} (registered at the CP, following the ring)"
        f" still takes over if {a['name']} dies, told by the CP once {a['name']}'s lease has surely run out (at most 0.45 s with the defaults);"
        f" until the link is back a switchover is refused (a stop of {a['name']} still hands over, through the CP: §9); check the network"
        " between the hosts' peer_listen addresses (a firewall, a route) and both hosts' logs (hot_standby_lost, peer_link_*)"
    )


def journal_down(cp: dict[str, Any]) -> str | None:
    """Why the CP acknowledges nothing: its journal cannot be written (a full disk, EIO: failing;
    a hung mount: stalled), with the fix; None if it can (or the CP keeps none)."""
    j = cp.get("journal")
    if not cp.get("reachable") or not isinstance(j, dict) or j.get("durability") == "none" or j.get("state", "ok") == "ok":
        return None
    state = str(j.get("state"))
    how = " a hung mount?" if state == "stalled" else ""  # (its error says how long a write has waited)
    return (
        f"the CP's journal {j.get('dir')} is {state.upper()} ({j.get('error')}{';' if how else ''}{how}): it acknowledges nothing new"
        " and terminals wait (nothing acknowledged is lost); fix its storage (free space, the mount, dmesg) and it goes on by"
        " itself; never promote or restart for it (docs/operations.md §11)"
    )


def service_down(h: dict[str, Any]) -> str | None:
    """Why the active's service answers no message (it reports itself unavailable: its database
    down), with the fix; None if it answers. Every message then waits at the CP: nothing is served."""
    sv = h.get("service")
    if not isinstance(sv, dict) or sv.get("state") != "failing":
        return None
    name = f"{h['name']}'s service {sv.get('name') or ''}".rstrip()
    return (
        f"{name} is failing ({sv.get('error')}): messages wait at the CP and are retried; fix what it names (the ledger's database: docs/ledger.md)"
    )


def service_stalled(h: dict[str, Any]) -> dict[str, Any] | None:
    """The active's service has a call that has not returned past the host's threshold (a hung
    disk, a database that stopped answering): that terminal's later messages wait behind it, the
    other terminals are served. What the verdict names (the call's age, its terminal) and the line
    under it, with the fix; None if no call is stalled."""
    sv = h.get("service")
    if not isinstance(sv, dict) or sv.get("state") != "stalled":
        return None
    age = sv.get("oldest_call_s")
    age = age if isinstance(age, (int, float)) and not isinstance(age, bool) else None
    terminal = sv.get("oldest_call_terminal") if isinstance(sv.get("oldest_call_terminal"), str) else None
    name = f"{h['name']}'s service {sv.get('name') or ''}".rstrip()
    why = (
        f"{name}: a call"
        + (f" for {terminal}" if terminal else "")
        + " has not returned"
        + (f" in {age:.0f} s" if age is not None else "")
        + ": that terminal's later messages wait behind it, the others are served; look at what the service waits on (a hung disk, its database)"
    )
    return {"host": h["name"], "oldest_call_s": age, "terminal": terminal, "why": why}


_INT = (int,)
_STR = (str,)
_MAP = (dict, type(None))
# the fields summarize (and status's verdict) use, with the types they may have (absent: fine)
HOST_FIELDS: dict[str, tuple[type, ...]] = {
    "name": _STR,
    "addr": _STR,
    "pid": (int, type(None)),
    "role": _STR,
    "state": _STR,
    "serving": (bool,),
    "epoch": (int, type(None)),
    "registered_at_cp": (bool,),
    "takeover_file": _MAP,
    "cp_generation": _MAP,
    "lease": _MAP,
    "service": _MAP,
}
CP_FIELDS: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)),
    "addr": _STR,
    "state": _STR,
    "epoch": (int, type(None)),
    "generation": (int, type(None)),
    "journal": _MAP,
    "active": _MAP,
    "standby": _MAP,
}


def _readable(part: dict[str, Any], fields: dict[str, tuple[type, ...]], default_name: str) -> dict[str, Any]:
    """`part` as it is, or, for a field of another type than `fields` has (a list as pid, a map
    as name: another version's answer, or not an hsb daemon's), a daemon that could not be
    asked, saying which field (its name and address only if they are text)."""
    bad = next(
        (k for k, types in fields.items() if k in part and (not isinstance(part[k], types) or (isinstance(part[k], bool) and bool not in types))),
        None,
    )
    if bad is None:
        return part
    name, addr = part.get("name"), part.get("addr")
    return {
        "reachable": False,
        "name": name if isinstance(name, str) else default_name,
        "addr": addr if isinstance(addr, str) else "-",
        "error": (
            f"answered a status this hsbctl cannot read ({bad} is {str(part[bad])[:40]!r}, a {type(part[bad]).__name__}): is it of another version?"
        )
        if part.get("reachable")
        else str(part.get("error")),
    }


def superseded_cps(cp: dict[str, Any], hosts: list[dict[str, Any]], machines: list[dict[str, Any]] | None) -> list[str]:
    """Each CP that says it serves though a newer one took over, with what to do: one of two CP
    machines marked superseded (`newest_serving`), or the CP asked whose generation is below one
    a host has seen (the newer CP not named in the ctl config, or not answering here)."""
    out = [
        f"two CPs say they serve: {m.get('name') or m['addr']} at {m['addr']} (generation {m.get('generation')}) is superseded by"
        f" {m['superseded'].get('by')} (generation {m['superseded'].get('generation')}), whose status is shown; stop the older one (§18)"
        for m in machines or []
        if isinstance(m.get("superseded"), dict)
    ]
    other = None if out else another_journal(cp, hosts)  # another journal first: its generation is no measure (as the hosts judge it)
    if other is not None:
        jid, h, followed = other
        out.append(
            f"the CP {cp.get('name')} at {cp.get('addr', '-')} serves journal {jid}, not journal {followed} {h.get('name')} follows,"
            " so the hosts do not register with it: its journal directory was replaced (a new disk, an empty directory:"
            " what the old journal held is lost; then stop each hsbd, remove its HOST.cp-generation beside its takeover file"
            f" and start it again, §11), or two CPs on different journals ({cp['journal'].get('dir')}: is it the directory both"
            " CP machines share? §18)"
        )
    gen = cp.get("generation")
    if cp.get("reachable") and isinstance(gen, int) and not isinstance(gen, bool) and not out:
        for h in hosts:
            cg = h.get("cp_generation")
            seen = cg.get("seen") if h.get("reachable") and isinstance(cg, dict) else None
            if isinstance(seen, int) and seen > gen:
                out.append(
                    f"the CP {cp.get('name')} at {cp.get('addr', '-')} has generation {gen}, below the {seen} {h.get('name')} has seen:"
                    " a superseded CP (stop it; the serving one took the journal over), or one started on a new journal directory (§11, §18)"
                )
                break
            apart = takeovers_apart(cp, h)
            if apart is not None:
                took, theirs = apart
                out.append(
                    f"the CP {cp.get('name')} at {cp.get('addr', '-')} has generation {gen} of takeover {took}, but {h.get('name')} has seen"
                    f" generation {gen} of takeover {theirs}: two CPs took generation {gen}, each in its own directory, one of them a CP"
                    " on a copy of the journal (a backup restored, its directory copied aside), and the hosts refuse this one; stop"
                    " the CP whose directory is the copy, and start the CP on the journal directory the serving CP had (§11)"
                )
                break
    return out


def _one_each(hosts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Each daemon once: the answers of one host named twice in the ctl config (the same address,
    or two addresses at which the same process answered) are one host, not two; and a line for
    each one named twice, with the fix."""
    kept: list[dict[str, Any]] = []
    twice: list[str] = []
    for h in hosts:
        first = next((k for k in kept if same_daemon(h, k) or (h.get("addr") and h.get("addr") == k.get("addr"))), None)
        if first is None:
            kept.append(h)
            continue
        who = first["name"] if first.get("reachable") else first.get("addr")
        where = (
            f"{h.get('addr')} both times"
            if h.get("addr") == first.get("addr")
            else f"{first.get('addr')} and {h.get('addr')}: the same process, pid {h.get('pid')}"
        )
        twice.append(f"{who} is named twice ({where}); name each of the pair's two hosts once in the ctl config's hosts")
    return kept, twice


_AUTH_FAILED = "authentication failed: the secret differs from the daemon's"


def _odd_secret(error: Any, cp: dict[str, Any], hosts: list[dict[str, Any]]) -> Any:
    """Why a daemon refused hsbctl's secret, with the side to fix: when another daemon of the pair
    accepted the same secret, the odd one is that daemon's secret_file (a machine restored from
    an old backup, a config copied from another pair), not the ctl config's."""
    if not (isinstance(error, str) and error.startswith(_AUTH_FAILED)):
        return error
    took = [str(d.get("name")) if d is not cp else "the CP" for d in (cp, *hosts) if d.get("reachable")]
    if not took:
        return error
    who = " and ".join(took) if len(took) < 3 else f"{', '.join(took[:-1])} and {took[-1]}"
    refused = [d for d in (cp, *hosts) if not d.get("reachable") and isinstance(d.get("error"), str) and d["error"].startswith(_AUTH_FAILED)]
    if len(refused) >= len(took):  # (as many refuse it as accept it: no majority names the odd side)
        return (
            f"authentication failed: its secret differs from the one {who} accept{'s' if len(took) == 1 else ''}"
            f" (the ctl config's), which {many(len(refused), 'daemon')} refuse{'s' if len(refused) == 1 else ''}: either side may be"
            " the odd one (a machine restored from an old backup? a config copied from another pair?); the secret file's sha256sum"
            " must be the same on all three machines and for the ctl config (docs/operations.md §4)"
        )
    return (
        f"authentication failed: its secret differs from the one {who} accept{'s' if len(took) == 1 else ''}"
        " (the ctl config's): check that daemon's secret_file on its machine (restored from an old backup? copied from another pair?);"
        " the secret file's sha256sum must be the same on all three machines (docs/operations.md §4)"
    )


def summarize(cp: dict[str, Any], hosts: list[dict[str, Any]], machines: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The verdict of one status. `machines`: what each of two CP machines said (serving_cp).
    A daemon whose answer has a field of a type this hsbctl does not know cannot be read: it
    counts as one that could not be asked (UNKNOWN, 3), never a traceback (exit 1)."""
    cp = _readable(cp, CP_FIELDS, "CP")
    for i, h in enumerate(hosts):
        hosts[i] = h = _readable(h, HOST_FIELDS, f"host{i + 1}")
        h.setdefault("name", f"host{i + 1}")
        h.setdefault("role", "unknown")
        h.setdefault("state", "unreachable")
    hosts, twice = _one_each(hosts)
    # a host counts as the active only while it serves: made active by the CP, its lease valid
    actives = [h for h in hosts if claims_active(h)]
    # the CP's answer and the hosts' still disagreeing on who is the active (gather asked again):
    # roles are changing, and no verdict is given from answers of different moments
    # (but not hosts ahead of a CP they refuse for good, on another journal or on a copy of theirs
    # at the generation they have seen: no answer of theirs will ever agree)
    changing = None if hosts_refuse(cp, hosts) else disagreement(cp, hosts)
    standbys = [h for h in hosts if h.get("reachable") and h.get("role") == "standby"]
    cp_ok = bool(cp.get("reachable"))
    # a CP whose journal cannot be written acknowledges nothing: terminals wait, nothing new is served
    journal: dict[str, Any] = cp["journal"] if isinstance(cp.get("journal"), dict) else {}
    journal_ok = journal.get("durability") == "none" or journal.get("state", "ok") == "ok"
    serving = cp_ok and cp.get("state") == "serving" and journal_ok and bool(actives)
    # the CP hears its active, which hsbctl could not ask (a ctl config's wrong address, a firewall,
    # its admin loop busy): "NOT SERVING" from the others would deny what the CP says
    cp_act = cp.get("active") if cp_ok and cp.get("state") == "serving" and journal_ok and not actives else None
    unasked_active = (
        {"name": cp_act.get("name"), "heard_ms_ago": cp_act.get("heard_ms_ago")}
        if isinstance(cp_act, dict)
        and cp_act.get("connected") is True
        and not any(h.get("reachable") and h.get("name") == cp_act.get("name") for h in hosts)
        else None
    )
    # a standby cut off from the CP (registered_at_cp false) could not take over, and one whose
    # takeover storage does not answer (a hung mount) follows no ring: its sessions go stale; so
    # do they while the active cannot write the ring (standby_view_stale, on either host)
    ring_said = [why for why in (_ring_unwritten(h) for h in actives) if why]
    stale = list(ring_said)
    # the CP names no standby (its answer says so: older CPs do not say): a host that says it is
    # the standby is not the CP's, and could not take over
    cp_said = cp_ok and "standby" in cp and cp["standby"] is None and bool(standbys)
    if cp_said:
        said = ", ".join(f"{h['name']} ({h.get('state')})" for h in standbys)
        stale.append(
            f"the CP has no standby registered, though {said} says it is the standby: it could not take over;"
            " look at its CP link and last error (its link to the CP down, or refused as a second standby)"
        )
    # the CP names it with its link closed (the CP dropped it: silence, a protocol error; the
    # connection not yet gone, its queued bytes lingering): it could not take over either
    cp_sb = cp.get("standby") if cp_ok else None
    if isinstance(cp_sb, dict) and cp_sb.get("connected") is False and standbys:
        cp_said = True
        stale.append(
            f"the CP's link to the standby {cp_sb.get('name') or '?'} is down (the CP closed it), though"
            f" {', '.join(h['name'] for h in standbys)} says it is the standby: it could not take over until it registers again;"
            " look at its CP link and last error, and the CP's log (host_link_closed)"
        )
    established = (
        not changing
        and serving
        and not stale
        and not any(h.get("standby_view_stale") for h in standbys)
        and any(h.get("state") == "established" for h in actives)
        and any(h.get("state") == "established" and h.get("registered_at_cp", True) and _storage_answers(h) for h in standbys)
    )
    if not established:  # (and the standby's own words, but for what the CP or the active said of it already)
        stale += [why for h in standbys if h.get("state") == "established" for why in _standby_unready(h, cp_said=cp_said, ring_said=bool(ring_said))]
        # the active's batch writes fail (its takeover file gone, truncated, another pair's): its
        # error names the fix, under the verdict rather than only on its own line further down
        stale += [why for why in (_batch_unwritten(h) for h in actives) if why]
    # only the peer link is down: a crash is still taken over; its own verdict (1), not "without a standby"
    cut = peer_link_cut(actives, standbys) if serving and not established and not stale and not changing else None
    # ring lag: what the active wrote minus what the standby has read (same generation)
    for sb in standbys:
        tf = sb.get("takeover_file")
        rr = tf.get("ring_read") if isinstance(tf, dict) else None
        for a in actives:
            atf = a.get("takeover_file")
            rw = atf.get("ring_write") if isinstance(atf, dict) else None
            if isinstance(rr, dict) and isinstance(rw, dict) and rr.get("generation") == rw.get("generation"):
                last, nxt = rw.get("last_seq"), rr.get("next_seq")
                if isinstance(last, int) and isinstance(nxt, int):  # (another version's shape: no lag shown)
                    # (and the records the active's changes not yet written will take)
                    owed = atf.get("ring_pending_records") if isinstance(atf, dict) else None
                    sb["ring_lag"] = max(0, last - (nxt - 1)) + (owed if isinstance(owed, int) else 0)
    unknown = [] if cp_ok else [("CP", cp.get("addr", "-"), cp.get("error"))]
    unasked = [(h["name"], h.get("addr", "-"), _odd_secret(h.get("error"), cp, hosts)) for h in hosts if not h.get("reachable")]
    # hosts not asked that hold no role at the CP (nor at any CP machine named): they serve
    # nothing, so they count as down, and the verdict stands (a stopped standby: SERVING WITHOUT A
    # STANDBY, 1; both hosts down: NOT SERVING, 2), not UNKNOWN. Not when the answers show another
    # CP (the hosts refuse this one, or it is superseded: its ERROR line): the host not asked may be its
    cp_errors = superseded_cps(cp, hosts, machines)
    vouched = len(hosts) == 2 and not twice and roles_all_answered(cp, hosts, machines) and not cp_errors
    absent = unasked if vouched else []
    unknown = [(n, a, _odd_secret(e, cp, hosts)) for n, a, e in unknown] + ([] if absent else unasked)
    # (one that authenticated and gave no answer in time: busy or stuck, and one that answered
    # with an error: said so by `unasked`)
    late: dict[str, dict[str, Any]] = {}
    for n, d in [("CP", cp), *((h["name"], h) for h in hosts)]:
        if d.get("unanswered"):
            late[n] = {"unanswered": True, "timeout": d.get("timeout")}
        elif d.get("error_answer"):
            late[n] = {"error_answer": True}
        elif d.get("not_serving"):
            late[n] = {"not_serving": True}
    if not hosts:  # only the CP asked: nothing can be said of the hosts
        unknown.append(("hosts", "-", "none named (give --host twice, or hosts in the ctl config)"))
    elif len(hosts) == 1 and not twice:  # the pair's state cannot be told from one of its hosts
        unknown.append(("hosts", "-", "only one named (give --host twice, or both hosts in the ctl config)"))
    # one host named twice (even by two addresses): one daemon, judged once; the pair not known
    unknown += [("hosts", "-", why) for why in twice]
    # two actives at different epochs, each kept by a CP of its own: not a role change, critical
    split = split_brain(cp, actives, machines)
    two = [h["name"] for h in actives] if len(actives) > 1 and (split or two_actives(cp, actives)) else []
    changing = None if split else changing
    if len(actives) > 1 and not two and not changing:  # (the CP not asked, or not saying who its active is)
        changing = "; ".join(f"{h['name']} says it is the active at epoch {h.get('epoch')}" for h in actives)
    # the active's service answers nothing: every message waits at the CP, so nothing is served
    # whatever the pair's state: critical, as the CP's journal failing
    service_failing = [why for why in (service_down(h) for h in actives) if why]
    # a call of it hung: that terminal's messages wait, the others are served: a warning
    stalls = [s for s in (service_stalled(h) for h in actives) if s]
    exit_status = 2 if two else 3 if unknown or changing else 2 if service_failing else 0 if established else 1 if serving else 2
    if stalls and exit_status == 0:
        exit_status = 1
    out = {
        "established": established,
        "serving": serving,
        # the CP's active, its host link up, which could not be asked (then no verdict says NOT SERVING)
        "cp_active_unasked": unasked_active,
        # why hot standby is not ready though both hosts say established, each with its fix
        "not_ready": stale if serving else [],
        # only the peer link is down (the standby still takes over a crash; no switchover): the line
        "peer_link_down": cut,
        # the CP's journal cannot be written (exit 2: it acknowledges nothing), with its fix
        "journal_down": [why for why in [journal_down(cp)] if why],
        # the active's service answers no message (exit 2), each with its fix
        "service_failing": service_failing,
        # a call of the active's service has not returned: its terminal waits (at least 1)
        "service_stalled": stalls,
        # daemons that could not be asked: the verdict is then unknown (exit 3)
        "unknown": [{"name": n, "addr": a, "error": e} | late.get(n, {}) for n, a, e in unknown],
        # hosts that could not be asked but hold no role at the CP: down, the verdict stands
        "absent": [{"name": n, "addr": a, "error": e} | late.get(n, {}) for n, a, e in absent],
        # two hosts both serving with a valid lease at once: must never happen
        "two_actives": two,
        # of those, each at its own epoch kept by its own CP (a CP split brain): the line saying it
        "split_brain": split,
        # the answers disagree on who is the active, asked again: a role change under way (3)
        "changing": changing,
        # as monitoring plugins do: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (two actives: critical,
        # whatever else could not be asked)
        # (a CP still saying it serves after a newer one took over: at least a warning, 1)
        "exit_status": max(exit_status, 1) if cp_errors else exit_status,
        # CPs that say they serve though superseded (one ERROR line each, exit at least 1)
        "cp_errors": cp_errors,
        # a CP machine the ctl config names twice (one WARNING line each; the verdict stands)
        "cp_warnings": cp_named_twice(machines) + cp_address_twice(machines),
        "cp": cp,
        "hosts": hosts,
    }
    if machines is not None:
        out["cps"] = machines
    return out
