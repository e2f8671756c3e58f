"""hsbterm's load generator (hsb.term.load) at the points a second mutation audit of the module
found no test for (tests/test_term_load_mutants.py has the first's). The send schedule: an owed
send is owed from when it was due, and a loop held up skips what fell due meanwhile instead of
sending it in a burst. The run: a failed schedule fails its verdict, a refusal for good with a
terminal welcomed does not end it, a stop in the settle time ends the settle, sends owed from the
sending go out only in the settle's first part, the settle waits for the answers to what a
terminal back late (or its last owed send) sent, a terminal not back fails it. The report: the
reply rate counts the sending phase only, an operation's unanswered messages, sessions never
given, the last connect error, classic terminals' drops with the CP present, CP reconnects apart
from disconnects, a message never answered is lost and not late, the run's own settings, the
workload's setup and the books. What reaches each terminal: resume, mark_resent, check_data,
the id base and floor, the padding and the source address."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from hsb.term import load
from hsb.term.client import TerminalClient
from hsb.term.load import background_load, run_load
from hsb.term.loadstats import LoadStats
from hsb.term.report import format_table
from tests.support.fakecp import FakeCP, free_port, wait_until

pytestmark = pytest.mark.timeout(30)


class _Sender:
    """A terminal as `_schedule` sees it: it sends (recording when) or, with `can_send` False, owes."""

    def __init__(self, can_send: bool = True) -> None:
        self.can_send = can_send
        self.welcomed_at = 1.0
        self.sends: list[float] = []

    def submit(self) -> None:
        self.sends.append(time.monotonic())


class _Owed:
    def __init__(self) -> None:
        self.dues: list[tuple[float, float]] = []  # (due, when the schedule said so)

    def defer(self, c: Any, due: float) -> None:
        self.dues.append((due, time.monotonic()))


async def test_a_send_owed_is_owed_from_when_it_was_due_on_the_terminals_grid() -> None:
    """A terminal that cannot send at its turn owes the send from the moment it was due (its
    latency counts from then), not from when the schedule happened to look: the dues it owes lie
    on its own grid, one period apart (1 terminal at 50 msg/s: every 20 ms)."""
    owed, c = _Owed(), _Sender(can_send=False)
    sched = asyncio.ensure_future(load._schedule([c], 50.0, owed, random.Random(3)))  # type: ignore[list-item, arg-type]
    try:
        await wait_until(lambda: len(owed.dues) >= 12, what="a dozen turns owed")
    finally:
        sched.cancel()
    steps = [b[0] - a[0] for a, b in zip(owed.dues, owed.dues[1:], strict=False)]
    on_grid = sum(1 for s in steps if abs(s - 0.02) < 1e-9)
    # (a loop held up more than LATE_TICKS ticks on a loaded machine may skip once or twice)
    assert on_grid >= len(steps) - 3, steps
    assert all(due <= seen for due, seen in owed.dues), owed.dues


async def test_a_schedule_held_up_skips_what_fell_due_meanwhile_instead_of_a_burst() -> None:
    """The event loop held up for 0.3 s (a terminal sending every 10 ms): what fell due meanwhile
    is skipped, not sent all at once when the loop runs again (a burst of 30 sends the CP would
    see as the terminal's, and a latency its user never had)."""
    c = _Sender()
    sched = asyncio.ensure_future(load._schedule([c], 100.0, LoadStats(1), random.Random(5)))  # type: ignore[list-item]
    try:
        await wait_until(lambda: len(c.sends) >= 3, what="the terminal sending")
        time.sleep(0.3)  # the loop held up (what this test is about, not a synchronisation)
        held_until = time.monotonic()
        await wait_until(lambda: c.sends[-1] > held_until + 0.05, what="sends after the hold-up")
    finally:
        sched.cancel()
    burst = [t for t in c.sends if held_until <= t < held_until + 0.005]
    assert len(burst) <= 2, f"{len(burst)} sends at once after the hold-up"


async def test_a_send_schedule_that_failed_fails_the_run_and_says_why(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """The send schedule stopped on an error: the report names it (`sender_failed`) and its
    verdict fails, though nothing was lost (nothing was sent after it)."""

    async def broken(*args: Any) -> None:
        raise RuntimeError("the schedule broke")

    monkeypatch.setattr(load, "_schedule", broken)
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=1, rate=20, duration=0.2, settle=1), 20)
    assert r.sender_failed == "RuntimeError: the schedule broke", r.sender_failed
    assert not r.ok and any("sender stopped" in f for f in r.failures), r.failures


