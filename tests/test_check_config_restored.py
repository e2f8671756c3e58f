"""`hsbd --check-config` on a host's machine restored from an old backup (the disaster-recovery
walk-through's step 5): a config with another secret than the pair runs with said `config OK`
and nothing more, though the start then authenticates to neither the CP nor the peer. The pair's
takeover file tells it: its header carries the tag of the secret of the pair that last wrote a
batch (hsb.takeover.pair), so a file written under another tag is a warning naming the secret
file to compare; the same tag, or a fresh file, says nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hsb.takeover.fileio import create_file
from hsb.takeover.pair import pair_tag
from hsb.takeover.records import SessionEntry
from hsb.takeover.writer import TakeoverWriter
from tests.support.procs import SECRET, host_config

pytestmark = pytest.mark.timeout(60)


def _check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)


def _batch_by(path: Path, secret: bytes) -> None:
    with TakeoverWriter(str(path), terminals=10, record_size=4096, records=64, host_name="host-b", pair_tag=pair_tag(secret)) as w:
        w.batch_write(7, [SessionEntry("T1", {"protocol": "hsb1"}, True)])


def test_a_restored_config_with_another_secret_is_warned_of_by_the_takeover_files_pair_tag(tmp_path: Path) -> None:
    dat = tmp_path / "takeover.dat"
    create_file(str(dat), 64, 4096, host="nfs-admin")
    cfg = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:2", takeover=dat, records=64)
    r = _check(cfg)  # a fresh file: anyone's
    assert r.returncode == 0 and "config OK" in r.stdout and "pair tag" not in r.stderr, (r.stdout, r.stderr)
    _batch_by(dat, SECRET + b" of before")  # the pair runs with another secret than this config's
    r = _check(cfg)
    assert r.returncode == 0 and "config OK" in r.stdout, (r.stdout, r.stderr)
    said = [line for line in r.stderr.splitlines() if "pair tag" in line]
    assert len(said) == 1, r.stderr
    assert said[0].startswith(f"config warning: takeover.path: takeover file {dat} was last written by host-b (generation 1)"), said
    assert "this host's secret_file is not the one its pair runs with (a config restored from an old backup" in said[0], said
    assert "compare the secret file's sha256sum on the three machines" in said[0], said
    dat.unlink()  # the file made again (both hosts stopped) and written under this config's secret: nothing said
    create_file(str(dat), 64, 4096, host="nfs-admin")
    _batch_by(dat, SECRET)
    r = _check(cfg)
    assert r.returncode == 0 and "pair tag" not in r.stderr, r.stderr
