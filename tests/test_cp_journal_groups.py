"""The CP journal's group commit, in-process on real files: which records start a group of their
own and which ride with the next one (a kept reply, a confirmation), and that a clean stop
writes what is still pending."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

from hsb.cp.journal.completion import LAZY_S
from hsb.cp.journal.generation import Generations
from hsb.cp.journal.recovery import recover
from hsb.cp.journal.store import Journal
from tests.support.journal import durable, open_journal, records


async def test_a_lazy_record_alone_is_written_soon_after(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    try:
        syncs = j.syncs
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await durable(j, ["c", "T1", 7], lazy=True)
        took = loop.time() - t0
        assert j.syncs == syncs + 1
        assert took >= LAZY_S * 0.8  # it waited for company before writing alone
        assert ["c", "T1", 7] in records(tmp_path)
    finally:
        j.close()


async def test_lazy_records_ride_with_the_next_urgent_group(tmp_path: Path) -> None:
    """A closed loop of message, reply, message, ...: the replies' records never start a group
    of their own, so each message needs one group commit, not two."""
    j = open_journal(tmp_path)
    try:
        syncs = j.syncs
        n = 100
        for i in range(n):
            await durable(j, ["a", "T1", i, "x"])
            j.append(["r", "T1", i, "y"], lazy=True)  # the reply went out already: nobody waits on it
            await asyncio.sleep(0.0005)  # the terminal's next message comes a moment later (not a wait for anything)
        # two per message if replies went alone; a loop held up past LAZY_S on a busy machine (the
        # sleep overslept) lets one go alone now and then
        assert j.syncs - syncs <= n + n // 5, f"{j.syncs - syncs} group commits for {n} messages"
        await j.drain()
        recs = records(tmp_path)
        assert [r[2] for r in recs if r[0] == "r"] == list(range(n))
        assert [r[2] for r in recs if r[0] == "a"] == list(range(n))
    finally:
        j.close()


async def test_drain_writes_what_is_pending_before_a_clean_stop(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    try:
        j.append(["c", "T1", 3], lazy=True)
        j.append(["c", "T2", 4], lazy=True)
        assert await j.drain(timeout=5.0)
        assert j.pending == 0
        recs = records(tmp_path)
        assert ["c", "T1", 3] in recs and ["c", "T2", 4] in recs
    finally:
        j.close()


async def test_a_checkpoint_larger_than_a_segment_does_not_start_a_segment_per_record(tmp_path: Path) -> None:
    """Each segment begins with a checkpoint holding every terminal's highest acknowledged id: with
    many terminals it can outgrow a small segment; a segment then holds four times its checkpoint
    of records (and at least `segment_bytes`)."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {f"T{i:05d}": i for i in range(1000)}, {}]  # ~13 KiB
    j.open(1, [], [])
    try:
        for i in range(200):
            j.append(["c", "T00001", i], lazy=True)  # ~20 bytes each: 4 KiB in all
        await j.drain()
        created = len(list(tmp_path.glob("seg-*.hsbj")))
        assert created == 1, f"{created} segments for 4 KiB of records under a 13 KiB checkpoint"
        assert [r[2] for r in records(tmp_path) if r[0] == "c"] == list(range(200))
    finally:
        j.close()


