"""Tests from a mutation audit of hsb/cp/journal/completion.py, vouching.py, aside.py and
generation.py: each pins a behaviour that a single-point change of one of those modules broke
while every other journal test still passed (docs/cp-journal.md: "Generations", "No lease
without a clean check", the backoff and health of a failing journal, `--set-journal-aside`)."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hsb import fsutil
from hsb.bootclock import boot_now
from hsb.cp.journal import aside, completion, generation, vouching
from hsb.cp.journal.generation import GenerationGone, Generations, Superseded, gen_name, snap_name
from hsb.cp.journal.store import Journal
from tests.support.journal import durable, open_journal, records, write_segment
from tests.support.procs import until

pytestmark = pytest.mark.timeout(60)


class _Log:
    """Stands in for a module's structlog logger: the events it was given, by level."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def emit(event: str, **kw: Any) -> None:
            self.events.append((level, event, kw))

        return emit

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _lvl, ev, kw in self.events if ev == event]


# --- vouching.py --------------------------------------------------------------------------------


async def _beat_once(j: Journal) -> float:
    """Run one heartbeat to its end; the `checked_at` it left."""
    prev = j.checked_at
    j.heartbeat()
    await until(lambda: j.checked_at != prev and not j._beating, 10, what="the heartbeat's check")
    assert j.checked_at is not None
    return j.checked_at


async def test_vouching_ends_exactly_fresh_s_after_the_check_began(tmp_path: Path) -> None:
    """A clean check vouches for strictly less than `fresh_s`: at `checked_at + fresh_s` the CP
    already renews no lease (the lease rule's margin counts from there)."""
    j = open_journal(tmp_path)
    try:
        c = await _beat_once(j)
        assert j.vouches(c + j.fresh_s / 2)
        assert not j.vouches(c + j.fresh_s)
    finally:
        j.close()


async def test_a_heartbeats_check_counts_from_when_it_began_not_when_it_came_back(tmp_path: Path, monkeypatch: Any) -> None:
    """`checked_at` is the time the check began: a check that took long vouches for less, since
    a newer CP may have taken over while it was out."""
    j = open_journal(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = j.gens.check

    def slow(own: int) -> None:
        entered.set()
        assert release.wait(10)
        real(own)

    try:
        await _beat_once(j)
        monkeypatch.setattr(j.gens, "check", slow)
        prev = j.checked_at
        j.heartbeat()
        await until(entered.is_set, 10, what="the check to begin")
        mark = boot_now()  # after the check began, before it came back
        release.set()
        await until(lambda: j.checked_at != prev and not j._beating, 10, what="the check to come back")
        assert j.checked_at is not None and j.checked_at < mark
    finally:
        release.set()
        j.close()


async def test_one_heartbeat_check_at_a_time(tmp_path: Path, monkeypatch: Any) -> None:
    """A tick while the previous heartbeat's check is still out (a hung mount) starts no other:
    checks do not pile up behind a hung one."""
    j = open_journal(tmp_path)
    entered, release = threading.Event(), threading.Event()
    real = j.gens.check
    calls: list[int] = []

    def counted(own: int) -> None:
        calls.append(own)
        entered.set()
        assert release.wait(10)
        real(own)

    try:
        monkeypatch.setattr(j.gens, "check", counted)
        prev = j.checked_at
        j.heartbeat()
        await until(entered.is_set, 10, what="the check to begin")
        for _ in range(3):
            j.heartbeat()  # ticks while it hangs
        release.set()
        await until(lambda: j.checked_at != prev and not j._beating, 10, what="the check to come back")
        await _beat_once(j)  # one more, after the first: the worker runs calls in order
        assert len(calls) == 2, f"{len(calls)} checks for two heartbeats that were let run"
    finally:
        release.set()
        j.close()


async def test_a_heartbeat_touches_the_generation_file(tmp_path: Path) -> None:
    """The serving CP's heartbeat moves its `gen-N` file's modification time (what a waiting CP
    watches to tell it from a dead one)."""
    j = open_journal(tmp_path)
    try:
        p = tmp_path / gen_name(j.gen)
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))
        await _beat_once(j)
        assert p.stat().st_mtime_ns != 1_000_000_000
    finally:
        j.close()


