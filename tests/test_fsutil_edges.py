"""hsb.fsutil's edges: a path's length and name limits to the byte, the characters refused and
their messages, where a path cannot be made, a durable replace (its fsyncs, a short write, a
longer leftover .tmp, a failure leaving no .tmp), preallocation and the bulk rate."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from hsb import fsutil


def test_a_path_and_a_name_as_long_as_linux_takes_are_fine_a_byte_more_is_not() -> None:
    folders = ("/" + "b" * 200) * 20  # 4020 bytes
    assert fsutil.path_problem(folders + "/" + "c" * 74) is None  # 4095 bytes
    assert fsutil.path_problem(folders + "/" + "c" * 75) == "is 4096 bytes long, over the 4095 a path may have"
    wide = ("/" + "é" * 100) * 20  # 4020 bytes in 2020 characters
    assert fsutil.path_problem(wide + "/" + "c" * 76) == "is 4097 bytes long, over the 4095 a path may have"
    assert fsutil.path_problem("/x/" + "n" * 255) is None
    assert fsutil.path_problem("/x/" + "n" * 256) == "has a name of 256 bytes in it, over the 255 a file name may have"


def test_control_characters_and_line_breaks_are_refused_each_with_its_message() -> None:
    assert fsutil.path_problem("/a\0b") == "contains a NUL character"
    assert fsutil.path_problem("/a\nb") == "contains a control character or line break ('\\n')"
    assert fsutil.path_problem("/a\u2028b") == "contains a control character or line break ('\\u2028')"
    assert fsutil.path_problem("/a\u2029b") == "contains a control character or line break ('\\u2029')"


def test_a_file_in_the_way_is_where_a_path_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    (tmp_path / "file").chmod(0o755)  # writable and searchable, but no folder
    assert fsutil.unwritable_above(tmp_path / "file" / "sub" / "x") == tmp_path / "file"
    assert fsutil.unwritable_above(tmp_path / "new" / "x") is None
    assert errno.EROFS in fsutil.LASTING


def test_replace_durably_fsyncs_the_file_and_the_folder_and_writes_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync, real_write = os.fsync, os.write

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:3]))  # three bytes at most a call

    target = tmp_path / "state"
    (tmp_path / "state.tmp").write_bytes(b"a much longer leftover of an earlier try")
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "write", short_write)
    old = os.umask(0)
    try:
        fsutil.replace_durably(target, b"new contents")
        fsutil.replace_durably(tmp_path / "fresh", b"x")  # (no leftover: its mode is the default's)
    finally:
        os.umask(old)
    assert target.read_bytes() == b"new contents"
    assert not (tmp_path / "state.tmp").exists()
    assert synced[:2] == [str(tmp_path / "state.tmp"), str(tmp_path)]  # the data before the rename, the name after it
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o644


def test_a_replace_that_fails_leaves_the_old_file_and_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "state"
    target.write_bytes(b"old")

    def fails(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", fails)
    with pytest.raises(OSError, match="injected"):
        fsutil.replace_durably(target, b"new")
    assert target.read_bytes() == b"old"
    assert not (tmp_path / "state.tmp").exists()


def test_preallocate_sizes_the_file_and_nothing_for_no_bytes(tmp_path: Path) -> None:
    with open(tmp_path / "seg", "wb") as f:
        assert fsutil.preallocate(f.fileno(), 0) is False
        done = fsutil.preallocate(f.fileno(), 8192)
        assert done == (os.fstat(f.fileno()).st_size == 8192), "True exactly when the file was sized"


def test_sixteen_mebibytes_take_a_second() -> None:
    assert fsutil.bulk_seconds(16 * 1024 * 1024) == 1.0
