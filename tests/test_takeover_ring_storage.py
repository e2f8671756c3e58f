"""The takeover file's ring on failing storage: an I/O error halfway through a poll loses
nothing, a failed group keeps its seqs and is written again first, a failed batch write burns
its generation, and storage failing for long keeps one group owed (never lapping the ring) and
one waiting entry per terminal."""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

import hsb.takeover.fileio as fileio
from hsb.takeover import (
    NoBatchWritten,
    RingReader,
    batch_read,
)
from tests.support.ring import Changes, E, drain, make, setup_pair


def test_io_error_halfway_through_a_poll_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    written = Changes().take(10 * E)
    w.append_group(written)
    calls = 0
    real = fileio.FreshReader.read

    def flaky(self: fileio.FreshReader, first: int, count: int) -> memoryview:
        nonlocal calls
        calls += 1
        if calls == 3:  # header, first ring record, then the storage fails
            raise OSError(errno.EIO, "Input/output error")
        return real(self, first, count)

    monkeypatch.setattr(fileio.FreshReader, "read", flaky)
    with pytest.raises(OSError):
        r.poll()
    assert r.next_seq == 1
    monkeypatch.undo()
    assert drain(r) == written


def _failing_once(real: object, exc: BaseException) -> object:
    state = {"armed": True}

    def fn(*args: object) -> object:
        if state["armed"]:
            state["armed"] = False
            raise exc
        return real(*args)  # type: ignore[operator]

    return fn


@pytest.mark.parametrize("fails", ["sync", "write"])
def test_failed_group_keeps_its_seqs_and_is_rewritten_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str) -> None:
    path = make(tmp_path, 40)
    w, r = setup_pair(path)
    ch = Changes()
    a, b, c = ch.take(2 * E), ch.take(2 * E + 1), ch.take(E)
    w.append_group(a)
    eio = OSError(errno.EIO, "Input/output error")
    if fails == "sync":  # the records reached the file (a reader may see them), the sync failed
        monkeypatch.setattr(fileio, "sync", _failing_once(fileio.sync, eio))
    else:  # nothing reached the file
        monkeypatch.setattr(fileio.RecordWriter, "write", _failing_once(fileio.RecordWriter.write, eio))
    with pytest.raises(OSError):
        w.append_group(b)
    assert w.owed_records == 3 and w.next_seq == 6  # seqs 3..5 stay used
    seen = drain(r)
    assert seen == (a + b if fails == "sync" else a)
    first, last = w.append_group(b + c)  # the caller resends what failed
    assert (first, last) == (6, 9) and w.owed_records == 0
    seen += drain(r)
    assert seen == a + b + b + c  # the failed group, then the resend: in order, nothing lost
    fresh = RingReader(path, batch_read(path).header)
    assert drain(fresh) == a + b + b + c


def test_failed_batch_write_burns_its_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make(tmp_path, 40)
    w, _ = setup_pair(path)
    monkeypatch.setattr(fileio, "sync", _failing_once(fileio.sync, OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError):
        w.batch_write(2, Changes().take(4))
    assert w.generation == 2
    with pytest.raises(NoBatchWritten):
        w.append_group(Changes().take(1))
    state = Changes().take(5)
    assert w.batch_write(3, state).generation == 3
    snap = batch_read(path, expected_startup_id=3)
    assert snap.entries == state and snap.header.generation == 3


async def test_ring_entries_waiting_on_failing_storage_stay_one_per_terminal(tmp_path: Path) -> None:
    """While the takeover storage fails, the active keeps every ring entry to write once it can,
    but only each terminal's last one (an entry sets a state): 10,000 opens and closes of 10
    terminals leave 10 entries waiting, not 10,000, the last state of each."""
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    tio = TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")
    tries = 0

    async def failing(group: Any) -> None:
        nonlocal tries
        tries += 1
        raise OSError(5, "Input/output error")

    tio.store.append = failing  # type: ignore[method-assign,assignment]  # (its result is not used)
    tio.start_ring_writer()
    try:
        for i in range(10_000):
            tio.ring_change(f"T{i % 10}", {"n": i}, i % 2 == 0)
        deadline = asyncio.get_running_loop().time() + 10
        while tries < 2:
            assert asyncio.get_running_loop().time() < deadline, "the writer never tried again"
            await asyncio.sleep(0.01)
        assert len(tio.pending) == 10
        assert {e.terminal: (e.attrs["n"], e.open) for e in tio.pending} == {f"T{k}": (9990 + k, k % 2 == 0) for k in range(10)}
    finally:
        tio.stop_ring_writer()
        assert tio.flusher is not None
        tio.flusher.cancel()


def test_storage_failing_for_long_keeps_one_group_owed_and_never_laps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The storage fails at every try for a while, and the caller sends a new group each time
    (its pending entries, as the active does): only the first failed group is owed, the later
    tries get no sequence numbers, and once the storage is back a reader that kept up sees
    every record in order, not lapped."""
    path = make(tmp_path, 24)  # K = 14
    w, r = setup_pair(path)
    ch = Changes()
    a, first_failed = ch.take(E), ch.take(2 * E)
    w.append_group(a)
    assert drain(r) == a

    def eio(*_: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fileio.RecordWriter, "write", eio)
    with pytest.raises(OSError):
        w.append_group(first_failed)
    assert w.owed_records == 2 and w.next_seq == 4
    for _ in range(50):  # a minute of retries, one group each
        with pytest.raises(OSError):
            w.append_group(ch.take(2 * E))
        assert w.owed_records == 2 and w.next_seq == 4, "a failed retry numbered its own records"
    monkeypatch.undo()
    last = ch.take(2 * E)
    assert w.append_group(last) == (4, 5)
    assert drain(r) == first_failed + last