async def test_withheld_lease_answers_are_counted_and_said_once_per_stretch(tmp_path: Path, monkeypatch: Any) -> None:
    """Each heartbeat answered without a lease is counted; the warning comes once when a stretch
    of them begins, `lease_answers_resumed` once when it ends, and a later stretch is said again."""
    logs = _Log()
    monkeypatch.setattr(vouching, "log", logs)
    j = open_journal(tmp_path)
    try:
        c = await _beat_once(j)
        stale = c + j.fresh_s + 1.0
        assert not j.vouches(stale) and not j.vouches(stale + 0.5)
        assert j.lease_answers_withheld == 2
        assert len(logs.named("lease_answers_withheld")) == 1
        c = await _beat_once(j)
        assert j.vouches(c) and j.vouches(c + 0.1)
        resumed = logs.named("lease_answers_resumed")
        assert len(resumed) == 1 and "withheld_ms" in resumed[0]
        assert not j.vouches(c + j.fresh_s + 1.0)
        assert len(logs.named("lease_answers_withheld")) == 2 and j.lease_answers_withheld == 3
    finally:
        j.close()


async def test_a_superseded_cp_counts_withheld_answers_without_the_storage_warning(tmp_path: Path, monkeypatch: Any) -> None:
    """Once superseded (said as cp_superseded), heartbeats are still answered without a lease and
    counted, but not reported as a journal whose storage hangs."""
    logs = _Log()
    monkeypatch.setattr(vouching, "log", logs)
    j = open_journal(tmp_path)
    stopped: list[Superseded] = []
    j.on_superseded = stopped.append
    try:
        c = await _beat_once(j)
        (tmp_path / gen_name(j.gen + 1)).write_text("")
        j.heartbeat()
        await until(lambda: stopped, 10, what="the heartbeat to find the newer generation")
        assert not j.vouches(c)
        assert j.lease_answers_withheld == 1 and not logs.named("lease_answers_withheld")
    finally:
        j.close()


# --- generation.py ------------------------------------------------------------------------------


def test_the_current_generation_is_the_highest_whatever_the_listing_order() -> None:
    """`current` is the highest `gen-N` listed, not the last one met (a listing has no order)."""
    g = Generations(Path("/nonexistent"))
    assert g.current([gen_name(5), gen_name(3), "seg-00000009-00000001.hsbj", snap_name(7)]) == 5
    assert g.current([gen_name(3), gen_name(5)]) == 5
    assert g.current([]) == 0


def test_a_generation_file_says_who_took_it(tmp_path: Path) -> None:
    """The file a CP takes its generation with holds its host and pid (for the operator), and is
    durable: its bytes synced, then the directory."""
    synced: list[str] = []
    real_fsync, real_dir = os.fsync, fsutil.fsync_dir

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def fsync_dir(d: Path) -> None:
        synced.append(f"dir {d}")
        real_dir(d)

    mp = pytest.MonkeyPatch()
    try:
        mp.setattr(os, "fsync", fsync)
        mp.setattr(generation, "fsync_dir", fsync_dir)
        n = Generations(tmp_path).take()
    finally:
        mp.undo()
    text = (tmp_path / gen_name(n)).read_text()
    assert f"pid {os.getpid()}" in text and os.uname().nodename in text
    f, d = str(tmp_path / gen_name(n)), f"dir {tmp_path}"
    assert f in synced and d in synced and synced.index(f) < len(synced) - 1 - synced[::-1].index(d), synced


def test_a_generation_taken_above_a_gap_fences_the_cp_just_below_it(tmp_path: Path) -> None:
    """Segments of a generation above every `gen-` file (its file lost): the new CP takes the
    one above them, and creates `gen-(current+1)` too, which a CP of `current` still running
    checks for, so that one stops."""
    g = Generations(tmp_path)
    (tmp_path / gen_name(3)).write_text("")
    write_segment(tmp_path, 1, [], gen=4)
    assert g.take() == 5
    assert (tmp_path / gen_name(4)).exists()
    with pytest.raises(Superseded):
        g.check(3)


