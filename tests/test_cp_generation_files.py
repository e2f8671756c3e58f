"""The journal's generation files in process (SPEC §5.8; docs/cp-journal.md "Generations"):
each generation taken once, an unfinished snapshot not read, a storage error on the files an
error and not a newer CP, a new generation above every segment's, a CP superseded in its
takeover deleting nothing, a CP's check finding itself superseded (behind a prune, its own file
gone), and a serving CP's health failing once its generation check has not come back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal.generation import Generations, gen_name
from hsb.cp.journal.recovery import recover
from tests.support.procs import SECRET, cp_config

pytestmark = pytest.mark.timeout(90)


def test_generation_files_are_taken_once_each(tmp_path: Path) -> None:
    """Two CPs taking the next generation at once get different ones (O_EXCL)."""
    import threading

    g = Generations(tmp_path)
    got: list[int] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        got.append(g.take())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == list(range(1, 9))
    assert g.newer_than(3) == 8 and g.newer_than(8) is None


def test_an_unfinished_snapshot_is_not_read(tmp_path: Path) -> None:
    """A CP that died while writing its takeover snapshot: the next one reads the generation
    before (whose files are still there), not the half-written one."""
    from hsb.cp.journal.format import encode
    from hsb.cp.journal.recovery import segment_name

    (tmp_path / segment_name(1, 1)).write_bytes(b"".join(encode(r) for r in [["ck", 1, "host-a", 1, {}, {"first": 1}], ["a", "T1", 5, b"x"], ["se"]]))
    (tmp_path / segment_name(2, 1)).write_bytes(encode(["ck", 1, "host-a", 1, {"T1": 5}, {"first": 1}]) + encode(["a", "T1", 6, b"y"]))
    # generation 2 began its snapshot and died before its end marker
    (tmp_path / segment_name(3, 2)).write_bytes(encode(["ck", 1, "host-a", 2, {"T1": 6}, {"first": 3}]) + encode(["a", "T1", 5, b"x"]))
    r = recover(tmp_path)
    assert r.head_generation == 1
    assert sorted(r.held["T1"]) == [5, 6]
    assert [p.name for p in r.garbage] == [segment_name(3, 2)]
    # gen 1's snapshot segment compacted away (settled): gen 1 is still complete
    (tmp_path / segment_name(1, 1)).unlink()
    assert recover(tmp_path).head_generation == 1


def test_a_storage_error_on_the_generation_files_is_an_error_not_a_newer_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO (or ESTALE) on a stat of the CP's own generation file says nothing about a newer CP:
    it is raised as the storage's error (the group is retried), not taken as superseded (the
    CP would stop for good)."""
    gens = Generations(tmp_path)
    own = gens.take()
    gens.check(own)  # its own file is there and no newer one: fine
    real = os.stat

    def stat(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path).endswith(gen_name(own)):
            raise OSError(116, "Stale file handle")
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(OSError, match="Stale file handle"):
        gens.check(own)
    monkeypatch.setattr(os, "stat", real)
    (tmp_path / gen_name(own + 1)).touch()  # a newer CP's file: superseded, as before
    assert gens.newer_than(own) == own + 1


def test_a_new_generation_is_above_every_segments_even_with_gen_files_missing(tmp_path: Path) -> None:
    """The gen- files are the fence; segment names carry their generation too. A CP taking over a
    directory whose gen- files were removed must not take a generation below its segments'."""
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.recovery import segment_name

    (tmp_path / segment_name(1, 5)).write_bytes(b"")
    (tmp_path / segment_name(2, 5)).write_bytes(b"")
    assert Generations(tmp_path).take() == 6
    assert Generations(tmp_path).take() == 7  # and the gen- file it made counts from then on
    # a jump over a generation whose CP may still run marks the next one, which that CP looks for
    g = Generations(tmp_path)
    (tmp_path / segment_name(1, 9)).write_bytes(b"")
    assert g.take() == 10
    assert g.newer_than(7) is not None  # the CP of 7 is superseded (gen-8 is there)


