"""A CP taking the journal over (hsb/cp/taking_over.py; SPEC §5.8, docs/cp-journal.md
"Generations", docs/operations.md "Two CP machines"), each test naming a behaviour that a mutation
audit of the module found no test for: the last looks before a generation is taken (the journal
gone, a mount that cannot fence, the io_uring ring refused), the takeover's beat (it outlives a
failed beat; it stops, the file standing still, when the takeover fails), its watchdog pings
ending with it, the ring closed when it fails, a superseded takeover's journal closed, the
generation it is from and the garbage it deletes after an unfinished takeover, and the bytes
that bound its reading steps.

The audit (session 62): 49 hand-made mutants of taking_over.py; 34 were killed by
tests/test_cp_takeover_steps.py, test_cp_flip_mutants.py, test_cp_tickle_takeover.py,
test_cp_generations.py, test_cp_generation_files.py and test_cp_journal_identity.py; 11 are
killed here (10 survivors, and a generation taken before the ring); 4 are equivalent (the ring closed when an exception follows
`self.cp` being set: nothing can raise there; the snapshot's segment number at the highest
rather than above it: the names carry the generation and sort by it; the resend loop going on
with nobody away: it only sleeps and sends nothing; the GC pause: timing only).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal.generation import gen_name
from tests.support.procs import until
from tests.support.waitingcp import waiting_cp_under_systemd, watchdog_pings

pytestmark = pytest.mark.timeout(30)


def _closed(s: Any, sd: Any) -> None:
    """The end of a test: the takeover's beat stopped, the journal (if taken) and the socket closed."""
    s._end_takeover_beats()
    if s.cp is not None and s.cp.journal is not None:
        s.cp.journal.close()
    sd.close()


async def test_a_journal_gone_when_the_takeover_begins_takes_no_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`takeover = "on_wake"`: the shared storage unmounted between the waiting CP's last look and
    its takeover. The takeover looks again first and refuses (JournalMissing): no generation is
    taken, so no empty journal is made under the mount point to be served from (it would lose
    everything the other CP acknowledged)."""
    from hsb.cp.waiting import JournalMissing

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    journal = tmp_path / "j"
    journal.rmdir()
    try:
        with pytest.raises(JournalMissing):
            await s.take_over("woken")
        assert s.cp is None and s._takeover_beats is None
        assert not journal.exists(), "a journal was made where the shared one is not mounted"
    finally:
        _closed(s, sd)


async def test_a_journal_on_a_mount_that_cannot_fence_takes_no_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`takeover = "on_wake"` on a mount whose options defeat the generation's fence (NFS with
    attribute caching, say: hsb.ops.mounts.nfs_fencing_problem): the takeover refuses with the
    reason (JournalIOUnavailable) before it takes a generation or reads anything."""
    from hsb.cp import taking_over
    from hsb.cp.journal import JournalIOUnavailable

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(taking_over, "nfs_fencing_problem", lambda path: f"{path}: mounted with attribute caching")
    try:
        with pytest.raises(JournalIOUnavailable, match="attribute caching"):
            await s.take_over("woken")
        assert s.cp is None and s._takeover_beats is None
        assert os.listdir(tmp_path / "j") == [], "a generation was taken on a mount that cannot fence"
    finally:
        _closed(s, sd)


async def test_the_takeovers_watchdog_pings_end_with_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover pings systemd's watchdog while its steps run; once it is over, the serving CP's
    tick loop pings (or, hung, does not). The takeover's pings must stop with it, or they would
    keep a CP whose tick loop no longer pings alive for systemd for ever."""
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    try:
        await s.take_over("woken")
        assert s.cp is not None
        await asyncio.sleep(0)  # (the cancelled ping task's last turn)
        watchdog_pings(sd)
        await asyncio.sleep(0.6)  # twelve of WatchdogSec's half intervals: not one ping in them
        assert watchdog_pings(sd) == 0, "the takeover's pings went on after it"
    finally:
        _closed(s, sd)


async def test_the_takeovers_beat_outlives_a_failed_beat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A beat that fails (the storage's moment of trouble: an OSError) is skipped, and the beat
    goes on at the next tenth of a second; the takeover's own steps show the storage's trouble.
    Ended by the first error, the beat would leave the generation's file standing still, and the
    CP on the other machine would take a live takeover for a dead CP's and supersede it."""
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    assert s.gens is not None
    gen = s.gens.take()
    path = tmp_path / "j" / gen_name(gen)
    os.utime(path, (0, 0))
    real, failed = s.gens.beat, [0]

    def flaky(g: int) -> None:
        if not failed[0]:
            failed[0] += 1
            raise OSError(5, "Input/output error")
        real(g)

    monkeypatch.setattr(s.gens, "beat", flaky)
    task = asyncio.ensure_future(s._beat_while_taking_over(gen))
    try:
        await until(lambda: failed[0] == 1, timeout=5)
        await until(lambda: os.stat(path).st_mtime > 0, timeout=5)  # beaten after the failure
        assert not task.done()
    finally:
        task.cancel()
        sd.close()