async def test_a_terminal_refused_for_good_while_another_was_welcomed_does_not_end_the_run(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP refused T00001 for good (a TLS refusal) before anyone was welcomed, and T00002 was
    welcomed as the connect wait ended: somebody logged on, so the run runs (only a run nobody
    could log on to gives up)."""
    handle = fake.handle

    def refuse_one(conn: Any, m: dict[str, Any]) -> None:
        if conn.term is None and m.get("terminal") == "T00001":
            conn.send({"t": "error", "code": "tls_required", "msg": "TLS required"})
            conn.tr.close()
            return
        if conn.term is None and not stats[0].gave_up.is_set():
            return  # (T00002's hello waits for the refusal: say nothing, it is sent again below)
        handle(conn, m)

    stats: list[LoadStats] = []

    class Stats(LoadStats):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            stats.append(self)

    real_wait = load._wait

    async def wait(event: asyncio.Event, timeout: float, stop: Any, also: Any = None) -> None:
        await real_wait(event, timeout, stop, also)
        if also is not None:  # (the connect wait) ... and T00002 welcomed in the same turn
            for conn in list(fake.conns):
                if conn.term is None:
                    handle(conn, {"t": "hello", "terminal": "T00002"})
            await wait_until(lambda: stats[0].welcomed == 1, what="T00002 welcomed")

    monkeypatch.setattr(fake, "handle", refuse_one)
    monkeypatch.setattr(load, "LoadStats", Stats)
    monkeypatch.setattr(load, "_wait", wait)
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.3, settle=2, wait_session=False), 20)
    assert stats[0].gave_up.is_set()
    assert r.gave_up is None and r.welcomed == 1 and r.sent > 0, (r.gave_up, r.welcomed, r.sent)


async def test_the_reply_rate_counts_only_the_replies_of_the_sending_phase() -> None:
    """Every reply comes 1 s after its message, after a sending phase of 0.3 s: the settle time
    brings them all (nothing lost), but the reply rate, a capacity, counts none of them."""
    cp = FakeCP(reply_delay=1.0)
    await cp.start()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=1, rate=20, duration=0.3, settle=5), 20)
    finally:
        await cp.stop()
    assert r.sent > 0 and r.replied == r.sent and r.lost == 0, r
    assert r.reply_rate == 0.0, r.reply_rate


async def test_a_stop_set_during_the_settle_time_ends_it(fake: FakeCP) -> None:
    """No reply ever comes (every message acknowledged only); the caller ends the sending, then
    sets `stop` again during the settle time of 20 s: the run ends then, its messages lost."""
    fake.lose = lambda name, seq: True
    phases: list[str] = []
    task, stop = await background_load(
        ("127.0.0.1", fake.port), terminals=1, rate=20, settle=20, progress=lambda s: phases.append(s["phase"]), progress_interval=0.02
    )
    await wait_until(lambda: fake.deliveries, what="a message delivered")
    stop.set()
    await wait_until(lambda: phases and phases[-1] == "settle", what="the settle time")
    t = time.monotonic()
    stop.set()
    r = await asyncio.wait_for(task, 20)
    assert time.monotonic() - t < 5, "the settle time went on after the stop"
    assert r.sent > 0 and r.lost == r.sent, r


async def test_sends_owed_from_the_sending_go_out_only_in_the_first_part_of_the_settle(fake: FakeCP) -> None:
    """A terminal whose window (1) stays full through its 0.3 s of sending owes its later turns;
    they may go out in the settle time only while their answers could still come within it (up to
    max(1 s, a quarter of it) before its end). Its one reply comes 1.4 s into a settle of 2 s: too
    late to send what it owed (owed, not sent: no message, nothing lost)."""
    fake.pause()
    phases: list[str] = []
    task = asyncio.ensure_future(
        run_load(
            ("127.0.0.1", fake.port),
            terminals=1,
            rate=20,
            duration=0.3,
            settle=2,
            window=1,
            progress=lambda s: phases.append(s["phase"]),
            progress_interval=0.02,
        )
    )
    try:
        await wait_until(lambda: "settle" in phases, what="the settle time")
        t = time.monotonic()
        await wait_until(lambda: time.monotonic() > t + 1.4, what="1.4 s into the settle time")  # (the scenario's timing)
        fake.resume()
        r = await asyncio.wait_for(task, 20)
    finally:
        task.cancel()
    assert r.sent == 1 and r.replied == 1 and r.owed_unsent >= 3, (r.sent, r.replied, r.owed_unsent)


async def test_the_settle_time_waits_for_the_answer_to_the_last_owed_send() -> None:
    """Replies take 0.5 s and the window is 1: the 0.3 s of sending send one message and owe the
    later turns, which go out one by one in the settle time as each answer makes room. The settle
    time waits for the answer to the last of them too (more than the quiet moment before the
    logoff), so nothing is lost or late, and nothing owed is left unsent."""
    cp = FakeCP(reply_delay=0.5)
    await cp.start()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=1, rate=10, duration=0.3, settle=10, window=1), 25)
    finally:
        await cp.stop()
    assert r.sent >= 2 and r.replied == r.sent, (r.sent, r.replied)
    assert (r.lost, r.late_at_logoff, r.owed_unsent) == (0, 0, 0), (r.lost, r.late_at_logoff, r.owed_unsent)
    assert r.ok, r.failures


async def test_a_terminal_not_logged_on_again_by_the_end_fails_the_run(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both terminals dropped (a CP restart, disconnects expected) and backing off for 60 s: the
    settle time (1 s) ends without them, so the run reports them not back and fails."""
    monkeypatch.setattr(TerminalClient, "_next_backoff", lambda self: 60.0)
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=2, rate=20, settle=1, expect_disconnects=True)
    try:
        assert fake.drop_all() == 2
        await wait_until(lambda: not fake.conns, what="both connections gone")
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 20)
    assert r.not_back == 2 and sorted(r.not_back_names) == ["T00001", "T00002"], (r.not_back, r.not_back_names)
    assert not r.ok and any("not back" in f for f in r.failures), r.failures


