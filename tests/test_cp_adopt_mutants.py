"""The adoption at the CP (hsb/cp/adopt.py), a short second mutation audit after
tests/test_cp_flip_mutants.py's, each test naming a behaviour it found no test for: an `adopt`
naming a terminal the CP does not define is answered with its session closed, and the handed
ids an active names only ever raise a terminal's floor of ids marked redelivered.

The audit: 24 mutants; 16 killed by the tests before, 2 more by these; 4 equivalent as the first
audit found (the flip settled on an adopt: only a redundant session_request, which hsbd answers
as it is; the logoff flag reset when the later run's session opens; a terminal without an active
session owes no notice); 2 left open (a terminal back to an adopted session while a handover
waits, owed a standby session; the expiry's `session_closed` to a host no longer usable)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cpcore import adopting_active

pytestmark = pytest.mark.timeout(30)


async def test_a_session_named_for_a_terminal_the_cp_does_not_define_is_closed_at_the_active(tmp_path: Path) -> None:
    """The active names a session of T09999, a terminal this CP's config does not define (removed
    by a reload while the CP was down): the CP adopts nothing for it and tells the active that
    session is closed (with why), so its service does not hold it for good."""
    cp, a = adopting_active(tmp_path)
    cp.host_adopt(a, [("T09999", {}), ("T00001", {})], last=True)
    a.flush()
    closed = [(f["terminal"], f["reason"]) for f in a.transport.frames() if f["t"] == "session_closed"]
    assert closed == [("T09999", "terminal 'T09999' is not defined at the CP")], closed
    assert "T09999" not in cp.terms and cp.counters["adopted"] == 1


async def test_the_handed_ids_an_active_names_only_raise_a_terminals_floor(tmp_path: Path) -> None:
    """Two `adopt` frames name T00001's highest id handed to the service, 9 then 5 (a chunk of
    before, say): the floor stays 9, so message 7, handed once, is still marked redelivered at
    its next delivery."""
    cp, a = adopting_active(tmp_path)
    cp.host_adopt(a, [], last=False, handed={"T00001": 9})
    cp.host_adopt(a, [], last=True, handed={"T00001": 5, "T00002": 3})
    assert cp.terms["T00001"].handed_floor == 9 and cp.terms["T00002"].handed_floor == 3
