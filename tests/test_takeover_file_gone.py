"""The takeover file removed from under a running active (deleted by mistake, its storage
unmounted: the disaster-recovery walk-through's step 3), on real files: the active's next batch
write fails with one line that says the file is gone and the command that makes it again at the
pair's geometry (it said `[Errno 2] No such file or directory: '…'` and nothing more), still an
OSError so that the host's status shows its storage failing; made again, the next batch write
takes the new file, no daemon stopped."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsb.takeover.errors import FileGone, FileMissing
from hsb.takeover.fileio import create_file
from hsb.takeover.records import SessionEntry
from hsb.takeover.writer import TakeoverWriter

pytestmark = pytest.mark.timeout(30)

ENTRIES = [SessionEntry(f"T{i}", {"proto": "hsb1"}, True) for i in range(3)]


def test_a_deleted_takeover_file_is_said_with_the_command_that_makes_it_again(tmp_path: Path) -> None:
    path = str(tmp_path / "takeover.dat")
    create_file(path, 64, 4096, host="nfs-admin")
    with TakeoverWriter(path, terminals=10, record_size=4096, records=64, host_name="host-b") as w:
        first = w.batch_write(11, ENTRIES)
        os.remove(path)
        with pytest.raises(FileGone) as exc:
            w.batch_write(12, ENTRIES)
        assert isinstance(exc.value, OSError) and isinstance(exc.value, FileMissing)
        said = str(exc.value)
        assert said.startswith(f"takeover file {path} is gone (deleted, or the storage it is on not mounted: findmnt)"), said
        assert f"create it again with `hsbctl file create {path} --records 64 --record-size 4096`, as the daemons' user (sudo -u hsb" in said, said
        assert "no daemon stopped" in said and "Errno" not in said, said
        # made again as the line says: the next batch write takes the new file
        create_file(path, 64, 4096, host="nfs-admin")
        again = w.batch_write(13, ENTRIES)
        assert again.startup_id == 13 and again.generation > first.generation, (first, again)
        assert Path(path).stat().st_size == 64 * 4096