async def test_segments_close_past_their_size_so_a_restart_replays_little(tmp_path: Path) -> None:
    """With a small checkpoint a segment closes once its own records pass `segment_bytes`, and the
    settled ones are deleted: what a restart replays stays about one segment, not the history."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {"T00001": 1}, {}]
    j.open(1, [], [])
    try:
        for i in range(1, 201):  # ~10 KiB of records, each message settled as the CP does it
            seg = j.append(["a", "T00001", i, "x" * 10])
            j.pin(seg)
            j.append(["c", "T00001", i], lazy=True)
            j.unpin(seg)
        await j.drain()
        assert j.seg >= 4, f"only {j.seg} segments for ~10 KiB of records in 2 KiB segments"
        left = sum(len(p.read_bytes().rstrip(b"\0")) for p in tmp_path.glob("seg-*.hsbj"))  # (the rest: room allocated, zeros)
        assert left < 2 * 2048 + 1024, f"{left} bytes left: settled segments were kept"
    finally:
        j.close()


async def test_a_group_that_hangs_is_reported_stalled_its_own_timeout_after_it_began(tmp_path: Path, monkeypatch: Any) -> None:
    """One deadline timer serves many groups: a group that hangs later than the timer was armed
    is still reported `timeout` after it began, not earlier and not never."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, timeout=0.6)
    j.open(1, [], [])
    loop = asyncio.get_running_loop()
    try:
        await durable(j, ["a", "T1", 1, "x"])  # arms the timer at about t0
        t0 = loop.time()
        while loop.time() - t0 < 0.4:  # later groups complete as usual meanwhile
            await durable(j, ["a", "T1", 2, "x"])
        hook.hold()
        began = loop.time()
        j.append(["a", "T1", 3, "x"])
        while j.state == "ok":
            assert loop.time() - began < 5.0, "a hung group was never reported"
            await asyncio.sleep(0.01)
        took = loop.time() - began
        assert j.state == "stalled" and j.stalls == 1
        assert took >= 0.6 * 0.95, f"reported stalled {took:.2f} s after it began: before its timeout"
        hook.release()
        while j.state != "ok":
            assert loop.time() - began < 10.0, "the journal never recovered"
            await asyncio.sleep(0.01)
        assert ["a", "T1", 3, "x"] in records(tmp_path)
    finally:
        hook.release()
        j.close()


async def test_only_a_mostly_settled_old_segment_is_carried_forward(tmp_path: Path) -> None:
    """Past KEEP_SEGMENTS segments the oldest one's few live records are written again so that it
    can go; segments mostly live (a host away: messages held) are left, or every tick would write
    them again as their copies filled new segments in turn."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {"T00001": 1}, {}]
    j.open(1, [], [])
    try:
        segs: list[int] = []
        for i in range(1, 301):  # ~12 KiB of held messages: every record live
            seg = j.append(["a", "T00001", i, "x" * 20])
            j.pin(seg)
            segs.append(seg)
        await j.drain()
        assert len(j.segments) > 5, j.segments
        assert j.to_clean() == set(), "a journal of live records is not carried forward"
        oldest = j.segments[0]
        mine = [i for i, s in enumerate(segs) if s == oldest]
        for _ in mine[1:]:  # all but one of the oldest segment's messages answered
            j.unpin(oldest)
        assert j.to_clean() == {oldest}
    finally:
        j.close()


async def test_settled_segments_behind_a_mostly_live_old_one_go_once_it_is_carried_forward(tmp_path: Path) -> None:
    """Terminals away for hours pin an old segment with many of its records (more than a
    quarter); traffic goes on and settles. The journal as a whole is then mostly settled: the
    old segment's records are carried forward, so it and the settled ones behind it go, and the
    journal's size follows what is outstanding, not the traffic."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {"T00001": 1}, {}]
    j.open(1, [], [])
    try:
        away = []
        for i in range(1, 21):  # held for terminals away: live for hours
            seg = j.append(["a", "T00002", i, "x" * 20])
            j.pin(seg)
            away.append((i, seg))
        for i in range(1, 2001):  # the traffic of everyone else, answered
            seg = j.append(["a", "T00001", i, "y" * 20])
            j.pin(seg)
            j.unpin(seg)
        await j.drain()
        assert len(j.segments) > 20, len(j.segments)
        oldest = j.segments[0]
        assert all(s == oldest for _, s in away[:10]) and j.live[oldest] * 4 > j.records[oldest], "the scenario: a mostly live old segment"
        segs = j.to_clean()
        assert oldest in segs
        # what the CP's tick does with them (hsb.cp.journal_side.journal_tick)
        for i, seg in away:
            if seg in segs:
                new = j.append(["a", "T00002", i, "x" * 20], functools.partial(j.unpin, seg))
                j.pin(new)
        await j.drain()
        assert len(j.segments) <= 6, f"settled segments kept behind the carried ones: {list(j.segments)}"
    finally:
        j.close()


