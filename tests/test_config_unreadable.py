"""A config file the daemon's user may not read (mode 600 owned by root, the pattern of the
secret's install; or a folder on its way it may not search): hsbcpd and hsbd say it as a config
error, exit 78 (EX_CONFIG) with the user and the fix, from --check-config and from the start, as
for a missing config, not as a usage error (2: click's own readability check, "Path … is not
readable", which the units' comments and docs/operations.md §17 call a wrong command line).

In-process (click's CliRunner, the refusal stood in for: the suite may run as root, who reads
every file) and, where this runs as root with setpriv, for real: the daemon's process without
CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root is refused a mode-000 file."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pytest import MonkeyPatch

from hsb.config import ConfigError, load
from hsb.cp.config import CPConfig
from hsb.cp.main import main as cp_main
from hsb.host.main import main as host_main

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def _refuse(monkeypatch: MonkeyPatch, path: Path) -> None:
    """Reading `path` is refused as for a user without the right (os.access, which click asks,
    and the read itself); every other file as it is."""
    real_access = os.access
    real_read = Path.read_bytes

    def access(p: str | os.PathLike[str], mode: int, *args: Any, **kwargs: Any) -> bool:
        if os.fspath(p) == str(path) and mode & os.R_OK:
            return False
        return real_access(p, mode, *args, **kwargs)

    def read_bytes(self: Path) -> bytes:
        if str(self) == str(path):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read(self)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Path, "read_bytes", read_bytes)


def _unreadable_line(out: str, path: Path) -> None:
    assert f"config error: {path}: cannot read: Permission denied (this process runs as user " in out, out
    assert f"'chgrp hsb {path} && chmod 640 {path}'" in out, out
    assert "is not readable" not in out and "Usage:" not in out, out


@pytest.mark.parametrize("daemon", ["hsbcpd", "hsbd"])
def test_an_unreadable_config_is_a_config_error(tmp_path: Path, monkeypatch: MonkeyPatch, daemon: str) -> None:
    cfg = tmp_path / "daemon.toml"
    cfg.write_text("[cp]\n" if daemon == "hsbcpd" else "[host]\n")
    _refuse(monkeypatch, cfg)
    command = cp_main if daemon == "hsbcpd" else host_main
    args = ["--config", str(cfg), "--check-config"] + ([] if daemon == "hsbcpd" else ["--role", "active"])
    checked = CliRunner().invoke(command, args)
    assert checked.exit_code == 78, checked.output
    _unreadable_line(checked.output, cfg)
    # the start says the same (it runs the checks of --check-config first)
    started = CliRunner().invoke(command, [a for a in args if a != "--check-config"])
    assert started.exit_code == 78, started.output
    _unreadable_line(started.output, cfg)


def test_load_names_the_user_and_the_fix(tmp_path: Path, monkeypatch: MonkeyPatch) -> None:
    cfg = tmp_path / "cp.toml"
    cfg.write_text("[cp]\n")
    _refuse(monkeypatch, cfg)
    with pytest.raises(ConfigError) as err:
        load(cfg, CPConfig)
    (line,) = err.value.lines()
    _unreadable_line(f"config error: {line}", cfg)
    # another error of the read is said as before, without a fix about permissions
    monkeypatch.undo()
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "dir.toml", CPConfig)
    assert err.value.lines() == [f"{tmp_path / 'dir.toml'}: is a directory, not a config file; pass the TOML file with --config"]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv (util-linux)")
@pytest.mark.parametrize("module", ["hsb.cp", "hsb.host"])
def test_an_unreadable_config_for_real(tmp_path: Path, module: str) -> None:
    cfg = tmp_path / "daemon.toml"
    cfg.write_text("[cp]\n")
    cfg.chmod(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    run = subprocess.run(
        [*drop, sys.executable, "-m", module, "--config", str(cfg), "--check-config"], env=env, capture_output=True, text=True, timeout=30
    )
    assert run.returncode == 78, run.stderr
    _unreadable_line(run.stderr, cfg)
    assert "this process runs as user root" in run.stderr