async def test_a_cp_superseded_while_it_takes_over_deletes_nothing_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPs taking over at once: the newer one may list the journal before the older one's
    snapshot is complete, and read the generation before it. The older one, superseded when its
    snapshot is durable, must not then delete that generation's segments as garbage (what they hold
    would be lost), and must not serve."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import taking_over
    from hsb.cp.config import CPConfig
    from hsb.cp.journal.format import encode
    from hsb.cp.journal.recovery import segment_name

    journal = tmp_path / "j"
    journal.mkdir()
    Generations(journal).take()  # generation 1, whose segment holds an acknowledged message
    old = journal / segment_name(1, 1)
    old.write_bytes(b"".join(encode(r) for r in [["ck", 1, "host-a", 1, {}, {"first": 1}], ["a", "T00001", 5, b"x"], ["se"]]))
    real = taking_over.recover  # type: ignore[attr-defined]  # (imported there: patched there below)

    def recover_then_superseded(d: Path, **kw: Any) -> Any:
        r = real(d, **kw)
        Generations(d).take()  # another CP takes the next generation (and reads generation 1)
        return r

    monkeypatch.setattr(taking_over, "recover", recover_then_superseded)
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    try:
        await s.startup()
        assert s.superseded and s.cp is None and s.exit_code == 75
        assert old.exists(), "the generation the newer CP reads was deleted"
        assert recover(journal).held["T00001"].keys() == {5}
    finally:
        await s.shutdown()


def test_a_far_behind_cps_check_meeting_a_prune_still_finds_itself_superseded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest CP prunes old generation files oldest first, and a check (the thread's, and the
    io_uring chain's) looks for the next generation's file before its own: a check that lands in
    the middle of a prune finds the next one still there or its own gone. Deleting newest first
    (or looking at its own file first) let a CP 10+ generations behind see its own file there and
    the next one gone, and acknowledge what the new CP never reads."""
    from hsb.cp.journal import generation as genmod

    for g in range(1, 16):
        (tmp_path / gen_name(g)).write_text("")
    gens = Generations(tmp_path)
    deleted: list[int] = []
    real_unlink = os.unlink

    def unlink(p: Any) -> None:
        deleted.append(int(Path(p).name[4:]))
        real_unlink(p)

    monkeypatch.setattr(os, "unlink", unlink)
    gens.prune(15)
    assert deleted == sorted(deleted) and deleted, deleted  # oldest first
    # the thread's check: the next generation's file is looked at before its own
    looked: list[str] = []

    def there(p: Any) -> bool:
        looked.append(Path(p).name)
        return Path(p).exists()

    monkeypatch.setattr(genmod, "_there", there)
    with pytest.raises(Exception, match="newer|supersed"):
        gens.check(14)
    assert looked[0] == gen_name(15), looked


def test_a_cp_whose_own_file_is_gone_is_superseded_only_if_a_newer_file_is_there(tmp_path: Path) -> None:
    """The check tells the two apart: a far-behind CP whose own file the newest CP pruned is
    superseded by that one (its file is among the newest kept); a CP whose own file is gone with
    nothing above it is GenerationGone (its file was removed, not a newer CP's doing). Both stop."""
    from hsb.cp.journal.generation import GenerationGone, Superseded

    for g in range(1, 16):
        (tmp_path / gen_name(g)).write_text("")
    gens = Generations(tmp_path)
    gens.prune(15)
    assert not (tmp_path / gen_name(3)).exists() and not (tmp_path / gen_name(4)).exists()
    with pytest.raises(Superseded) as superseded:
        gens.check(3)
    assert type(superseded.value) is Superseded and superseded.value.newer == 15
    (tmp_path / gen_name(15)).unlink()  # the newest's own file removed: gen-14 is below it
    with pytest.raises(GenerationGone) as gone:
        gens.check(15)
    assert gone.value.found == 14 and gone.value.newer is None and "the highest is gen-00000014" in str(gone.value)


async def test_a_serving_cps_health_fails_once_its_generation_check_has_not_come_back(tmp_path: Path) -> None:
    """An idle serving CP whose journal's mount hangs writes nothing, so its journal still says
    ok, and /health answered 200: keepalived kept the address on a CP that renews no lease (its
    generation check hangs) until traffic stalled a write. It fails once no clean check has come
    back for fresh_s, as the lease answers stop."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from hsb.cp.journal.store import boot_now

    cfg = load(cp_config(tmp_path, terminals=2, journal=str(tmp_path / "j")), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    await s.startup()
    try:
        assert s.cp is not None
        j = s.cp.journal
        assert s._healthy() and j.checked_at is not None
        j.checked_at = boot_now() - j.fresh_s - 0.1  # its last clean check, too long ago (the next one hangs)
        assert j.state == "ok" and not s._healthy()
        j.checked_at = boot_now()  # a check came back
        assert s._healthy()
    finally:
        await s.shutdown()
