"""A damaged or unfinished CP journal at hsbcpd's start (SPEC §5.7; docs/cp-journal.md), real
processes: damage stops the start naming the file and offset, a journal set aside starts empty
above every generation the hosts saw, a torn tail is dropped but left in the file for a write
still finishing, and a journal another CP is still deleting stops the start with a status
systemd restarts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hsb.cp.journal.format import encode, scan
from hsb.cp.journal.recovery import segment_files
from tests.support.hostclient import cp_status
from tests.support.journal import write_segment
from tests.support.procs import restart_cp, start_cp

pytestmark = pytest.mark.timeout(90)


def test_a_damaged_journal_stops_the_start_naming_the_file_and_offset(tmp_path: Path) -> None:
    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    cp.stop()
    j = d / "cp-journal"
    from hsb.cp.journal.generation import Generations

    # the next segment of the generation the next start recovers (the last CP's)
    gen = Generations(j).current()
    n = max(k for g, k, _ in segment_files(j) if g == gen) + 1
    p = write_segment(j, n, [["ck", 1, None, 0, {}], ["a", "T00001", 1, b"one"], ["a", "T00001", 2, b"two"]], gen=gen)
    blob = bytearray(p.read_bytes())
    off = len(encode(["ck", 1, None, 0, {}]))
    blob[off + 3] ^= 0x40  # the length of the second record
    p.write_bytes(bytes(blob))
    r = subprocess.run([sys.executable, "-m", "hsb.cp", "--config", str(d / "cp.toml")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 65  # its own status, one the unit does not restart on: a start again finds the same
    assert f"{p} at offset {off}" in r.stderr and "CP journal damaged" in r.stderr, r.stderr
    unit = (Path(__file__).resolve().parent.parent / "configs" / "systemd" / "hsbcpd.service").read_text()
    assert re.search(r"^RestartPreventExitStatus=.*\b65\b", unit, re.M), unit


async def test_a_damaged_journal_set_aside_starts_empty_above_every_generation_the_hosts_saw(tmp_path: Path) -> None:
    """The damage's fix as the error names it: `hsbcpd --set-journal-aside` moves the records
    aside, kept, and keeps the generation files, so the next start begins empty at a generation
    above every one before (started on an empty directory it would take generation 1, and every
    hsbd that saw a higher one refuses it as an older CP until restarted)."""
    from hsb.cp.journal.aside import AsideRefused, set_aside
    from hsb.cp.journal.generation import Generations

    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    cp = restart_cp(cp)  # a generation above 1, as any CP that ever restarted has
    cp.stop()
    j = d / "cp-journal"
    gen = Generations(j).current()
    assert gen >= 2
    n = max(k for g, k, _ in segment_files(j) if g == gen) + 1
    p = write_segment(j, n, [["ck", 1, None, 0, {}], ["a", "T00001", 1, b"one"], ["a", "T00001", 2, b"two"]], gen=gen)
    blob = bytearray(p.read_bytes())
    blob[len(encode(["ck", 1, None, 0, {}])) + 3] ^= 0x40
    p.write_bytes(bytes(blob))
    hsbcpd = [sys.executable, "-m", "hsb.cp", "--config", str(d / "cp.toml")]
    r = subprocess.run(hsbcpd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 65 and "--set-journal-aside" in r.stderr, r.stderr
    seen = Generations(j).current()  # (the failed start took one too)
    r = subprocess.run([*hsbcpd, "--set-journal-aside"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"generation {seen + 1}" in r.stdout and r.stdout.count("\n") == 1, r.stdout
    kept = [q for q in tmp_path.joinpath("cp").iterdir() if q.name.startswith("cp-journal.damaged-")]
    assert len(kept) == 1 and (kept[0] / p.name).exists()  # kept for inspection, whole
    # its generation files and its identity (the same journal's lineage, to the hosts)
    assert all(name.startswith("gen-") or name == "journal-id" for name in os.listdir(j)), os.listdir(j)
    assert sorted(os.listdir(j)) == sorted(n for n in os.listdir(kept[0]) if n.startswith("gen-") or n == "journal-id")
    assert (j / "journal-id").read_bytes() == (kept[0] / "journal-id").read_bytes()
    cp = restart_cp(cp)  # starts, empty, above every generation a host saw
    try:
        st = await cp_status(cp)
        assert st["journal"]["generation"] == seen + 1, st["journal"]
        with pytest.raises(AsideRefused, match="is serving"):  # never under a serving CP
            set_aside(j, watch=0.5)
    finally:
        cp.stop()
    # a journal that recovers whole is not set aside unless forced: what it holds is owed, and the
    # ids it acknowledged keep a resend from being processed twice
    gen = Generations(j).current()
    write_segment(j, max(k for g, k, _ in segment_files(j) if g == gen) + 1, [["ck", 1, None, 0, {}], ["a", "T00001", 7, b"owed"]], gen=gen)
    with pytest.raises(AsideRefused, match="is not damaged"):
        set_aside(j, watch=0.1)
    if os.geteuid() == 0:  # the CP's user keeps owning it when root sets it aside
        for q in (j, *j.iterdir()):
            os.chown(q, 65534, 65534)
    to, _, _ = set_aside(j, watch=0.1, force=True)
    assert to.exists() and all(name.startswith("gen-") or name == "journal-id" for name in os.listdir(j))
    if os.geteuid() == 0:
        assert {(os.stat(q).st_uid, os.stat(q).st_gid) for q in (j, *j.iterdir())} == {(65534, 65534)}


def test_a_torn_tail_is_dropped_but_left_in_the_file_for_a_write_still_finishing(tmp_path: Path) -> None:
    """A CP taking over reads the last segment while a superseded CP, not yet aware, is still
    writing a record there: the half it read is dropped, but the file is not cut, so the rest of
    that write completes the record instead of landing after a gap of zeros (damage that would
    stop every later start, should this CP die before its own snapshot is durable)."""
    from hsb.cp.journal.generation import Generations

    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    cp.stop()
    j = d / "cp-journal"
    gen = Generations(j).current()
    n = max(k for g, k, _ in segment_files(j) if g == gen)
    p = next(path for g, k, path in segment_files(j) if g == gen and k == n)
    _, good, _ = scan(p.read_bytes(), str(p))
    rec, after = encode(["a", "T00001", 5, b"five"]), encode(["a", "T00001", 6, b"six"])
    half = len(rec) // 2
    with open(p, "r+b") as fh:
        fh.seek(good)
        fh.write(rec[:half])  # the superseded CP's write, half landed when this CP reads
    # this CP recovers, then dies before its snapshot is written (its own crash point)
    dead = restart_cp(cp, env={"HSB_CRASH_POINTS": "cp.mid_recovery"}, wait=False)
    dead.popen.wait(30)
    assert dead.wait_event("crash_point")["point"] == "cp.mid_recovery"
    with open(p, "rb") as fh:
        fh.seek(good)
        assert fh.read(half) == rec[:half], "the torn tail was cut off the file"
    with open(p, "r+b") as fh:
        fh.seek(good + half)
        fh.write(rec[half:] + after)  # the rest of that write, and its next record
    cp2 = restart_cp(dead)
    try:
        assert cp2.wait_event("journal_recovered")["held"] == 2  # 5 and 6, read whole: no damage
    finally:
        cp2.stop()


def test_a_journal_another_cp_is_still_deleting_stops_the_start_with_a_status_systemd_restarts(tmp_path: Path) -> None:
    """Segment files that keep vanishing while the journal is read (another CP still deleting
    them) stop the start, but with 1, not the damaged journal's 65: a start again may succeed."""
    d = tmp_path / "cp"
    cp = start_cp(d, terminals=2)
    cp.stop()
    code = (
        "import sys\n"
        "from hsb.cp.journal import recovery\n"
        "def read(path):\n"
        "    raise recovery._Vanished(path.name)\n"
        "recovery._read = read\n"
        "recovery.RETRY_PAUSE_S = 0.0\n"
        "from hsb.cp.main import main\n"
        f"main(['--config', {str(d / 'cp.toml')!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "vanished while it was read" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