def test_a_generation_taken_by_another_cp_at_the_same_moment_gives_the_next_one(tmp_path: Path, monkeypatch: Any) -> None:
    """Two CPs racing for the same number: the one that loses takes the very next one, not one
    further up (the hosts compare generations; a gap would fence nobody more)."""
    (tmp_path / gen_name(2)).write_text("")
    real = generation._durable_file
    raced: list[str] = []

    def racing(path: Path, content: bytes, flags: int = 0) -> None:
        if not raced:  # another CP creates the same file just before this one
            raced.append(path.name)
            real(path, b"other", flags)
        real(path, content, flags)

    monkeypatch.setattr(generation, "_durable_file", racing)
    assert Generations(tmp_path).take() == 4
    assert raced == [gen_name(3)] and (tmp_path / gen_name(3)).read_text() == "other"


def test_superseded_names_the_newest_generation_not_only_the_next(tmp_path: Path) -> None:
    """The check names the highest generation above this CP's (what its stop reports)."""
    for n in (1, 2, 5):
        (tmp_path / gen_name(n)).write_text("")
    g = Generations(tmp_path)
    assert g.newer_than(1) == 5
    with pytest.raises(Superseded) as exc:
        g.check(1)
    assert exc.value.newer == 5 and exc.value.own == 1


def test_one_generations_object_checks_whichever_generation_it_is_asked_about(tmp_path: Path) -> None:
    """The check's paths follow the generation asked for (a takeover asks about its own new one
    through the same object that asked about an older one)."""
    for n in (1, 2, 3):
        (tmp_path / gen_name(n)).write_text("")
    g = Generations(tmp_path)
    assert g.newer_than(1) == 3
    assert g.newer_than(3) is None
    assert g.newer_than(2) == 3


def test_a_beat_on_a_removed_generation_file_is_no_error(tmp_path: Path) -> None:
    """The heartbeat's touch of a file already gone raises nothing (its check reports it)."""
    g = Generations(tmp_path)
    g.beat(7)
    assert not (tmp_path / gen_name(7)).exists()
    with pytest.raises(GenerationGone):
        g.check(7)


def test_the_age_of_a_generation_whose_file_vanished_or_is_ahead_of_the_clock(tmp_path: Path) -> None:
    """A stamp without a time (the file vanished between listing and stat) has no age (None, never
    a huge one); a file stamped ahead of this machine's clock is 0 s old, never negative."""
    g = Generations(tmp_path)
    assert g.age((3, 0)) == (3, None)
    assert g.age((0, 0)) == (0, None)
    (tmp_path / gen_name(2)).write_text("")
    ahead = time.time_ns() + 3600 * 10**9
    os.utime(tmp_path / gen_name(2), ns=(ahead, ahead))
    assert g.age() == (2, 0.0)


def test_a_prune_keeps_the_newest_generation_files_and_its_own_snapshot_mark(tmp_path: Path) -> None:
    """Pruning at generation `own` deletes the `gen-` files below `own - KEEP` (keeping exactly
    KEEP below it) and the snapshot marks of older generations, never its own."""
    own = 20
    for n in range(1, own + 1):
        (tmp_path / gen_name(n)).write_text("")
    for n in (5, own - 1, own):
        (tmp_path / snap_name(n)).write_text("")
    g = Generations(tmp_path)
    g.prune(own)
    assert sorted(int(p.name[4:]) for p in tmp_path.glob("gen-*")) == list(range(own - generation.KEEP, own + 1))
    assert g.snapshots() == {own}


# --- aside.py -----------------------------------------------------------------------------------


def _journal(d: Path) -> None:
    """A journal directory: two generation files (with what their CPs wrote) and a segment."""
    d.mkdir()
    (d / gen_name(1)).write_text("cp-a pid 1\n")
    (d / gen_name(2)).write_text("cp-b pid 2\n")
    write_segment(d, 1, [["a", "T1", 1, "x"]], gen=2)


def _clock(monkeypatch: Any, during_watch: Any = None, now: float | None = None) -> None:
    """aside's clock: `during_watch` runs in place of its watch's sleep; `now` fixes its time."""
    import types

    monkeypatch.setattr(
        aside,
        "time",
        types.SimpleNamespace(
            sleep=during_watch or (lambda s: None),
            time=(lambda: now) if now is not None else time.time,
            strftime=time.strftime,
            localtime=time.localtime,
        ),
    )


