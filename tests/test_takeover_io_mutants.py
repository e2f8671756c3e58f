"""hsbd's use of the takeover file (hsb.host.takeover_io: TakeoverIO over a stand-in store), each
test naming a behaviour that a mutation audit of the module found no test for: the ring buffer
kept during a batch write and dropped with it, a failed group merged under the newer changes,
the ring writer's failures counted and cleared, the errors a batch read and the standby's polls
leave (or clear) in the status, and the writer's task restarted and stopped with it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host import takeover_io as tio_mod
from hsb.host.config import TakeoverSection
from hsb.host.takeover_io import OFF, TakeoverIO, latest_per_terminal
from hsb.takeover.errors import StartupIdMismatch
from hsb.takeover.reader import PollResult, PollStatus
from hsb.takeover.records import SessionEntry

pytestmark = pytest.mark.timeout(30)


def _tio(tmp_path: Path) -> TakeoverIO:
    return TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")


async def _until(cond: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 10
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.005)


def test_each_terminals_last_entry_comes_in_the_order_of_those_last_entries() -> None:
    """A terminal changed again goes after the terminals changed since its first change: the
    group says the states in the order they were last set."""
    a1, b1, a2 = SessionEntry("A", {"n": 1}, True), SessionEntry("B", {"n": 1}, True), SessionEntry("A", {"n": 2}, False)
    assert latest_per_terminal([a1, b1, a2]) == [b1, a2]


def test_a_second_batch_write_and_a_discarded_one_drop_the_changes_buffered_before() -> None:
    """The changes buffered while a batch write runs are dropped when another batch write
    starts (its snapshot holds them) and when the batch write is given up (no standby to read
    them): then the ring writer is off and keeps nothing more."""
    tio = TakeoverIO(TakeoverSection(path="/nonexistent/t.dat", records=64), 10, "host-a")
    tio.buffer_ring_changes()
    tio.ring_change("T1", {}, True)
    tio.buffer_ring_changes()
    assert tio.pending == []
    tio.ring_change("T2", {}, True)
    tio.discard_ring_buffer()
    tio.ring_change("T3", {}, True)
    assert tio.pending == [] and tio.mode == OFF and tio.status()["ring_writer"] == "off"


async def test_a_failed_group_is_kept_under_the_changes_made_while_it_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A group whose write fails is written again, but a terminal changed meanwhile gets its
    newer state, not the failed group's older one; the failures are counted, each is followed by
    the backoff, and a good write clears the failure and the error for the status."""
    tio = _tio(tmp_path)
    written: list[list[SessionEntry]] = []
    fail = [True, True]
    waits: list[bool] = []
    before: list[Any] = []  # the status as the good write began

    class Backoff:
        def __init__(self, *_: Any) -> None: ...

        def next(self) -> float:
            waits.append(True)
            return 0.0

        def reset(self) -> None: ...

    async def append(group: list[SessionEntry]) -> None:
        await asyncio.sleep(0)
        if fail:
            fail.pop()
            tio.ring_change("T1", {"n": 2 + len(fail)}, False)  # a newer change while this one fails
            raise OSError("EIO")
        before.append(tio.status())
        written.append(list(group))

    monkeypatch.setattr(tio_mod, "Backoff", Backoff)
    try:
        tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
        tio.start_ring_writer()
        tio.ring_change("T1", {"n": 1}, True)
        tio.ring_change("T2", {"n": 1}, True)
        await _until(lambda: written, "the group written once storage came back")
        assert before[0]["storage"] == "EIO" and before[0]["ring_write_failing"]["failures"] == 2, before
        assert {e.terminal: (e.attrs["n"], e.open) for e in written[0]} == {"T1": (2, False), "T2": (1, True)}
        assert tio.write_failing is None and tio.last_error is None and tio.status()["storage"] == "ok"
        assert len(waits) == 2
    finally:
        await tio.close()


async def test_the_ring_writer_starts_a_new_task_if_its_last_one_ended_and_close_ends_it(tmp_path: Path) -> None:
    """The ring writer's task ended (cancelled): the next start runs a new one, which writes the
    changes; close() cancels it."""
    tio = _tio(tmp_path)
    written: list[str] = []

    async def append(group: list[SessionEntry]) -> None:
        written.extend(e.terminal for e in group)

    tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    first = tio.flusher
    assert first is not None
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    tio.start_ring_writer()
    tio.ring_change("T1", {}, True)
    await _until(lambda: written == ["T1"], "the change written by a new task")
    second = tio.flusher
    assert second is not None and second is not first
    await tio.close()
    await asyncio.gather(second, return_exceptions=True)
    assert second.cancelled()


async def test_a_good_batch_write_clears_the_error_and_returns_its_generation(tmp_path: Path) -> None:
    """A batch write that succeeds says the storage is good again (an earlier poll's or write's
    error no longer shown) and gives the file's new generation."""
    tio = _tio(tmp_path)

    async def batch_write(*_: Any) -> Any:
        return SimpleNamespace(generation=7)

    tio.store.batch_write = batch_write  # type: ignore[method-assign,assignment]  # (a fake: only the generation is read of its result)
    tio.last_error = "EIO"
    assert await tio.batch_write(1, []) == 7 and tio.last_error is None


