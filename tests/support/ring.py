"""The takeover file's ring as the tests drive it (tests/test_takeover_ring*.py): a small record
size (R; E entries a record) so that groups span several records, a file made, distinct and
checkable session changes, a writer with its reader after a first batch, and a reader drained
up to a poll's status, each record once and in order."""

from __future__ import annotations

from pathlib import Path

from hsb.takeover import (
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverWriter,
    batch_read,
    create_file,
    entries_per_record,
)

R = 1024  # E = 3 entries per record: groups span several records without huge counts


E = entries_per_record(R)


def make(tmp_path: Path, records: int, record_size: int = R) -> str:
    path = str(tmp_path / "takeover.dat")
    create_file(path, records, record_size, host="test")
    return path


class Changes:
    """Distinct, checkable session changes."""

    def __init__(self) -> None:
        self.n = 0

    def take(self, k: int) -> list[SessionEntry]:
        out = [SessionEntry(f"T{(self.n + i) % 500:05d}", {"n": self.n + i}, (self.n + i) % 2 == 0) for i in range(k)]
        self.n += k
        return out


def setup_pair(path: str, terminals: int = 6) -> tuple[TakeoverWriter, RingReader]:
    w = TakeoverWriter(path, terminals=terminals)
    w.batch_write(1, [])
    snap = batch_read(path)
    return w, RingReader(path, snap.header, max_records=1000)


def drain(reader: RingReader, until: PollStatus = PollStatus.NOTHING_NEW) -> list[SessionEntry]:
    """The entries of every new record up to the first poll that finds `until`."""
    got: list[SessionEntry] = []
    last: int | None = None
    while True:
        res = reader.poll()
        if res.status is until:
            return got
        assert res.status is PollStatus.NEW, res
        # each record once, in order: a cursor that did not move would hand the same ones again
        assert last is None or res.first_seq == last + 1, f"seqs {res.first_seq}..{res.last_seq} after {last}"
        last = res.last_seq
        got += res.entries
