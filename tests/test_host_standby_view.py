"""When a standby may say it is established: only once the standby opens of the batch read it is
in are done, never on an earlier read's or one the state moved on from, and never while it is not
registered at the CP (it could not take over). hsbcpd and both hsbd in this process
(tests/support/inproc.py); the standby's handlers are called as its loop would call them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from hsb.host.states import AWAITING_BATCH, BATCH_READING, ESTABLISHED, WAITING
from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby

pytestmark = pytest.mark.timeout(60)


def noted(sent: list[dict[str, object]]) -> Callable[[dict[str, object]], bool]:
    """A link's send that notes each frame in `sent` (nothing goes out) and says it went."""

    def send(msg: dict[str, object]) -> bool:
        sent.append(msg)
        return True

    return send


async def test_an_earlier_batch_reads_opens_done_do_not_establish_the_one_under_way(tmp_path: Path) -> None:
    """A batch read's standby opens end (`batch_applied`) after the next batch read began: that
    one's opens are still out, its view incomplete; the standby stays in batch_reading."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        old = b.ha.batch_token
        b.ha.batch_token += 1  # (as batch_read does: a new read under way, its opens still out)
        b.ha.set_state(BATCH_READING, "test: a new batch read")
        await b.ha.ev_batch_applied(token=old)
        assert b.ha.state == BATCH_READING and not b.ha.is_established(), b.ha.state
        assert not b.status()["established"]


async def test_a_batch_reads_opens_done_after_the_active_restarted_do_not_establish_it(tmp_path: Path) -> None:
    """The active restarts (ACTIVE STARTUP of another instance: every standby session closed, a
    new startup id asked for) just as the standby opens of its last batch read end: those are the
    old active's view, and the standby waits for the new one's batch, not established on it."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        token = b.ha.batch_token
        b.ha.set_state(BATCH_READING, "test: batch read")
        await b.ha.peer_active_startup({"t": "active_startup", "instance": "restarted", "name": "host-a"})
        assert b.ha.state != ESTABLISHED
        await b.ha.ev_batch_applied(token=token)
        assert b.ha.state != ESTABLISHED and not b.ha.is_established(), b.ha.state
        assert b.ha.established_since is None


async def test_a_standby_not_registered_at_the_cp_is_not_established(tmp_path: Path) -> None:
    """Following the ring but cut off from the CP (it would ask the CP for the role): status,
    /standby and the sentence say it is not ready to take over."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        assert b.status()["established"]
        await b.ha.ev_cp_down("test: host link lost")
        assert b.ha.state == ESTABLISHED  # (its view is current: only the CP is out of reach)
        st = b.status()
        assert not st["established"] and not st["registered_at_cp"], st
        assert "not registered at the CP" in b.ha.describe()


async def test_only_the_active_s_heartbeat_says_whether_the_standby_s_view_is_stale(tmp_path: Path) -> None:
    """The active said it cannot write the ring: the standby's view is stale until the active
    says otherwise. A heartbeat of a peer not (or no longer) the active, which never carries
    that word, does not clear it."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        b.ha.note_active_ring({"t": "hb", "role": "active", "ring_write_failing": "EIO"})
        assert b.ha.standby_view_stale() and not b.status()["established"]
        b.ha.note_active_ring({"t": "hb", "role": "standby", "ring_write_failing": None})
        assert b.ha.active_ring_failing == "EIO" and not b.status()["established"]
        b.ha.note_active_ring({"t": "hb", "role": "active", "ring_write_failing": None})
        assert b.ha.active_ring_failing is None and b.status()["established"]


async def test_the_active_restarted_closes_every_standby_session_of_its_old_view(tmp_path: Path) -> None:
    """Fig. 3: ACTIVE STARTUP of another instance: the standby sessions opened from the old
    active's view are all closed (the new one's batch opens what it has)."""
    from hsb.host.sessions import CLOSED, STANDBY
    from hsb.takeover.records import SessionEntry

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        name = next(iter(b.sessions.table))
        b.sessions_ctl.apply_ring([SessionEntry(name, dict(b.sessions.table[name].attrs), True)])
        assert b.sessions.table[name].state == STANDBY
        await b.ha.peer_active_startup({"t": "active_startup", "instance": "restarted", "name": "host-a"})
        assert b.sessions.table[name].state == CLOSED and not b.sessions.in_state(STANDBY)


