"""hsbd's lifecycle in hsb/host/server.py (docs/design.md): the CP's per-terminal bound handed to
the service, what a lost CP link ends at once, the frames that take effect in link order, the
health and readiness answers, one reload per SIGHUP, the normal stop's steps (release, stopping,
the peer told whether the CP confirmed it; nothing told when not registered, fenced or demoted
meanwhile) and the close. In process, on a HostServer built and not started
(tests/support/unstarted.py, tests/support/hafakes.py); each test names a behaviour that a
mutation audit of the module found no test for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hsb.host import server as server_mod
from hsb.host.server import HostServer
from hsb.service import once
from tests.support.hafakes import Sent, until
from tests.support.unstarted import unstarted_active

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def active(tmp_path: Path) -> AsyncIterator[HostServer]:
    """An unstarted HostServer registered as the active (epoch 3); what it sends to the CP and to
    its peer is recorded in `srv.sent` (tests.support.hafakes.Sent)."""
    srv, _ = unstarted_active(tmp_path)
    srv.sent = Sent(srv)  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.ha.close()
        srv.takeover.stop_ring_writer()
        srv.delivery.cancel()


class BoundsService:
    """A service with a `cp_bounds` hook that records what it is told (and raises if asked to)."""

    def __init__(self, fail: bool = False) -> None:
        self.told: list[Any] = []
        self.fail = fail

    def cp_bounds(self, held_bound: int) -> None:
        self.told.append(held_bound)
        if self.fail:
            raise RuntimeError("the service's own bug")


# ---------------------------------------------------------------------- the CP's bound
async def test_the_cps_bound_reaches_the_service_and_every_exactly_once_helper(active: HostServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP's `held_bound` (an int) goes to the service's `cp_bounds` hook and to every
    exactly-once helper's prune (hsb.service.once.tell_cp_bounds); anything but an int (a
    boolean, which Python takes for one, included) goes to neither."""
    helpers: list[int] = []
    monkeypatch.setattr(once, "tell_cp_bounds", helpers.append)
    svc = BoundsService()
    active.service = svc  # type: ignore[assignment]
    for bad in (True, False, None, "64", 64.0):
        active.tell_service_bounds(bad)
    assert svc.told == [] and helpers == []
    active.tell_service_bounds(64)
    assert svc.told == [64] and helpers == [64]


