"""Whether the three answers of one hsbctl status (the CP's, each host's) agree on who is the
active. They are taken at slightly different moments: in the middle of a failover or a
switchover the CP may answer after its grant and the hosts before it, or one host before its
lease ran out and the other after its grant. Disagreeing answers are asked again (gather), and
if they still disagree the verdict says roles are changing, not a state none of them is in
(docs/operations.md §7). Two actives each kept by a CP of its own (a CP split brain) are no
role change: `split_brain` tells them apart."""

from __future__ import annotations

from typing import Any

# the pauses before each new round of questions, seconds (all within the command's timeout):
# the first at once (a host that heard of a grant the CP made after it answered), then time for
# a grant to reach the hosts, or a lease running out to end
REASK_PAUSES = (0.0, 0.1, 0.3)


def _epoch(part: dict[str, Any]) -> int:
    e = part.get("epoch")
    return e if isinstance(e, int) else 0


def claims_active(h: dict[str, Any]) -> bool:
    """A host that says it serves as the active (made active by the CP, its lease valid)."""
    return bool(h.get("reachable")) and h.get("role") == "active" and h.get("state") not in ("fenced", "stopping") and h.get("serving", True) is True


def cp_active(cp: dict[str, Any]) -> tuple[bool, Any]:
    """Whether the CP's answer says who its active is (a CP of before may not), and who (None: nobody)."""
    if not cp.get("reachable") or cp.get("state") not in ("serving", "no_active") or "active" not in cp:
        return False, None
    a = cp.get("active")
    return True, a.get("name") if isinstance(a, dict) else None


def roles_all_answered(cp: dict[str, Any], hosts: list[dict[str, Any]], machines: list[dict[str, Any]] | None) -> bool:
    """Whether every host holding a role that hsbctl can see answered it: the CP was asked and
    names as its active and standby only hosts that answered, and every CP machine named was
    asked and names as its active only such a host (a CP that says it is one of two machines,
    `takeover = "on_wake"`, vouches for nothing alone). Then a host that could not be asked holds
    no role at any of them, and serves nothing: a host serves only through a CP that made it its
    active (the lease rule), so it is down (stopped, crashed, cut off), not unknown."""
    if not cp.get("reachable") or cp.get("state") not in ("serving", "no_active") or "active" not in cp or "standby" not in cp:
        return False
    if not machines and cp.get("takeover") == "on_wake":  # (one of two CP machines, the other not named: it may keep one)
        return False
    answered = {h.get("name") for h in hosts if h.get("reachable")}
    for held in (cp.get("active"), cp.get("standby")):
        if held is not None and (not isinstance(held, dict) or held.get("name") not in answered):
            return False
    return all(m.get("reachable") and (m.get("active") is None or m.get("active") in answered) for m in machines or [])


def disagreement(cp: dict[str, Any], hosts: list[dict[str, Any]]) -> str | None:
    """Where the CP's answer and the hosts' disagree on who is the active, in a line; None when
    they agree (or there is nothing to compare: the CP not asked, or not saying)."""
    if not cp.get("reachable"):
        return None
    known, active = cp_active(cp)
    said = []
    for h in hosts:
        if not h.get("reachable"):
            continue
        name, e = h.get("name"), _epoch(h)
        if e > _epoch(cp):  # a grant the CP had not made when it answered
            said.append(f"{name} is at epoch {e}, the CP at {_epoch(cp)}")
        elif known and claims_active(h) and name != active:
            said.append(f"{name} says it is the active at epoch {e}, the CP's active is {active or 'nobody'} at epoch {_epoch(cp)}")
        elif known and name == active and h.get("role") != "active":
            said.append(f"the CP's active at epoch {_epoch(cp)} is {name}, which says it is the {h.get('role')} at epoch {e}")
    return "; ".join(said) or None


def another_journal(cp: dict[str, Any], hosts: list[dict[str, Any]]) -> tuple[str, dict[str, Any], str] | None:
    """(the CP's journal id, the first host that follows another journal, that journal's id), or
    None: a host follows another journal than the CP asked serves (its journal directory replaced,
    or two CPs on different journals), and the hosts refuse to register with it."""
    journal = cp.get("journal")
    jid = journal.get("id") if cp.get("reachable") and isinstance(journal, dict) else None
    if not isinstance(jid, str):
        return None
    for h in hosts:
        cg = h.get("cp_generation")
        followed = cg.get("journal") if h.get("reachable") and isinstance(cg, dict) else None
        if isinstance(followed, str) and followed != jid:
            return jid, h, followed
    return None