async def test_no_standby_startup_to_a_peer_not_the_active_nor_over_a_ring_write_still_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A standby waiting for an active asks for a batch (STANDBY STARTUP) only of a peer whose
    hello says it is the active, and not while a ring write of its own (as the active before) is
    still out: it would land over the new batch."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        sid = b.ha.own_startup_id
        hello = b.peer.peer_hello
        assert hello is not None
        b.ha.set_state(WAITING, "test: waiting for an active")
        monkeypatch.setattr(b.peer, "peer_hello", {**hello, "role": "standby"})
        b.ha.maybe_standby_startup()
        assert b.ha.state == WAITING and b.ha.own_startup_id == sid
        monkeypatch.setattr(b.peer, "peer_hello", hello)
        monkeypatch.setattr(b.takeover, "ring_settled", lambda: False)
        b.ha.maybe_standby_startup()
        assert b.ha.state == WAITING and b.ha.own_startup_id == sid
        monkeypatch.setattr(b.takeover, "ring_settled", lambda: True)
        b.ha.maybe_standby_startup()  # (the test's own check: asked once both hold)
        assert b.ha.state == AWAITING_BATCH and b.ha.own_startup_id != sid


async def test_a_header_holding_the_standby_s_own_id_read_as_another_is_a_failed_read_not_a_file_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch read that says the header holds another id, yet names this standby's own as the
    one found (a read torn between two writes), past the re-reads: the read failed and is asked
    for again; the hosts do not name different files, and the standby does not exit."""
    from hsb.host.states import BATCH_RETRY
    from hsb.takeover.errors import StartupIdMismatch

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        own = b.ha.own_startup_id

        async def mismatch(*args: object, **kw: object) -> None:
            raise StartupIdMismatch("startup id mismatch", expected=own, found=own)

        monkeypatch.setattr(b.takeover, "batch_read", mismatch)
        monkeypatch.setattr(b.peer, "send", lambda msg: True)  # (the active hears nothing of this)
        b.ha.batch_announced = None
        await b.ha.batch_read()
        assert b.ha.exit is None and b.ha.state == BATCH_RETRY, (b.ha.state, b.ha.last_error)


async def test_a_ring_close_entry_closes_the_standby_session(tmp_path: Path) -> None:
    """S228: a session closed at the active (a logoff) read from the ring closes the standby's."""
    from hsb.host.sessions import CLOSED, STANDBY
    from hsb.takeover.records import SessionEntry

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        name = next(iter(b.sessions.table))
        attrs = dict(b.sessions.table[name].attrs)
        b.sessions_ctl.apply_ring([SessionEntry(name, attrs, True)])
        assert b.sessions.table[name].state == STANDBY
        b.sessions_ctl.apply_ring([SessionEntry(name, attrs, False)])
        assert b.sessions.table[name].state == CLOSED


async def test_a_batch_read_closes_the_standby_sessions_the_active_no_longer_has(tmp_path: Path) -> None:
    """[0077]: a batch opens a standby session for each session open on the active and closes
    the rest: one the active closed while the ring was not followed does not stay open here."""
    from hsb.host.sessions import CLOSED, STANDBY
    from hsb.takeover.records import SessionEntry

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        name = next(iter(b.sessions.table))
        b.sessions_ctl.apply_ring([SessionEntry(name, dict(b.sessions.table[name].attrs), True)])
        assert b.sessions.table[name].state == STANDBY
        await b.sessions_ctl.apply_batch([], timeout=1.0)
        assert b.sessions.table[name].state == CLOSED