async def test_the_settle_time_waits_for_the_answers_to_what_a_terminal_back_late_sent(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal dropped during its sending, everything answered so far, and back 1 s later
    (its backoff), in the settle time: it sends the turns it owed then, and their answers (0.6 s,
    more than the quiet moment before the logoff) are waited for: none is lost or late."""
    monkeypatch.setattr(TerminalClient, "_next_backoff", lambda self: 1.0)
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=1, rate=20, settle=10, expect_disconnects=True)
    try:
        await wait_until(lambda: sum(fake.deliveries.values()) >= 2, what="messages answered")
        fake.reply_delay = 0.6
        assert fake.drop_all() == 1
        t = time.monotonic()
        await wait_until(lambda: time.monotonic() > t + 0.3, what="turns owed while away")  # (the scenario's timing)
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 25)
    assert r.disconnects == 1 and r.not_back == 0 and r.owed_unsent == 0, (r.disconnects, r.not_back, r.owed_unsent)
    assert (r.lost, r.late_at_logoff) == (0, 0), (r.lost, r.late_at_logoff, r.lost_ids)
    assert r.ok, r.failures


async def test_an_operation_counts_the_messages_never_answered_as_a_pause_that_never_ended(fake: FakeCP) -> None:
    """No reply ever comes: the messages in flight at an operation (and sent just after it) enter
    its pause unanswered when the settle time ends, so it has no worst wait (a pause that never
    ended), not an operation with nothing in flight."""
    fake.lose = lambda name, seq: True
    marks: list[tuple[str, float]] = []
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=1, rate=20, settle=0.5, marks=marks)
    try:
        await wait_until(lambda: fake.deliveries, what="a message delivered")
        marks.append(("op", time.time()))
        await wait_until(lambda: sum(fake.deliveries.values()) >= 3, what="more messages delivered")
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 20)
    (op,) = r.operations
    assert op["unanswered"] >= 2 and op["worst_ms"] is None, op


async def test_terminals_welcomed_and_never_given_a_session_fail_a_run_that_waited_for_sessions() -> None:
    """The run waits for every session (the default) and the CP gives none: after the connect
    timeout it sends anyway, and the verdict fails: the terminals were never served."""
    cp = FakeCP(open_session=False)
    await cp.start()
    try:
        r = await asyncio.wait_for(run_load(("127.0.0.1", cp.port), terminals=2, rate=20, duration=0.3, settle=1, connect_timeout=0.5), 20)
    finally:
        await cp.stop()
    assert r.sessions_expected and r.welcomed == 2 and r.sessions_opened == 0 and r.sent > 0, r
    assert not r.ok and any("no session" in f for f in r.failures), r.failures


async def test_a_run_that_reached_no_cp_names_the_last_connect_error() -> None:
    """Nothing listens at the CP's address: no terminal is welcomed in the connect time, and the
    report names the last connect error: why nothing was reached (`never_welcomed`)."""
    r = await asyncio.wait_for(run_load(("127.0.0.1", free_port()), terminals=1, rate=20, duration=0.2, settle=0.5, connect_timeout=1.0), 20)
    assert r.welcomed == 0 and r.connect_failures > 0, r
    assert r.connect_error is not None and "ConnectionRefused" in r.connect_error, r.connect_error
    assert not r.ok and r.connect_error in r.never_welcomed, r.never_welcomed


async def _dropped_once(fake: FakeCP, restart: bool, **kw: Any) -> Any:
    """A run of two terminals dropped once mid-run; `restart`: another CP process welcomes them again."""
    fake.cp_id = "cp-1"
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=2, rate=20, settle=3, **kw)
    try:
        await wait_until(lambda: sum(fake.deliveries.values()) >= 2, what="messages answered")
        if restart:
            fake.cp_id = "cp-2"
        assert fake.drop_all() == 2
        await wait_until(lambda: all(len(t.hellos) >= 2 and t.conn is not None for t in fake.terms.values()), what="both back")
    finally:
        stop.set()
    return await asyncio.wait_for(task, 20)


async def test_a_drop_with_the_cp_present_of_classic_terminals_is_no_failure_of_a_cp_restart_run(fake: FakeCP) -> None:
    """A CP-restart run (expect_disconnects="cp") whose terminals are all `classic` (no standby
    session: a drop is theirs by design): dropped and welcomed again by the same CP process, they
    are not counted as drops with the CP present, and the run passes."""
    r = await _dropped_once(fake, restart=False, expect_disconnects="cp", classic=("T00001", "T00002"))
    assert r.disconnects == 2 and r.disconnects_cp_present == 0 and r.classic == 2, (r.disconnects, r.disconnects_cp_present)
    assert r.ok, r.failures


@pytest.mark.parametrize("restart", [False, True])
async def test_cp_reconnects_count_changes_of_cp_process_not_disconnects(fake: FakeCP, restart: bool) -> None:
    """Two terminals dropped once each: with another CP process welcoming them again (a CP
    restart) that is 2 CP reconnects; welcomed again by the same process, none (the drops are
    disconnects only)."""
    r = await _dropped_once(fake, restart=restart, expect_disconnects=True)
    assert r.disconnects == 2 and r.cp_reconnects == (2 if restart else 0), (r.disconnects, r.cp_reconnects)


async def test_the_report_says_how_the_run_was_made(fake: FakeCP) -> None:
    """The report keeps the run's own settings (the replies' data not checked, the window, an
    operation's window, not resuming) and its table says so: a run whose data was not checked
    does not read as one that checked it."""
    r = await asyncio.wait_for(
        run_load(("127.0.0.1", fake.port), terminals=1, rate=20, duration=0.2, settle=1, check_data=False, window=3, after_s=0.5, resume=False), 20
    )
    assert (r.check_data, r.window, r.after_s, r.resume) == (False, 3, 0.5, False), r
    table = format_table(r)
    assert "not checked (--no-check-data)" in table and "(not resuming)" in table, table


class _Workload:
    """A workload as the load sees it: `setup_count` setup messages from the first terminal, then
    any message; every reply right."""

    name = "fake"

    def __init__(self, setup_count: int) -> None:
        self.setup_count = setup_count

    def payload(self, idx: int, k: int) -> str:
        return f"{idx}:{k}"

    def check(self, idx: int, k: int, data: Any) -> bool:
        return True

    def same_reply(self, idx: int, k: int, data: Any) -> bool:
        return True


async def test_the_workloads_setup_waits_for_its_last_answer(fake: FakeCP) -> None:
    """The setup (3 messages from the first terminal) must all be answered before the load: the
    third never is, so there is no run (SetupNotAnswered), not a run on half-made accounts."""
    fake.lose = lambda name, seq: name == "T00001" and seq == 2
    run = run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.2, settle=1, connect_timeout=1.0, workload=_Workload(3))
    with pytest.raises(load.SetupNotAnswered):
        await asyncio.wait_for(run, 20)


class _Books:
    failures = ["transfer 7 applied twice"]

    def as_dict(self) -> dict[str, Any]:
        return {"transfers": 7}


@pytest.mark.parametrize("breach", [True, False])
async def test_the_books_breached_or_not_checked_fail_the_run(fake: FakeCP, monkeypatch: pytest.MonkeyPatch, breach: bool) -> None:
    """With `books`, the database is checked after the run: a breach it finds fails the run, and so
    does a check that could not run (said plainly), though every reply came."""
    import hsb.term.books

    async def check(*args: Any, **kw: Any) -> _Books:
        if breach:
            return _Books()
        raise OSError("no such database")

    monkeypatch.setattr(hsb.term.books, "check_books", check)
    r = await asyncio.wait_for(
        run_load(("127.0.0.1", fake.port), terminals=1, rate=20, duration=0.2, settle=1, workload=_Workload(1), books={"sqlite": "nowhere"}), 20
    )
    assert r.sent > 0 and r.lost == 0 and r.workload == "fake", r
    want = "books: transfer 7 applied twice" if breach else "books: the books could not be checked: OSError: no such database"
    assert not r.ok and want in r.failures, r.failures
    assert r.books == ({"transfers": 7} if breach else {"error": "OSError: no such database"}), r.books


async def test_a_load_that_never_started_sending_is_ended_not_left_running() -> None:
    """`background_load` whose terminals never all get their session within `sending_within`:
    it raises, and the run it started is ended (its terminals logged off), not left connected
    until its own connect timeout (a minute) with nobody to await it."""
    cp = FakeCP(open_session=False)
    await cp.start()
    try:
        with pytest.raises(TimeoutError):
            await background_load(("127.0.0.1", cp.port), terminals=2, rate=20, sending_within=0.5)
        assert len(cp.terms) == 2, cp.terms
        await wait_until(lambda: not cp.conns, 5, what="the terminals logged off")
    finally:
        await cp.stop()


@pytest.mark.parametrize("resume", [True, False])
async def test_the_run_tells_its_terminals_whether_to_resume(fake: FakeCP, resume: bool) -> None:
    """`resume` reaches each terminal: a resuming one's hello says where its run's ids start
    (`first`) and what it holds (`last_reply`); one told not to resume says neither."""
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.2, settle=1, resume=resume), 20)
    assert r.ok, r.failures
    hellos = [h for t in fake.terms.values() for h in t.hellos]
    assert len(hellos) == 2 and all(("first" in h and "last_reply" in h) == resume for h in hellos), hellos


@pytest.mark.parametrize("mark_resent", [True, False])
async def test_the_run_tells_its_terminals_whether_to_mark_what_they_send_again(
    fake: FakeCP, monkeypatch: pytest.MonkeyPatch, mark_resent: bool
) -> None:
    """A message lost with its connection (never acknowledged) is sent again after the reconnect,
    marked `resent` unless the run says not to mark it."""
    monkeypatch.setattr(TerminalClient, "_next_backoff", lambda self: 0.05)
    fake.drop_in_transit = lambda name, seq: seq == 1
    frames: list[dict[str, Any]] = []
    handle = fake.handle

    def record(conn: Any, m: dict[str, Any]) -> None:
        if m.get("t") == "msg":
            frames.append(m)
        handle(conn, m)

    monkeypatch.setattr(fake, "handle", record)
    task, stop = await background_load(("127.0.0.1", fake.port), terminals=1, rate=20, settle=3, expect_disconnects=True, mark_resent=mark_resent)
    try:
        await wait_until(lambda: len(fake.terms["T00001"].hellos) >= 2 and sum(fake.deliveries.values()) >= 3, what="the reconnect")
    finally:
        stop.set()
    r = await asyncio.wait_for(task, 20)
    assert r.disconnects == 1 and r.lost == 0 and r.ok, r.failures
    again = [m for m in frames if m["id"] == frames[1]["id"]]
    assert len(again) == 2 and [bool(m.get("resent")) for m in again] == [False, mark_resent], again


async def test_a_reply_to_another_terminals_first_message_is_unexpected_not_an_earlier_runs(fake: FakeCP) -> None:
    """The reply to T00001's first message (the run's lowest id) delivered to T00002: an
    unexpected reply for T00002 (the run's ids start at T00001's), not a reply left from an
    earlier run of T00002 that it would let pass."""
    fake.misdeliver = lambda name, seq: "T00002" if name == "T00001" and seq == 0 else None
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.3, settle=1), 20)
    assert r.unexpected == 1 and r.earlier_run_replies == 0, (r.unexpected, r.earlier_run_replies)
    assert not r.ok


async def test_each_message_carries_the_padding_the_run_asked_for(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """`payload_size` pads every message's data with that many bytes (a load of bigger messages),
    and the replies, the same data, still check."""
    sizes: list[int] = []
    handle = fake.handle

    def record(conn: Any, m: dict[str, Any]) -> None:
        if m.get("t") == "msg":
            sizes.append(len(str(m["data"])))
        handle(conn, m)

    monkeypatch.setattr(fake, "handle", record)
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=1, rate=20, duration=0.2, settle=1, payload_size=300), 20)
    assert r.ok and r.sent > 0 and r.bad_data == 0, r.failures
    assert sizes and min(sizes) >= 300, sizes


async def test_replies_with_other_data_pass_when_the_run_checks_no_data(fake: FakeCP) -> None:
    """`check_data=False` reaches each terminal: a service answering with other data (here every
    reply) is no bad data then."""
    fake.corrupt = lambda name, seq: True
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.3, settle=1, check_data=False), 20)
    assert r.sent > 0 and r.replied == r.sent and r.bad_data == 0 and r.ok, r.failures


async def test_the_run_uses_the_id_base_it_is_given_and_ends_with_a_done_snapshot(fake: FakeCP) -> None:
    """`id_base` is where the run's ids start (terminal i's first id is id_base + i), and the
    last progress snapshot, after the logoff, says `done` with the run's final counts."""
    snaps: list[dict[str, Any]] = []
    r = await asyncio.wait_for(
        run_load(
            ("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.3, settle=1, id_base=7_000_000, progress=snaps.append, progress_interval=5
        ),
        20,
    )
    assert r.ok and r.sent > 0, r.failures
    assert sorted(t.hellos[0]["first"] for t in fake.terms.values()) == [7_000_000, 7_000_001]
    assert snaps and snaps[-1]["phase"] == "done" and snaps[-1]["replied"] == r.replied, snaps


async def test_the_terminals_connect_from_the_source_address_given(fake: FakeCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """`source` is the address the terminals connect from (a second loopback address here)."""
    peers: list[str] = []
    handle = fake.handle

    def record(conn: Any, m: dict[str, Any]) -> None:
        if m.get("t") == "hello":
            peers.append(conn.tr.get_extra_info("peername")[0])
        handle(conn, m)

    monkeypatch.setattr(fake, "handle", record)
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=2, rate=20, duration=0.2, settle=1, source="127.0.0.2"), 20)
    assert r.ok, r.failures
    assert peers == ["127.0.0.2", "127.0.0.2"], peers


async def test_a_message_never_answered_is_lost_not_late_at_the_logoff(fake: FakeCP) -> None:
    """A message acknowledged and never answered, not even at the logoff: lost, but not counted
    among those answered only at the logoff (`late_at_logoff`, which says the CP held them)."""
    fake.lose = lambda name, seq: seq == 1
    r = await asyncio.wait_for(run_load(("127.0.0.1", fake.port), terminals=1, rate=20, duration=0.3, settle=0.5), 20)
    assert (r.lost, r.unacked, r.late_at_logoff) == (1, 0, 0), (r.lost, r.unacked, r.late_at_logoff)
