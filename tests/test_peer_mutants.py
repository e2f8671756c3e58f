"""The peer link (hsb.host.peer) and the rejoin at the start (hsb.host.rejoin), as a mutation audit
of both found them still untested: the receiving side's authentication time for a long heartbeat
timeout, the 5 s wait after a refusal, the heartbeat timeout itself (the floor of the sending
connection's TCP user timeout is tests/test_peer_link_edges.py's); and which refusals at the start rejoin, and the active's name read from
an empty `active` field. Real loopback sockets in-process, the helpers of
tests/test_peer_link_edges.py; the wait after a refusal is read from a stand-in for
`event_within`, the heartbeat timeout on a stand-in clock, not timed; the rejoin on a stand-in HA
(tests/test_rejoin.py's)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

import hsb.host.peer as peer_mod
from hsb.cli import EXIT_NOT_ACTIVE
from tests.support.inproc import until
from tests.test_peer_link_edges import Calls, addr, fake, link, started
from tests.test_rejoin import _HA

pytestmark = pytest.mark.timeout(30)


async def test_an_unauthenticated_connection_is_given_four_heartbeat_timeouts_when_that_is_over_2_s() -> None:
    """The receiving side's auth timeout is max(4 x heartbeat_timeout, 2 s): with a 1 s heartbeat
    timeout, 4 s (not twice the timeout, nor the 2 s floor)."""
    a = link("host-a", addr(), addr(), interval=0.05, timeout=1.0)
    async with started(a):
        host, port = a.bound.rsplit(":", 1)
        _, w = await asyncio.open_connection(host, int(port))
        try:
            await until(lambda: a.accepted, "the connection accepted")
            [proto] = a.accepted
            assert proto._auth_timeout == 4.0
        finally:
            w.close()


async def test_a_refused_connection_waits_5_s_before_the_next_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal (auth_failed here) is tried again in 5 s, not on the backoff nor sooner: the wait
    the sender asks `event_within` for is 5.0."""
    waits: list[float] = []
    forever = asyncio.Event()

    async def recorded(ev: asyncio.Event, seconds: float) -> bool:
        waits.append(seconds)
        await forever.wait()  # (cancelled at close)
        return True

    monkeypatch.setattr(peer_mod, "event_within", recorded)
    async with fake(["error:auth_failed"]) as f:
        a = link("host-a", addr(), f.addr)
        async with started(a):
            await until(lambda: waits, "the sender waiting after the refusal")
            assert waits == [5.0]


async def test_the_peer_is_lost_once_silent_for_just_over_the_heartbeat_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """The monitor declares the peer lost at the first check after `heartbeat_timeout` of silence
    (0.51 s of a 0.5 s timeout on a stand-in clock), not at some multiple of it, and closes the
    receiving connection; exactly the timeout is not yet past it (three checks say nothing)."""
    now = [100.5]
    reads: list[float] = []

    def monotonic() -> float:
        reads.append(now[0])
        return now[0]

    monkeypatch.setattr(peer_mod, "time", SimpleNamespace(monotonic=monotonic))
    calls = Calls()
    a = link("host-a", addr(), addr(), calls, interval=0.01, timeout=0.5)
    a.up, a.last_rx = True, 100.0
    closed: list[bool] = []
    a.inbound = SimpleNamespace(close=lambda: closed.append(True))  # type: ignore[assignment]
    task = asyncio.create_task(a._monitor())
    try:
        await until(lambda: len(reads) >= 3 or calls.downs, "three checks of the monitor at exactly the timeout")
        assert calls.downs == [] and closed == [] and a.up
        now[0] = 100.51
        await until(lambda: calls.downs, "the peer declared lost")
        assert calls.downs == ["no heartbeat for 0.510s"] and closed == [True] and a.inbound is None and not a.up
    finally:
        task.cancel()


# -- hsb.host.rejoin -----------------------------------------------------------------------------


def test_a_refusal_once_past_starting_is_no_rejoin_but_exit_76() -> None:
    """Only a host still `starting` rejoins as the standby: a refusal as the active once it is
    past that (batch_writing, say) exits 76 with `start_refused`, its role untouched."""
    from hsb.host.rejoin import refused_at_start

    ha: Any = _HA(rejoin=True)
    ha.state = "batch_writing"
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)", "active": "host-b"})
    assert ha.failed == [(EXIT_NOT_ACTIVE, "refused by the CP: host-b is already the active host (epoch 3)", "start_refused")]
    assert ha.role == "active" and ha.srv.rejoined_from is None and ha.srv.states == 0


def test_an_empty_active_field_is_read_from_the_message_and_no_name_at_all_is_a_question_mark() -> None:
    """The CP's `active` field empty counts as absent: the active's name is the message's first
    word; with neither, it is "?"."""
    from hsb.host.rejoin import refused_at_start

    ha: Any = _HA(rejoin=True)
    refused_at_start(ha, {"t": "error", "code": "active_exists", "msg": "host-b is already the active host (epoch 3)", "active": ""})
    assert ha.role == "standby" and ha.srv.rejoined_from == "host-b"
    bare: Any = _HA(rejoin=True)
    refused_at_start(bare, {"t": "error", "code": "active_exists"})
    assert bare.role == "standby" and bare.srv.rejoined_from == "?"