def test_a_journal_set_aside_is_made_again_with_its_generation_files_owner_and_mode(tmp_path: Path, monkeypatch: Any) -> None:
    """The new directory holds copies of the generation files only (their contents too), with
    the old directory's mode and (run as root) its owner, and the rename is made durable (the
    parent directory synced after it); the count is of every file that was set aside."""
    d = tmp_path / "j"
    _journal(d)
    os.chmod(d, 0o750)
    root = os.geteuid() == 0
    if root:
        os.chown(d, 4321, 4322)
    synced: list[Path] = []

    def fsync_dir(p: Path) -> None:
        synced.append(Path(p))
        fsutil.fsync_dir(p)

    monkeypatch.setattr(aside, "fsync_dir", fsync_dir)
    _clock(monkeypatch)
    to, files, newest = aside.set_aside(d, watch=0, force=True)
    assert (files, newest) == (3, 2)
    assert sorted(p.name for p in to.iterdir()) == sorted([gen_name(1), gen_name(2), "seg-00000002-00000001.hsbj"])
    assert sorted(p.name for p in d.iterdir()) == [gen_name(1), gen_name(2)]
    assert (d / gen_name(1)).read_text() == "cp-a pid 1\n" and (d / gen_name(2)).read_text() == "cp-b pid 2\n"
    assert (d.stat().st_mode & 0o777) == 0o750
    if root:
        for p in (d, d / gen_name(1), d / gen_name(2)):
            assert (p.stat().st_uid, p.stat().st_gid) == (4321, 4322), p
    assert synced and synced[-1] == tmp_path


def test_a_journal_set_aside_twice_in_one_second_takes_the_next_free_name(tmp_path: Path, monkeypatch: Any) -> None:
    """Names already taken by earlier set-asides in the same second are skipped, however many,
    and left as they were."""
    d = tmp_path / "j"
    _journal(d)
    now = 1_800_000_000.0
    _clock(monkeypatch, now=now)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    for name in (f"j.damaged-{stamp}", f"j.damaged-{stamp}-2"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "kept").write_text(name)
    to, _files, _newest = aside.set_aside(d, watch=0, force=True)
    assert to.name == f"j.damaged-{stamp}-3"
    for name in (f"j.damaged-{stamp}", f"j.damaged-{stamp}-2"):
        assert (tmp_path / name / "kept").read_text() == name


def test_a_journal_is_not_set_aside_while_its_cp_beats(tmp_path: Path, monkeypatch: Any) -> None:
    """Its newest generation file touched while it is watched (a serving CP's heartbeat):
    refused, and the directory left as it is."""
    d = tmp_path / "j"
    _journal(d)
    os.utime(d / gen_name(2), ns=(10**9, 10**9))
    _clock(monkeypatch, during_watch=lambda s: os.utime(d / gen_name(2)))
    with pytest.raises(aside.AsideRefused, match="a CP is serving"):
        aside.set_aside(d, watch=0.5, force=True)
    assert len(list(d.iterdir())) == 3 and not list(tmp_path.glob("j.damaged-*"))


def test_a_journal_is_not_set_aside_while_a_cp_takes_it_over(tmp_path: Path, monkeypatch: Any) -> None:
    """A newer generation taken while it is watched (a CP starting on it): refused."""
    d = tmp_path / "j"
    _journal(d)
    _clock(monkeypatch, during_watch=lambda s: (d / gen_name(3)).write_text("cp-c\n"))
    with pytest.raises(aside.AsideRefused, match="a CP is serving"):
        aside.set_aside(d, watch=0.5, force=True)
    assert not list(tmp_path.glob("j.damaged-*"))


def test_a_journal_that_cannot_be_read_is_not_set_aside(tmp_path: Path, monkeypatch: Any) -> None:
    """The storage failing while the journal is read to see whether it is damaged: refused with
    the error, not set aside as if damaged (nor a traceback)."""
    d = tmp_path / "j"
    _journal(d)
    _clock(monkeypatch)

    def eio(*a: Any, **kw: Any) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(aside, "recover", eio)
    with pytest.raises(aside.AsideRefused, match="could not be read.*Input/output error"):
        aside.set_aside(d, watch=0)
    assert len(list(d.iterdir())) == 3


# --- completion.py ------------------------------------------------------------------------------