async def test_a_batch_read_of_another_standbys_file_says_the_startup_id_and_generation_found(tmp_path: Path) -> None:
    """A batch read refused for another standby's startup id: the error names the id found in
    the header, and the header's generation is kept for the status; if the header cannot be read
    either, neither is said. A batch read that succeeds clears an earlier error."""
    tio = _tio(tmp_path)

    async def batch_read(*_: Any) -> Any:
        raise StartupIdMismatch("another standby's", expected=5)

    async def read_header() -> Any:
        return SimpleNamespace(startup_id=9, generation=4)

    tio.store.batch_read = batch_read  # type: ignore[method-assign,assignment]  # (a fake of its own shape: it raises)
    tio.store.read_header = read_header  # type: ignore[method-assign]
    with pytest.raises(StartupIdMismatch) as err:
        await tio.batch_read(5)
    assert err.value.found == 9 and tio.mismatch_generation == 4

    async def no_header() -> Any:
        raise OSError("EIO")

    tio.store.read_header = no_header  # type: ignore[method-assign]
    with pytest.raises(StartupIdMismatch) as err:
        await tio.batch_read(5)
    assert err.value.found is None and tio.mismatch_generation is None

    async def good(*_: Any) -> Any:
        return SimpleNamespace(header=SimpleNamespace(generation=6, batch_records=1), entries=[SessionEntry("T1", {}, True)])

    tio.store.batch_read = good
    tio.last_error = "EIO"
    assert await tio.batch_read(5) == (6, 1, [SessionEntry("T1", {}, True)]) and tio.last_error is None


async def test_the_standbys_polls_say_a_bad_record_and_a_failure_until_they_stop(tmp_path: Path) -> None:
    """No polls before the standby follows the ring (the store not asked). A poll that finds a
    corrupt or torn record shows it (the record and why) until a good poll; one that fails shows
    its error; a new generation of another pair's is named. Once the polls stop (a promotion: the
    host writes now) neither the error nor the record is shown, nor the read position."""
    tio = _tio(tmp_path)
    results: list[Any] = []

    async def poll() -> Any:
        r = results.pop(0)
        if isinstance(r, Exception):
            raise r
        return r

    tio.store.poll = poll  # type: ignore[method-assign]
    assert await tio.ring_poll() == ("nothing_new", [], "")  # (not following: `results` empty, poll not called)
    tio.follow()
    results.append(PollResult(PollStatus.CORRUPT, record=12, reason="bad crc"))
    assert (await tio.ring_poll())[0] == "corrupt"
    assert tio.bad_record == 12 and tio.last_error == "record 12: bad crc" and tio.status()["storage"] == "record 12: bad crc"
    results.append(PollResult(PollStatus.NOTHING_NEW))
    await tio.ring_poll()
    assert tio.bad_record is None and tio.last_error is None
    results.append(OSError("EIO"))
    with pytest.raises(OSError):
        await tio.ring_poll()
    assert tio.last_error == "EIO"
    results.append(PollResult(PollStatus.NEW_GENERATION, reason="pair 7's", foreign=True))
    await tio.ring_poll()
    assert tio.foreign_writer == "pair 7's"
    results.append(PollResult(PollStatus.TORN, record=3, reason="torn"))
    await tio.ring_poll()
    assert tio.bad_record == 3 and tio.last_error
    tio.store._reader = SimpleNamespace(position=(1, 5))  # (as after a batch read)
    assert tio.status()["ring_read"] == {"generation": 1, "next_seq": 5}
    tio.become_writer()
    assert not tio.following and tio.bad_record is None and tio.last_error is None
    assert tio.status()["ring_read"] is None and tio.status()["storage"] == "ok"


def test_the_changes_waiting_are_counted_in_whole_records() -> None:
    """The status's records for the changes waiting round up: one change more than a record
    holds takes two records."""
    tio = TakeoverIO(TakeoverSection(path="/nonexistent/t.dat", records=64), 10, "host-a")
    tio.buffer_ring_changes()
    for i in range(tio.entries_per_record + 1):
        tio.ring_change(f"T{i}", {}, True)
    assert tio.status()["ring_pending_records"] == 2
    tio.buffer_ring_changes()
    tio.ring_change("T1", {}, True)
    assert tio.pending_records() == 1


async def test_a_group_that_fails_after_a_new_batch_or_a_stop_is_neither_kept_nor_said_failing(tmp_path: Path) -> None:
    """A group on its way when a new batch write began (the writer started again after it) or
    when the ring writer stopped: its failure is not the ring's state now. It is not written again
    (the batch's snapshot holds newer states: an older one written after it would undo them), and
    the ring is not said failing; a failure said before a start or a stop is cleared by it."""
    tio = _tio(tmp_path)
    go = asyncio.Event()
    taken: list[list[SessionEntry]] = []

    async def append(group: list[SessionEntry]) -> None:
        taken.append(list(group))
        await go.wait()
        raise OSError("EIO")

    tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.write_failing = (1.0, 1.0, 3)
    tio.start_ring_writer()
    assert tio.write_failing is None
    try:
        for restart in (True, False):
            go.clear()
            n = len(taken)
            tio.ring_change("T1", {"old": True}, True)
            await _until(lambda: len(taken) > n, "the group taken")
            if restart:
                tio.buffer_ring_changes()  # a new batch write, then the writer again
                tio.start_ring_writer()
            else:
                tio.stop_ring_writer()
            go.set()
            await _until(lambda: tio.ring_idle.is_set(), "the group's write ended")
            await asyncio.sleep(0)
            assert tio.pending == [] and tio.write_failing is None and tio.last_error is None, (restart, tio.pending)
        tio.write_failing = (1.0, 1.0, 3)
        tio.stop_ring_writer()
        assert tio.write_failing is None
    finally:
        await tio.close()
