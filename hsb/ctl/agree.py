"""Whether the three answers of one hsbctl status (the CP's, each host's) agree on who is the
active. They are taken at slightly different moments: in the middle of a failover or a
switchover the CP may answer after its grant and the hosts before it, or one host before its
lease ran out and the other after its grant. Disagreeing answers are asked again (gather), and
if they still disagree the verdict says roles are changing, not a state none of them is in
(docs/operations.md §7)."""

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
