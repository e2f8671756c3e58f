"""The CP's side of the host links (hsb/cp/host_link.py), its stop (hsb/cp/stopping.py), its
switch record (hsb/cp/switchrec.py) and its terminal state (hsb/cp/state.py): each test names a
behaviour that a mutation audit of those modules found no test for."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import pytest

from tests.support.cpcore import cp_core, fake_host
from tests.test_cp_host_link_checks import frames, served

pytestmark = pytest.mark.timeout(30)


def _errors(h: Any) -> list[str]:
    return [f["code"] for f in frames(h) if f["t"] == "error"]


# -- hsb/cp/host_link.py -------------------------------------------------------------------------


async def test_a_refuse_of_the_active_at_a_stale_epoch_fences_it_and_leaves_the_session(tmp_path: Path) -> None:
    """`refuse` is one of the active's epoch-stamped frames (docs/protocol.md §3, epoch check):
    at a stale epoch it fences the link and the terminal keeps its session."""
    cp, a, b, t = served(tmp_path)
    a._handle({"t": "refuse", "terminal": "T00001", "reason": "no", "epoch": cp.epoch - 1})
    assert _errors(a) == ["fenced"] and a.closed
    assert cp.terms["T00001"].active is not None and cp.terms["T00001"].active.host is a


async def test_a_stopping_of_the_active_at_a_stale_epoch_fences_it_and_stops_nothing(tmp_path: Path) -> None:
    """`stopping` at a stale epoch is refused like the other frames of the active: the CP does
    not close the active's sessions as a normal stop nor record that nobody holds the role."""
    cp, a, b, t = served(tmp_path)
    a._handle({"t": "stopping", "epoch": cp.epoch - 1})
    assert _errors(a) == ["fenced"] and a.closed
    assert cp.active_stopped_normally is None and a.role == "active"
    assert cp.terms["T00001"].active is not None


async def test_a_stale_frame_of_the_active_is_in_the_history_as_a_fence_of_that_host(tmp_path: Path) -> None:
    """`hsbctl history` lists a fence (kind `fence`, with `host`) for a frame refused as stale."""
    cp, a, b, t = served(tmp_path)
    a._handle({"t": "reply", "terminal": "T00001", "id": 1, "data": "old", "epoch": cp.epoch - 1})
    fences = [e for e in cp.history.entries if e.get("kind") == "fence"]
    assert len(fences) == 1 and fences[0]["host"] == "host-a" and fences[0]["epoch"] == cp.epoch, cp.history.entries


async def test_a_host_not_registered_may_not_open_a_session(tmp_path: Path) -> None:
    """Before its register only `register` and `hb` are heard: an `open` is `not_registered`."""
    cp, a, b, t = served(tmp_path)
    c = fake_host(cp, "host-c", record=True)
    c._handle({"t": "open", "terminal": "T00002", "kind": "standby", "attrs": {}})
    assert _errors(c) == ["not_registered"] and c.closed
    assert cp.terms["T00002"].standby is None


async def test_the_actives_open_and_close_of_a_standby_session_need_no_epoch(tmp_path: Path) -> None:
    """Only `open`/`close` of kind `active` carry the epoch: the active's frames of kind
    `standby` (sent while it was the standby, read after its grant) are not refused for lacking one."""
    cp, a, b, t = served(tmp_path)
    a._handle({"t": "close", "terminal": "T00001", "kind": "standby"})
    a._handle({"t": "open", "terminal": "T00002", "kind": "standby", "attrs": {}})
    assert _errors(a) == [] and not a.closed
    await asyncio.sleep(0)


async def test_a_second_register_on_the_same_link_is_refused(tmp_path: Path) -> None:
    """A link registers once: a second `register` (another role, say) is `bad_role`, and the
    host keeps the role it had."""
    cp, a, b, t = served(tmp_path)
    b._handle({"t": "register", "role": "active", "startup_id": 2})
    assert _errors(b) == ["bad_role"] and b.closed
    assert cp.active is a


