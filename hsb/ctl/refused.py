"""The line naming the terminals a planned switchover put on the classic path because the
standby refused their standby session: one wording for `hsbctl switchover` (under `switchover
complete`), `hsbctl status` (under the last switch) and `hsbctl history` (under its entry).

It reads the CP's `refused_standby` ({standby, count, terminals: [{terminal, reason}, ...]}),
in its switch record (`last_switchover`) or a history entry; a record without it (a switch
with none refused, or an entry an older hsbcpd recorded) has no line.
"""

from __future__ import annotations

from typing import Any

from hsb.plural import agree, many

# terminals named in the line (the count says all)
NAMED = 5


def refused_line(rec: dict[str, Any], indent: str = "  ") -> str | None:
    """The line for the terminals the switch put on the classic path because the standby
    refused their standby session (the CP's record, `refused_standby`): how many, the first
    few, the standby's reason for the first, and the fix; None if none."""
    ref = rec.get("refused_standby")
    named = ref.get("terminals") if isinstance(ref, dict) else None
    if not isinstance(ref, dict) or not isinstance(named, list) or not named or not all(isinstance(x, dict) for x in named):
        return None
    count: int = ref["count"] if isinstance(ref.get("count"), int) else len(named)
    names = [str(x.get("terminal")) for x in named[:NAMED]]
    more = f" and {count - len(names)} more" if count > len(names) else ""
    sb = ref.get("standby") or "the standby"
    return (
        f"{indent}{many(count, 'terminal')} took the classic path (disconnected, {agree(count, 'it logs', 'they log')} on again) because {sb} refused"
        f" {agree(count, 'its', 'their')} standby session: {', '.join(names)}{more} ({names[0]}: {named[0].get('reason')});"
        f" make {agree(count, 'its', 'their')} attrs identical on both hosts"
        " and reload the one you change (docs/operations.md §5)"
    )