async def test_a_stop_during_a_hung_write_keeps_the_loop_running_and_the_file_open(tmp_path: Path, monkeypatch: Any) -> None:
    """The CP's stop waits for a write still out (a hung mount) without blocking its event loop,
    for the journal's timeout at most; the segment's descriptor stays open under that write
    (closed, its number could be reused while the write still goes to it)."""
    import structlog

    from hsb import faults
    from hsb.takeover.faults import Faults
    from tests.support.ticker import Ticker

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    j = open_journal(tmp_path)
    loop = asyncio.get_running_loop()
    try:
        await durable(j, ["a", "T1", 1, "x"])
        hook.hold()
        j.append(["a", "T1", 2, "x"])
        t0 = loop.time()
        while not hook.holding.is_set():  # the writer has the group, and hangs in the storage
            assert loop.time() - t0 < 5.0, "the group never reached the writer"
            await asyncio.sleep(0.001)
        async with Ticker() as turns:
            t0 = loop.time()
            with structlog.testing.capture_logs() as logs:
                await j.stop()
            took = loop.time() - t0
        assert j.timeout * 0.9 <= took < j.timeout + 1.0, f"stop took {took:.2f} s for a {j.timeout:g} s timeout"
        assert turns.ticks >= 100, f"the loop turned {turns.ticks} times in {took:.2f} s: blocked by the stop"
        assert "journal_close_abandoned_write" in [e["event"] for e in logs]
        assert j._fds, "a descriptor under a hung write was closed"
        hook.release()  # the storage answers: a stop again ends the writer and closes the files
        await asyncio.wait_for(j.stop(), 5.0)
        assert not j._fds
        assert ["a", "T1", 2, "x"] in records(tmp_path)  # the hung write did complete
    finally:
        hook.release()


async def test_a_stop_closes_the_files_once_the_writer_is_done(tmp_path: Path) -> None:
    j = open_journal(tmp_path)
    await durable(j, ["a", "T1", 1, "x"])
    files = [(fd, os.fstat(fd).st_ino) for fd in j._fds.values()]
    assert files
    await asyncio.wait_for(j.stop(), j.timeout)
    assert not j._fds
    for fd, ino in files:
        try:
            still = os.fstat(fd).st_ino == ino
        except OSError:
            continue
        assert not still, f"descriptor {fd} still open on its segment after the stop"


async def test_nothing_goes_to_the_writer_after_a_stop(tmp_path: Path) -> None:
    """A record appended once the stop began (a late callback, a timer) is not written and arms
    no deadline: it would otherwise go behind the writer's end and report a false stall."""
    j = open_journal(tmp_path)
    await durable(j, ["a", "T1", 1, "x"])
    await asyncio.wait_for(j.stop(), j.timeout)
    done: list[int] = []
    j.append(["a", "T1", 2, "x"], lambda: done.append(2))
    j.append(["c", "T1", 2], lambda: done.append(3), lazy=True)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while loop.time() - t0 < LAZY_S * 4:
        await asyncio.sleep(0.001)
    assert not done and j._inflight is None and j._timer is None and j.state == "ok"
    assert ["a", "T1", 2, "x"] not in records(tmp_path)


