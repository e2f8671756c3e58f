"""The terminal state table (342/542) and the fast-switch link (341/541) of one host.

The table holds, per defined terminal, this host's session attributes and the
session state (closed / active / standby). The fast-switch link is the set of
standby-capable terminals that have had a session since this process started;
a terminal joins it the first time it opens a session and never leaves it
while the process lives [0039], [0059]-[0060]. Insertion order is kept, so
"walking the link" is deterministic.
"""

from __future__ import annotations

from typing import Any

from hsb.terminals import TerminalSpec

CLOSED = "closed"
ACTIVE = "active"
STANDBY = "standby"


class TerminalState:
    __slots__ = ("name", "attrs", "state", "standby_capable")

    def __init__(self, d: TerminalSpec) -> None:
        self.name = d.name
        self.attrs = dict(d.attrs)  # its own: a group's members share theirs, and a service may change it
        self.state = CLOSED
        self.standby_capable = False


class SessionTable:
    def __init__(self, defs: dict[str, TerminalSpec]) -> None:
        self.table: dict[str, TerminalState] = {n: TerminalState(d) for n, d in defs.items()}
        self.link: dict[str, None] = {}  # the fast-switch link, an ordered set

    @property
    def own_total(self) -> int:
        """Own total terminal count (321/521)."""
        return len(self.table)

    def get(self, name: str) -> TerminalState | None:
        return self.table.get(name)

    def join_link(self, ts: TerminalState) -> bool:
        """Put a standby-capable terminal on the fast-switch link; True if it just joined."""
        if ts.name in self.link:
            return False
        self.link[ts.name] = None
        return True

    def counts(self) -> dict[str, int]:
        a = s = 0
        for ts in self.table.values():
            if ts.state == ACTIVE:
                a += 1
            elif ts.state == STANDBY:
                s += 1
        return {"defined": len(self.table), "linked": len(self.link), "active_sessions": a, "standby_sessions": s}

    def link_entries(self) -> list[tuple[str, dict[str, Any], bool]]:
        """Session information for every terminal on the link: (name, attrs, open)."""
        out = []
        for name in self.link:
            ts = self.table[name]
            out.append((name, ts.attrs, ts.state == ACTIVE))
        return out

    def in_state(self, state: str) -> list[TerminalState]:
        return [ts for ts in self.table.values() if ts.state == state]
