"""The pair's frame sizes (hsb/cp/pair_frames.py; docs/protocol.md §2 `max_frame`), each test
naming a behaviour that a mutation audit of the module found no test for: a host registering
again goes last in the pair's order (and the journal is told the new order); a third host taking
a place drops only the oldest of the hosts holding no role, and never one demoting or being
granted the role; `max_frame_mismatch` only when frames are learnt or change, never for a host
that said none; a message whose reply is on its way is not refused (nor logged so) before a flip.

The audit (session 63): 31 hand-made mutants of pair_frames.py; 20 were killed by
tests/test_cp_host_frames.py, test_cp_terminal_link_mutants.py and test_cp_link_inputs.py; 8 are
killed here; 3 are equivalent (pruning tried at two hosts: it drops `len - 2` = none; the walk
of held messages before a flip also when the host's frames are not smaller than the CP's, at
`>` or always: the CP's own limit already kept every held message within them, so none is
refused, the walk only costs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from hsb.wire.framing import payload_max
from tests.support.cpcore import cp_core, fake_host

pytestmark = pytest.mark.timeout(30)

BIG, MID, SMALL = 64 * 1024, 16 * 1024, 8 * 1024


def _cp(tmp_path: Path) -> tuple[Any, list[Any]]:
    """A CP of max_frame BIG whose journal appends are recorded."""
    cp = cp_core(tmp_path, 2, cp=f"max_frame = {BIG}\n")
    out: list[Any] = []
    real = cp.journal.append

    def append(rec: Any, *more: Any, **kw: Any) -> Any:
        out.append(rec)
        return real(rec, *more, **kw)

    cp.journal.append = append
    return cp, out


def _register(cp: Any, name: str, role: str, max_frame: int) -> Any:
    h = fake_host(cp, name, None)
    h.max_frame = max_frame  # (as its register said)
    cp.host_register(h, role, 1)
    return h


async def test_a_host_registering_again_goes_last_and_the_journal_has_the_new_order(tmp_path: Path) -> None:
    """The pair is kept latest last: the host of the oldest registration is the one a third
    host's takes the place of. A host of the recorded pair registering again, with the frames it
    had, moves last, and the journal gets the new order (mutant: the host's entry updated in
    place, which kept it first and journalled nothing)."""
    cp, out = _cp(tmp_path)
    cp.restore_frames({"host-a": BIG, "host-b": SMALL})  # the pair a restarted CP's journal recorded
    _register(cp, "host-a", "active", BIG)
    assert list(cp.host_frames) == ["host-b", "host-a"]
    assert [r for r in out if r[0] == "f"] == [["f", [["host-b", SMALL], ["host-a", BIG]]]]


async def test_a_third_host_drops_only_the_oldest_of_those_holding_no_role(tmp_path: Path) -> None:
    """The journal recorded the pair B (small frames, the older) and C; after the restart A
    registers as the active: the pair is C and A, B alone gives way, and the limit is C's, the
    smaller of theirs (mutants: every host holding no role dropped, which lifted the limit to
    A's; the newest dropped instead of the oldest)."""
    cp, out = _cp(tmp_path)
    cp.restore_frames({"host-b": SMALL, "host-c": MID})
    _register(cp, "host-a", "active", BIG)
    assert cp.host_frames == {"host-c": MID, "host-a": BIG}
    assert cp.max_data == payload_max(MID)
    assert [r for r in out if r[0] == "f"] == [["f", [["host-c", MID], ["host-a", BIG]]]]


async def test_hosts_in_the_middle_of_a_switch_keep_their_frames_when_a_third_registers(tmp_path: Path) -> None:
    """During a switchover's grant the old active is demoting and the new one granting: neither
    is the active or the standby of the moment, but both hold a role, so a third host's
    registration drops neither, and the limit stays the smallest of the three (mutant: only the
    active and the standby counted as holding, which dropped the demoting host's small frames)."""
    from types import SimpleNamespace

    cp, _ = _cp(tmp_path)
    cp.restore_frames({"host-a": SMALL, "host-b": MID})
    cp.demoting, cp.granting = SimpleNamespace(name="host-a"), SimpleNamespace(name="host-b")
    assert cp.active is None and cp.recorded_active is None
    cp.standby = c = SimpleNamespace(name="host-c", max_frame=BIG)  # (its registration taken: the standby's role)
    cp._host_frame(c)
    assert cp.host_frames == {"host-a": SMALL, "host-b": MID, "host-c": BIG}
    assert cp.max_data == payload_max(SMALL)


async def test_a_host_registering_again_with_the_frames_it_had_is_not_warned_again(tmp_path: Path) -> None:
    """`max_frame_mismatch` is said when a host's frames are learnt or change (here at the
    restore, from the journal): its registering again with the same frames says nothing more,
    or every reconnect would repeat it (mutant: the `frame != before` test dropped)."""
    cp, _ = _cp(tmp_path)
    with structlog.testing.capture_logs() as logs:
        cp.restore_frames({"host-b": SMALL})
        _register(cp, "host-b", "standby", SMALL)
    assert [(e["event"], e["recorded"]) for e in logs if e["event"] == "max_frame_mismatch"] == [("max_frame_mismatch", True)]


async def test_a_host_of_an_older_hsb_that_said_no_max_frame_is_no_mismatch(tmp_path: Path) -> None:
    """A host of an older hsb says no max_frame (0, as the journal then records it): nothing is
    known to differ, so nothing is warned at the restore (mutant: the `frame and` test dropped,
    which warned "max_frame 0")."""
    cp, _ = _cp(tmp_path)
    with structlog.testing.capture_logs() as logs:
        cp.restore_frames({"host-a": 0, "host-b": BIG})
    assert not [e for e in logs if e["event"] == "max_frame_mismatch"]
    assert cp.max_data == payload_max(BIG)


async def test_a_message_whose_reply_is_on_its_way_is_not_refused_before_a_flip(tmp_path: Path) -> None:
    """Before a flip to a host of smaller frames, the held messages it cannot hold are answered
    with an error; one whose reply is already on its way is left to that reply, and no
    `message_too_large_for_host` error is logged for it, which would say it was answered with an
    error when it was not (mutant: the `replying` test dropped)."""
    from hsb.wire.framing import encode
    from tests.support.cpcore import recording_terminal

    cp, _ = _cp(tmp_path)
    p = recording_terminal(cp, "T00001", None)
    p.data_received(encode({"t": "msg", "id": 1, "data": b"x" * (payload_max(SMALL) + 10)}))
    term = cp.terms["T00001"]
    assert list(term.held) == [1], "the message was not taken"
    term.held[1].replying = True  # (its reply is on its way)
    h = fake_host(cp, "host-b", None)
    h.max_frame = SMALL
    with structlog.testing.capture_logs() as logs:
        cp.refuse_too_large(h)
    assert not [e for e in logs if e["event"] == "message_too_large_for_host"]
    p.flush()
    assert not [f for f in p.transport.frames() if f.get("t") == "reply"]
