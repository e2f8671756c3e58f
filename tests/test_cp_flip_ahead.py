"""A frame about one terminal during a grant's sliced flip (hsb.cp.flip): it flips that terminal
alone, ahead of the pass (`CP.settle_flip_for`), not the whole pass in one turn of the loop;
the terminal's held messages reach the new active once, in order, and the pass passes it over.
What changes more than one terminal (a host registering) still completes the flip at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import agree_counts, fake_host, fake_terminal, flip_pair, flipped, switch

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}
N, HELD = 64, 3  # terminals, messages each holds: 1 + 3 of a slice of 4, a terminal a turn


def _setup(tmp_path: Path, keeps: bool = False) -> tuple[Any, Any, Any, list[str], dict[str, Any]]:
    """N terminals with sessions at A (active) and B (standby), each holding HELD messages
    delivered to A (more than one in eight hold: the pass keeps table order); B records."""
    cp, a, b, names, conns = flip_pair(tmp_path, N, keeps, ATTRS)
    for name in names:
        for mid in range(1, HELD + 1):
            cp.terminal_msg(cp.terms[name], mid, f"{name}-{mid}".encode())
    for name in names:
        assert all(h.delivered_epoch == cp.epoch for h in cp.terms[name].held.values()), name
    return cp, a, b, names, conns


def _grant(cp: Any, a: Any, b: Any, planned: bool) -> Any:
    """A failover to B (A's link lost), or a planned switchover from A; the flip going (its first
    slice run inside the grant)."""
    switch(cp, a, b, planned)
    f = cp.flipping
    assert f is not None and 0 < f.i < N // 2, "the flip should be going, a terminal a slice"
    return f


def _unreached(cp: Any, b: Any) -> list[str]:
    """The terminals whose standby session at B the flip has not switched yet."""
    return [n for n, t in cp.terms.items() if t.standby is not None and t.standby.host is b]


def _deliveries(b: Any) -> list[tuple[str, int, bool]]:
    """(terminal, id, redelivered) of everything B was handed, in order."""
    b.flush()
    out: list[tuple[str, int, bool]] = []
    for m in b.transport.frames():
        if m["t"] == "deliver_batch":
            out += [(it[0], it[1], bool(it[3])) for it in m["items"]]
        elif m["t"] == "deliver":
            out.append((m["terminal"], m["id"], bool(m["redelivered"])))
    return out


def _once_each(got: list[tuple[str, int, bool]], names: list[str]) -> None:
    """Every terminal's held messages went to B exactly once, in id order, marked redelivered
    (A had them)."""
    for name in names:
        mine = [(i, again) for n, i, again in got if n == name]
        assert mine == [(i, True) for i in range(1, HELD + 1)], (name, mine)


@pytest.mark.parametrize("frame", ["bye", "standby_open", "host_close"])
async def test_a_frame_about_one_unreached_terminal_flips_that_terminal_alone(tmp_path: Path, frame: str) -> None:
    """Mid-flip, a frame about the last terminal in the table (its bye; the demoted active of a
    planned switchover opening its standby session; the new active closing the session it had as
    standby): that terminal alone is flipped, its messages handed to B at once, in order; the
    flip goes on in its slices from where it was, and later passes it over (nothing sent twice).
    Before, the frame settled the whole flip in one turn of the loop."""
    planned = frame == "standby_open"
    cp, a, b, names, conns = _setup(tmp_path)
    f = _grant(cp, a, b, planned)
    x = names[-1]
    at, unreached, sent = f.i, _unreached(cp, b), len(_deliveries(b))
    assert x in unreached
    if frame == "bye":
        cp.terminal_bye(cp.terms[x])
    elif frame == "standby_open":
        assert cp.standby is a
        cp.host_open(a, x, "standby", ATTRS)
    else:
        cp.host_close(b, x, "standby")  # sent before B heard of its grant
    assert cp.flipping is f and f.i == at, "the whole flip was settled for one terminal's frame"
    assert _unreached(cp, b) == [n for n in unreached if n != x]
    assert f.ahead == 1
    now = _deliveries(b)[sent:]
    assert now == [(x, i, True) for i in range(1, HELD + 1)], now
    t = cp.terms[x]
    if frame == "bye":
        assert t.active is None and t.leaving
    elif frame == "standby_open":
        assert t.active is not None and t.active.host is b and t.standby is not None and t.standby.host is a
    else:
        assert t.active is None
        b.flush()
        asked = [m for m in b.transport.frames() if m["t"] == "session_request" and m["terminal"] == x]
        assert len(asked) == 1, asked
    await flipped(cp)
    agree_counts(cp)
    got = _deliveries(b)
    _once_each(got, names)
    assert len(got) == N * HELD
    b.flush()
    mine = [m["t"] for m in b.transport.frames() if m.get("terminal") == x and m["t"] in ("session_request", "session_closed")]
    assert mine == ([] if frame == "standby_open" else ["session_closed"] if frame == "bye" else ["session_request"]), mine
    rec = cp.switchovers[-1]
    assert rec["switched"] == N and rec["classic"] == 0 and rec["ahead"] == 1 and rec["slices"] > 1, rec
    assert len(cp.switchovers) == 1  # the flip's end (`done`) once
    assert cp.counters["redelivered"] == N * HELD  # (new at A, counted delivered there)
    for name in names[:-1]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and not t.conn.closed, name


async def test_a_hello_for_an_unreached_terminal_flips_that_terminal_alone(tmp_path: Path) -> None:
    """The last terminal's connection is lost mid-flip and it logs on again: the flip closes its
    session switched to B (its connection was gone) and nothing else; the hello asks B for a
    new session, and once B opens it the terminal's messages go to B, once, in order, and not
    again when the pass reaches it."""
    cp, a, b, names, conns = _setup(tmp_path)
    f = _grant(cp, a, b, planned=False)
    x = names[-1]
    conns[x].connection_lost(None)  # (no flip for a terminal going away)
    assert cp.flipping is f and x in _unreached(cp, b)
    at, unreached, sent = f.i, _unreached(cp, b), len(_deliveries(b))
    fake_terminal(cp, x)  # its hello
    assert cp.flipping is f and f.i == at, "the whole flip was settled for one terminal's hello"
    assert _unreached(cp, b) == [n for n in unreached if n != x] and f.ahead == 1
    b.flush()
    mine = [m for m in b.transport.frames() if m.get("terminal") == x and m["t"] != "opened"]  # (its standby open)
    assert [(m["t"], m.get("reason")) for m in mine] == [("session_closed", "disconnect"), ("session_request", None)], mine
    cp.host_open(b, x, "active", ATTRS)
    assert _deliveries(b)[sent:] == [(x, i, True) for i in range(1, HELD + 1)]
    await flipped(cp)
    agree_counts(cp)
    got = _deliveries(b)
    _once_each(got, names)
    assert len(got) == N * HELD
    rec = cp.switchovers[-1]
    assert rec["switched"] == N - 1 and rec["ahead"] == 1 and rec["requested"] == 0, rec


async def test_a_terminal_reached_already_is_not_flipped_again(tmp_path: Path) -> None:
    """A frame about a terminal the pass has reached flips nothing (it is the new active's)."""
    cp, a, b, names, conns = _setup(tmp_path)
    f = _grant(cp, a, b, planned=False)
    first = names[0]
    assert first not in _unreached(cp, b)
    sent = len(_deliveries(b))
    at = f.i
    cp.terminal_bye(cp.terms[first])
    assert cp.flipping is f and f.i == at, "the whole flip was settled for one terminal's frame"
    assert f.ahead == 0 and len(_deliveries(b)) == sent
    await flipped(cp)
    _once_each(_deliveries(b), names)


@pytest.mark.parametrize("keeps", [False, True])
async def test_a_global_event_after_a_terminal_flipped_ahead_still_settles_the_whole_flip(tmp_path: Path, keeps: bool) -> None:
    """A terminal flipped ahead (its bye), then a host registers as the standby (after a
    failover), or the standby is lost (the demoted active of a planned switchover):
    the rest of the flip is completed at once, before the registration; the terminal flipped
    ahead is not flipped twice, every message reaches B once, the flip ends once."""
    cp, a, b, names, conns = _setup(tmp_path, keeps=keeps)
    f = _grant(cp, a, b, planned=keeps)
    x = names[-1]
    cp.terminal_bye(cp.terms[x])
    assert cp.flipping is f and f.ahead == 1
    if keeps:
        a.connection_lost(None)  # the standby lost: global
    else:
        fake_host(cp, "host-c", "standby")  # registers: global
    assert cp.flipping is None, "a global event did not settle the flip"
    assert not _unreached(cp, b)
    agree_counts(cp)
    got = _deliveries(b)
    _once_each(got, names)
    assert len(got) == N * HELD
    rec = cp.switchovers[-1]
    assert rec["switched"] == N and rec["ahead"] == 1 and len(cp.switchovers) == 1, rec
    for name in names[:-1]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b, name
