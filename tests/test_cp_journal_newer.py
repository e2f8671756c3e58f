"""A CP journal written by a newer hsbcpd, read by this one (a rollback; docs/operations.md §11,
Upgrading; docs/cp-journal.md): its records are whole, so it is not damage. Found by the rollback
walk-through: builds before the frames record `f` called a newer journal "damaged" and named
`--set-journal-aside` as the fix, which then moved it aside without `--force` and dropped every
acknowledged message it held. This build says "written by a newer hsbcpd" (a record kind it does
not know, or a checkpoint's format level above its own), stops the start (exit 65, as damage), and
refuses to set the journal aside unless forced."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hsb.cp.journal.format import JOURNAL_FORMAT, JournalDamaged, JournalNewer, encode
from hsb.cp.journal.generation import Generations
from hsb.cp.journal.recovery import recover, segment_files
from tests.support.journal import records, write_segment
from tests.support.procs import start_cp

pytestmark = pytest.mark.timeout(90)

CK = ["ck", 1, None, 0, {}]


@pytest.mark.parametrize(
    "newer, said",
    [
        (["zz", "T00001", 3], "a record of kind 'zz'"),
        (["ck", 1, None, 0, {}, {"format": JOURNAL_FORMAT + 1}], f"a checkpoint of journal format {JOURNAL_FORMAT + 1}"),
    ],
)
def test_records_of_a_newer_hsbcpd_are_not_damage(tmp_path: Path, newer: list[object], said: str) -> None:
    recs = [CK, ["a", "T00001", 1, b"one"], newer, ["a", "T00001", 2, b"two"]]
    p = write_segment(tmp_path, 1, recs)
    with pytest.raises(JournalNewer) as e:
        recover(tmp_path, truncate=False)
    off = sum(len(encode(r)) for r in recs[:2])
    assert e.value.offset == off and said in e.value.why, e.value
    line = str(e.value)
    assert f"{p} at offset {off}" in line and "written by a newer hsbcpd" in line and "damaged" not in line, line
    assert "start the newer hsbcpd again" in line and "--set-journal-aside" not in line, line
    assert isinstance(e.value, JournalDamaged)  # (every caller stops the start on it, as on damage)


def test_a_record_that_is_no_kind_at_all_is_still_damage(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [CK, [7, "T00001", 3]])
    with pytest.raises(JournalDamaged) as e:
        recover(tmp_path, truncate=False)
    assert not isinstance(e.value, JournalNewer) and "CP journal damaged" in str(e.value)


def test_a_checkpoint_of_this_format_or_of_before_the_level_is_read(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, [["ck", 3, "host-a", 0, {}, {"format": JOURNAL_FORMAT}], ["a", "T00001", 1, b"one"]])
    write_segment(tmp_path, 2, [["ck", 4, "host-b", 0, {}], ["a", "T00001", 2, b"two"]])
    r = recover(tmp_path, truncate=False)
    assert (r.epoch, r.active, sorted(r.held["T00001"])) == (4, "host-b", [1, 2])


def test_a_real_cp_refuses_a_newer_journal_and_will_not_set_it_aside_unforced(tmp_path: Path) -> None:
    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    cp.stop()
    j = d / "cp-journal"
    # this hsbcpd's own checkpoints say the level it writes (a later one that changes a record's
    # meaning raises it, and this one then refuses its journal)
    [ck] = [r for r in records(j) if r[0] == "ck"][:1]
    assert ck[5]["format"] == JOURNAL_FORMAT, ck
    gen = Generations(j).current()
    n = max(k for g, k, _ in segment_files(j) if g == gen) + 1
    p = write_segment(j, n, [CK, ["a", "T00001", 5, b"owed"], ["zz", "T00001", 5]], gen=gen)
    hsbcpd = [sys.executable, "-m", "hsb.cp", "--config", str(d / "cp.toml")]
    r = subprocess.run(hsbcpd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 65, r.stderr  # (as damage: the unit does not restart it; a start again finds the same)
    assert "written by a newer hsbcpd" in r.stderr and str(p) in r.stderr and "damaged" not in r.stderr, r.stderr
    r = subprocess.run([*hsbcpd, "--set-journal-aside"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "a newer hsbcpd wrote it" in r.stderr and "--force" in r.stderr, r.stderr
    assert p.exists() and not list(d.glob("cp-journal.damaged-*"))  # left as it was: what it holds is owed
    r = subprocess.run([*hsbcpd, "--set-journal-aside", "--force"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and not p.exists() and list(d.glob("cp-journal.damaged-*")), r.stderr