async def test_a_service_whose_cp_bounds_hook_raises_is_logged_and_the_host_goes_on(active: HostServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's `cp_bounds` raising is its own bug: said in the log, never the
    registration's (nothing propagates to the CP link that called it)."""
    import structlog

    monkeypatch.setattr(once, "tell_cp_bounds", lambda n: None)
    svc = BoundsService(fail=True)
    active.service = svc  # type: ignore[assignment]
    with structlog.testing.capture_logs() as logs:
        active.tell_service_bounds(8)
    assert svc.told == [8]
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["service_error"]


# ---------------------------------------------------------------------- a lost CP link
async def test_a_lost_cp_link_cancels_the_call_in_progress_and_its_reply_never_goes(active: HostServer) -> None:
    """The CP link drops while the service works on a message: the call is cancelled at once
    (its reply would carry an epoch the CP no longer has, and the CP re-delivers the message,
    marked, to whoever serves next), and no reply is sent for it."""
    started = asyncio.Event()
    release = asyncio.Event()
    cancelled: list[int] = []

    class Slow:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            started.set()
            try:
                await release.wait()
            except asyncio.CancelledError:
                cancelled.append(message_id)
                raise
            return data

    active.delivery.service = Slow()  # type: ignore[assignment]
    active.delivery.deliver("T00001", 1, "x", False)
    await asyncio.wait_for(started.wait(), 5)
    active._cp_down("eof")
    await until(lambda: cancelled == [1], "the call in progress cancelled", timeout=5)
    release.set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert [m for m in active.sent.cp if m.get("t") == "reply"] == []  # type: ignore[attr-defined]


async def test_a_lost_cp_link_ends_the_grant_so_it_is_no_lease_lost(active: HostServer) -> None:
    """A lost CP link ends the active's grant at once: it then holds no role until registered
    again, which it says as its link lost (its role-change hook's reason), never as a lease that
    ran out (LEASE LOST, which would be an alarm of its own)."""
    ha = active.ha
    assert ha.granted
    active._cp_down("eof")
    assert not ha.granted and ha.lost_serving
    assert not ha.lease_lost
    assert "link to the CP is lost" in ha._not_acting_why()


async def test_the_cps_released_and_stopped_answer_the_stops_frames(active: HostServer) -> None:
    """The normal stop's `release` and `stopping` are confirmed by the CP's `released` and
    `stopped`, read in link order: each wait ends with the answer (True), not at its timeout."""
    for sent, answer, event in (("release", "released", active.cp_released), ("stopping", "stopped", active.cp_stopped)):
        told = asyncio.ensure_future(active._tell_cp({"t": sent, "epoch": 3}, event, 20.0, "unanswered"))
        await until(lambda sent=sent: any(m["t"] == sent for m in active.sent.cp), f"{sent} sent")  # type: ignore[attr-defined]
        active._cp_frame({"t": answer})
        assert await asyncio.wait_for(told, 5) is True


# ---------------------------------------------------------------------- health and readiness
def _code(srv: HostServer, path: str) -> int:
    return int(srv.routes()[path]()[0])


async def test_the_active_is_healthy_and_active_only_while_it_serves(active: HostServer) -> None:
    """/health and /active answer 200 for the active serving (or established), 503 once it is
    starting, stopping, fenced or handing over (a load balancer must not send work to a host
    about to give the role away), whatever its lease says."""
    ha = active.ha
    for state in ("serving", "established"):
        ha.set_state(state, "test")
        assert active.is_serving_active() and active.healthy(), state
        assert (_code(active, "/health"), _code(active, "/active")) == (200, 200), state
    for state in ("handing_over", "stopping", "fenced", "starting"):
        ha.set_state(state, "test")
        assert ha.serving  # (its lease valid all along)
        assert not active.healthy(), state
        assert _code(active, "/health") == 503, state
        assert not active.is_serving_active() or state == "starting", state


async def test_the_standby_is_healthy_only_registered_and_standby_only_established(tmp_path: Path) -> None:
    """A standby is healthy while registered at the CP (it could take over), not once its
    registration is lost; /standby answers 200 only with hot standby established."""
    from tests.support.hafakes import close, standby_host

    srv, _ = standby_host(tmp_path)
    try:
        ha = srv.ha
        ha.set_state("waiting", "test")
        assert srv.healthy() and _code(srv, "/health") == 200
        assert _code(srv, "/standby") == 503  # registered, not established
        ha.registered = False
        assert not srv.healthy() and _code(srv, "/health") == 503
    finally:
        close(srv)


async def test_readiness_is_told_once_when_the_active_serves_or_the_standby_is_established(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """systemd's READY=1 goes once: when the active serves (or is established), or when the
    standby is established; never again at later state changes."""
    from tests.support.hafakes import close, standby_host

    told: list[dict[str, Any]] = []
    monkeypatch.setattr(server_mod, "notify", lambda **kw: told.append(kw))
    srv, _ = standby_host(tmp_path)
    try:
        srv.ha.set_state("waiting", "test")
        srv.on_state_change()
        assert not [t for t in told if "READY" in t]
        srv.ha.set_state("established", "test")
        srv.on_state_change()
        srv.on_state_change()
        assert len([t for t in told if "READY" in t]) == 1
    finally:
        close(srv)
    told.clear()
    (tmp_path / "a").mkdir()
    a, _ = unstarted_active(tmp_path / "a")
    try:
        a.ha.set_state("established", "test")
        a.on_state_change()
        assert len([t for t in told if "READY" in t]) == 1  # (established: it serves)
        a.ha.set_state("serving", "test")
        a.on_state_change()
        assert len([t for t in told if "READY" in t]) == 1
    finally:
        close(a)


async def test_the_first_exit_code_asked_for_is_the_one_kept(active: HostServer) -> None:
    """Two reasons to exit (fenced, then a failure while stopping): the first one's code and
    message are the process's."""
    active.request_exit(75, "fenced")
    active.request_exit(1, "later")
    assert (active.exit_code, active.exit_msg) == (75, "fenced") and active.should_exit.is_set()


# ---------------------------------------------------------------------- frames in link order
def _recorded_calls(active: HostServer) -> list[tuple[str, int]]:
    """The (terminal, id) of each message `active` hands its service from now on (echoed)."""
    calls: list[tuple[str, int]] = []

    class Rec:
        async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
            calls.append((terminal, message_id))
            return data

    active.delivery.service = Rec()  # type: ignore[assignment]
    return calls


async def test_a_demotion_takes_effect_before_the_frames_behind_it(active: HostServer) -> None:
    """The CP's `demoted` ends the active role at once, in link order: its epoch is taken and a
    delivery read right behind it is not handed to the service (the new active gets it)."""
    calls = _recorded_calls(active)
    active._cp_frame({"t": "demoted", "epoch": 4, "active": "host-b"})
    assert active.ha.epoch == 4 and not active.ha.granted
    active._cp_frame({"t": "deliver", "terminal": "T00001", "id": 1, "data": "x"})
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls == []


@pytest.mark.parametrize("code", ["fenced", "active_exists", "handed_over"])
async def test_an_error_that_ends_the_role_takes_effect_at_once(active: HostServer, code: str) -> None:
    """The CP's error `fenced`, `active_exists` or `handed_over` ends the active role as it is
    read (before the HA loop turns): not granted any more, and a delivery right behind it is not
    handed to the service."""
    calls = _recorded_calls(active)
    active._cp_frame({"t": "error", "code": code, "msg": "test", "epoch": 4, "active": "host-b"})
    assert not active.ha.granted
    active._cp_frame({"t": "deliver", "terminal": "T00001", "id": 1, "data": "x"})
    for _ in range(20):
        await asyncio.sleep(0)
    assert calls == []


# ---------------------------------------------------------------------- SIGHUP
async def test_one_sighup_is_one_reload(active: HostServer) -> None:
    """A SIGHUP (its flag set, the HA loop then starting the reload) reloads once: the flag it
    set is not taken for a second SIGHUP that came while the reload ran."""
    runs: list[int] = []

    async def reload() -> None:
        runs.append(1)
        await asyncio.sleep(0)

    active.reload = reload  # type: ignore[method-assign]
    active._sighup()
    active.start_reload()  # (the HA loop's ev_reload)
    for _ in range(3):
        fut = active._reloading
        assert fut is not None
        await asyncio.wait_for(fut, 5)
        for _ in range(10):
            await asyncio.sleep(0)
    assert runs == [1]


# ---------------------------------------------------------------------- the normal stop
async def _normal_stop(srv: HostServer, answer: tuple[str, ...]) -> None:
    """`srv`'s normal stop (`hsbctl stop --no-takeover`), the CP answering the frames named in
    `answer` ("release" with `released`, "stopping" with `stopped`) as they are sent."""
    srv.ha.registered = True
    srv.request_stop(takeover=False)
    stop = asyncio.ensure_future(srv.graceful_stop())
    answered: set[str] = set()
    replies = {"release": "released", "stopping": "stopped"}
    while not stop.done():
        for m in srv.sent.cp:  # type: ignore[attr-defined]
            t = m.get("t")
            if t in answer and t not in answered:
                answered.add(t)
                srv._cp_frame({"t": replies[t]})
        await asyncio.sleep(0.005)
    await stop


async def test_a_normal_stop_releases_then_stops_and_tells_the_peer_the_cp_confirmed_it(active: HostServer) -> None:
    """A normal stop of the active: the CP is asked to release (it delivers nothing more), then
    told `stopping`, both at the host's epoch; the peer is told the stop and that the CP
    confirmed it (the standby then does not take over); nothing more goes to the service, and
    the process ends with 0."""
    await _normal_stop(active, ("release", "stopping"))
    assert [(m["t"], m.get("epoch")) for m in active.sent.cp] == [("release", 3), ("stopping", 3)]  # type: ignore[attr-defined]
    assert active.sent.peer == [{"t": "active_stopping", "name": "host-a", "cp_confirmed": True}]  # type: ignore[attr-defined]
    assert active.ha.state == "stopping" and active.exit_code == 0
    assert not active.delivery.accepting


async def test_a_normal_stop_the_cp_did_not_confirm_tells_the_peer_so(active: HostServer) -> None:
    """The CP never answers the stop's `stopping` (its link down, say): the peer is told the stop
    was not confirmed (the CP will report a loss, and the standby takes over then)."""
    await _normal_stop(active, ("release",))
    assert active.sent.peer == [{"t": "active_stopping", "name": "host-a", "cp_confirmed": False}]  # type: ignore[attr-defined]
    assert active.exit_code == 0


async def test_a_normal_stop_of_a_host_fenced_meanwhile_keeps_its_exit_code(active: HostServer) -> None:
    """A host fenced while its normal stop runs keeps the fence's exit code (75), not 0."""
    from hsb.cli import EXIT_FENCED

    active.ha.registered = True
    active.request_stop(takeover=False)
    stop = asyncio.ensure_future(active.graceful_stop())
    await until(lambda: any(m["t"] == "release" for m in active.sent.cp), "release sent")  # type: ignore[attr-defined]
    active._cp_frame({"t": "fenced", "msg": "test", "epoch": 4})
    active.ha.fenced("test")
    active._cp_frame({"t": "released"})
    await until(lambda: any(m["t"] == "stopping" for m in active.sent.cp) or stop.done(), "stopping sent")  # type: ignore[attr-defined]
    active._cp_frame({"t": "stopped"})
    await asyncio.wait_for(stop, 10)
    assert active.ha.exit is not None and active.exit_code == EXIT_FENCED


async def test_a_stops_wait_for_the_cp_counts_only_an_answer_to_its_own_frame(active: HostServer) -> None:
    """A `released` left over from before (a planned switchover's) does not answer the stop's
    own `release`: its wait starts afresh (and ends unanswered here, the CP silent)."""
    active.cp_released.set()
    assert await active._tell_cp({"t": "release", "epoch": 3}, active.cp_released, 0.2, "unanswered") is False


async def test_a_stops_wait_for_the_cp_ends_when_a_handover_is_granted_meanwhile(active: HostServer) -> None:
    """The CP grants a handover while the stop waits for its answer to another frame: the CP
    answers this host no more, so the wait ends then (unanswered), not at its timeout."""
    told = asyncio.ensure_future(active._tell_cp({"t": "stopping", "epoch": 3}, active.cp_stopped, 60.0, "unanswered"))
    await until(lambda: any(m["t"] == "stopping" for m in active.sent.cp), "stopping sent")  # type: ignore[attr-defined]
    active.handed_over.set()
    assert await asyncio.wait_for(told, 10) is False


@pytest.mark.parametrize("at", ["release", "stopping"])
async def test_a_host_demoted_during_its_normal_stop_tells_nobody_of_a_stop(active: HostServer, at: str) -> None:
    """The CP grants a handover while the normal stop waits for its `release` (or `stopping`)
    to be confirmed (the host is demoted: the standby now): the stop sends no `stopping` after
    it (the CP would not answer a standby's) and does not tell the peer, now the active, that
    the active stops."""
    active.ha.registered = True
    active.request_stop(takeover=False)
    stop = asyncio.ensure_future(active.graceful_stop())
    await until(lambda: any(m["t"] == at for m in active.sent.cp), f"{at} sent")  # type: ignore[attr-defined]
    active._cp_frame({"t": "demoted", "epoch": 4, "active": "host-b"})
    await active.ha.on_demoted("host-b")
    assert active.ha.role == "standby"
    active._cp_frame({"t": "released" if at == "release" else "stopped"})
    await asyncio.wait_for(stop, 10)
    assert [m["t"] for m in active.sent.cp] == (["release"] if at == "release" else ["release", "stopping"])  # type: ignore[attr-defined]
    assert [m for m in active.sent.peer if m["t"] == "active_stopping"] == []  # type: ignore[attr-defined]
    assert active.exit_code == 0


# ---------------------------------------------------------------------- the close
async def test_a_second_close_does_nothing(tmp_path: Path) -> None:
    """The close runs once: a second one (serve()'s after a test's, a fence's after the stop's)
    closes nothing again, the service included."""
    srv, _ = unstarted_active(tmp_path)
    closed: list[int] = []

    async def close() -> None:
        closed.append(1)

    srv.service.close = close  # type: ignore[method-assign]
    await srv.close()
    await srv.close()
    assert closed == [1] and srv.closed


@pytest.mark.parametrize("mode", ["takeover", "normal"])
async def test_a_host_fenced_while_its_stop_waits_for_a_handover_tells_nobody(tmp_path: Path, mode: str) -> None:
    """A SIGTERM's handover (or a `--no-takeover` stop waiting for a handover already at the
    CP) ends because the host is fenced meanwhile: the stop ends there with the fence's exit;
    no release, no `stopping`, nothing to the peer (another host holds the role)."""
    from hsb.cli import EXIT_FENCED
    from tests.support.hafakes import active_host, close

    srv, sent = active_host(tmp_path, "established" if mode == "takeover" else "handing_over")
    try:
        if mode == "normal":
            srv.ha.handover_sent = True
        assert mode == "normal" or srv.ha.switchover_refusal(stop=True) is None
        srv.request_stop(takeover=mode == "takeover")
        stop = asyncio.ensure_future(srv.graceful_stop())
        for _ in range(10):
            await asyncio.sleep(0)
        assert not stop.done()
        srv.ha.fenced("test")
        await asyncio.wait_for(stop, 10)
        assert srv.exit_code == EXIT_FENCED
        assert [m["t"] for m in sent.cp if m["t"] in ("release", "stopping")] == []
        assert [m for m in sent.peer if m["t"] == "active_stopping"] == []
    finally:
        close(srv)


async def test_the_close_ends_the_cp_generation_files_thread(tmp_path: Path) -> None:
    """The close ends the thread the CP generation's file is read and written on (one left per
    close would pile up in a process that restarts its server, as the tests do)."""
    srv, _ = unstarted_active(tmp_path)
    await srv.cp_memory.load()
    worker = srv.cp_memory._worker
    assert worker is not None and worker._thread.is_alive()
    await srv.close()
    await until(lambda: not worker._thread.is_alive(), "the generation file's thread ended", timeout=5)


async def test_the_close_cancels_session_work_before_the_service_closes(tmp_path: Path) -> None:
    """Session work in progress (a logon or close hook of the service's) is cancelled by the
    close before the service itself is closed: nothing runs on a closing service."""
    srv, _ = unstarted_active(tmp_path)
    said: list[str] = []
    never = asyncio.Event()

    async def hook() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            said.append("hook cancelled")
            raise

    async def close() -> None:
        said.append("service closed")

    srv.service.close = close  # type: ignore[method-assign]
    srv.sessions_ctl._spawn(hook())
    await asyncio.sleep(0)
    await srv.close()
    never.set()
    assert said == ["hook cancelled", "service closed"]


async def test_a_normal_stop_not_registered_at_the_cp_tells_it_nothing(active: HostServer) -> None:
    """A normal stop of an active whose CP link is down (not registered): no release and no
    `stopping` go (they would carry the epoch before: stale), nor the peer's notice; the CP takes
    the end of the link for a loss, and the standby takes over."""
    assert not active.ha.registered and not active.cp.up
    active.request_stop(takeover=False)
    await asyncio.wait_for(active.graceful_stop(), 10)
    assert active.sent.cp == [] and active.sent.peer == []  # type: ignore[attr-defined]
    assert active.ha.state == "stopping" and active.exit_code == 0
