"""The role-change hook (`on_role_change`) hears when the active stops acting as the active
without a role change, and when it acts again: a command that holds a virtual address for the
active must give it up then, or two hosts answer on it. hsbcpd and both hsbd in this process
(tests/support/inproc.py); the hook's runs are recorded, not run."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsb.host.server import HostServer
from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


def recorded(h: HostServer) -> list[tuple[str, str, int, str]]:
    runs: list[tuple[str, str, int, str]] = []
    h.hook.fire = lambda role, state, epoch, reason: runs.append((role, state, epoch, reason))  # type: ignore[method-assign]
    return runs


async def test_an_active_cut_off_from_the_cp_is_announced_not_serving_then_serving_again(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        runs = recorded(a)
        core = cp.cp
        assert core is not None and core.active is not None
        core.paused = True  # (no failover meanwhile: host-a comes back as the active)
        core.active.abort()  # the CP's end of host-a's link: host-a loses its link and its lease
        await until(lambda: any(r[:2] == ("active", "not_serving") for r in runs), "host-a's hook told it does not serve")
        await until(lambda: a.is_serving_active(), "host-a registered again as the active")
        await until(lambda: runs[-1][0] == "active" and runs[-1][1] != "not_serving", "host-a's hook told it serves again")
        assert [r[1] == "not_serving" for r in runs].count(True) == 1, runs


async def test_a_normal_stop_of_the_active_is_announced(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        runs = recorded(a)
        a.request_stop(takeover=False)
        await asyncio.wait_for(a.graceful_stop(), 15)
        assert ("active", "stopping") in [r[:2] for r in runs], runs


async def test_a_host_that_keeps_acting_runs_no_hook(tmp_path: Path) -> None:
    """No run while nothing changes for the active (state changes that keep it acting: none)."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        runs = recorded(a)
        for _ in range(3):
            a.on_state_change()
        assert runs == []


async def test_a_planned_switchover_tells_the_old_active_why_it_stops_acting(tmp_path: Path) -> None:
    """The handover stops the old active acting before its demotion: the run says so (it said
    'its lease from the CP ran out', or a stale error of another link)."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        runs = recorded(a)
        a.ha.post("switchover")
        await until(lambda: b.ha.role == "active" and b.is_serving_active(), "host-b the active")
        await until(lambda: any(r[0] == "standby" for r in runs), "host-a's hook told it is the standby")
        not_serving = [r for r in runs if r[:2] == ("active", "not_serving")]
        assert not_serving and "handing over" in not_serving[0][3], runs


async def test_the_first_runs_name_the_state_each_host_holds_not_starting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The active's first run, at its registration, said `active starting EPOCH registered with
    the CP as the active`: the CP's answer is read ahead of the HA loop, which moves it from
    `starting` to `serving`; a command told `starting` cannot tell that the host now acts as the
    active (docs/operations.md §9: it first holds the role). Both first runs name a state of the
    role they hold."""
    from hsb.host.hooks import RoleHook

    runs: list[tuple[str, str, str]] = []
    monkeypatch.setattr(RoleHook, "fire", lambda self, role, state, epoch, reason: runs.append((role, state, reason)))
    async with pair_in_hot_standby(tmp_path, EchoService):
        first = {role: (state, reason) for role, state, reason in reversed(runs)}
        assert first["active"] == ("serving", "registered with the CP as the active"), runs
        assert first["standby"][0] == "waiting_for_active", runs
        assert all(state != "starting" for _, state, _ in runs), runs