def test_the_backoff_grows_to_its_last_step_and_stays_there() -> None:
    """A failed write or deletion is tried again after 0.05 s, growing to 1 s (docs/cp-journal.md
    "Deadline and faults"), and every try after that waits the whole 1 s."""
    assert [completion._backoff(k) for k in range(len(completion.RETRY_S))] == list(completion.RETRY_S)
    assert completion.RETRY_S[0] == 0.05 and completion.RETRY_S[-1] == 1.0
    assert completion._backoff(len(completion.RETRY_S)) == completion._backoff(100) == 1.0


def _failing_writes(j: Journal, monkeypatch: Any, fails: list[int]) -> list[int]:
    """Make the writer thread's writes fail with EIO while `fails[0]` > 0 (counting down); the
    list returned counts the attempts."""
    real = j._write
    attempts = [0]

    def flaky(batch: list[tuple[int, bytes]]) -> float:
        attempts[0] += 1
        if fails[0] > 0:
            fails[0] -= 1
            raise OSError(errno.EIO, "injected")
        return real(batch)

    monkeypatch.setattr(j, "_write", flaky)
    return attempts


async def test_a_failing_write_waits_longer_after_each_failure(tmp_path: Path, monkeypatch: Any) -> None:
    """The backoff grows with each failure in a row: after the first retry fails too, the next
    waits the second step (here a minute), not the first again."""
    monkeypatch.setattr(completion, "RETRY_S", (0.01, 60.0))
    j = open_journal(tmp_path, io="thread")
    try:
        fails = [10**6]
        attempts = _failing_writes(j, monkeypatch, fails)
        j.append(["a", "T1", 1, "x"])
        await until(lambda: attempts[0] >= 2, 10, what="the first retry")
        await asyncio.sleep(0.3)  # (an observation window: the retries that must not come)
        assert attempts[0] == 2 and j.state == "failing"
    finally:
        j.close()


async def test_the_backoff_starts_again_from_its_first_step_after_a_success(tmp_path: Path, monkeypatch: Any, caplog: Any) -> None:
    """A write that failed once and then succeeded leaves no backoff behind: the next failure,
    later, is retried after the first step again (here 0.01 s; the second would be a minute).
    The journal goes `failing` and back to ok each time, said once per fault."""
    logs = _Log()
    monkeypatch.setattr(completion, "log", logs)
    monkeypatch.setattr(completion, "RETRY_S", (0.01, 60.0))
    j = open_journal(tmp_path, io="thread")
    try:
        fails = [1]
        _failing_writes(j, monkeypatch, fails)
        await durable(j, ["a", "T1", 1, "x"])
        assert j.state == "ok"
        fails[0] = 1
        await durable(j, ["a", "T1", 2, "x"])  # (5 s at most: a minute's backoff fails it)
        assert [r for r in records(tmp_path) if r[0] == "a"] == [["a", "T1", 1, "x"], ["a", "T1", 2, "x"]]
        assert len(logs.named("journal_failing")) == 2 and len(logs.named("journal_recovered_from_fault")) == 2
    finally:
        j.close()


async def test_a_fault_that_persists_is_said_once_not_at_every_retry(tmp_path: Path, monkeypatch: Any) -> None:
    """`journal_failing` is logged when the journal starts failing, not again at each retry
    that fails the same way."""
    logs = _Log()
    monkeypatch.setattr(completion, "log", logs)
    monkeypatch.setattr(completion, "RETRY_S", (0.01,))
    j = open_journal(tmp_path, io="thread")
    try:
        fails = [4]
        attempts = _failing_writes(j, monkeypatch, fails)
        await durable(j, ["a", "T1", 1, "x"])
        assert attempts[0] == 5
        assert len(logs.named("journal_failing")) == 1 and len(logs.named("journal_recovered_from_fault")) == 1
    finally:
        j.close()


async def test_a_group_checked_again_after_a_storage_error_counts_its_records_once(tmp_path: Path, monkeypatch: Any) -> None:
    """A group written and synced whose generation check failed on the storage (EIO) is counted
    in `records_written` once, when it was written, not again, and not never."""
    j = open_journal(tmp_path, io="thread")
    try:
        await durable(j, ["a", "T1", 1, "x"])
        before = j.records_written
        real = j.gens.check
        failing = [1]

        def check(own: int) -> None:
            if failing[0]:
                failing[0] -= 1
                raise OSError(errno.EIO, "injected: a stat of the generation file")
            real(own)

        monkeypatch.setattr(j.gens, "check", check)
        j.append(["a", "T1", 2, "y"])
        await durable(j, ["a", "T1", 3, "z"])
        assert not failing[0] and j.state == "ok"
        assert j.records_written == before + 2
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2, 3]
    finally:
        j.close()