async def test_a_ring_entry_read_after_the_grant_opens_no_standby_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Made the active (granted) while the ring's last entries were still being applied: an open
    entry read then opens no standby session (the CP would take it for a second session)."""
    from hsb.host.sessions import CLOSED
    from hsb.takeover.records import SessionEntry

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        name = next(iter(b.sessions.table))
        sent: list[dict[str, object]] = []
        monkeypatch.setattr(b.ha, "granted", True)
        monkeypatch.setattr(b.cp, "send", noted(sent))
        b.sessions_ctl.apply_ring([SessionEntry(name, dict(b.sessions.table[name].attrs), True)])
        assert b.sessions.table[name].state == CLOSED and not sent, sent


@pytest.mark.parametrize("state", ["awaiting_batch", "batch_reading", "batch_retry"])
async def test_a_standby_still_getting_its_batch_asks_the_cp_for_the_role_when_the_peer_link_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    """The peer link lost (the active gone, maybe) while the standby waits for or reads a batch:
    it asks the CP, which decides (it grants only if the active is lost there too)."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        sent: list[dict[str, object]] = []
        monkeypatch.setattr(b.cp, "send", noted(sent))  # (the CP is not asked for real)
        b.ha.set_state(state, "test")
        await b.ha.ev_peer_down("test: peer link lost")
        assert [m["t"] for m in sent] == ["switchover"], sent


async def test_the_active_is_established_only_by_its_standby_s_current_startup_id(tmp_path: Path) -> None:
    """A standby_ready, or a hello saying established, naming another startup id (an earlier
    start of the standby's, whose batch is not the one written) does not make hot standby."""
    from hsb.host.states import SERVING

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        sid = a.ha.partner_startup_id
        assert sid is not None
        a.ha.set_state(SERVING, "test: the standby lost")
        await a.ha.peer_standby_ready({"t": "standby_ready", "startup_id": sid - 1, "instance": b.ha.instance})
        assert a.ha.state == SERVING
        hello = {"t": "peer_hello", "role": "standby", "partner": a.ha.instance, "state": ESTABLISHED, "name": "host-b"}
        await a.ha.peer_peer_hello({**hello, "startup_id": sid - 1})
        assert a.ha.state == SERVING and not a.status()["established"]
        await a.ha.peer_peer_hello({**hello, "startup_id": sid})  # (the test's own check)
        assert a.ha.state == ESTABLISHED


async def test_an_established_standby_says_ready_again_when_the_peer_link_comes_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The active's hello again after a blip of the peer link, the same instance: the standby,
    still following its ring, says standby_ready again (an active in a planned switchover's
    handover meanwhile is established again only by it)."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        sent: list[dict[str, object]] = []
        monkeypatch.setattr(b.peer, "send", noted(sent))
        await b.ha.peer_peer_hello({"t": "peer_hello", "role": "active", "instance": b.ha.partner_instance, "name": "host-a"})
        assert b.ha.state == ESTABLISHED
        assert [(m["t"], m["startup_id"]) for m in sent] == [("standby_ready", b.ha.own_startup_id)], sent


async def test_a_ring_read_that_works_again_ends_the_count_of_failing_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ring read that fails, then one that works: the failing spell is over (else a single
    failure much later counted from the first and asked at once for a whole new batch)."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        real = b.takeover.ring_poll

        async def eio() -> object:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(b.takeover, "ring_poll", eio)
        await b.ha.ring_poll()
        assert b.ha.ring_failing is not None and b.ha.state == ESTABLISHED
        monkeypatch.setattr(b.takeover, "ring_poll", real)
        await b.ha.ring_poll()
        assert b.ha.ring_failing is None and b.ha.state == ESTABLISHED


async def test_a_batch_read_done_ends_the_count_of_failing_ring_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ring reads failing before a batch read count for nothing after it: established on the new
    batch, a single failed read later is not counted from the spell before it."""

    async def eio() -> object:
        raise OSError(5, "Input/output error")

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        with monkeypatch.context() as m:
            m.setattr(b.takeover, "ring_poll", eio)
            await b.ha.ring_poll()
        assert b.ha.ring_failing is not None
        b.ha.set_state(BATCH_READING, "test: a batch read, its opens done")
        await b.ha.ev_batch_applied(token=b.ha.batch_token)
        assert b.ha.state == ESTABLISHED and b.ha.ring_failing is None
