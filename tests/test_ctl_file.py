"""`hsbctl file create|inspect`: output forms, and one-line errors on every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hsb.ctl.main import main
from hsb.takeover import SessionEntry, TakeoverWriter, startup_id

HSBCTL = Path(sys.executable).with_name("hsbctl")


def run(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, ["file", *args])
    return res.exit_code, res.stdout, res.stderr


def assert_one_line_error(code: int, out: str, err: str, *fragments: str) -> None:
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def populated(tmp_path: Path) -> str:
    path = str(tmp_path / "tk")
    code, out, err = run("create", path, "--records", "40", "--terminals", "100")
    assert code == 0, err
    with TakeoverWriter(path, terminals=100, host_name="host-a") as w:
        w.batch_write(
            startup_id(datetime(2024, 12, 31, 23, 59, 59, 999_000)),
            [SessionEntry(f"T{i:03d}", {"proto": "lu2", "raw": b"\x01"}, i % 4 != 0) for i in range(30)],
        )
        for g in range(5):
            w.append_group([SessionEntry(f"T{g:03d}", {"proto": "lu2"}, g % 2 == 0)] * (g + 1))
    return path


def test_create_then_inspect_empty(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    code, out, err = run("create", path, "--records", "64", "--record-size", "512")
    assert code == 0, err
    assert out.startswith(f"created {path}: 64 records of 512 bytes")
    assert os.path.getsize(path) == 64 * 512
    code, out, err = run("inspect", path, "--json")
    assert code == 0, err
    rep = json.loads(out)
    assert (rep["record_size"], rep["records"], rep["startup_id"], rep["batch_records"], rep["generation"]) == (512, 64, 0, 0, 0)
    assert rep["ring"]["count"] == 0 and rep["ring"]["first_seq"] is None and rep["batch"] == [] and rep["errors"] == []


def test_create_makes_a_file_others_may_not_read(tmp_path: Path) -> None:
    """The takeover file holds every terminal's name and attributes: made 640 (the daemons'
    user reads and writes it, its group reads it), never world-readable, whatever the umask."""
    path = str(tmp_path / "tk")
    old = os.umask(0)
    try:
        code, _, err = run("create", path, "--records", "64", "--record-size", "512")
    finally:
        os.umask(old)
    assert code == 0, err
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_inspect_json(populated: str) -> None:
    code, out, err = run("inspect", populated, "--json")
    assert code == 0, err
    rep = json.loads(out)
    for key in ("record_size", "records", "startup_id", "batch_records", "generation", "ring", "batch", "errors"):
        assert key in rep
    assert rep["record_size"] == 4096 and rep["records"] == 40 and rep["batch_records"] == 7
    assert rep["startup_id"] == (24 * 366 + 366) << 32 | 86_399_999
    assert rep["generation"] == 1 and rep["writer_host"] == "host-a"
    assert (rep["ring"]["first_seq"], rep["ring"]["last_seq"], rep["ring"]["count"]) == (1, 5, 5)
    assert rep["ring"]["entries"] == 15
    assert len(rep["batch"]) == 30
    assert rep["batch"][1] == {"terminal": "T001", "attrs": {"proto": "lu2", "raw": {"base64": "AQ=="}}, "open": True}
    assert rep["batch"][0]["open"] is False
    assert rep["errors"] == []


def test_inspect_human(populated: str) -> None:
    code, out, err = run("inspect", populated, "--limit", "3")
    assert code == 0, err
    assert "2024-12-31 23:59:59.999 local" in out
    assert "records 1..7 (B=7): 30 entries, 22 open, 8 closed" in out
    assert "seq 1..5 in 5 records, 15 entries" in out
    assert "errors       none" in out
    assert "batch entries (3 of 30):" in out and "ring records (last 3 of 5):" in out
    assert "{'" not in out  # a summary, not a dict dump


def test_inspect_reports_bad_records(populated: str) -> None:
    with open(populated, "r+b") as f:
        f.seek(3 * 4096 + 77)
        b = f.read(1)
        f.seek(3 * 4096 + 77)
        f.write(bytes([b[0] ^ 0xFF]))
    code, out, err = run("inspect", populated, "--json")
    assert code == 1
    rep = json.loads(out)
    assert rep["errors"] == [{"record": 3, "reason": "checksum mismatch (torn write or corruption)"}]
    code, out, _ = run("inspect", populated)
    assert code == 1 and "record 3: checksum mismatch" in out


def test_bad_inputs_of_inspect(tmp_path: Path, populated: str) -> None:
    assert_one_line_error(*run("inspect", str(tmp_path / "missing")), "does not exist", "hsbctl file create")
    assert_one_line_error(*run("inspect", str(tmp_path)), "is a directory")
    junk = tmp_path / "junk"
    junk.write_bytes(b"\x7fELF" + bytes(8188))
    assert_one_line_error(*run("inspect", str(junk)), "not an hsb takeover file", "bad magic")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert_one_line_error(*run("inspect", str(empty)), "not an hsb takeover file")
    short = tmp_path / "short"
    short.write_bytes(Path(populated).read_bytes()[: 10 * 4096])
    assert_one_line_error(*run("inspect", str(short)), "its header says 40 records", "truncated", "--records 40")
    tiny = tmp_path / "tiny"
    tiny.write_bytes(Path(populated).read_bytes()[:100])
    assert_one_line_error(*run("inspect", str(tiny)), "too short")
    assert_one_line_error(*run("inspect", populated, "--terminals", "1000"), "has 40 records; 1000 terminals need B=67", "at least 202")
    assert_one_line_error(*run("inspect", populated, "--terminals", "many"), "--terminals must be a whole number")


def test_bad_inputs_of_create(tmp_path: Path, populated: str) -> None:
    new = str(tmp_path / "new")
    assert_one_line_error(*run("create", populated, "--records", "40"), "already exists", "--force")
    assert_one_line_error(*run("create", str(tmp_path), "--records", "40", "--force"), "not a regular file")
    assert_one_line_error(*run("create", str(tmp_path / "no" / "dir" / "tk"), "--records", "40"), "does not exist")
    assert_one_line_error(*run("create", new, "--records", "3"), "needs 4")
    assert_one_line_error(*run("create", new, "--records", "ten"), "--records must be a whole number")
    assert_one_line_error(*run("create", new, "--records", "100", "--record-size", "1000"), "multiple of 512")
    assert_one_line_error(
        *run("create", new, "--records", "21", "--terminals", "100"),
        "--records 21 is too small: 100 terminals need B=7",
        "at least 22 (3·B+1)",
    )
    assert not os.path.exists(new)
    assert run("create", new, "--records", "22", "--terminals", "100")[0] == 0


def test_the_installed_command(tmp_path: Path) -> None:
    """The real console script: exit status and a one-line message, no traceback."""
    if not HSBCTL.exists():
        pytest.skip("hsbctl console script not installed next to this python")
    missing = str(tmp_path / "missing")
    p = subprocess.run([str(HSBCTL), "file", "inspect", missing], capture_output=True, text=True, timeout=60)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, "does not exist")
    p = subprocess.run([str(HSBCTL), "file", "create", missing, "--records", "8"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == ""
    p = subprocess.run([str(HSBCTL), "file", "inspect", missing], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "8 records x 4096 bytes" in p.stdout and p.stderr == ""


def _little_room(free_blocks: int) -> os.statvfs_result:
    """A filesystem of 4096-byte blocks with `free_blocks` of them free."""
    return os.statvfs_result((4096, 4096, 1_000_000, free_blocks, free_blocks, 1000, 1000, 1000, 0, 255))


@pytest.mark.timeout(60)
def test_create_refuses_a_file_larger_than_the_free_space_before_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--records 4294967295` (16 TiB) on a disk with less free: it wrote a temporary file until
    killed or the disk was full. Now refused up front, naming the size, the space and the fix."""
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: Any, off: int) -> int:  # (and without the check: no 16 TiB written here)
        raise AssertionError("written before the free space was checked")

    monkeypatch.setattr(os, "statvfs", lambda _p: _little_room(100))  # 400 KiB free
    monkeypatch.setattr(os, "pwrite", pwrite)
    new = tmp_path / "x2.dat"
    assert_one_line_error(
        *run("create", str(new), "--records", "4294967295"),
        f"{new} needs 16.0 TiB (4294967295 records of 4096 bytes)",
        f"{tmp_path} has 400.0 KiB free",
        "free space there, or choose fewer --records (at most 100 fit now) or a path on another filesystem",
    )
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    code, out, err = run("create", str(new), "--records", "100")  # (what fits is made)
    assert code == 0 and new.stat().st_size == 100 * 4096, err


