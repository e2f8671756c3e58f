"""A switch's record (hsb/cp/switchrec.py; docs/operations.md `hsbctl history`), each test naming
a behaviour that a mutation audit of the module found no test for: the first re-delivered reply
is the first one, not the last, and the figures keep their microseconds.

The audit (session 63): 45 hand-made mutants of switchrec.py; 39 were killed by
tests/test_cp_switchrec_edges.py, test_cp_arbitration_edges.py, test_cp_links_mutants.py and
test_cp_flip_mutants.py; 2 are killed here; 4 are equivalent (the worst pause taken at `>=`:
an equal wait is the same figure; `all_served_ms` from the time of the last served terminal when
nothing was in flight: that time is then the grant's, 0.0 either way; the waits not emptied at
the record's end: the CP drops the record right then; an unknown kind not turned away by the
histogram: its only callers pass kinds of KINDS).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hsb.cp.switchrec import AfterSwitch

pytestmark = pytest.mark.timeout(30)

T0 = 1000.0


def _record() -> tuple[AfterSwitch, list[dict[str, Any]]]:
    done: list[dict[str, Any]] = []
    sw = AfterSwitch(T0, {"epoch": 3}, done.append)
    sw.rec["in_flight_terminals"] = 3  # (the flip's count, set at its end)
    return sw, done


def _term() -> Any:
    return SimpleNamespace(flight=1, flight_epoch=3)


def test_the_first_redelivered_reply_is_the_first_not_the_latest() -> None:
    """`first_redelivered_reply_ms` is grant → the first reply to a re-delivered message: later
    ones leave it alone (mutant: the `is None` check dropped, which kept the last one's)."""
    sw, done = _record()
    assert not sw.counted(3)
    a, b, c = _term(), _term(), _term()
    assert not sw.reply(a, T0 - 1.0, True, T0 + 0.020)
    assert not sw.reply(b, T0 - 1.0, True, T0 + 0.050)
    assert sw.reply(c, T0 - 1.0, True, T0 + 0.080)
    assert done and sw.rec["first_redelivered_reply_ms"] == 20.0
    assert sw.rec["all_served_ms"] == 80.0


def test_the_figures_are_milliseconds_to_the_microsecond() -> None:
    """The record's figures keep three decimals of a millisecond (a pause of a few hundred µs
    after a switchover is told as such, not rounded to 0.1 ms) (mutant: rounded to one decimal)."""
    sw, done = _record()
    assert not sw.counted(1)
    assert sw.reply(_term(), T0 - 0.0001234, True, T0 + 0.0004321)
    assert done
    assert sw.rec["first_redelivered_reply_ms"] == 0.432
    assert sw.rec["all_served_ms"] == 0.432
    assert sw.rec["worst_pause_ms"] == 0.556
