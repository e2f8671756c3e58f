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


def test_a_torn_header_is_said_torn_with_the_fix_its_size_gives(tmp_path: Path) -> None:
    """The config's records too few for the terminals and the file's header torn by a crash (a
    power loss while it was rewritten): the line said "its header cannot be read" and "set records
    = 403 once the file there has that many", as for a file it could not read at all, though the
    file held them, and the start takes such a header once the config's records say them. It says
    the header is torn now, and the fix by the records the file's size holds."""
    path = tmp_path / "big.dat"
    create_file(str(path), 403, 4096)
    spoil(path, "torn")
    line = size_line(config(tmp_path, 64))
    assert "the config says records = 64" in line and "N must be at least 403" in line, line
    assert f"the header (record 0) of takeover file {path} is corrupt, most likely torn by a crash while it was rewritten" in line, line
    assert "holds 403 records of 4096 bytes, enough: set records = 403 in the config" in line, line
    assert "rewrites it at its next batch write" in line and "cannot be read" not in line and "--force" not in line, line
    # the fix it names: the check passes, with its warning of the torn header the start takes
    r = subprocess.run(
        [sys.executable, "-m", "hsb.host", "--config", str(config(tmp_path, 403)), "--check-config"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0 and "config OK" in r.stdout and "the start takes it" in r.stderr, r.stderr
    # a torn header on a file too small for the terminals: recreate it, or fewer terminals
    create_file(str(path), 300, 4096, force=True)
    spoil(path, "torn")
    line = size_line(config(tmp_path, 64))
    assert "is corrupt, most likely torn by a crash" in line and "holds 300 records of 4096 bytes, too few" in line, line
    assert f"`hsbctl file create {path} --records 403 --record-size 4096 --force`" in line and "set records = 403" in line, line
    assert "fewer terminals (at most 1485) and set records = 300" in line and "cannot be read" not in line, line


def geometry_config(d: Path, records: int, record_size: int = 4096) -> Path:
    """A config for a start that stops at the takeover file's check: nothing to listen on for long
    (ports 0), and a CP nobody listens on (it is asked only after the check)."""
    (d / "secret").write_text("x" * 64)
    (d / "secret").chmod(0o600)
    cfg = d / "host.toml"
    cfg.write_text(
        '[host]\nname = "host-a"\npeer_listen = "127.0.0.1:0"\npeer = "127.0.0.1:9"\ncp = "127.0.0.1:9"\n'
        'admin_listen = "127.0.0.1:0"\nsecret_file = "secret"\n'
        f'[takeover]\npath = "big.dat"\nrecords = {records}\nrecord_size = {record_size}\n[[terminal_groups]]\nprefix = "T"\ncount = 2000\n'
    )
    return cfg


def start_says(cfg: Path) -> tuple[int, str]:
    """The start's exit status and the one line it gives (`error: …` or `config error: …`)."""
    r = subprocess.run([sys.executable, "-m", "hsb.host", "--role", "standby", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    said = [line for line in r.stderr.splitlines() if line.startswith(("error: ", "config error: "))]
    assert len(said) == 1, r.stderr
    return r.returncode, said[0]


def geometry_line(cfg: Path) -> str:
    """The start's one line for a file whose geometry is not the config's: a config error, exit 78
    (not restarted by the unit: every start would find the same)."""
    code, line = start_says(cfg)
    assert code == 78 and line.startswith("config error: "), line
    return line.removeprefix("config error: ")


def test_the_starts_geometry_line_names_the_files_geometry_and_the_fix_that_fits(tmp_path: Path) -> None:
    """The start's line for a file whose header is not the config's said `set records = 64` for a
    file of 64 records too few for the terminals (the next start failed its size check), named
    one key when both differed, and recreated the file without its record size. It names the
    file's geometry now, and the fix that fits it and the terminals: a config error, exit 78."""
    path = tmp_path / "big.dat"
    # the file too small for the terminals: recreate it at the config's geometry, not set records = 64
    create_file(str(path), 64, 4096)
    line = geometry_line(geometry_config(tmp_path, 403))
    assert line.startswith(f"takeover file {path} has 64 records of 4096 bytes but the config says records = 403;"), line
    assert f"hsbctl file create {path} --records 403 --record-size 4096 --force`" in line and "N must be at least 403" in line, line
    assert "set records = 64" not in line, line
    # a file that holds the terminals: set the config's keys to it (or recreate it at the config's)
    create_file(str(path), 403, 4096, force=True)
    line = geometry_line(geometry_config(tmp_path, 500))
    assert "has 403 records of 4096 bytes but the config says records = 500; set records = 403 in the config" in line, line
    assert f"hsbctl file create {path} --records 500 --record-size 4096 --force`" in line, line
    # both keys differ: both named
    create_file(str(path), 300, 8192, force=True)
    line = geometry_line(geometry_config(tmp_path, 403))
    assert "has 300 records of 8192 bytes but the config says records = 403 and record_size = 4096" in line, line
    assert "set records = 300 and record_size = 8192 in the config" in line, line


def test_the_check_compares_the_files_geometry_and_says_the_starts_line(tmp_path: Path) -> None:
    """--check-config went by the config alone: records enough for the terminals passed, whatever
    the file at takeover.path held, and the start then stopped on its header. The check reads the
    header (read-only, within storage_timeout) and says the start's line, exit 78. And the start
    exits 78 with it, as the check: it exited 1, which the unit restarts (a loop until its start
    limit) though only the operator can fix the config or the file."""
    path = tmp_path / "big.dat"
    for records, record_size, config_records in ((64, 4096, 403), (403, 4096, 500), (300, 8192, 403)):
        create_file(str(path), records, record_size, force=True)
        cfg = geometry_config(tmp_path, config_records)
        r = subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 78 and r.stderr.count("\n") == 1, r.stderr
        code, line = start_says(cfg)
        assert (r.returncode, r.stderr) == (code, f"{line}\n"), (r.stderr, line)
    # the file's geometry: config OK
    r = subprocess.run(
        [sys.executable, "-m", "hsb.host", "--config", str(geometry_config(tmp_path, 300, 8192)), "--check-config"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr


def spoil(path: Path, how: str) -> None:
    """The file at `path` (403 records of 4096 bytes) made into one the start refuses, or (`torn`)
    one whose header a crash tore, which the start takes (it goes by the config's geometry)."""
    if how == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(402 * 4096)
        return
    if how == "corrupt_short":  # a torn header on a file shorter than the config's records: refused
        with open(path, "r+b") as fh:
            fh.truncate(300 * 4096)
    at, byte = {"magic": (0, b"X"), "version": (5, b"\x09"), "corrupt_short": (300, None), "torn": (300, None)}[how]
    with open(path, "r+b") as fh:
        fh.seek(at)
        old = fh.read(1)
        fh.seek(at)
        fh.write(byte if byte is not None else bytes([old[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["magic", "version", "truncated", "corrupt_short"])
def test_the_check_says_the_starts_line_for_a_file_the_start_refuses(tmp_path: Path, how: str) -> None:
    """--check-config read the header for its geometry only: a file with a bad magic, another
    format version, cut short or with a corrupt header passed the check, and the start then
    stopped on it. The check runs the start's file checks (read-only, within storage_timeout)
    and says the start's line, exit 78. And the start exits 78 with it, as the check: it exited
    1, which the unit restarts, though every start finds the same file."""
    path = tmp_path / "big.dat"
    create_file(str(path), 403, 4096)
    spoil(path, how)
    cfg = geometry_config(tmp_path, 403)
    r = subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and r.stderr.startswith("config error: ") and r.stderr.count("\n") == 1, r.stderr
    code, line = start_says(cfg)
    assert (r.returncode, r.stderr) == (code, f"{line}\n"), (r.stderr, line)


def test_the_check_passes_a_torn_header_the_start_takes_with_a_warning(tmp_path: Path) -> None:
    """A header torn by a crash, on a file of the config's size, is no reason to refuse a start
    (its active rewrites it): nor is it the check's. But the check says it, a warning naming the
    file and what the start does with it: it passed in silence, while the start logs it."""
    path = tmp_path / "big.dat"
    create_file(str(path), 403, 4096)
    spoil(path, "torn")
    cfg = geometry_config(tmp_path, 403)
    r = subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "config OK" in r.stdout, r.stderr
    warned = [line for line in r.stderr.splitlines() if line.startswith("config warning: ")]
    assert len(warned) == 1 and "config error" not in r.stderr, r.stderr
    assert f"takeover file {path}" in warned[0] and "the start takes it" in warned[0], warned
    assert "rewrites it at its next batch write" in warned[0] and "records = 403 and record_size = 4096" in warned[0], warned
    # a sound header: no warning
    create_file(str(path), 403, 4096, force=True)
    r = subprocess.run([sys.executable, "-m", "hsb.host", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "config OK" in r.stdout and "config warning" not in r.stderr, r.stderr


def test_no_file_yet_is_said_with_the_create_command_at_the_configs_geometry(tmp_path: Path) -> None:
    """A config that passes the size check and names no file yet: --check-config's warning and
    the start's error give the command with the config's records and record size, not `--records
    N` (a count the config does not say fails every batch write after it)."""
    from hsb.host.main import takeover_missing
    from hsb.takeover import check_file
    from hsb.takeover.errors import FileMissing

    cfg = load(config(tmp_path, 403, ""), HostConfig)
    fix = f"create it with `hsbctl file create {tmp_path / 'big.dat'} --records 403 --record-size 4096`"
    assert takeover_missing(cfg) == [f"takeover.path: takeover file {tmp_path / 'big.dat'} does not exist; {fix} before this host starts"]
    with pytest.raises(FileMissing) as ei:
        check_file(str(tmp_path / "big.dat"), 4096, 403)  # (the start's check: TakeoverStore.check)
    assert str(ei.value).endswith(fix) and "--records N" not in str(ei.value), ei.value