@pytest.mark.parametrize("said", [None, 1, "yes"])
async def test_a_registers_flags_are_the_hosts_only_when_said_true_and_its_max_frame_is_kept(tmp_path: Path, said: Any) -> None:
    """`adopt`, `keep_standby` and `marks_repeats` hold only as `true` (absent, 1 or "yes" is no
    promise: a host of before that keeps no standby sessions, marks no repeats); the
    `max_frame` it says is the host's (it bounds what the terminals may send)."""
    cp = cp_core(tmp_path, 2)
    a = fake_host(cp, "host-a", record=True)
    flags = {} if said is None else {"adopt": said, "keep_standby": said, "marks_repeats": said}
    a._handle({"t": "register", "role": "active", "max_frame": 8192, **flags})
    assert cp.active is a and _errors(a) == []
    assert (a.adopts, a.keeps_standby, a.marks_repeats, a.max_frame) == (False, False, False, 8192)
    b = fake_host(cp, "host-b", record=True)
    b._handle({"t": "register", "role": "standby", "adopt": True, "keep_standby": True, "marks_repeats": True})
    assert (b.adopts, b.keeps_standby, b.marks_repeats, b.max_frame) == (True, True, True, 0)


async def test_a_reloaded_held_bound_is_said_once_in_a_heartbeats_answer(tmp_path: Path) -> None:
    """A heartbeat's answer names `held_bound` only once after a reload changed the bound the
    host's registration said (docs/protocol.md §3): not before, and not again."""
    cp, a, b, t = served(tmp_path)

    def answers() -> list[dict[str, Any]]:
        return [f for f in frames(a) if f["t"] == "hb"]

    a._handle({"t": "hb", "n": 1})
    assert answers()[-1] == {"t": "hb", "ack": 1}
    cp.held_bound += 5  # (a reload: hsb.cp.server)
    a._handle({"t": "hb", "n": 2})
    a._handle({"t": "hb", "n": 3})
    assert answers()[-2:] == [{"t": "hb", "ack": 2, "held_bound": cp.held_bound}, {"t": "hb", "ack": 3}]


@pytest.mark.parametrize(
    "frame",
    [
        {"t": "open", "terminal": "T00002", "kind": "standby", "attrs": ["not", "a", "map"]},
        {"t": "open_batch", "kind": "passive", "items": [["T00002", {}]]},
    ],
    ids=["attrs-not-a-map", "batch-of-another-kind"],
)
async def test_an_open_the_protocol_does_not_allow_is_refused_and_opens_nothing(tmp_path: Path, frame: dict[str, Any]) -> None:
    """`open` with attrs that are not a map, `open_batch` of any kind but `standby`: `bad_fields`."""
    cp, a, b, t = served(tmp_path)
    b._handle(frame)
    assert _errors(b) == ["bad_fields"] and b.closed
    assert cp.terms["T00002"].standby is None


async def test_an_adopt_frame_not_said_last_leaves_the_adoption_going(tmp_path: Path) -> None:
    """The active names its sessions in `adopt` frames; only the one with `last: true` ends the
    adoption (a `last` of 1 or none does not)."""
    from tests.support.cpcore import adopting_active

    cp, a = adopting_active(tmp_path)
    assert a.adopting
    a._handle({"t": "adopt", "epoch": cp.epoch, "items": [["T00001", {}]]})
    a._handle({"t": "adopt", "epoch": cp.epoch, "items": [], "last": 1})
    assert a.adopting and _errors(a) == []
    a._handle({"t": "adopt", "epoch": cp.epoch, "items": [], "last": True})
    assert not a.adopting


async def test_a_standbys_refusal_reason_is_kept_to_300_characters(tmp_path: Path) -> None:
    """The reason a standby gives for refusing a session (`close` with `refused`) is kept, as the
    switch record and its history entry show it, cut to 300 characters."""
    cp, a, b, t = served(tmp_path)
    b._handle({"t": "close", "terminal": "T00001", "kind": "standby", "refused": "x" * 1000})
    assert b.refused_standby == {"T00001": "x" * 300}
    assert cp.terms["T00001"].standby is None


