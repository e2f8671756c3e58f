"""The logon storm's queue at a CP's stop (hsb/cp/logons.py: Logons.close), the behaviour a
mutation audit found no test for: the connections whose hellos or byes still wait are reset at
once (aborted), not closed gracefully, a hello's terminal free to log on at the next CP and a
stopping CP left with nothing to flush or linger on.

The audit (session 64): 52 hand-made mutants of logons.py; 42 were killed by
tests/test_cp_logons.py, test_cp_logon_edges.py, test_cp_terminal_hold.py,
test_cp_logoff_journal.py, test_cp_terminal_audit.py, test_cp_terminal_side_mutants*.py,
test_cp_terminal_link_mutants.py, test_cp_links_mutants.py and test_cp_admin_edges.py; 1 is
killed here; 9 are equivalent: `_goes_on` always True (a closed queue is empty: close() empties
it and nothing is queued after), the handles neither cancelled nor cleared at close (the slice
then finds the queue empty, and nothing is enqueued after a close), `newest` not cleared at
close (memory of a CP that exits), pause_reading after the enqueue rather than before (both run
before the loop turns), a queued hello's `not proto.closed` dropped (peer_gone is True of a
closed connection, and its abort does nothing), the `return` after a queued loss's step dropped
(a lost connection's hello was taken, so it is no longer in `newest`, and it is closed: nothing
more runs), `self._loop` unset by admit_bye / admit_lost (a terminal has a bye or a loss only
after a logon through admit, which set the same loop).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.cp import logons
from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host
from tests.support.inproc import until
from tests.support.transports import RecordingTransport, stand_in

pytestmark = pytest.mark.timeout(30)


class ResetTransport(RecordingTransport):
    """A RecordingTransport that tells a reset (abort) from a graceful close."""

    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self.how: str | None = None

    def close(self) -> None:
        self.how = self.how or "close"
        super().close()

    def abort(self) -> None:
        self.how = self.how or "abort"
        super().abort()


def _connect(cp: Any, name: str) -> tuple[Any, ResetTransport]:
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    t = ResetTransport(name)
    p.connection_made(stand_in(t))
    return p, t


async def test_a_stopping_cp_resets_the_connections_whose_hellos_and_byes_wait(tmp_path: Path) -> None:
    """At the stop (CPServer.shutdown's logons.close), every connection still waiting in the
    queue is aborted: its hello's terminal logs on at the next CP, its bye's is logged off as the
    connection goes (mutant: close() for abort, a graceful close that flushes and lingers, and
    for a waiting bye logs the terminal off there and then instead)."""
    cp = cp_core(tmp_path, logons.BURST + 6)
    fake_host(cp, "host-a", "active")
    names = sorted(cp.terms)
    early = [_connect(cp, n) for n in names[:-3]]
    for (p, _), n in zip(early, names, strict=False):
        p.data_received(encode({"t": "hello", "terminal": n, "last_reply": 0}))
    await until(lambda: cp.connected == len(early), "the first logons")
    byes = early[-3:]
    for p, _ in early:  # a burst's worth of byes in this turn: the last three wait
        p.data_received(encode({"t": "bye"}))
    hellos = [_connect(cp, n) for n in names[-3:]]
    for (p, _), n in zip(hellos, names[-3:], strict=True):
        p.data_received(encode({"t": "hello", "terminal": n, "last_reply": 0}))
    assert len(cp.logons.queue) == 6 and all(p.bye_waiting for p, _ in byes)
    cp.logons.close()
    assert not cp.logons.queue
    assert [t.how for _, t in byes + hellos] == ["abort"] * 6
    assert not any(p.term.leaving for p, _ in byes), "a waiting bye was logged off at the stop, before its connection went"
