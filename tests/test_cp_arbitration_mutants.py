"""Tests from a mutation audit of hsb/cp/arbitration.py: who may ask for the active role and
when the operator's pause refuses it (docs/design.md, SPEC §5.4: "paused: no automatic failover;
a planned switchover and a promote still work")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.cpcore import cp_core, fake_host

pytestmark = pytest.mark.timeout(30)


def _said(h: Any, t: str) -> list[dict[str, Any]]:
    h.flush()
    return [m for m in h.transport.frames() if m["t"] == t]


async def test_only_the_registered_standby_may_ask_for_the_role(tmp_path: Path) -> None:
    """A host that is not the registered standby (one not registered at all, or the active itself)
    is refused, and nothing changes: the active stays, no new epoch."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active", record=True)
    fake_host(cp, "host-b", "standby")
    c = fake_host(cp, "host-c", record=True)
    epoch = cp.epoch
    for h in (c, a):
        cp.host_switchover(h, "test", False, "failover")
        [refusal] = _said(h, "switch_refused")
        assert refusal["reason"] == "only the registered standby host may ask for a switchover"
        assert not _said(h, "switch_granted")
    assert cp.active is a and cp.epoch == epoch


async def test_paused_refuses_an_automatic_failover_only(tmp_path: Path) -> None:
    """Paused by the operator: the standby's failover request after the active's loss is refused;
    a planned switchover the active released, and a promote, are still granted."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    a.connection_lost(None)
    cp.host_switchover(b, "active lost", False, "failover")
    [refusal] = _said(b, "switch_refused")
    assert refusal["reason"].startswith("paused by the operator")
    assert cp.active is not b and not _said(b, "switch_granted")

    (tmp_path / "planned").mkdir()
    cp = cp_core(tmp_path / "planned", 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    cp.host_release(a)
    cp.host_switchover(b, "planned", True, "failover")
    assert cp.active is b and _said(b, "switch_granted") and not _said(b, "switch_refused")

    (tmp_path / "promote").mkdir()
    cp = cp_core(tmp_path / "promote", 2)
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.set_paused(True, "test")
    cp.host_switchover(b, "operator", False, "promote")
    assert cp.active is b and _said(b, "switch_granted") and not _said(b, "switch_refused")


async def test_after_a_restart_the_role_waits_for_the_recorded_actives_lease(tmp_path: Path) -> None:
    """A CP restarted on a journal that names host-a the active: host-b, the standby, asks for the
    role before host-a registered again. A lease the CP before renewed may still run, so the
    request is deferred (neither granted nor refused) until the restart's wait is over."""
    from hsb.cp.journal.recovery import Recovered, apply

    cp = cp_core(tmp_path, 2)
    r = Recovered()
    apply(r, ["ck", 3, "host-a", 1, {}, {}], 1)
    cp.restore(r)
    b = fake_host(cp, "host-b", "standby", record=True)
    assert cp.restart_lease_left(b) > 0
    try:
        cp.host_switchover(b, "active lost", False, "failover")
        assert cp.active is None and cp.epoch == 3 and cp.deferred_grant is not None
        assert not _said(b, "switch_granted") and not _said(b, "switch_refused")
    finally:
        cp.cancel_deferred_grant()


async def test_an_active_silent_for_less_than_host_timeout_keeps_the_role(tmp_path: Path) -> None:
    """The active's lease has surely run out only once it has been silent for host_timeout: a
    standby asking while it was heard three quarters of that ago is refused, the active kept."""
    import time

    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    a.last_rx = time.monotonic() - 0.75 * cp.host_timeout
    cp.host_switchover(b, "active silent", False, "failover")
    [refusal] = _said(b, "switch_refused")
    assert "it is alive on its host link" in refusal["reason"]
    assert cp.active is a and not a.fenced and not _said(b, "switch_granted")


async def test_a_release_lets_only_a_planned_request_through(tmp_path: Path) -> None:
    """The active released the role for a planned switchover: the standby's unplanned failover
    request meanwhile is refused (the active is alive), not granted as if planned."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby", record=True)
    cp.host_release(a)
    cp.host_switchover(b, "not planned", False, "failover")
    [refusal] = _said(b, "switch_refused")
    assert "it is alive on its host link" in refusal["reason"]
    assert cp.active is a and not a.fenced and not _said(b, "switch_granted")