@pytest.mark.timeout(60)
def test_a_filesystem_that_fills_up_while_creating_is_said_as_such_and_the_temporary_file_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC during the write said `check the directory and its permissions`: the wrong fix."""
    import errno

    real_pwrite = os.pwrite
    calls = 0

    def pwrite(fd: int, data: Any, off: int) -> int:
        nonlocal calls
        calls += 1
        if calls == 3:  # (the header and one chunk went through: the filesystem fills up now)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, off)

    monkeypatch.setattr(os, "pwrite", pwrite)
    new = tmp_path / "x2.dat"
    code, out, err = run("create", str(new), "--records", "1000")
    assert_one_line_error(code, out, err, f"cannot create {new}: no space left on the filesystem of {tmp_path}", "free space there")
    assert code == 1 and "permission" not in err
    assert calls == 3 and os.listdir(tmp_path) == []


_SIGTERM_MID_WRITE = """
import os, signal, sys
from hsb.ctl.main import main
real, calls = os.pwrite, [0]
def pwrite(fd, data, off):
    calls[0] += 1
    if calls[0] == 3:  # the header and one chunk written: SIGTERM, as `kill PID` would send it
        signal.raise_signal(signal.SIGTERM)
    return real(fd, data, off)
os.pwrite = pwrite
main(["file", "create", sys.argv[1], "--records", "1000"])
"""


@pytest.mark.timeout(60)
def test_a_sigterm_while_creating_removes_the_temporary_file(tmp_path: Path) -> None:
    """Killed (SIGTERM) while it wrote, `create` left `PATH.tmp-PID` behind (only a Python
    exception removed it). (A process of its own: without the fix the signal ends it.)"""
    new = tmp_path / "x2.dat"
    p = subprocess.run([sys.executable, "-c", _SIGTERM_MID_WRITE, str(new)], capture_output=True, text=True, timeout=60)
    assert os.listdir(tmp_path) == [], (p.returncode, p.stderr)
    assert p.returncode == 128 + 15, (p.returncode, p.stderr)
    assert_one_line_error(p.returncode, p.stdout, p.stderr, f"stopped by SIGTERM while writing {new}", "was removed", "run the command again")


@pytest.mark.timeout(60)
def test_create_leaves_the_signal_handlers_as_it_found_them(tmp_path: Path) -> None:
    import signal

    before = [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]
    assert run("create", str(tmp_path / "tk"), "--records", "40")[0] == 0
    assert [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)] == before


def _tear_header(path: str) -> None:
    with open(path, "r+b") as f:  # a byte of record 0's padding: its checksum fails, as after a torn rewrite
        f.seek(300)
        b = f.read(1)
        f.seek(300)
        f.write(bytes([b[0] ^ 0xFF]))


def test_a_torn_header_of_a_file_a_pair_wrote_is_not_replaced_by_one_force(tmp_path: Path, populated: str) -> None:
    """A power loss while the active rewrote record 0: its writer mends it from the records at the
    next batch write, so a single --force does not replace the pair's file (a running active would
    go on writing the unlinked one); twice, with both hosts stopped, it does."""
    _tear_header(populated)
    before = Path(populated).read_bytes()
    assert_one_line_error(
        *run("create", populated, "--records", "40", "--force"),
        "in use by a pair though its header is unreadable (corrupt: checksum mismatch",
        "40 records of 4096 bytes hold batch writes up to generation 1",
        "its next batch write",
        "--force twice",
    )
    assert Path(populated).read_bytes() == before
    code, _, err = run("create", populated, "--records", "40", "--force", "--force")
    assert code == 0, err
    code, out, _ = run("inspect", populated, "--json")
    assert code == 0 and json.loads(out)["generation"] == 0
    # a torn header over records no pair wrote: nothing to keep, one --force replaces it
    fresh = str(tmp_path / "fresh")
    assert run("create", fresh, "--records", "40")[0] == 0
    _tear_header(fresh)
    code, _, err = run("create", fresh, "--records", "40", "--force")
    assert code == 0, err


def test_a_torn_header_names_the_files_record_count_and_the_active_that_mends_it(populated: str) -> None:
    """Not `--records N`: a count the configs do not say fails every batch write after it
    (RecordCountMismatch). The file's own count from its size, or the config's where given."""
    from hsb.takeover import check_file
    from hsb.takeover.errors import HeaderCorrupt

    _tear_header(populated)
    code, out, err = run("inspect", populated)
    assert "--records N" not in err
    assert_one_line_error(
        code,
        out,
        err,
        "record 0 (header)",
        "if a pair uses the file, its active rewrites the header at its next batch write",
        f"hsbctl file create {populated} --records 40 --record-size 4096 --force`",
    )
    with pytest.raises(HeaderCorrupt, match=r"--records 30 --record-size 4096 --force`") as ei:
        check_file(populated, 4096, 30)  # (a file larger than the config says: the config's count)
    assert "--records N" not in str(ei.value)