@pytest.mark.parametrize(
    "ask",
    [{"reason": "active silent"}, {"reason": "active silent", "kind": "takeover", "planned": False}],
    ids=["planned-not-said", "unknown-kind"],
)
async def test_a_paused_cp_refuses_a_switchover_not_said_planned_or_of_an_unknown_kind(tmp_path: Path, ask: dict[str, Any]) -> None:
    """A `switchover` is a failover unless it says `planned: true` or `kind: "promote"`: a
    paused CP (no automatic failover) refuses one that says neither, whatever else its kind says."""
    cp, a, b, t = served(tmp_path)
    cp.paused = True
    a.connection_lost(None)
    b._handle({"t": "switchover", **ask})
    assert [f for f in frames(b) if f["t"] == "switch_refused"]
    assert cp.active is not b and not [f for f in frames(b) if f["t"] == "switch_granted"]


async def test_a_grant_names_the_request_only_when_its_req_is_an_integer(tmp_path: Path) -> None:
    """`switch_granted` names the request it answers (`req`) only as the host's integer said it:
    `req: true` is no request number."""
    cp, a, b, t = served(tmp_path)
    a.connection_lost(None)
    b._handle({"t": "switchover", "reason": "active lost", "req": True, "peer_closed": True})
    await asyncio.sleep(0)
    granted = [f for f in frames(b) if f["t"] == "switch_granted"]
    assert cp.active is b and len(granted) == 1 and "req" not in granted[0], granted


async def test_an_adopt_frames_handed_ids_count_only_as_positive_integers(tmp_path: Path) -> None:
    """`handed` {terminal: highest id handed to the service}: an entry that is not a positive
    integer (true, a negative number) marks nothing redelivered; an integer one raises the floor."""
    from tests.support.cpcore import adopting_active

    cp, a = adopting_active(tmp_path)
    items = [["T00001", {}], ["T00002", {}], ["T00003", {}]]
    a._handle({"t": "adopt", "epoch": cp.epoch, "items": items, "last": True, "handed": {"T00001": True, "T00002": -3, "T00003": 2}})
    assert _errors(a) == []
    assert [cp.terms[n].handed_floor for n in ("T00001", "T00002", "T00003")] == [0, 0, 2]


# -- hsb/cp/stopping.py ----------------------------------------------------------------------------


class _Stopper:
    """The state of hsb.cp.server.CPServer that its stops (hsb.cp.stopping.Stopping) read, on a
    CP core with host-a active and T00001 logged on; the journal's drain and stop, the logons'
    close, the tickle list and a listener socket say how they were called."""

    def __init__(self, tmp_path: Path, takeover: str = "at_start", drained: bool = True) -> None:
        from types import SimpleNamespace

        from hsb.cp.stopping import Stopping

        class Stopper(Stopping):
            def _end_takeover_beats(self) -> None:
                pass

            def close_bound_ahead(self) -> None:
                pass

        self.calls: list[tuple[str, Any]] = []
        cp, a, b, t = served(tmp_path)
        self.a, self.b, self.t = a, b, t
        s = Stopper()
        s.cfg = SimpleNamespace(cp=SimpleNamespace(takeover=takeover))  # type: ignore[assignment]
        s.cp, s.state, s.exit_code, s.superseded = cp, "serving", 0, False
        s.should_exit, s.servers, s.hosts = asyncio.Event(), [], {a, b}
        s._tickling = asyncio.get_running_loop().create_future()
        self.s = s

        async def drain(timeout: float = 2.0) -> bool:
            self.calls.append(("drain", None))
            return drained

        async def stop(timeout: float | None = None) -> None:
            self.calls.append(("stop", timeout))

        cp.journal.drain, cp.journal.stop = drain, stop
        real = cp.logons

        class Logons:  # (slotted: its close is spied on through a stand-in)
            def close(_, step_lost: bool = True) -> None:
                self.calls.append(("logons", step_lost))
                real.close(step_lost)

            def __getattr__(_, name: str) -> Any:
                return getattr(real, name)

        cp.logons = Logons()
        cp.cancel_deferred_grant = lambda holder=None: self.calls.append(("cancel_deferred_grant", None))
        cp.tickles = SimpleNamespace(close=lambda: self.calls.append(("tickles", None)))
        self.listener = SimpleNamespace(shutdown=lambda how: self.calls.append(("listener", how)))


