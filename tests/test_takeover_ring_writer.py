"""The host's ring writer (hsb.host.takeover_io: TakeoverIO and its store): a group holds each
terminal's last entry only, an entry that cannot be encoded does not stop the ring, groups taken
before a new batch are not written under it (nor queued again when stale and failed) while one
taken after is, a ring error does not outlive the writer or the polls, a demoted active waits
for its ring write still on its way, and an active with no standby keeps no ring changes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.takeover import (
    RingReader,
    SessionEntry,
    batch_read,
)
from tests.support.procs import until
from tests.support.ring import Changes, R, drain, make, setup_pair


async def test_a_ring_group_holds_each_terminals_last_entry_only(tmp_path: Path) -> None:
    """Opens and closes that pile up while a group is written go out as one entry per
    terminal, the last (an entry sets a state): a burst never makes a group larger than a
    batch, which could lap the ring."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    groups: list[list[SessionEntry]] = []

    async def append(group: Any) -> None:
        groups.append(list(group))

    tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.buffer_ring_changes()  # as during a batch write: changes wait
    for i in range(1000):
        tio.ring_change(f"T{i % 10}", {"n": i}, i % 2 == 0)
    tio.start_ring_writer()
    try:
        deadline = asyncio.get_running_loop().time() + 10
        while not groups or tio.pending:
            assert asyncio.get_running_loop().time() < deadline, "the group was never written"
            await asyncio.sleep(0.01)
        assert [len(g) for g in groups] == [10]
        assert {e.terminal: (e.attrs["n"], e.open) for e in groups[0]} == {f"T{k}": (990 + k, k % 2 == 0) for k in range(10)}
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_an_entry_that_cannot_be_encoded_does_not_stop_the_ring(tmp_path: Path) -> None:
    """One terminal's attributes that cannot be encoded (a service put an object in them):
    that entry is logged and dropped, every other terminal's changes are still written."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO
    from hsb.takeover.records import encode_entries

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    written: list[str] = []

    async def append(group: Any) -> None:
        encode_entries(group)  # what the writer does first: a ValueError changes nothing
        written.extend(e.terminal for e in group)

    tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {"n": 1}, True)
        tio.ring_change("T2", {"bad": object()}, True)
        tio.ring_change("T3", {"n": 3}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while written != ["T1", "T3"]:
            assert asyncio.get_running_loop().time() < deadline, f"the ring stopped: written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        tio.ring_change("T4", {"n": 4}, False)
        while written != ["T1", "T3", "T4"]:
            assert asyncio.get_running_loop().time() < deadline, f"the ring stopped: written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        assert tio.pending == [] and tio.last_error is None
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


def test_a_group_taken_before_a_new_batch_is_not_written_under_it(tmp_path: Path) -> None:
    """A ring group taken under generation g and reaching the storage thread after the batch
    write of g+1: refused (its entries are in that batch, or older), nothing written."""
    from hsb.takeover import StaleGroup

    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    old_gen = w.generation
    ch = Changes()
    state = ch.take(3)
    w.batch_write(2, state)
    with pytest.raises(StaleGroup):
        w.append_group(ch.take(2), old_gen)
    assert w.next_seq == 1
    snap = batch_read(path, expected_startup_id=2)
    assert snap.entries == state
    assert drain(RingReader(path, snap.header)) == []
    fresh = ch.take(2)
    assert w.append_group(fresh, w.generation) == (1, 1)


async def test_a_stale_group_that_failed_is_not_queued_again_after_a_batch(tmp_path: Path) -> None:
    """The active's ring writer: a group in flight when a batch write starts fails (stale);
    its entries are not queued again under the new generation (the batch holds them, or
    newer states), and the changes made since are written."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO
    from hsb.takeover import StaleGroup

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    release = asyncio.Event()
    written: list[tuple[str, bool]] = []
    calls = 0

    async def append(group: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            await release.wait()
            raise StaleGroup("a ring group of generation 1 after the batch write of generation 2: not written")
        written.extend((e.terminal, e.open) for e in group)

    tio.store.append = append  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    import hsb.host.takeover_io as tio_mod
    from tests.support.logrec import RecordingLog

    logs = RecordingLog()
    real_log, tio_mod.log = tio_mod.log, logs
    try:
        tio.ring_change("T1", {}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while calls < 1:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        tio.stop_ring_writer()  # the batch write of generation 2, as HA.batch_write does it
        tio.buffer_ring_changes()
        tio.ring_change("T2", {}, True)
        tio.start_ring_writer()
        release.set()
        while written != [("T2", True)]:
            assert asyncio.get_running_loop().time() < deadline, f"written {written}, pending {tio.pending}"
            await asyncio.sleep(0.01)
        assert tio.pending == [] and tio.last_error is None
        assert not logs.events("ring_write_failed"), "a batch write's race reported as an error"
    finally:
        tio_mod.log = real_log
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_the_store_refuses_a_group_queued_before_a_batch_write_that_ran_first(tmp_path: Path) -> None:
    """Through TakeoverStore (the storage thread, one operation at a time): a ring group queued
    while a batch write waits its turn ahead of it is refused (StaleGroup), not written under
    the new generation."""
    import threading

    from hsb.takeover import StaleGroup, TakeoverStore

    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, records=40, host_name="test", timeout=10)
    try:
        await store.batch_write(1, [])
        ch = Changes()
        hold, busy = threading.Event(), threading.Event()

        def occupy() -> None:
            busy.set()
            hold.wait()

        store._pool.submit(occupy)  # the storage thread busy: what follows queues behind it
        try:
            queue = store._pool._q
            await until(busy.is_set, 10, interval=0.001, what="the storage thread busy")
            state = ch.take(3)
            batch = asyncio.ensure_future(store.batch_write(2, state))
            # the batch write's job in the storage thread's queue before the group is taken
            await until(lambda: queue.qsize() == 1, 10, interval=0.001, what="the batch write queued on the storage thread")
            group = asyncio.ensure_future(store.append(ch.take(2)))
            await until(lambda: queue.qsize() == 2, 10, interval=0.001, what="the ring group queued behind the batch write")
        finally:
            hold.set()
        assert (await batch).generation == 2
        with pytest.raises(StaleGroup):
            await group
        snap = batch_read(path, record_size=R, expected_startup_id=2)
        assert snap.entries == state
        assert drain(RingReader(path, snap.header)) == []
    finally:
        await store.close()


async def test_a_ring_error_does_not_outlive_the_ring_writer_or_the_polls(tmp_path: Path) -> None:
    """A ring write failed, then the standby went (the ring writer stops); or a poll failed, then
    this standby took over (its polls stop): the error stayed in the status for good, and
    hsb_takeover_storage_ok (HsbTakeoverStorageStalled) kept saying the storage failed while it
    answered. It ends with the writer or the polls; the next operation asks the storage again."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")

    async def failing(group: Any) -> None:
        raise OSError(5, "Input/output error")

    tio.store.append = failing  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {}, True)
        deadline = asyncio.get_running_loop().time() + 10
        while tio.last_error is None:
            assert asyncio.get_running_loop().time() < deadline, "the write never failed"
            await asyncio.sleep(0.01)
        assert tio.status()["storage"] != "ok"
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()
    assert tio.status()["storage"] == "ok"
    tio.follow()
    tio.last_error, tio.bad_record = "record 7: torn", 7  # (what a poll leaves)
    tio.become_writer()
    assert tio.status()["storage"] == "ok" and tio.bad_record is None


async def test_a_demoted_active_waits_for_its_ring_write_still_on_its_way(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A planned switchover while one of the old active's ring groups is on its way to slow
    storage: stopping the ring writer did not wait for it, so it could land in a slot the new
    active had written meanwhile, and the new standby (this host) took that older record for
    "nothing new" until the ring came round again. The demotion waits for it first."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(group: Any) -> None:
        entered.set()
        await release.wait()

    tio.store.append = slow  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    try:
        tio.ring_change("T1", {}, True)
        await asyncio.wait_for(entered.wait(), 5)
        tio.stop_ring_writer()  # demoted: its group still on its way
        assert not await tio.ring_write_done(0.2)
        asyncio.get_running_loop().call_later(0.1, release.set)
        assert await tio.ring_write_done(5)
        # one the store gave up waiting for (past its deadline) may still land: waited for too
        monkeypatch.setattr(type(tio.store), "responding", property(lambda self: False))
        assert not tio.ring_settled() and not await tio.ring_write_done(0.2)
        monkeypatch.undo()
        assert tio.ring_settled() and await tio.ring_write_done(1)
    finally:
        release.set()
        assert tio.flusher is not None
        tio.flusher.cancel()


async def test_the_store_writes_a_group_taken_after_a_batch_write_beside_one_taken_before(tmp_path: Path) -> None:
    """Groups waiting together for the storage thread, one taken before a batch write and one
    after it (appended while the flusher waited on an earlier group): the older is refused
    (StaleGroup) and the newer written, not refused with it (the ring writer drops a stale group
    as held by the batch, and the newer one's changes are in no batch: lost to the standby)."""
    from hsb.takeover import StaleGroup, TakeoverStore

    path = make(tmp_path, 40)
    store = TakeoverStore(path, terminals=6, record_size=R, records=40, host_name="test", timeout=10)
    try:
        await store.batch_write(1, [])
        assert store._writer is not None
        old_gen = store._writer.generation
        await store.batch_write(2, [])
        ch = Changes()
        old, new = ch.take(2), ch.take(2)
        loop = asyncio.get_running_loop()
        f_old: asyncio.Future[tuple[int, int]] = loop.create_future()
        f_new: asyncio.Future[tuple[int, int]] = loop.create_future()
        # (queued as append() queues them; the interleaving with a batch write on the storage
        # thread that leads here is a race a test cannot arrange through append() alone)
        store._pending = [(old, old_gen, f_old), (new, store._writer.generation, f_new)]
        await store._flush()
        with pytest.raises(StaleGroup):
            await f_old
        assert await f_new == (1, 1)
        snap = batch_read(path, record_size=R, expected_startup_id=2)
        assert drain(RingReader(path, snap.header)) == new
    finally:
        await store.close()


async def test_an_active_with_no_standby_keeps_no_ring_changes(tmp_path: Path) -> None:
    """Before any standby has started the active writes nothing to the file [0092], nor keeps the
    changes for later (they would pile up for as long as no standby comes)."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    try:
        for i in range(3):
            tio.ring_change(f"T{i}", {}, True)
        assert tio.pending == [] and tio.status()["ring_pending"] == 0
    finally:
        await tio.close()