def takeovers_apart(cp: dict[str, Any], h: dict[str, Any]) -> tuple[str, str] | None:
    """(the CP's takeover id, host `h`'s) when `h` has seen the CP's generation of another
    takeover (its journal's `takeover`, the host's `cp_generation.takeover`): a CP on a copy of
    the journal, refused by the hosts (`cp_journal_copy_refused`); else None."""
    journal = cp.get("journal")
    took = journal.get("takeover") if cp.get("reachable") and isinstance(journal, dict) else None
    gen = cp.get("generation")
    cg = h.get("cp_generation")
    other = cg.get("takeover") if h.get("reachable") and isinstance(cg, dict) and cg.get("seen") == gen else None
    if not isinstance(took, str) or not isinstance(gen, int) or isinstance(gen, bool) or not isinstance(other, str) or other == took:
        return None
    return took, other


def hosts_refuse(cp: dict[str, Any], hosts: list[dict[str, Any]]) -> bool:
    """Whether the hosts refuse the CP asked for good: it is on another journal than a host
    follows, or took the generation a host has seen in a copy of the journal. The hosts' epochs
    ahead of its own are then no role change under way but that refusal (superseded_cps says it),
    and asking again changes nothing."""
    return another_journal(cp, hosts) is not None or any(takeovers_apart(cp, h) is not None for h in hosts)


def two_actives(cp: dict[str, Any], actives: list[dict[str, Any]]) -> bool:
    """Several hosts that say they serve as the active are two actives (the lease rule broken)
    only when the answers cannot be of different moments: at the same epoch (one grant makes one
    active), or the CP names the older one its active (the newer one's grant is not this CP's:
    another CP, §18). Otherwise the older one's answer was taken before the grant that ended
    its role, its lease running out: roles are changing."""
    epochs = [_epoch(h) for h in actives]
    if len(set(epochs)) < len(epochs):
        return True
    known, active = cp_active(cp)
    newest = max(epochs)
    return known and any(h.get("name") == active and _epoch(h) < newest and _epoch(h) == _epoch(cp) for h in actives)


def _gen(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _kept_by(h: dict[str, Any], cp: dict[str, Any], machines: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, int | None]:
    """The serving CP machine that names `h` its active (None: not known), and the generation of
    the CP that keeps it: that machine's, the asked CP's if it names `h`, else the highest
    generation `h` has seen (a host never registers at a CP older than that)."""
    m = next((m for m in machines if m.get("active") == h.get("name")), None)
    if m is not None and _gen(m.get("generation")) is not None:
        return m, _gen(m.get("generation"))
    if cp_active(cp) == (True, h.get("name")) and _gen(cp.get("generation")) is not None:
        return m, _gen(cp.get("generation"))
    cg = h.get("cp_generation")
    return m, _gen(cg.get("seen")) if isinstance(cg, dict) else None


def split_brain(cp: dict[str, Any], actives: list[dict[str, Any]], machines: list[dict[str, Any]] | None) -> str | None:
    """Two hosts that serve as the active at different epochs, each kept alive by a CP of its own
    (a CP split brain: two CP machines both serving, docs/operations.md §18), in one line with
    the newer one and what to do; None when the answers do not show two CPs (then different
    epochs are a role change under way, asked again: `two_actives`). Two CPs are shown by two
    serving CP machines naming the two hosts their actives, or by the two actives kept by CPs
    of different generations (a host's `cp_generation.seen`: it never registers at an older CP
    than one it saw, so an active that has not seen the newer CP's generation is not its)."""
    if len(actives) != 2 or _epoch(actives[0]) == _epoch(actives[1]):
        return None
    old, new = sorted(actives, key=_epoch)
    serving = [m for m in machines or [] if m.get("reachable") and m.get("state") == "serving" and not m.get("same_as")]
    (m_old, g_old), (m_new, g_new) = _kept_by(old, cp, serving), _kept_by(new, cp, serving)
    two_machines = m_old is not None and m_new is not None and m_old.get("addr") != m_new.get("addr")
    if not two_machines and (g_old is None or g_new is None or g_old == g_new):
        return None

    def at(h: dict[str, Any], m: dict[str, Any] | None, g: int | None) -> str:
        cp_name = f"{m.get('name') or m.get('addr')}'s active, " if m is not None else ""
        return f"{h.get('name')} at epoch {_epoch(h)} ({cp_name}CP generation {g if g is not None else '?'})"

    older_cp = f"on {m_old.get('name') or m_old.get('addr')}" if m_old is not None else f"that keeps {old.get('name')} (generation {g_old})"
    return (
        f"two CPs serve, each with its own active (a CP split brain): {at(old, m_old, g_old)} and {at(new, m_new, g_new)};"
        f" {new.get('name')}'s epoch is the newer: {old.get('name')} will be fenced once its CP stops;"
        f" stop the hsbcpd {older_cp}: 'systemctl stop hsbcpd' on its machine; then check its journal storage and the VRRP link"
        " (docs/operations.md §18, After a split brain)"
    )