@pytest.fixture
def no_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    from hsb import cli
    from hsb.cp import supervise

    monkeypatch.setattr(supervise, "LISTENERS", {})
    monkeypatch.setattr(cli, "MEANT_EXIT", cli.MEANT_EXIT)


@pytest.mark.parametrize(
    ("takeover", "gone", "code"),
    [("on_wake", False, 0), ("at_start", False, 75), ("on_wake", True, 75), ("at_start", True, 75)],
)
async def test_a_superseded_cp_exits_0_only_on_wake_and_never_when_its_generation_is_gone(
    tmp_path: Path, takeover: str, gone: bool, code: int, no_listeners: None
) -> None:
    """Superseded: exit 0 (systemd starts it again, waiting) with `takeover = on_wake`, else 75;
    its own generation file gone (GenerationGone) is 75 in both. It aborts every connection and
    asks the loop to stop at once."""
    from hsb.cp.journal.generation import GenerationGone, Superseded

    st = _Stopper(tmp_path, takeover)
    exc = GenerationGone(3, 0, "/j/generation.3") if gone else Superseded(3, 4)
    st.s._superseded(exc)
    assert st.s.exit_code == code and st.s.superseded and st.s.should_exit.is_set()
    assert st.a.closed and st.b.closed and st.t.closed


async def test_a_graceful_stop_takes_nothing_new_drains_the_journal_then_stops_it(tmp_path: Path, no_listeners: None) -> None:
    """The graceful stop: the exit it means is noted at once, the logons close (byes waiting are
    logged off), no deferred grant is left, the tickling ends, the listeners are shut for reading,
    every connection still open is frozen (nothing new taken), the journal drained and then
    stopped with no time limit, the tickle list closed."""
    import socket

    from hsb import cli
    from hsb.cp import supervise

    st = _Stopper(tmp_path)
    supervise.LISTENERS["terminal"] = st.listener
    st.s.exit_code = 3
    await st.s.shutdown()
    assert cli.MEANT_EXIT == 3 and st.s.state == "stopping"
    assert st.calls == [
        ("logons", True),
        ("cancel_deferred_grant", None),
        ("listener", socket.SHUT_RD),
        ("drain", None),
        ("stop", None),
        ("tickles", None),
    ]
    assert st.s._tickling is not None and st.s._tickling.cancelled()
    assert st.a.frozen and st.b.frozen and st.t.frozen
    assert not st.a.closed and not st.t.closed


async def test_a_stop_whose_journal_did_not_drain_gives_the_write_out_a_little_more_only(tmp_path: Path, no_listeners: None) -> None:
    """Not drained: the journal's stop waits STOP_AFTER_DRAIN_S for the write still out, not for ever."""
    from hsb.cp.stopping import STOP_AFTER_DRAIN_S

    st = _Stopper(tmp_path, drained=False)
    await st.s.shutdown()
    assert ("stop", STOP_AFTER_DRAIN_S) in st.calls


