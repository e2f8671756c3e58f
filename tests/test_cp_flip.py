"""The flip at a grant (hsb.cp.flip), in-process and in small slices: it writes the terminals'
session slots directly, not through their setters, so every terminal must come out of it with
its sessions where they belong and the CP's totals in agreement with them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host, fake_terminal

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}


def _agree(cp: Any) -> None:
    """The totals are what a walk over the terminals counts."""
    assert cp.counts.active == sum(t.active is not None for t in cp.terms.values())
    assert cp.counts.standby == sum(t.standby is not None for t in cp.terms.values())


async def _flipped(cp: Any) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while cp.flipping is not None:
        assert loop.time() - t0 < 5.0, "the flip never finished"
        await asyncio.sleep(0)


def _setup(tmp_path: Path, keeps: bool) -> tuple[Any, Any, Any, list[str]]:
    """40 terminals: 1-20 with both sessions and a held message, 21-25 an active session only,
    26-30 connected without a session, 31-35 with both sessions and then gone."""
    cp = cp_core(tmp_path, 40, width=2, cp="flip_slice = 7\n")
    a = fake_host(cp, "host-a", "active", keeps=keeps)
    b = fake_host(cp, "host-b", "standby")
    names = sorted(cp.terms)
    conns = {}
    for i, name in enumerate(names, 1):
        if i > 35:
            continue
        conns[name] = fake_terminal(cp, name)
        if i <= 25 or i > 30:
            cp.host_open(a, name, "active", ATTRS)
        if i <= 20 or i > 30:
            cp.host_open(b, name, "standby", ATTRS)
        if i <= 20:
            cp.terminal_msg(cp.terms[name], 1, b"x")
    for name in names[30:35]:
        conns[name].connection_lost(None)
    _agree(cp)
    assert cp.counts.active == 20 + 5 and cp.counts.standby == 20 + 5
    return cp, a, b, names


async def test_a_failover_flip_in_slices_leaves_every_terminal_consistent(tmp_path: Path) -> None:
    cp, a, b, names = _setup(tmp_path, keeps=False)
    a.connection_lost(None)  # the active's link is gone: the standby asks
    cp.host_switchover(b, "test", False, "failover")
    await _flipped(cp)
    assert cp.switchovers[-1]["slices"] > 1  # in slices, a turn of the loop between them
    _agree(cp)
    for name in names[:20]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and t.standby is None, name
        assert len(t.held) == 1 and all(h.delivered_epoch == cp.epoch for h in t.held.values()), name  # re-delivered to B
    for name in names[20:25]:  # no standby session: the classic path closed them
        assert cp.terms[name].active is None and cp.terms[name].conn.closed, name
    for name in names[30:35]:  # gone before the switch: nothing switched
        assert cp.terms[name].active is None and cp.terms[name].standby is None, name


async def test_a_planned_flip_keeps_the_demoted_actives_sessions_as_standby_ones(tmp_path: Path) -> None:
    cp, a, b, names = _setup(tmp_path, keeps=True)
    cp.host_release(a)
    cp.host_handover(a, wait=False)
    await _flipped(cp)
    assert cp.active is b and cp.standby is a and cp.switchovers[-1]["slices"] > 1
    _agree(cp)
    for name in names[:20]:
        t = cp.terms[name]
        assert t.active is not None and t.active.host is b and t.standby is not None and t.standby.host is a, name
