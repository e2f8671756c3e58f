"""The flip at a grant (hsb.cp.flip), in-process and in small slices: it writes the terminals'
session slots directly, not through their setters, so every terminal must come out of it with
its sessions where they belong and the CP's totals in agreement with them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.transports import CountingTransport

pytestmark = pytest.mark.timeout(30)

ATTRS = {"protocol": "hsb1"}


def _cp(tmp_path: Path, n: int) -> Any:
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP

    (tmp_path / "s").write_text("secret\n")
    (tmp_path / "s").chmod(0o600)
    p = tmp_path / "cp.toml"
    p.write_text(
        '[cp]\nsecret_file = "s"\ndurability = "none"\nflip_slice = 7\n'
        f'[[terminal_groups]]\nprefix = "T"\nwidth = 2\ncount = {n}\nstandby_capable = true\n'
    )
    return CP(load(p, CPConfig), None)


def _host(cp: Any, name: str, role: str, keeps: bool = False) -> Any:
    from hsb.cp.host_link import HostProtocol

    h = HostProtocol(cp, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)
    h.connection_made(CountingTransport(name))
    h.clear_deadline()
    h.authed = True
    h.name = name
    h.keeps_standby = keeps
    cp.host_register(h, role, 1)
    return h


def _logon(cp: Any, name: str) -> Any:
    from hsb.cp.terminal_link import TerminalProtocol

    p = TerminalProtocol(cp, hello_timeout=5.0, idle_after_hello=None)
    p.connection_made(CountingTransport(name))
    p.clear_deadline()
    cp.terminal_hello(p, name, 0)
    return p


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
    cp = _cp(tmp_path, 40)
    a = _host(cp, "host-a", "active", keeps)
    b = _host(cp, "host-b", "standby")
    names = sorted(cp.terms)
    conns = {}
    for i, name in enumerate(names, 1):
        if i > 35:
            continue
        conns[name] = _logon(cp, name)
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
