"""The terminal state table (342/542) and the fast-switch link (341/541) of one host.

The table holds, per defined terminal, this host's session attributes and the
session state (closed / active / standby). The fast-switch link is the set of
standby-capable terminals that have had a session since this process started;
a terminal joins it the first time it opens a session and never leaves it
while the process lives [0039], [0059]-[0060]. Insertion order is kept, so
"walking the link" is deterministic.
"""

from __future__ import annotations

import asyncio

from hsb.takeover.records import SessionEntry
from hsb.terminals import TerminalSpec

CLOSED = "closed"
ACTIVE = "active"
STANDBY = "standby"


class StateCounts:
    """Sessions in each state over the whole table, kept as they change: status, /health,
    /active and /metrics read them at every probe (a walk over 100,000 terminals took 8 ms)."""

    __slots__ = ("active", "standby")

    def __init__(self) -> None:
        self.active = 0
        self.standby = 0


class TerminalState:
    __slots__ = ("name", "attrs", "_state", "standby_capable", "counts")

    def __init__(self, d: TerminalSpec, counts: StateCounts | None = None) -> None:
        self.name = d.name
        self.attrs = dict(d.attrs)  # its own: a group's members share theirs (a service is given a copy)
        self.counts = counts if counts is not None else StateCounts()  # the table's, shared
        self._state = CLOSED
        self.standby_capable = False

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, new: str) -> None:
        old = self._state
        if new == old:
            return
        c = self.counts
        if old == ACTIVE:
            c.active -= 1
        elif old == STANDBY:
            c.standby -= 1
        if new == ACTIVE:
            c.active += 1
        elif new == STANDBY:
            c.standby += 1
        self._state = new


class SessionTable:
    def __init__(self, defs: dict[str, TerminalSpec]) -> None:
        self.state_counts = StateCounts()
        self.table: dict[str, TerminalState] = {n: TerminalState(d, self.state_counts) for n, d in defs.items()}
        self.link: dict[str, None] = {}  # the fast-switch link, an ordered set

    def add(self, d: TerminalSpec) -> TerminalState:
        """A terminal defined by a reload."""
        ts = self.table[d.name] = TerminalState(d, self.state_counts)
        return ts

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
        c = self.state_counts
        return {"defined": len(self.table), "linked": len(self.link), "active_sessions": c.active, "standby_sessions": c.standby}

    async def link_entries(self, per_turn: int = 2048) -> list[SessionEntry]:
        """Session information for every terminal on the link, `per_turn` terminals per turn of
        the event loop (a new active takes them right after its grant, while it serves the
        re-delivered messages: at 19,000 terminals one pass would hold it for tens of ms)."""
        out = []
        names = list(self.link)
        table = self.table
        for i in range(0, len(names), per_turn):
            for name in names[i : i + per_turn]:
                ts = table.get(name)
                if ts is not None:
                    out.append(SessionEntry(name, ts.attrs, ts.state == ACTIVE))
            if i + per_turn < len(names):
                await asyncio.sleep(0)
        return out

    def in_state(self, state: str) -> list[TerminalState]:
        return [ts for ts in self.table.values() if ts.state == state]