async def test_a_new_segment_whose_name_failed_to_sync_is_synced_before_anything_in_it_is_acknowledged(tmp_path: Path, monkeypatch: Any) -> None:
    """An idle rotation's group (only the new segment's checkpoint) fails at the directory fsync
    (EIO). Its retry finds the file already open; the name must still be made durable before
    anything written to that segment is acknowledged (through io_uring or the thread)."""
    import errno

    from hsb.cp.journal import store, writer

    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen)
    j.open(1, [], [])
    real = writer.fsync_dir  # type: ignore[attr-defined]  # (imported there: patched there below)
    synced: list[str] = []

    def flaky(path: Any) -> None:
        if not synced:
            synced.append("failed")
            raise OSError(errno.EIO, "injected: directory fsync failed")
        real(path)
        synced.append("ok")

    try:
        for i in range(1, 1 + store.IDLE_ROTATE_BYTES // 100 + 10):  # settled (nothing pinned), past the idle size
            j.append(["a", "T1", i, "x" * 100])
        await j.drain()
        monkeypatch.setattr(writer, "fsync_dir", flaky)
        first = j.seg
        j.maybe_rotate_idle()
        assert j.seg == first + 1, "the idle rotation did not start a segment"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not (synced and j.state == "ok" and j.pending == 0):
            assert loop.time() - t0 < 5.0, f"the rotation's group never landed: {synced} {j.state}"
            await asyncio.sleep(0.005)
        acked = loop.create_future()
        j.append(["a", "T1", 0, "in the new segment"], lambda: acked.set_result(list(synced)))
        seen = await asyncio.wait_for(acked, 5.0)
        assert seen[:2] == ["failed", "ok"], f"acknowledged with the directory syncs {seen}: the new segment's name not durable"
        assert ["a", "T1", 0, "in the new segment"] in records(tmp_path)
    finally:
        j.close()


async def test_a_failed_group_is_written_again_in_place_before_what_came_after(tmp_path: Path, monkeypatch: Any) -> None:
    """A group commit whose write fails (EIO) is written again as it was, at the same offset, and
    the records appended meanwhile follow it: each record once, in order, every caller told, and
    `pending` counts records (not groups) throughout."""
    import errno

    from tests.support.procs import until

    j = open_journal(tmp_path, io="thread")
    try:
        real = j._write
        fail = [True]

        def flaky(batch: list[tuple[int, bytes]]) -> float:
            if fail[0]:
                fail[0] = False
                os.pwrite(j._fds[batch[0][0]], b"\xff" * 7, j._offset[batch[0][0]])  # junk where it goes
                raise OSError(errno.EIO, "injected")
            return real(batch)

        monkeypatch.setattr(j, "_write", flaky)
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[None]] = []

        def append(i: int) -> None:
            fut: asyncio.Future[None] = loop.create_future()
            j.append(["a", "T1", i, b"x"], lambda: fut.set_result(None))
            futs.append(fut)

        for i in (1, 2, 3):
            append(i)
        await until(lambda: j.state == "failing", 5)
        assert j.pending == 3 and not any(f.done() for f in futs)
        for i in (4, 5):
            append(i)
        assert j.pending == 5
        await asyncio.wait_for(asyncio.gather(*futs), 5)
        assert [r for r in records(tmp_path) if r[0] == "a"] == [["a", "T1", i, b"x"] for i in range(1, 6)]
        assert j.pending == 0 and j.state == "ok" and j.records_written >= 5
    finally:
        j.close()


