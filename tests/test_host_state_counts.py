"""hsbd's session counts (hsb.host.sessions.StateCounts) are kept as states change, not walked
at every probe: whatever the sequence of changes, they equal a walk over the table."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.host.sessions import ACTIVE, CLOSED, STANDBY, SessionTable
from hsb.terminals import TerminalDef

pytestmark = pytest.mark.timeout(60)


def walked(t: SessionTable) -> tuple[int, int]:
    """(active, standby) by a walk over the table: what `counts` keeps."""
    return sum(ts.state == ACTIVE for ts in t.table.values()), sum(ts.state == STANDBY for ts in t.table.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.sampled_from([CLOSED, ACTIVE, STANDBY])), max_size=80), st.integers(0, 3))
def test_the_kept_counts_equal_a_walk(changes: list[tuple[int, str]], added: int) -> None:
    t = SessionTable({f"T{i}": TerminalDef(name=f"T{i}") for i in range(10)})
    for i in range(added):  # defined by a reload meanwhile
        t.add(TerminalDef(name=f"N{i}")).state = ACTIVE
    for i, state in changes:
        t.table[f"T{i}"].state = state
        c = t.counts()
        assert (c["active_sessions"], c["standby_sessions"]) == walked(t)
    assert t.counts()["defined"] == 10 + added
