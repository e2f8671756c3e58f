"""The active's ring writer (hsb.host.takeover_io) when a group's write fails: the changes are
kept and written again, and a terminal's newer change made meanwhile is never overwritten by
its older one. In-process, over a stand-in store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsb.host.config import TakeoverSection
from hsb.host.takeover_io import TakeoverIO
from hsb.takeover.records import SessionEntry
from tests.support.procs import until

pytestmark = pytest.mark.timeout(10)


class GatedStore:
    """A takeover store whose ring appends wait for `gate` and fail while `fail` says so."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.fail = 1  # appends that fail (EIO) before they succeed
        self.tries: list[list[SessionEntry]] = []
        self.written: list[SessionEntry] = []
        self.responding = True
        self.write_position = None

    async def append(self, group: list[SessionEntry]) -> None:
        self.tries.append(list(group))
        await self.gate.wait()
        if self.fail:
            self.fail -= 1
            raise OSError(5, "Input/output error")
        self.written.extend(group)

    async def close(self) -> None:
        return None


def _io(tmp_path: Path) -> tuple[TakeoverIO, GatedStore]:
    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), own_total=4, host_name="host-a")
    store = GatedStore()
    tio.store = store  # type: ignore[assignment]
    return tio, store


async def test_a_newer_change_made_while_a_failed_group_was_written_wins(tmp_path: Path) -> None:
    """T1 opened, its group's write fails (EIO), and T1 closed meanwhile: the group is kept for
    the next try, but the close, newer, is what the ring gets. The older open written last would
    leave the standby a session the active has closed (a switch would carry a terminal gone)."""
    tio, store = _io(tmp_path)
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {"k": 1}, True)
        tio.ring_change("T2", {"k": 1}, True)
        await until(lambda: store.tries, 3.0, what="the first group on its way")
        tio.ring_change("T1", {"k": 1}, False)  # while that group's write runs
        store.gate.set()
        await until(lambda: store.written and not tio.pending, 3.0, what="the changes written after the failure")
        last = {e.terminal: e.open for e in store.written}
        assert last == {"T1": False, "T2": True}, store.written
        assert tio.write_failing is None and tio.last_error is None
    finally:
        await tio.close()


async def test_a_group_that_failed_behind_a_batch_write_is_not_written_after_it(tmp_path: Path) -> None:
    """T1 opened, its group's write under way; T1 closed, and a batch write (its snapshot: T1
    closed) came before that group failed: the group is not kept for the ring, whose later open
    of T1 would undo the batch at the standby (a standby session of a terminal gone)."""
    tio, store = _io(tmp_path)
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {"k": 1}, True)
        await until(lambda: store.tries, 3.0, what="the first group on its way")
        tio.ring_change("T1", {"k": 1}, False)
        tio.stop_ring_writer()  # hsb.host.ha_standby's batch write: stop, buffer, write, start
        tio.buffer_ring_changes()
        tio.start_ring_writer()
        store.gate.set()
        await until(lambda: store.fail == 0 and tio.ring_idle.is_set(), 3.0, what="the group failed")
        assert tio.write_failing is None  # (a failure from before the batch: not the ring's state now)
        tio.ring_change("T2", {"k": 1}, True)  # the next change goes on as ever
        await until(lambda: store.written, 3.0, what="T2's change written")
        assert [(e.terminal, e.open) for e in store.written] == [("T2", True)], store.written
    finally:
        await tio.close()


async def test_one_group_at_a_time_goes_to_the_storage_in_the_order_taken(tmp_path: Path) -> None:
    """The ring writer started again (after each batch write) goes on with its one flush loop: a
    second loop beside it wrote a newer group while an older one was still on its way, and the
    older, landing after, left the terminal's older state in the ring."""
    tio, store = _io(tmp_path)
    store.fail = 0
    running = 0
    most = 0
    real = store.append

    async def append(group: list[SessionEntry]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        try:
            await real(group)
        finally:
            running -= 1

    store.append = append  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        tio.stop_ring_writer()
        tio.buffer_ring_changes()
        tio.start_ring_writer()
        tio.ring_change("T1", {"k": 1}, True)
        await until(lambda: store.tries, 3.0, what="the first group on its way")
        tio.ring_change("T1", {"k": 1}, False)
        store.gate.set()
        await until(lambda: len(store.written) == 2, 3.0, what="both changes written")
        assert [(e.terminal, e.open) for e in store.written] == [("T1", True), ("T1", False)]
        assert most == 1, "two ring groups were on their way to the storage at once"
    finally:
        await tio.close()


async def test_an_entry_that_cannot_be_encoded_is_dropped_and_the_rest_written_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A session whose attributes cannot be encoded (a set, say) fails its group's write: that
    entry is dropped (said), the others go again at once, and the storage is not said to fail
    (no ring_write_failed, no backoff): it answered."""
    from hsb.host import takeover_io as tio_mod
    from hsb.takeover.records import encode_entry
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(tio_mod, "log", rec)
    tio, store = _io(tmp_path)
    store.fail = 0
    store.gate.set()

    async def append(group: list[SessionEntry]) -> None:
        store.tries.append(list(group))
        for e in group:
            encode_entry(e)  # as the store's append does: a ValueError naming the terminal
        store.written.extend(group)

    store.append = append  # type: ignore[method-assign]
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {"k": 1}, True)
        tio.ring_change("T2", {"k": {1, 2}}, True)  # (a set: no MessagePack for it)
        tio.ring_change("T3", {"k": 1}, True)
        await until(lambda: store.written, 3.0, what="the good entries written")
        assert [e.terminal for e in store.written] == ["T1", "T3"]
        assert [e["terminal"] for e in rec.events("ring_entry_dropped")] == ["T2"]
        assert rec.events("ring_write_failed") == [] and tio.write_failing is None and tio.last_error is None
    finally:
        await tio.close()


async def test_a_ring_write_stuck_on_the_storage_is_not_done(tmp_path: Path) -> None:
    """ring_write_done (a demoted host waits for its last ring group): a write past its deadline
    that may still land (the store not responding) is not done, nor are pending changes after a
    stop (the next batch write holds them)."""
    tio, store = _io(tmp_path)
    tio.start_ring_writer()
    try:
        store.responding = False
        assert await tio.ring_write_done(0.1) is False
        store.responding = True
        assert await tio.ring_write_done(0.1) is True
        tio.ring_change("T1", {"k": 1}, True)
        await until(lambda: store.tries, 3.0, what="the group on its way")
        assert await tio.ring_write_done(0.05) is False  # (its write waits for the gate)
        tio.ring_change("T2", {"k": 1}, True)
        tio.stop_ring_writer()
        assert tio.status()["ring_pending"] == 0 and tio.status()["ring_writer"] == "off"
        store.gate.set()
        assert await tio.ring_write_done(3.0) is True
    finally:
        await tio.close()
