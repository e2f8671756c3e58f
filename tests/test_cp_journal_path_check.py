"""hsbcpd's check of `[cp] journal` before the start, as the operator meets it (docs/operations.md
§12, §17): a regular file where the journal directory should be is said as what it is, "a file, not
a directory", by `--check-config` and by the start (exit 78, not restarted by the unit), rather
than "cannot be written" (the file is writable: chmod, the fix that line suggested, changes
nothing). Real processes, as the unit runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.cp", *args], capture_output=True, text=True, timeout=60)


def cp_config(tmp_path: Path, journal: str) -> Path:
    (tmp_path / "s").write_text("x" * 64)
    (tmp_path / "s").chmod(0o600)
    cp = tmp_path / "cp.toml"
    listens = "".join(f'{k} = "127.0.0.1:0"\n' for k in ("terminal_listen", "host_listen", "admin_listen"))
    cp.write_text(f'[cp]\nsecret_file = "s"\njournal = "{journal}"\n{listens}[[terminals]]\nname = "T1"\n')
    return cp


def test_a_file_at_the_journal_path_is_said_to_be_a_file_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "cp-journal").write_text("copied here by mistake")
    (tmp_path / "cp-journal").chmod(0o600)
    cp = cp_config(tmp_path, "cp-journal")
    for args in (["--check-config"], []):
        r = run("--config", str(cp), *args)
        assert r.returncode == 78, (args, r.stderr)
        line = f"cp.journal: {tmp_path / 'cp-journal'} is a file, not a directory: point journal at a directory"
        assert line in r.stderr, (args, r.stderr)
        assert "cannot be written" not in r.stderr, (args, r.stderr)
    assert (tmp_path / "cp-journal").read_text() == "copied here by mistake"  # (looked at only)


def test_a_journal_directory_that_is_there_passes_and_a_missing_parent_names_the_file_above(tmp_path: Path) -> None:
    (tmp_path / "cp-journal").mkdir()
    r = run("--config", str(cp_config(tmp_path, "cp-journal")), "--check-config")
    assert r.returncode == 0, r.stderr
    (tmp_path / "afile").write_text("not a directory")
    r = run("--config", str(cp_config(tmp_path, "afile/cp-journal")), "--check-config")
    assert r.returncode == 78, r.stderr
    assert f"cp.journal: {tmp_path / 'afile' / 'cp-journal'} cannot be made ({tmp_path / 'afile'} is not a directory" in r.stderr, r.stderr