async def test_a_failing_step_after_a_durable_record_does_not_hold_back_the_rest_of_its_group(tmp_path: Path, monkeypatch: Any) -> None:
    """One callback of a group raising (a bug) is logged; the others of the group still run and
    the journal goes on."""
    logs = _Log()
    monkeypatch.setattr(completion, "log", logs)
    j = open_journal(tmp_path)
    try:
        ran: list[int] = []

        def bad() -> None:
            raise ValueError("a bug in one step")

        j.append(["a", "T1", 1, "x"], bad)
        j.append(["a", "T1", 2, "x"], lambda: ran.append(2))
        await until(lambda: ran, 5, what="the rest of the group")
        await durable(j, ["a", "T1", 3, "x"])
        assert len(logs.named("journal_callback_failed")) == 1 and j.state == "ok"
    finally:
        j.close()


async def test_a_lazy_record_appended_while_a_group_is_out_is_written_soon_after(tmp_path: Path, monkeypatch: Any) -> None:
    """A record nobody waits on, appended while a group is being written, rides with no later
    group if none comes: it is written by itself shortly after that group is back."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    j = open_journal(tmp_path)
    try:
        hook.hold()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        j.append(["a", "T1", 1, "x"], lambda: first.set_result(None))
        await until(lambda: j._inflight is not None, 5, what="the group to be out")
        lazy: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        j.append(["c", "T1", 1], lambda: lazy.set_result(None), lazy=True)
        hook.release()
        await asyncio.wait_for(first, 5)
        await asyncio.wait_for(lazy, 5)
        assert ["c", "T1", 1] in records(tmp_path)
    finally:
        hook.release()
        j.close()


async def test_a_failed_groups_acknowledgements_go_before_those_of_records_appended_after_it(tmp_path: Path, monkeypatch: Any) -> None:
    """A group whose write fails keeps its callbacks ahead of those of the records appended
    while it was out: once written, the acknowledgements go in the order of the records (a
    terminal's acks in id order)."""
    monkeypatch.setattr(completion, "RETRY_S", (0.05,))
    j = open_journal(tmp_path, io="thread")
    real = j._write
    entered, go = threading.Event(), threading.Event()
    attempts = [0]

    def fails_once(batch: list[tuple[int, bytes]]) -> float:
        attempts[0] += 1
        if attempts[0] == 1:
            entered.set()
            assert go.wait(10)
            raise OSError(errno.EIO, "injected")
        return real(batch)

    monkeypatch.setattr(j, "_write", fails_once)
    try:
        acked: list[int] = []
        j.append(["a", "T1", 1, "x"], lambda: acked.append(1))
        await until(entered.is_set, 5, what="the write to be out")
        j.append(["a", "T1", 2, "x"], lambda: acked.append(2))  # while it is out
        j.append(["a", "T1", 3, "x"], lambda: acked.append(3))
        go.set()
        await until(lambda: len(acked) == 3, 5, what="the acknowledgements")
        assert acked == [1, 2, 3] and attempts[0] >= 2
        assert [r[2] for r in records(tmp_path) if r[0] == "a"] == [1, 2, 3]
    finally:
        go.set()
        j.close()


async def _settle_a_segment(j: Journal, tag: str) -> list[Path]:
    """Fill the current segment with settled records past the idle size and close it: it is to
    be deleted with the next group. The segment files there before (the one closed)."""
    from hsb.cp.journal import store

    for i in range(1, 1 + store.IDLE_ROTATE_BYTES // 100 + 10):
        j.append(["a", tag, i, "x" * 100])
    await j.drain()
    files = sorted(j.dir.glob("seg-*.hsbj"))
    j.maybe_rotate_idle()
    return files


def _refusing_unlink(monkeypatch: Any, refuse: list[int]) -> list[str]:
    """Segment deletions refused (EIO) while `refuse[0]` > 0 (counting down); the refusals."""
    real = os.unlink
    refused: list[str] = []

    def unlink(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith(".hsbj") and refuse[0] > 0:
            refuse[0] -= 1
            refused.append(Path(path).name)
            raise OSError(errno.EIO, "injected: unlink failed")
        real(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", unlink)
    return refused


async def test_a_refused_deletion_waits_longer_after_each_refusal(tmp_path: Path, monkeypatch: Any) -> None:
    """A settled segment's deletion refused again and again is tried after a growing backoff
    (here 0.01 s, then a minute), not at the first step each time."""
    monkeypatch.setattr(completion, "RETRY_S", (0.01, 60.0))
    j = open_journal(tmp_path, io="thread")
    try:
        await _settle_a_segment(j, "T1")
        refused = _refusing_unlink(monkeypatch, [10**6])
        await durable(j, ["a", "T2", 1, "with the deletion"])
        await until(lambda: len(refused) >= 2, 10, what="the deletion tried again")
        await asyncio.sleep(0.3)  # (an observation window: the tries that must not come)
        assert len(refused) == 2 and j.state == "ok"
    finally:
        j.close()


async def test_a_deletions_backoff_starts_again_after_one_succeeds(tmp_path: Path, monkeypatch: Any) -> None:
    """A deletion refused once and then done leaves no backoff behind: a later segment's
    deletion refused once is tried again after the first step (0.01 s), not the second (a
    minute)."""
    monkeypatch.setattr(completion, "RETRY_S", (0.01, 60.0))
    j = open_journal(tmp_path, io="thread")
    try:
        refuse = [0]
        refused = _refusing_unlink(monkeypatch, refuse)
        for k in (1, 2):
            old = await _settle_a_segment(j, f"T{k}")
            assert len(old) == 1
            refuse[0] = 1
            await durable(j, ["a", "T9", k, "with the deletion"])
            await until(lambda: not old[0].exists(), 5, what=f"deletion {k} done after its first backoff")
        assert len(refused) == 2
    finally:
        j.close()


async def test_a_failed_groups_deletions_stay_ahead_of_segments_settled_while_it_was_out(tmp_path: Path, monkeypatch: Any) -> None:
    """A group carrying a settled segment's deletion fails; segments that settled while it was
    out are deleted after that one: only the oldest segment is ever deleted, so a crash never
    leaves a gap, which recovery would take for damage."""
    monkeypatch.setattr(completion, "RETRY_S", (0.05,))
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096, io="thread")
    j.open(1, [], [])
    real = j._write_and_delete
    entered, go = threading.Event(), threading.Event()
    failed: list[list[int]] = []

    def fails_once_with_deletions(batch: list[tuple[int, bytes]], deletions: list[int]) -> float:
        if deletions and not failed:
            failed.append(list(deletions))
            entered.set()
            assert go.wait(10)
            raise OSError(errno.EIO, "injected")
        return real(batch, deletions)

    deleted: list[str] = []
    real_unlink = os.unlink

    def unlink(path: Any, *a: Any, **kw: Any) -> None:
        if str(path).endswith(".hsbj"):
            deleted.append(Path(path).name)
        real_unlink(path, *a, **kw)

    monkeypatch.setattr(j, "_write_and_delete", fails_once_with_deletions)
    monkeypatch.setattr(os, "unlink", unlink)

    def settled(i: int) -> None:
        """A message and its settling: a record pinned and unpinned (its segment settled)."""
        s = j.append(["a", "T1", i, "x" * 100])
        j.pin(s)
        j.unpin(s)
        j.pin(j.segments[0])  # the oldest segment's last message settles: it goes
        j.unpin(j.segments[0])

    try:
        i = 0
        while not entered.is_set():
            i += 1
            settled(i)
            await asyncio.sleep(0)  # (lets a group start: the one with a deletion is held)
            assert i < 10_000, "no group carried a deletion"
        seg = j.seg
        while j.seg < seg + 3:  # segments fill and settle while that group is out
            i += 1
            settled(i)
        go.set()
        await j.drain()
        await until(lambda: len(list(tmp_path.glob("seg-*.hsbj"))) <= 2, 5, what="the settled segments deleted")
        order = [int(n.split("-")[2].split(".")[0]) for n in deleted]
        assert failed and order[: len(failed[0])] == failed[0] and order == sorted(order), (failed, order)
    finally:
        go.set()
        j.close()


async def test_a_group_commit_moves_the_clean_check_forward(tmp_path: Path) -> None:
    """A group's generation check vouches like a heartbeat's: after a group commit `checked_at`
    is the group's start, later than an earlier heartbeat's check."""
    j = open_journal(tmp_path)
    try:
        c = await _beat_once(j)
        mark = boot_now()
        await durable(j, ["a", "T1", 1, "x"])
        assert j.checked_at is not None and j.checked_at >= mark > c
    finally:
        j.close()


async def test_a_segment_settled_while_a_group_is_out_is_deleted_when_it_is_back(tmp_path: Path, monkeypatch: Any) -> None:
    """The oldest segment's last message settles while a group is being written and nothing else
    comes: the segment is deleted right after that group, not left until some later traffic."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    gen = Generations(tmp_path).take()
    j = Journal(tmp_path, generation=gen, segment_bytes=4096)
    j.open(1, [], [])
    try:
        first = j.append(["a", "T1", 0, "held"])
        j.pin(first)
        i = 0
        while j.seg == first:
            i += 1
            j.append(["a", "T1", i, "x" * 100])
        await j.drain()
        old = [p for p in tmp_path.glob("seg-*.hsbj") if p.name.endswith(f"{first:08d}.hsbj")]
        assert len(old) == 1
        hook.hold()
        j.append(["a", "T1", i + 1, "x"])
        await until(lambda: j._inflight is not None, 5, what="the group to be out")
        j.unpin(first)  # its message settles meanwhile
        hook.release()
        await until(lambda: not old[0].exists(), 5, what="the settled segment deleted")
    finally:
        hook.release()
        j.close()


async def test_a_hung_storage_hangs_the_heartbeats_check_too(tmp_path: Path, monkeypatch: Any) -> None:
    """A storage fault injected by a test (a hung mount) holds the heartbeat's generation check
    as it holds the writes: no clean check comes back meanwhile, and it does once released."""
    from hsb import faults
    from hsb.takeover.faults import Faults

    hook = Faults()
    monkeypatch.setattr(faults, "_storage", hook)
    j = open_journal(tmp_path)
    try:
        prev = j.checked_at
        hook.hold()
        j.heartbeat()
        await until(hook.holding.is_set, 5, what="the heartbeat's check held")
        assert j.checked_at == prev
        hook.release()
        await until(lambda: j.checked_at != prev and not j._beating, 5, what="the check back")
    finally:
        hook.release()
        j.close()


def test_a_damaged_journal_is_set_aside_without_force(tmp_path: Path, monkeypatch: Any) -> None:
    """A journal whose recovery stops on damage is what `--set-journal-aside` is for: moved
    aside without `--force`, whole, and the directory made again (here with no generation file:
    files from before generations)."""
    from hsb.cp.journal.format import encode

    d = tmp_path / "j"
    d.mkdir()
    p = write_segment(d, 1, [["ck", 1, None, 0, {}], ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"]])
    write_segment(d, 2, [["ck", 1, None, 0, {}]])  # (damage before the last segment: no re-reads)
    blob = bytearray(p.read_bytes())
    blob[len(encode(["ck", 1, None, 0, {}])) + 3] ^= 0x40  # the second record's length: damage
    p.write_bytes(bytes(blob))
    _clock(monkeypatch)
    to, files, newest = aside.set_aside(d, watch=0)
    assert (files, newest) == (2, 0)
    assert (to / p.name).read_bytes() == bytes(blob) and list(d.iterdir()) == []


def test_a_journal_of_generation_files_only_is_not_set_aside(tmp_path: Path, monkeypatch: Any) -> None:
    """A journal directory holding its generation files and no records is refused (nothing to
    set aside: a CP starts on it as it is), and left as it is."""
    d = tmp_path / "j"
    d.mkdir()
    (d / gen_name(1)).write_text("")
    (d / gen_name(2)).write_text("")
    _clock(monkeypatch)
    with pytest.raises(aside.AsideRefused, match="holds no records"):
        aside.set_aside(d, watch=0, force=True)
    assert sorted(p.name for p in d.iterdir()) == [gen_name(1), gen_name(2)]