async def test_a_failed_takeovers_generation_file_stands_still(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recovery raises (a damaged journal, say): the beat of the generation taken stops, its
    file's time stands still from then on (a CP that does not serve must not look alive to the
    CP on the other machine), not only the task forgotten."""
    from hsb.cp import taking_over

    def damaged(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("damaged")

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(taking_over, "recover", damaged)
    try:
        with pytest.raises(RuntimeError):
            await s.take_over("woken")
        [name] = [n for n in os.listdir(tmp_path / "j") if n.startswith("gen-")]
        path = tmp_path / "j" / name
        await asyncio.sleep(0.2)  # (a beat on its thread when the takeover failed: done by now)
        os.utime(path, (0, 0))
        await asyncio.sleep(0.4)  # four beats' time: a window in which none may come
        assert os.stat(path).st_mtime == 0, "the failed takeover's generation was still beaten"
    finally:
        _closed(s, sd)


class _Ring:
    """A stand-in for the journal's io_uring ring (hsb.cp.journal.writer.open_ring's): its closes counted."""

    def __init__(self) -> None:
        self.closes = 0

    def close(self) -> None:
        self.closes += 1


async def test_a_failed_takeover_closes_the_ring_it_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`journal_io = "io_uring"`: the ring is opened before the generation is taken. A takeover
    that fails after that (the recovery raises) closes it, once: a CP restarted in place would
    otherwise hold a ring (locked memory, its fds) for nothing until the process ends."""
    from hsb.cp import taking_over

    ring = _Ring()
    monkeypatch.setattr(taking_over, "open_ring", lambda io: (ring, None))

    def damaged(*a: Any, **kw: Any) -> Any:
        raise RuntimeError("damaged")

    monkeypatch.setattr(taking_over, "recover", damaged)
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    try:
        with pytest.raises(RuntimeError):
            await s.take_over("woken")
        assert ring.closes == 1
    finally:
        _closed(s, sd)


async def test_a_ring_refused_takes_no_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`journal_io = "io_uring"` and the ring refused (ENOMEM: the memlock limit): the takeover
    fails before it takes a generation, so a CP that cannot serve never fences one that can."""
    from hsb.cp import taking_over
    from hsb.cp.journal import JournalIOUnavailable

    def refused(io: str) -> Any:
        raise JournalIOUnavailable("io_uring_setup failed: Cannot allocate memory")

    monkeypatch.setattr(taking_over, "open_ring", refused)
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    try:
        with pytest.raises(JournalIOUnavailable):
            await s.take_over("woken")
        assert [n for n in os.listdir(tmp_path / "j") if n.startswith("gen-")] == [], "fenced by a CP that cannot serve"
    finally:
        _closed(s, sd)


def _unfinished_after_a_complete_one(journal: Path) -> tuple[Path, Path]:
    """Generation 1 complete (its segment holds an acknowledged message, ended by its snapshot's
    end), generation 2 taken and its snapshot never finished (its CP died writing it): the
    segments of each."""
    from hsb.cp.journal.format import encode
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.recovery import segment_name

    journal.mkdir(exist_ok=True)
    gens = Generations(journal)
    assert (gens.take(), gens.take()) == (1, 2)
    done, torn = journal / segment_name(1, 1), journal / segment_name(2, 2)
    done.write_bytes(b"".join(encode(r) for r in [["ck", 1, "host-a", 1, {}, {"first": 1}], ["a", "T00001", 5, b"x"], ["se"]]))
    torn.write_bytes(encode(["ck", 1, "host-a", 2, {}, {"first": 2}]))  # no "se": unfinished
    return done, torn


async def test_a_takeover_after_an_unfinished_one_is_from_the_last_complete_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A takeover (generation 3) after one that died writing its snapshot (2): it recovers
    generation 1, says so (`took_over.from_generation` 1, not the generation below its own), and
    once its snapshot is durable deletes the unfinished generation's segment as garbage along
    with generation 1's (left, it would lie there for ever: every later recovery lists it as
    garbage again)."""
    from hsb.cp.journal.recovery import recover, segment_files

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    done, torn = _unfinished_after_a_complete_one(tmp_path / "j")
    try:
        await s.take_over("woken")
        assert s.cp is not None and s.took_over["generation"] == 3
        assert s.took_over["took_over"]["from_generation"] == 1
        assert recover(tmp_path / "j", truncate=False).held["T00001"].keys() == {5}  # (in generation 3's snapshot now)
        assert not torn.exists(), "the unfinished generation's segment was left behind"
        assert not done.exists()
        assert [g for g, _, _ in segment_files(tmp_path / "j")] == [3]
    finally:
        _closed(s, sd)


async def test_a_cp_superseded_while_it_writes_its_snapshot_closes_its_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Superseded when its snapshot is durable (a newer CP took the next generation meanwhile):
    the takeover stops without serving, and the journal it opened is closed (its segment's file
    and its writer's thread released), not left open in a CP that goes on to stop."""
    from hsb.cp import taking_over
    from hsb.cp.journal.generation import Generations

    closed: list[object] = []

    class Watched(taking_over.Journal):  # type: ignore[misc,name-defined]
        def open(self, *a: Any, **kw: Any) -> int:
            Generations(tmp_path / "j").take()  # another CP takes the next generation now
            return int(super().open(*a, **kw))

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(taking_over, "Journal", Watched)
    superseded: list[Any] = []
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(s, "_superseded", superseded.append)
    try:
        await s.take_over("woken")
        assert s.cp is None and len(superseded) == 1
        assert len(closed) == 1, "the superseded takeover's journal was left open"
    finally:
        _closed(s, sd)


def test_what_a_takeover_reads_back_counts_every_file_of_the_journal(tmp_path: Path) -> None:
    """The bound of the takeover's reading steps grows with the journal's bytes (hsb.fsutil.
    bulk_seconds): every file's size counts, so a journal of many segments is not judged hung
    (/health failed, the watchdog's pings stopped) while it is read back as fast as it can be."""
    from hsb.cp.taking_over import _journal_bytes

    for name, size in (("seg-00000001-00000001.hsbj", 3000), ("seg-00000001-00000002.hsbj", 500), ("gen-00000001", 20)):
        (tmp_path / name).write_bytes(b"x" * size)
    assert _journal_bytes(tmp_path) == 3520