async def test_a_superseded_stop_drains_nothing_logs_nobody_off_and_aborts_what_is_still_open(tmp_path: Path, no_listeners: None) -> None:
    """Superseded, the stop sends nothing more: no drain (the journal is the newer CP's), byes
    waiting are not logged off, and a connection still open at the stop's turn (accepted after
    the supersession) is aborted, not frozen."""
    st = _Stopper(tmp_path)
    st.s.superseded, st.s.exit_code = True, 75
    await st.s.shutdown()
    assert ("drain", None) not in st.calls and ("logons", False) in st.calls
    assert ("stop", None) in st.calls
    assert st.a.closed and st.b.closed and st.t.closed


# -- hsb/cp/switchrec.py ---------------------------------------------------------------------------


async def test_a_reply_counts_against_this_switchs_flight_only() -> None:
    """A terminal's messages in flight belong to the switch of `flight_epoch`: a reply of a
    terminal whose count is an earlier switch's (or spent) serves nobody in this record."""
    from types import SimpleNamespace

    from hsb.cp.state import Term
    from hsb.cp.switchrec import AfterSwitch

    done: list[dict[str, Any]] = []
    sw = AfterSwitch(1000.0, {"epoch": 3}, done.append)
    sw.rec["in_flight_terminals"] = 1
    assert not sw.counted(1)
    earlier = SimpleNamespace(flight=1, flight_epoch=2)
    spent = SimpleNamespace(flight=0, flight_epoch=3)
    assert not sw.reply(cast(Term, earlier), 999.0, True, 1000.1)
    assert not sw.reply(cast(Term, spent), 999.0, True, 1000.2)
    assert (earlier.flight, spent.flight, sw.left) == (1, 0, 1) and not done


# -- hsb/cp/state.py -------------------------------------------------------------------------------


def _terms(tmp_path: Path) -> tuple[Any, Any, Any]:
    """Two fresh terminals sharing a fresh set of totals: (counts, term 1, term 2)."""
    from hsb.cp.state import Counts, Term

    cp = cp_core(tmp_path, 2)
    counts = Counts()
    return counts, Term(cp.terms["T00001"].defn, counts), Term(cp.terms["T00002"].defn, counts)


def test_the_totals_follow_each_terminals_sessions_and_pause_and_a_forgotten_one_leaves_them(tmp_path: Path) -> None:
    """`status` reads the totals kept as the terminals change (hsb.cp.state.Counts): a session
    replaced is still one, a pause set twice is one, lifted it leaves the paused set, and a
    terminal forgotten takes its sessions and its pause out."""
    from hsb.cp.state import Session

    counts, t1, t2 = _terms(tmp_path)
    for t in (t1, t2):
        t.active = Session(None, {})  # type: ignore[arg-type]
        t.active = Session(None, {})  # type: ignore[arg-type]
        t.standby = Session(None, {})  # type: ignore[arg-type]
        t.standby = Session(None, {})  # type: ignore[arg-type]
        t.paused = t.paused = True
    assert (counts.active, counts.standby, counts.paused, counts.paused_terms) == (2, 2, 2, {t1, t2})
    t1.active = t1.standby = None
    t1.paused = False
    assert (counts.active, counts.standby, counts.paused, counts.paused_terms) == (1, 1, 1, {t2})
    t2.forget()
    assert (counts.active, counts.standby, counts.paused, counts.paused_terms) == (0, 0, 0, set())
    assert t2.active is None and t2.standby is None and not t2.paused


def test_a_terminals_delivery_mark_rises_within_an_epoch_and_starts_again_at_a_new_one(tmp_path: Path) -> None:
    """`Term.delivered`: every held message up to `deliv_upto` went to the active of `deliv_epoch`;
    a lower id of the same epoch does not lower it, a new epoch's first delivery starts it again."""
    counts, t, _ = _terms(tmp_path)
    t.delivered(5, 2)
    t.delivered(3, 2)
    assert (t.deliv_epoch, t.deliv_upto) == (2, 5)
    t.delivered(7, 2)
    assert (t.deliv_epoch, t.deliv_upto) == (2, 7)
    t.delivered(1, 3)
    assert (t.deliv_epoch, t.deliv_upto) == (3, 1)
