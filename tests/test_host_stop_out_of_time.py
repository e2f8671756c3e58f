"""A stop (SIGTERM, `hsbctl stop`) whose handover runs out of time while hot standby is still
established ends as a lost link to the CP, and the CP fails over to the standby: the terminals see
a pause, never an outage (SPEC §5.3: a normal termination, nobody taking over, only on purpose).

The CP is slow (its journal stalled, say): it does not confirm the release, or does not answer the
handover. The stop ran the normal termination after that, and the CP, taking its `stopping`,
closed every terminal's session and kept the standby from taking over: an outage until an
operator ran `hsbctl promote`. A CP that refuses the handover (it has no standby) still gets the
normal stop: there is nobody to fail over to (tests/test_host_stop_edges.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.host import server as server_mod
from hsb.host import stopping as stopping_mod
from hsb.service.builtin import EchoService
from tests.support.hostclient import FakeTerminal
from tests.support.inproc import pair_in_hot_standby, short_hand_over, until
from tests.support.logrec import RecordingLog

pytestmark = pytest.mark.timeout(60)

HOST_TIMEOUT = 0.5  # the CP's, in pair_in_hot_standby


@pytest.mark.parametrize("slow", ["release", "handover"])
async def test_a_stop_out_of_time_with_hot_standby_fails_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str) -> None:
    """The CP never confirms the stop's release (or never answers its handover) within the stop's
    limit: host-a ends as a lost link, host-b is made active, and the terminal's session stays
    open and is served by host-b: no `session closed`, its message answered once."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "HANDOVER_ANSWER_S", 0.3)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None
        if slow == "release":
            core.host_release = lambda host: None  # type: ignore[method-assign]
        else:
            core.host_handover = lambda host, wait=True: None  # type: ignore[method-assign]
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00001")
        await t.wait(lambda m: m.get("t") == "session" and m.get("state") == "open")
        short_hand_over(a, monkeypatch, 0.3)
        a.request_stop(takeover=True)
        await asyncio.wait_for(a.graceful_stop(), 20)
        [failed] = rec.events("stop_handover_failed")
        assert failed["then"] == "failover", failed
        assert not rec.events("stop_not_registered"), rec.entries
        assert a.exit_code == 0
        # what the role-change hook says of a stop that leaves the role to a failover
        assert a.ha.state == "stopping" and "ran out of time" in a.ha._not_acting_why(), a.ha._not_acting_why()
        # what serve() does after graceful_stop(): the HA loop ends and the links close
        tasks[1].cancel()
        await asyncio.gather(tasks[1], return_exceptions=True)
        await a.close()
        await until(lambda: b.ha.role == "active" and b.ha.serving, "host-b made active", timeout=HOST_TIMEOUT + 5)
        t.send({"t": "msg", "id": 1, "data": "after the stop"})
        reply = await t.wait(lambda m: m.get("t") == "reply" and m.get("id") == 1)
        assert reply["data"] == "after the stop"
        closed = [m for m in t.inbox if m.get("t") == "session" and m.get("state") != "open"]
        assert closed == [], t.inbox
        assert [m for m in t.inbox if m.get("t") == "reply"] == [reply], t.inbox
        await t.close()


async def test_a_stop_whose_handover_is_refused_still_stops_normally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A handover the CP refuses (no standby registered there) is not out of time: the normal
    stop follows (nobody to fail over to), as before."""
    rec = RecordingLog()
    monkeypatch.setattr(server_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "log", rec)
    monkeypatch.setattr(stopping_mod, "STOP_HANDOVER_S", 0.6)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        core = cp.cp
        assert core is not None

        def refuse(host: Any, wait: bool = True) -> None:
            host.released = False
            host.send({"t": "handover_refused", "reason": "no standby host is registered at the CP", "code": "no_standby"})

        core.host_handover = refuse  # type: ignore[method-assign]
        a.request_stop(takeover=True)
        await asyncio.wait_for(a.graceful_stop(), 20)
        [failed] = rec.events("stop_handover_failed")
        assert failed["then"] == "normal stop", failed
        assert not a.handover_timed_out
        await until(lambda: b.ha.state == "active_stopped", "host-b told of a normal stop", timeout=10)
        assert b.ha.role == "standby"
