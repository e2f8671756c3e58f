"""Another pair's hosts pointed at this pair's takeover file (hsb/takeover/pair.py), on real
files: an active does not write a batch over a header another pair's host wrote (a one-line
error naming that host and the fix, the event `takeover_file_foreign_writer`, nothing written),
a standby names that host instead of "different takeover files" or a silent resync; this pair's
own cases keep working (a fresh file, the peer's batch, a renamed host, a header of an earlier
version). In-process, a pair whose file another pair wrote says so on both hosts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsb.host.server import HostServer
from hsb.service.builtin import EchoService
from hsb.takeover import pair as pair_mod
from hsb.takeover import reader as reader_mod
from hsb.takeover.errors import ForeignWriter, NoBatchWritten, StartupIdMismatch
from hsb.takeover.fileio import check_file, create_file
from hsb.takeover.inspect import inspect_file
from hsb.takeover.pair import Pair, pair_tag
from hsb.takeover.reader import PollStatus, RingReader, batch_read
from hsb.takeover.records import Header, SessionEntry
from hsb.takeover.store import TakeoverStore
from hsb.takeover.writer import TakeoverWriter
from tests.support.inproc import pair_in_hot_standby, until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET

pytestmark = pytest.mark.timeout(60)

OURS = pair_tag(b"this pair's secret")
OTHERS = pair_tag(b"another pair's secret")
ENTRIES = [SessionEntry(f"T{i}", {"proto": "hsb1"}, i % 2 == 0) for i in range(3)]


def fresh(tmp_path: Path) -> str:
    path = str(tmp_path / "takeover.dat")
    create_file(path, 64, 4096, host="nfs-admin")
    return path


def write_as(path: str, host: str, tag: int | None, startup_id: int = 99, peer: str | None = None) -> Header:
    """A batch written by `host` of the pair `tag` (None: an earlier version's, no tag, no check)."""
    with TakeoverWriter(path, terminals=10, record_size=4096, records=64, host_name=host, pair_tag=tag) as w:
        return w.batch_write(startup_id, ENTRIES, peer=peer)


class Unchecked(Pair):
    """Another pair's side whose check passed just before this pair's batch landed."""

    def check(self, path: str, h: Header, peer: str | None, *, role: str) -> None:
        return None


def another_pairs_batch(path: str, host: str, tag: int) -> None:
    """What another pair's active does that passed its own check just before this pair's
    batch: a batch (B=0, the header alone) of the next generation, with its own pair tag."""
    with TakeoverWriter(path, terminals=10, record_size=4096, records=64, host_name=host, pair_tag=tag) as w:
        w.pair = Unchecked(host, tag)
        w.batch_write(4242, [])


def test_an_active_does_not_write_a_batch_over_another_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reviewer's case: both pairs' hosts are named host-a and host-b; the other pair's
    host-a wrote the file last. This pair's host-a refuses, naming it, and writes nothing."""
    rec = RecordingLog()
    monkeypatch.setattr(pair_mod, "log", rec)
    path = fresh(tmp_path)
    write_as(path, "host-a", OTHERS, peer="host-b")
    before = Path(path).read_bytes()
    with TakeoverWriter(path, terminals=10, record_size=4096, records=64, host_name="host-a", pair_tag=OURS) as w:
        with pytest.raises(ForeignWriter) as exc:
            w.batch_write(7, ENTRIES, peer="host-b")
        with pytest.raises(NoBatchWritten):  # nor ring records after it
            w.append_group(ENTRIES)
    msg = str(exc.value)
    assert "\n" not in msg and exc.value.writer == "host-a"
    for part in (path, "host-a of another pair", "another secret", "generation 1", "this host does not write it", "hsbctl file create"):
        assert part in msg, msg
    assert Path(path).read_bytes() == before  # not a byte written
    ev = rec.events("takeover_file_foreign_writer")
    assert ev and ev[0]["level"] == "error" and ev[0]["writer"] == "host-a" and ev[0]["role"] == "active" and ev[0]["msg"] == msg
    assert inspect_file(path)["pair_tag"] == f"{OTHERS:08x}"  # (hsbctl file inspect shows whose it is)


def test_a_header_of_an_earlier_version_goes_by_the_names(tmp_path: Path) -> None:
    """No pair tag in the header: a writer that is neither this host nor its peer is another
    pair's; the peer's batch (this pair's, before an upgrade) is not, and the next batch
    carries the tag. With the peer's name unknown only the tag could count."""
    path = fresh(tmp_path)
    write_as(path, "host-z", None)
    with pytest.raises(ForeignWriter, match=r"by host-z, neither this host \(host-a\) nor its peer \(host-b\)"):
        write_as(path, "host-a", OURS, peer="host-b")
    assert check_file(path).writer_host == "host-z"
    assert Pair("host-a", OURS).foreign(check_file(path), None) is None
    write_as(path, "host-b", None)
    h = write_as(path, "host-a", OURS, peer="host-b")
    assert (check_file(path).writer_host, check_file(path).pair_tag, h.generation) == ("host-a", OURS, 3)


def test_this_pairs_own_cases_keep_writing(tmp_path: Path) -> None:
    """A fresh file (its writer is whoever created it), the peer's batch after a failover, a
    host renamed (its pair's tag all the same): written, each header with the pair's tag."""
    path = fresh(tmp_path)
    assert check_file(path).writer_host == "nfs-admin"
    write_as(path, "host-a", OURS, peer="host-b")
    write_as(path, "host-b", OURS, peer="host-a")
    h = write_as(path, "host-x", OURS, peer="host-b")  # host-a renamed host-x
    on_file = check_file(path)
    assert (on_file.writer_host, on_file.pair_tag, on_file.generation, h.generation) == ("host-x", OURS, 3, 3)


async def test_a_standby_names_another_pairs_writer(tmp_path: Path) -> None:
    """The batch read names the other pair's host (not "the two hosts name different takeover
    files", which they do not); a new generation met on the ring says so too, this pair's own
    does not."""
    path = fresh(tmp_path)
    store = TakeoverStore(path, terminals=10, record_size=4096, records=64, host_name="host-b", pair_tag=OURS, timeout=10)
    try:
        write_as(path, "host-a", OTHERS, startup_id=5)
        with pytest.raises(ForeignWriter) as exc:
            await store.batch_read(expected_startup_id=6, peer="host-a")
        assert not isinstance(exc.value, StartupIdMismatch)
        assert "host-a of another pair" in str(exc.value) and "this standby does not read it" in str(exc.value)
        with pytest.raises(ForeignWriter):  # nor does it write over it, once the active
            await store.batch_write(8, ENTRIES, peer="host-a")
    finally:
        await store.close()

    path = str(tmp_path / "t2.dat")
    create_file(path, 64, 4096, host="nfs-admin")
    write_as(path, "host-a", OURS, startup_id=6)
    mine = Pair("host-b", OURS)
    snap = batch_read(path, expected_startup_id=6, pair=mine, peer="host-a")
    reader = RingReader(path, snap.header, pair=mine, peer="host-a")
    try:
        write_as(path, "host-a", OURS, startup_id=6)  # a resync of this pair's own
        res = reader.poll()
        assert res.status is PollStatus.NEW_GENERATION and not res.foreign
        reader = RingReader(path, check_file(path), pair=mine, peer="host-a")
        another_pairs_batch(path, "host-a", OTHERS)
        res = reader.poll()
        assert res.status is PollStatus.NEW_GENERATION and res.foreign and "host-a of another pair" in res.reason
    finally:
        reader.close()


async def test_a_pair_whose_file_another_pair_wrote_says_so_and_does_not_write_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Established, then another pair's host-a writes a batch into this pair's file: the standby
    names it (not a silent resync), and the active, asked for a new batch, refuses to write
    over it: serving without a standby, its error naming the writer, the file as the other left it."""
    rec = RecordingLog()
    monkeypatch.setattr(pair_mod, "log", rec)
    monkeypatch.setattr(reader_mod, "log", RecordingLog())
    async with pair_in_hot_standby(tmp_path, EchoService) as (_cp, a, b, _tasks):
        path = a.cfg.takeover.path
        assert check_file(path).pair_tag == pair_tag(SECRET)
        another_pairs_batch(path, "host-a", pair_tag(b"another pair's secret"))
        theirs = check_file(path)

        def refused(h: HostServer) -> bool:
            return h.ha.state == "serving" and "another pair" in (h.ha.last_error or "")

        await until(lambda: refused(a), "host-a refuses to write over the other pair's batch")
        assert "batch write failed: takeover file" in (a.ha.last_error or "") and "host-a of another pair" in (a.ha.last_error or "")
        assert check_file(path) == theirs  # not written over
        roles = {e["role"] for e in rec.events("takeover_file_foreign_writer")}
        assert roles == {"active", "standby"}, rec.entries
        assert b.ha.state != "established"
    assert os.path.exists(path)
