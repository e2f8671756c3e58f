"""The size check of a host's config (N >= 3·B+1 for its terminals) names the fix that fits the
file at takeover.path: its header is the truth. The config's records too few and the file big
enough: set records in the config (no recreate); the file too small: recreate it (--force) or
fewer terminals; no file yet: create it. (It presented the config's value as the file's, and
always said to recreate the file with --force, though it had the records needed already.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hsb.config import ConfigError, load
from hsb.host.config import HostConfig
from hsb.takeover import create_file

pytestmark = pytest.mark.timeout(60)


def config(d: Path, records: int, extra: str = "") -> Path:
    (d / "secret").write_text("x" * 64)
    (d / "secret").chmod(0o600)
    cfg = d / "host.toml"
    cfg.write_text(
        '[host]\nname = "host-a"\npeer_listen = "127.0.0.1:7111"\npeer = "127.0.0.1:7121"\ncp = "127.0.0.1:7001"\n'
        f'admin_listen = "127.0.0.1:7112"\nsecret_file = "secret"\n{extra}'
        f'[takeover]\npath = "big.dat"\nrecords = {records}\n[[terminal_groups]]\nprefix = "T"\ncount = 2000\n'
    )
    return cfg


def size_line(cfg: Path) -> str:
    with pytest.raises(ConfigError) as err:
        load(cfg, HostConfig)
    lines = [e for e in err.value.errors if "takeover.records" in e]
    assert len(lines) == 1, err.value.errors
    return lines[0]


def test_a_file_big_enough_and_the_config_saying_fewer_records_names_the_config_key(tmp_path: Path) -> None:
    create_file(str(tmp_path / "big.dat"), 403, 4096)
    line = size_line(config(tmp_path, 64))
    assert "records = 403" in line and "has 403 records" in line and "the config says records = 64" in line, line
    assert "--force" not in line and "hsbctl file create" not in line and "has 64 records" not in line, line
    # the same beside another key's error (the check then runs on the valid keys)
    line = size_line(config(tmp_path, 64, extra="hook_timeout = 0\n"))
    assert "records = 403" in line and "--force" not in line, line
    # hsbd --check-config says it, one line
    r = subprocess.run(
        [sys.executable, "-m", "hsb.host", "--config", str(config(tmp_path, 64)), "--check-config"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 78 and "set records = 403" in r.stderr and "--force" not in r.stderr, r.stderr


def test_a_file_too_small_still_names_the_recreate_command(tmp_path: Path) -> None:
    create_file(str(tmp_path / "big.dat"), 64, 4096)
    line = size_line(config(tmp_path, 64))
    path = tmp_path / "big.dat"
    assert f"takeover file {path} has 64 records" in line and "N must be at least 403" in line, line
    assert f"hsbctl file create {path} --records 403 --record-size 4096 --force" in line and "records = 403" in line, line
    assert "fewer terminals" in line, line


def test_no_file_yet_names_the_create_command_without_force(tmp_path: Path) -> None:
    line = size_line(config(tmp_path, 64))
    path = tmp_path / "big.dat"
    assert "the config says records = 64" in line and "N must be at least 403" in line, line
    assert f"hsbctl file create {path} --records 403 --record-size 4096`" in line and "records = 403" in line, line
    assert "--force" not in line and "has 64 records" not in line, line