async def test_a_segment_that_cannot_be_deleted_leaves_its_group_acknowledged_once_and_goes_later(tmp_path: Path, monkeypatch: Any) -> None:
    """A settled segment's deletion fails (EIO on the unlink) after the group that went with it
    was written and checked: the group's records are acknowledged and written once (not again
    with the deletion's retry); the groups after it go on without trying the deletion again until
    its backoff has passed; then the segment is deleted."""
    import errno

    from hsb.cp.journal import completion, store

    monkeypatch.setattr(completion, "RETRY_S", (3.0,))  # the backoff, long enough to append during it
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, io="thread")
    j.open(1, [], [])
    real = os.unlink
    refused: list[str] = []

    def flaky(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith(".hsbj") and not refused:
            refused.append(str(path))
            raise OSError(errno.EIO, "injected: unlink failed")
        real(path, *a, **kw)

    try:
        for i in range(1, 1 + store.IDLE_ROTATE_BYTES // 100 + 10):  # settled (nothing pinned), past the idle size
            j.append(["a", "T1", i, "x" * 100])
        await j.drain()
        old = sorted(tmp_path.glob("seg-*.hsbj"))
        assert len(old) == 1
        monkeypatch.setattr(os, "unlink", flaky)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        j.maybe_rotate_idle()  # a new segment; the settled one is to be deleted with its group
        acked = loop.create_future()
        j.append(["a", "T2", 1, "with the deletion"], lambda: acked.set_result(len(refused)))
        assert await asyncio.wait_for(acked, 5.0) == 1, "acknowledged only after the deletion was tried (and refused)"
        await durable(j, ["a", "T2", 2, "during the backoff"])
        assert loop.time() - t0 < 2.9, "the group meant for the backoff came after it"
        assert old[0].exists() and len(refused) == 1, "a group during the backoff tried the deletion again"
        while old[0].exists():
            assert loop.time() - t0 < 8.0, f"the settled segment was never deleted ({refused})"
            await asyncio.sleep(0.01)
        assert len(refused) == 1 and j.state == "ok"
        await durable(j, ["a", "T2", 3, "after"])
        assert [r for r in records(tmp_path) if r[0] == "a"] == [
            ["a", "T2", 1, "with the deletion"],
            ["a", "T2", 2, "during the backoff"],
            ["a", "T2", 3, "after"],
        ]
    finally:
        j.close()


async def test_a_journal_opened_with_confirmation_points_still_drops_its_settled_segments(tmp_path: Path) -> None:
    """The first segment after a restart holds the snapshot: held messages and kept replies
    (pinned until they settle) and each terminal's confirmation point (never unpinned, as in any
    segment). Counting those as live kept that segment, and so every later one, for ever."""
    d = tmp_path / "j"
    d.mkdir()
    j = Journal(d, generation=Generations(d).take(), segment_bytes=4096)
    j.open(1, [["c", "T1", 5], ["c", "T2", 9], ["a", "T1", 6, b"held"]], [])
    assert j.live[1] == 1  # the held message only
    try:
        j.unpin(1)  # it settles
        for i in range(200):  # 200 messages accepted and settled: several 4 KiB segments
            seg = j.append(["a", "T1", 7 + i, b"x" * 100])
            j.pin(seg)
            await durable(j, ["d", "T1", 7 + i])
            j.unpin(seg)
        await durable(j, ["p", False])
        assert j.seg >= 4, j.seg  # it did move on through several segments
        assert len(j.segments) <= 2, list(j.segments)  # and dropped the settled ones
    finally:
        j.close()


def test_a_message_being_answered_is_not_carried_forward(tmp_path: Path) -> None:
    """Carrying the oldest segment's live records forward skips a message whose settling record
    ("d" or "r") is on its way: an "a" written after that would bring it back at a recovery."""
    from hsb.cp.state import Held
    from tests.support.cpcore import cp_core

    cp = cp_core(tmp_path, 2, width=1)
    appended: list[list[Any]] = []

    class Journal_:
        def maybe_rotate_idle(self) -> None:
            pass

        def to_clean(self) -> set[int]:
            return {3}

        def append(self, rec: list[Any], done: Any = None, lazy: bool = False) -> int:
            appended.append(rec)
            return 9

        def pin(self, seg: int) -> None:
            pass

    t = cp.terms["T1"]
    for mid, replying in ((1, True), (2, False)):
        h = Held(mid, b"m", 0.0, seg=3)
        h.replying = replying
        t.held[mid] = h
    cp.journal = Journal_()
    cp.journal_tick()
    assert appended == [["a", "T1", 2, b"m"]], appended
    assert t.held[1].seg == 3 and t.held[2].seg == 9


async def test_a_failing_step_after_a_durable_record_does_not_stop_the_rest(tmp_path: Path) -> None:
    """One record's step after it is durable raises (a bug): the other records of its group
    still get theirs (acknowledgements, replies), and later groups are written as before."""
    j = open_journal(tmp_path)
    try:
        done: list[int] = []

        def boom() -> None:
            raise RuntimeError("a bug in one step")

        j.append(["a", "T1", 1, "x"], boom)
        j.append(["a", "T1", 2, "y"], lambda: done.append(2))
        await durable(j, ["a", "T1", 3, "z"])
        assert 2 in done
        await durable(j, ["a", "T1", 4, "w"])  # the journal goes on
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2, 3, 4]
    finally:
        j.close()


async def test_an_earlier_generations_file_that_cannot_be_deleted_does_not_stop_the_start(tmp_path: Path, monkeypatch: Any) -> None:
    """The snapshot is durable: an earlier generation's segment that the storage refuses to
    delete (EIO) is said and left for the next start, and the journal serves; the others go."""
    import errno

    from hsb.cp.journal import store
    from tests.support.logrec import RecordingLog

    stuck, other = tmp_path / "stuck-garbage", tmp_path / "other-garbage"
    stuck.write_bytes(b"x")
    other.write_bytes(b"y")
    real = os.unlink

    def unlink(path: Any, *a: Any, **k: Any) -> None:
        if Path(path) == stuck:
            raise OSError(errno.EIO, "Input/output error")
        real(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    logs = RecordingLog()
    monkeypatch.setattr(store, "log", logs)
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {}, {}]
    try:
        assert j.open(1, [], [stuck, other]) == 1
        assert stuck.exists() and not other.exists()
        said = logs.events("journal_garbage_delete_failed")
        assert len(said) == 1 and said[0]["count"] == 1 and "stuck-garbage" in said[0]["files"][0], said
        await durable(j, ["a", "T1", 1, "x"])  # and it serves
    finally:
        j.close()


async def test_a_segment_that_closed_settled_while_it_was_the_only_one_goes(tmp_path: Path) -> None:
    """The only segment closes with nothing live (records that pin nothing filled it); then
    traffic always keeps something live in the newer ones. The next tick drops it: no unpin of
    the oldest segment will ever come to do it."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {}, {}]
    j.open(1, [], [])
    try:
        first = j.segments[0]
        while j.seg == first:
            j.append(["h", {"kind": "note", "at": 0.0, "pad": "z" * 40}])  # (pins nothing)
        held = j.append(["a", "T1", 1, "x"])
        j.pin(held)  # one message always live from now on, in a newer segment
        for i in range(2, 40):
            seg = j.append(["a", "T2", i, "y" * 20])
            j.pin(seg)
            j.unpin(seg)
        await j.drain()
        assert j.segments[0] == first and j.live.get(first, 0) == 0, "the scenario: the first segment settled and kept"
        j.maybe_rotate_idle()  # the CP's tick
        await j.drain()
        assert first not in j.segments
    finally:
        j.close()


async def test_a_segment_with_one_message_still_held_is_not_dropped_with_the_settled_one_before_it(tmp_path: Path) -> None:
    """The oldest segment settles and goes; the one after it still holds one message (pinned
    once): it stays, and the message is recovered (dropping it would lose an acknowledged one)."""
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=2048)
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {}, {"first": 1}]
    j.open(1, [], [])
    try:
        first = j.append(["a", "T1", 1, "x"])
        j.pin(first)
        while j.seg == first:
            j.append(["h", {"kind": "note", "at": 0.0, "pad": "z" * 40}])  # (pins nothing)
        second = j.append(["a", "T1", 2, "y"])
        j.pin(second)
        while j.seg == second:
            j.append(["h", {"kind": "note", "at": 0.0, "pad": "z" * 40}])
        await durable(j, ["r", "T1", 1, "reply"])
        j.unpin(first)  # message 1 answered: the first segment goes
        await j.drain()
        await durable(j, ["c", "T1", 0])  # (the deletion's group is done)
        assert first not in j.segments and second in j.segments
    finally:
        j.close()
    assert sorted(recover(tmp_path).held.get("T1", {})) == [2]


async def test_a_deadline_that_fires_late_looks_again_before_it_says_stalled(tmp_path: Path, monkeypatch: Any) -> None:
    """hsbcpd stopped (SIGSTOP, a paused VM) longer than journal_timeout with a group in flight:
    on SIGCONT uvloop runs the overdue deadline before it reads the write's completion, and the CP
    said `journal_stalled` (error) and `journal_recovered_from_fault` a moment later, and counted a
    stall, though the storage was fine (the two-CP walk-through). A deadline firing late looks
    again after a turn of the loop; a group still in flight then is a stall, as ever."""
    from hsb import faults
    from hsb.bootclock import boot_now
    from hsb.cp.journal import completion
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, timeout=0.5)
    j.open(1, [], [])
    loop = asyncio.get_running_loop()

    def fires_late() -> None:
        """The deadline timer due long ago, and its group's timeout long past (a stall of ours)."""
        if j._timer is not None:
            j._timer.cancel()
        j._timer_due = boot_now() - 3.0
        j._batch_t0 = boot_now() - j.timeout - 3.0
        j._deadline()

    try:
        await durable(j, ["a", "T1", 1, "x"])
        hook.hold()
        j.append(["a", "T1", 2, "x"])
        await asyncio.sleep(0.05)  # (in flight, held)
        fires_late()
        assert j.state == "ok" and j.stalls == 0, "a late deadline said stalled at once"
        hook.release()  # the write completes in the turn the look waits for
        began = loop.time()
        while j._inflight is not None:
            assert loop.time() - began < 5.0
            await asyncio.sleep(0.01)
        await asyncio.sleep(2 * completion.LATE_LOOK_S)
        assert j.state == "ok" and j.stalls == 0, (j.state, j.stalls)
        hook.hold()  # a group that really hangs, found late: said stalled at the second look
        j.append(["a", "T1", 3, "x"])
        await asyncio.sleep(0.05)
        fires_late()
        assert j.state == "ok"
        fires_late()  # (the second look late too, this process starved: it looks only once)
        assert j.state == "stalled" and j.stalls == 1
        hook.release()
        while j.state != "ok":
            assert loop.time() - began < 15.0, "the journal never recovered"
            await asyncio.sleep(0.01)
    finally:
        j.close()
