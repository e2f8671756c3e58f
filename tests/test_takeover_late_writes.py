"""An earlier writer's record landing late in the ring (an NFS writeback of a fenced host)."""

from __future__ import annotations

from pathlib import Path

import pytest

import hsb.takeover.fileio as fileio
from hsb.takeover import PollStatus, RingReader, SessionEntry, TakeoverWriter, batch_read, create_file, entries_per_record

R = 1024  # E = 3
E = entries_per_record(R)


def group(n: int) -> list[SessionEntry]:
    return [SessionEntry(f"T{n:03d}-{i}", {"n": n}, True) for i in range(E)]  # one record each


@pytest.mark.parametrize("overwritten", [1, 3])
def test_an_earlier_generations_record_over_an_unread_one_is_not_waited_on_for_ever(tmp_path: Path, overwritten: int) -> None:
    """The reader awaits seq 2 of generation 2; the old active's late write of generation 1 lands
    on it (and on the `overwritten` - 1 records after it) while later ones of generation 2 are in
    place. It waited there, "nothing new", until the ring came round: the standby established
    and frozen. Now it says torn, at every poll (damage once it stays: a new batch clears it)."""
    path = str(tmp_path / "takeover.dat")
    create_file(path, 40, R, host="test")
    with TakeoverWriter(path, terminals=6) as w:  # B = 2, K = 37
        w.batch_write(1, [])
        w.append_group([e for n in range(37) for e in group(n)])  # every slot: a record of generation 1
        w.batch_write(2, [])
        assert w.layout is not None
        lay = w.layout
        with open(path, "rb") as fh:  # what generation 1 had where seq 2.. of generation 2 go
            fh.seek(lay.ring_record(2) * R)
            late = fh.read(overwritten * R)
        r = RingReader(path, batch_read(path).header)
        try:
            for _ in range(8):  # leftovers everywhere, nothing of generation 2 past them: waits
                assert r.poll().status is PollStatus.NOTHING_NEW
            w.append_group(group(100))
            assert r.poll().entries == group(100)
            for n in range(101, 106):  # seq 2..6
                w.append_group(group(n))
            with fileio.RecordWriter(path, R) as io:
                io.write(lay.ring_record(2), late)
            res = [r.poll() for _ in range(12)]
            torn = [x.status for x in res].index(PollStatus.TORN)  # (looking 1, 2, 4 ... records on)
            assert torn <= 2
            for x in res[torn:]:
                assert x.status is PollStatus.TORN and x.record == lay.ring_record(2), x
            assert "generation 1 where seq 2 of generation 2 belongs" in res[torn].reason
            assert r.next_seq == 2  # nothing past the lost record was applied
            w.batch_write(3, [], clear=lay.ring_record(2))  # the standby's resync
            assert r.poll().status is PollStatus.NEW_GENERATION
        finally:
            r.close()


def test_an_in_order_write_landing_between_the_awaited_read_and_the_look_ahead_is_not_torn(tmp_path: Path) -> None:
    """The reader awaits seq 1 of generation 2 over a leftover of generation 1 (the ring's first
    pass) and reads it stale; the writer's seq 1 and 2 land before it looks one record on, where
    seq 2 now is: that said torn (takeover_ring_torn), though nothing was written over. The
    awaited record is read again first: new, on that poll or the next, never torn."""
    from hsb.takeover.faults import Faults

    path = str(tmp_path / "takeover.dat")
    create_file(path, 40, R, host="test")
    with TakeoverWriter(path, terminals=6) as w:  # B = 2, K = 37
        w.batch_write(1, [])
        w.append_group([e for n in range(37) for e in group(n)])  # every slot: a record of generation 1
        w.batch_write(2, [])
        assert w.layout is not None
        awaited = w.layout.ring_record(1)

        class WriteAfterTheAwaitedRead(Faults):
            armed = True

            def after_read(self, first_record: int, view: memoryview, record_size: int) -> None:
                if self.armed and first_record == awaited:  # (the awaited record read, stale: seq 1, 2 land now)
                    self.armed = False
                    w.append_group(group(100) + group(101))

        hook = WriteAfterTheAwaitedRead()
        r = RingReader(path, batch_read(path).header, faults=hook)
        try:
            res = [r.poll() for _ in range(2)]
            assert not hook.armed, "the write between the two reads never happened"
            assert all(x.status is not PollStatus.TORN for x in res), [(x.status, x.reason) for x in res]
            assert [e for x in res for e in x.entries] == group(100) + group(101), res
            assert PollStatus.NEW in [x.status for x in res] and r.next_seq == 3
        finally:
            r.close()
