"""hsbctl's operator-facing errors of what it is given and of the daemons it reaches: a ctl config
it cannot use (unreadable, not text, values of the wrong type) is one line and exit 3
(docs/operations.md §17); `hsbctl file` never suggests recreating (with --force) a file that is
not a takeover file at all; a number or sandbox it cannot use is one line; a daemon that trickles,
waits or shows a certificate naming another is said so. (promote, switchover, stop and status
--watch against the pair: tests/test_ctl_errors_requests.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather
from hsb.ctl import main as main_mod
from tests.support.cli import invoke, one_line_error

pytestmark = pytest.mark.timeout(60)


# -- the ctl config ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "fragments"),
    [
        ("hosts = [7103]\n", ("hosts must be a list of", "HOST:PORT", "7103")),
        ('hosts = "127.0.0.1:7103"\n', ("hosts must be a list of", "'127.0.0.1:7103'")),
        ('hosts = ["127.0.0.1:7103"]\nsecret_file = 5\n', ("secret_file must be a path string", 'secret_file = "secret"')),
        ('hosts = ["127.0.0.1:7103"]\ntls = {ca_file = 1, cert_file = "c.pem", key_file = "c.key"}\n', ("tls.ca_file must be a path string",)),
        ("cp = 7002\n", ("cp must be a", "HOST:PORT", "7002")),
        ('cp = ["127.0.0.1:7002", 7002]\n', ("cp must be a",)),
    ],
)
def test_a_ctl_config_value_of_the_wrong_type_is_a_one_line_error(tmp_path: Path, secret: Path, toml: str, fragments: tuple[str, ...]) -> None:
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(toml + ("" if "secret_file" in toml else f'secret_file = "{secret}"\n'))
    one_line_error(*invoke("--config", str(cfg), "status"), 3, f"ctl config {cfg}:", *fragments)


def test_a_ctl_config_that_is_not_text_is_a_one_line_error(tmp_path: Path) -> None:
    binary = tmp_path / "ls"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    one_line_error(*invoke("--config", str(binary), "status"), 3, f"ctl config {binary} is not a text (UTF-8) file", "--config")


def test_an_unreadable_ctl_config_is_a_one_line_error(tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(f'hosts = ["127.0.0.1:7103"]\nsecret_file = "{secret}"\n')
    real = Path.read_text

    def read_text(self: Path, *a: Any, **kw: Any) -> str:
        if self == cfg:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", read_text)  # as root, no mode stops a read
    one_line_error(*invoke("--config", str(cfg), "status"), 3, f"cannot read ctl config {cfg}: permission denied", "--config")


def test_the_default_ctl_config_a_directory_or_unreadable_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HSB_CTL_CONFIG", "HSBCTL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "ctl.toml"
    folder.mkdir()
    monkeypatch.setattr(main_mod, "DEFAULT_CONFIG", str(folder))
    one_line_error(*invoke("status"), 3, f"ctl config {folder} is a directory")
    # /etc/hsb readable by root only: the file cannot even be looked at
    hidden = str(tmp_path / "etc-hsb" / "ctl.toml")
    real = os.stat

    def stat(path: Any, *a: Any, **kw: Any) -> os.stat_result:
        if os.fspath(path) == hidden:
            raise PermissionError(13, "Permission denied", hidden)
        return real(path, *a, **kw)

    monkeypatch.setattr(main_mod, "DEFAULT_CONFIG", hidden)
    real_read = Path.read_text

    def read_text(self: Path, *a: Any, **kw: Any) -> str:
        if str(self) == hidden:
            raise PermissionError(13, "Permission denied", hidden)
        return real_read(self, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(Path, "read_text", read_text)
    one_line_error(*invoke("status"), 3, f"cannot read ctl config {hidden}: permission denied")


def test_a_ctl_config_or_secret_file_that_is_a_directory_is_one_line_and_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsbctl -c /tmp status`, `--secret-file /tmp`, `HSB_CTL_CONFIG=/tmp`: click's own check of
    the path (a file, not a folder) ended them with its three-line usage error and exit 2, which a
    monitor reads as CRITICAL; a bad ctl config is UNKNOWN (3, docs/operations.md §17)."""
    for var in ("HSB_CTL_CONFIG", "HSBCTL_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    one_line_error(*invoke("--config", str(tmp_path), "status"), 3, f"ctl config {tmp_path} is a directory", "--config")
    hosts = ("--host", "127.0.0.1:1", "--host", "127.0.0.1:2")
    one_line_error(*invoke(*hosts, "--secret-file", str(tmp_path), "status"), 3, f"secret file {tmp_path} is a directory")
    monkeypatch.setenv("HSB_CTL_CONFIG", str(tmp_path))
    one_line_error(*invoke("status"), 3, f"ctl config {tmp_path} is a directory", "$HSB_CTL_CONFIG")


def test_a_usage_error_of_status_is_unknown(secret: Path) -> None:
    """`hsbctl status --jsno` (a monitoring check run with a typo) exited 2, CRITICAL; a check's
    usage error is UNKNOWN (3), as monitoring plugins have it. Other commands keep click's 2."""
    hosts = ("--host", "127.0.0.1:1", "--host", "127.0.0.1:2", "--secret-file", str(secret))
    code, out, err = invoke(*hosts, "status", "--jsno")
    assert code == 3 and "No such option '--jsno'" in err and "Traceback" not in out + err, (code, out, err)
    code, out, err = invoke(*hosts, "history", "--jsno")
    assert code == 2 and "No such option '--jsno'" in err, (code, out, err)


# -- hsbctl file: hints that never destroy what the path wrongly names --------------------


def test_a_file_that_is_not_a_takeover_file_gets_no_hint_to_overwrite_it(tmp_path: Path) -> None:
    program = tmp_path / "ls"
    program.write_bytes(b"\x7fELF" + bytes(8188))
    line = one_line_error(*invoke("file", "inspect", str(program)), 1, "not an hsb takeover file", "bad magic", "check the path")
    assert "--force" not in line and "file create" not in line
    small = tmp_path / "hostname"
    small.write_text("db1\n")
    line = one_line_error(*invoke("file", "inspect", str(small)), 1, "not an hsb takeover file", "check the path")
    assert "--force" not in line and "file create" not in line
    # a takeover file that is damaged (the right magic) still gets the way to recreate it
    tk = tmp_path / "tk"
    assert invoke("file", "create", str(tk), "--records", "40")[0] == 0
    tk.write_bytes(tk.read_bytes()[:100])
    one_line_error(*invoke("file", "inspect", str(tk)), 1, "too short", f"hsbctl file create {tk} --records N --force")


def test_a_record_size_that_is_no_multiple_of_512_says_which_to_choose(tmp_path: Path) -> None:
    new = tmp_path / "tk"
    for extra in ((), ("--terminals", "100")):
        one_line_error(
            *invoke("file", "create", str(new), "--records", "100", "--record-size", "1000", *extra), 1, "multiple of 512", "--record-size 4096"
        )
    assert not new.exists()


def test_an_empty_host_address_is_a_one_line_error(secret: Path) -> None:
    """A placeholder left in the ctl config (`hosts = ["…", ""]`) or `--host ""` was a traceback."""
    one_line_error(*invoke("--cp", "127.0.0.1:1", "--host", "", "--secret-file", str(secret), "status"), 3, "'' is not HOST:PORT", "admin_listen")


def test_a_tls_handshake_that_fails_says_what_to_check() -> None:
    import ssl

    why = gather.why_not(ssl.SSLError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"), 2.0)
    assert why.startswith("TLS handshake failed") and "ca_file" in why, why


def test_file_create_force_through_a_link_replaces_the_file_it_names(tmp_path: Path) -> None:
    """A takeover file reached through a symbolic link (to the shared storage, say): --force
    replaced the link with a local file, and the hosts no longer shared it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    real = shared / "takeover.dat"
    link = tmp_path / "takeover.dat"
    assert invoke("file", "create", str(real), "--records", "64")[0] == 0
    link.symlink_to(real)
    code, out, err = invoke("file", "create", str(link), "--records", "128", "--force")
    assert code == 0, (out, err)
    assert link.is_symlink() and os.path.realpath(link) == str(real)
    assert real.stat().st_size == 128 * 4096


def test_file_create_through_a_link_to_nothing_asks_whether_the_shared_storage_is_mounted(tmp_path: Path) -> None:
    """A link to the shared storage, whose mount point is there but not mounted: the file would be
    made on this machine's disk, under the mount point, and each host would use a file of its own.
    Refused, with the question; --force creates it where the link points."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()  # the mount point, nothing mounted on it
    link = tmp_path / "takeover.dat"
    link.symlink_to(mnt / "takeover.dat")
    code, out, err = invoke("file", "create", str(link), "--records", "64")
    one_line_error(code, out, err, 1, f"{link} is a link to {mnt / 'takeover.dat'}, which does not exist", "mounted", "--force")
    assert not (mnt / "takeover.dat").exists() and link.is_symlink()
    code, out, err = invoke("file", "create", str(link), "--records", "64", "--force")
    assert code == 0, (out, err)
    assert (mnt / "takeover.dat").stat().st_size == 64 * 4096 and link.is_symlink()


def test_file_create_through_a_link_to_mounted_storage_needs_no_force(tmp_path: Path) -> None:
    """The first file made through a link, its target on other storage (mounted): no --force
    needed. /dev/shm (tmpfs) stands for the mounted export."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem of its own (tmpfs) to stand for mounted storage")
    shared = Path(tempfile.mkdtemp(dir=shm))
    try:
        link = tmp_path / "takeover.dat"
        link.symlink_to(shared / "takeover.dat")
        code, out, err = invoke("file", "create", str(link), "--records", "64")
        assert code == 0, (out, err)
        assert (shared / "takeover.dat").stat().st_size == 64 * 4096 and link.is_symlink()
    finally:
        shutil.rmtree(shared)


def test_a_recorded_pid_another_program_has_now_does_not_block_a_sandbox_restart(tmp_path: Path) -> None:
    """After a reboot the sandbox's recorded pid may be another program's: `down` leaves it
    alone, and `start-host`/`start-cp` took it for the daemon still running ("stop it first"), so
    the operator was stuck. A pid whose command line is a daemon's on a config in the sandbox is ours."""
    import subprocess
    import sys
    import time

    from hsb.ctl import sandbox

    other = subprocess.Popen(["sleep", "30"])
    cfg = tmp_path / "cp.toml"
    cfg.write_text("")
    # (a stand-in whose command line is a sandbox daemon's: -m hsb.cp --config D/cp.toml)
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "-m", "hsb.cp", "--config", str(cfg)])
    try:
        deadline = time.monotonic() + 10
        while not Path(f"/proc/{ours.pid}/cmdline").read_bytes().endswith(b"cp.toml\0"):  # (until its exec)
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert sandbox._stranger(tmp_path, other.pid)
        assert not sandbox._stranger(tmp_path, ours.pid)
    finally:
        for p in (other, ours):
            p.kill()
            p.wait()
    assert not sandbox._stranger(tmp_path, other.pid)  # gone: nobody's
    kthreads = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _kernel_thread(p)]
    if kthreads:  # (a container of its own pid namespace may show none)
        assert sandbox._stranger(tmp_path, kthreads[0])  # no command line, and nobody's daemon


def _kernel_thread(p: Path) -> bool:
    from hsb import procstat

    f = procstat.fields(int(p.name))
    return f is not None and bool(int(f[procstat.FLAGS]) & procstat.PF_KTHREAD)


async def test_a_daemon_that_trickles_bytes_is_cut_off_by_one_deadline() -> None:
    """Each step of an exchange (connect, the challenge, the answer) had its own deadline, so a
    port that sends a byte now and then, never a whole frame, held hsbctl for as long as it
    liked; the whole exchange has one deadline (four times the step's)."""
    import asyncio
    import time

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"\x00\x00\x10\x00")  # a frame of 4,096 bytes announced ...
            for _ in range(200):  # ... and one byte of it every 0.2 s
                await asyncio.sleep(0.2)
                writer.write(b"\x81")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        ans = await gather.ask(f"127.0.0.1:{port}", b"s" * 32, {"t": "status"}, timeout=0.5)
        took = time.monotonic() - t0
    finally:
        srv.close()
    assert ans.get("reachable") is False, ans
    assert took < 5.0, took


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["promote", "host-b", "--timeout", "nan"], "'nan': give seconds above 0"),  # a wait that never ended
        (["stop", "host-a", "--timeout", "-1"], "'-1': give seconds above 0"),  # sent the stop, then "did not stop within -1 s"
        (["sandbox", "up", "--dir", "/tmp/x", "--timeout", "0"], "'0': give seconds above 0"),
        (["sandbox", "up", "--dir", "/tmp/x", "--logon-ms", "-5"], "'-5': give milliseconds from 0"),
        (["sandbox", "up", "--dir", "/tmp/x", "--logon-ms", "lots"], "'lots' is not a number of milliseconds"),
    ],
)
def test_numbers_that_make_no_sense_are_usage_errors_and_nothing_is_sent(args: list[str], fragment: str, tmp_path: Path) -> None:
    args = [str(tmp_path / "sb") if a == "/tmp/x" else a for a in args]  # (a sandbox, were it accepted, goes there)
    code, out, err = invoke("--cp", "127.0.0.1:1", *args)
    assert code == 2 and fragment in err and "Traceback" not in out + err, (code, out, err)


def test_a_sandbox_that_cannot_be_made_for_want_of_room_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover file of a million terminals on a small disk: its OSError was a traceback."""
    from hsb.ctl import sandbox as sb

    def full(*a: Any, **kw: Any) -> Any:
        raise OSError(28, "No space left on device", str(tmp_path / "sb" / "takeover.dat"))

    monkeypatch.setattr(sb, "up", full)
    one_line_error(*invoke("sandbox", "up", "--dir", str(tmp_path / "sb")), 1, "No space left on device", "takeover.dat", "free space")


# -- what hsbctl says of a CP that does not serve, and of a certificate that names another --------


def hsbctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.ctl", *args], capture_output=True, text=True, timeout=60)


def test_a_single_cp_address_whose_cp_waits_is_named_with_its_state(tmp_path: Path) -> None:
    """`hsbctl status` given one CP address whose hsbcpd waits to take over (`takeover =
    "on_wake"`): the error read `no CP serves: ` and nothing after it (only the two-machine list
    was named). It names that CP, its address and its state. pause and history, answered
    `cp_waiting`, said `cannot ask the CP`: they say it answered with that error, and the fix."""
    import json
    import tomllib

    from tests.support.procs import _run_cp, cp_config

    d = tmp_path / "cp"
    d.mkdir()
    # its address is on no interface here: it waits for good
    cfg = cp_config(d, terminals=2, takeover="on_wake", terminal_listen="192.0.2.1:7000", name="cp-a")
    cp = _run_cp(d, cfg, None, wait=False)
    try:
        cp.wait_event("cp_waiting", timeout=15)
        admin = str(tomllib.loads(cfg.read_text())["cp"]["admin_listen"])
        r = hsbctl("--cp", admin, "--secret-file", str(d / "secret"), "status", "--json")
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
        err = json.loads(r.stdout)["cp"]["error"]
        assert err.startswith(f"no CP serves: cp-a at {admin} waiting"), err
        assert "keepalived" in err and "both CP machines" in err, err
        # pause and history: it answers `cp_waiting`; said as its answer, not `cannot ask` (§17)
        for cmd in ("pause", "history"):
            r = hsbctl("--cp", admin, "--secret-file", str(d / "secret"), cmd)
            assert r.returncode == 3 and r.stderr.count("\n") == 1, (cmd, r.returncode, r.stdout, r.stderr)
            assert r.stderr.startswith(f"error: the CP at {admin} answered with an error (cp_waiting: cp-a is waiting to take over"), r.stderr
            assert "ask the serving CP ('hsbctl status'" in r.stderr and "cannot ask" not in r.stderr, r.stderr
    finally:
        cp.stop()


def test_a_daemon_certificate_that_does_not_name_it_is_said_so_not_blamed_on_the_address(tmp_path: Path) -> None:
    """The CP's certificate names another ('other', not its name 'cp'): hsbctl's own check
    refuses it, and said `it closed the connection (…); is this its admin_listen address?`. It
    says the certificate does not name the daemon, and what it names."""
    import json
    import tomllib

    from hsb.ctl.tls_cmd import make_ca_and_certs
    from tests.support.procs import start_cp

    tls = tmp_path / "tls"
    make_ca_and_certs(tls, ["cp", "other", "hsbctl"])
    files = {"ca_file": str(tls / "ca.pem"), "cert_file": str(tls / "other.pem"), "key_file": str(tls / "other.key")}
    cp = start_cp(tmp_path / "cp", terminals=2, tls={**files, "terminals": False})
    try:
        admin = str(tomllib.loads((tmp_path / "cp" / "cp.toml").read_text())["cp"]["admin_listen"])
        ctl = tmp_path / "ctl.toml"
        ctl.write_text(
            f'cp = "{admin}"\nsecret_file = "{tmp_path / "cp" / "secret"}"\n'
            f'tls = {{ ca_file = "{tls / "ca.pem"}", cert_file = "{tls / "hsbctl.pem"}", key_file = "{tls / "hsbctl.key"}" }}\n'
        )
        r = hsbctl("--config", str(ctl), "status", "--json")
        assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
        err = json.loads(r.stdout)["cp"]["error"]
        assert err.startswith("the daemon's TLS certificate does not name it: the daemon says it is 'cp', its certificate names other"), err
        assert "closed the connection" not in err and "admin_listen" not in err, err
    finally:
        cp.stop()


def test_hsbctls_own_certificate_refused_for_its_name_is_said_so() -> None:
    """The other way round: the daemon refuses hsbctl's certificate, which names another (its
    error frame, tls_name_mismatch): said as that, not as a wrong address."""
    from hsb.wire.client import LinkClosed

    told = {"t": "error", "code": "tls_name_mismatch", "msg": "the link claims to be 'hsbctl' but its certificate is for ['host-a']"}
    why = gather.why_not(LinkClosed(f"tls_name_mismatch: {told['msg']}", told), 2.0)
    assert why.startswith("the daemon refused hsbctl's TLS certificate: the link claims to be 'hsbctl'"), why
    assert "tls.cert_file" in why and "admin_listen" not in why, why


# -- the ctl config: every problem at once, each one line with its fix -------------------------


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('secret_file = "s2\\u0000x"\n', "secret_file"),
        ('secret_file = "SECRET"\ntls = {ca_file = "ca\\u0000.pem", cert_file = "c.pem", key_file = "c.key"}\n', "tls.ca_file"),
    ],
)
def test_a_nul_character_in_a_ctl_config_path_is_a_one_line_error(tmp_path: Path, secret: Path, toml: str, key: str) -> None:
    """TOML allows the escape: the path reached stat()/open(), whose ValueError ('embedded null
    byte') was a traceback, exit 1."""
    cfg = tmp_path / "c7.toml"
    cfg.write_text('hosts = ["127.0.0.1:7103"]\n' + toml.replace("SECRET", str(secret)))
    one_line_error(*invoke("-c", str(cfg), "status"), 3, f"ctl config {cfg}: {key}", "contains a NUL character", "give a plain file path")


def test_a_nul_character_in_a_secret_or_tls_path_is_said_by_the_checks_themselves(tmp_path: Path) -> None:
    """The secret file's and the TLS files' own checks (the daemons' too) say it, not ValueError."""
    from hsb.wire.auth import SecretFileError, load_secret
    from hsb.wire.tls import TLS, TLSError, TLSFiles, check_files

    with pytest.raises(SecretFileError, match="contains a NUL character"):
        load_secret(str(tmp_path / "s\0x"))
    files = TLSFiles(str(tmp_path / "ca\0.pem"), str(tmp_path / "c.pem"), str(tmp_path / "c.key"))
    assert any("tls.ca_file" in e and "NUL character" in e for e in check_files(files)), check_files(files)
    with pytest.raises(TLSError, match="NUL character"):
        TLS(files)


def test_every_ctl_config_problem_is_said_at_once(tmp_path: Path) -> None:
    """A cp of the wrong type, a hosts of the wrong type and no secret: three lines, one run (the
    first alone was said, and the next run said the next)."""
    cfg = tmp_path / "ctl.toml"
    cfg.write_text('cp = 5\nhosts = "127.0.0.1:7103"\n')
    code, out, err = invoke("-c", str(cfg), "status")
    assert code == 3 and "Traceback" not in out + err, (code, out, err)
    lines = err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), err
    assert len(lines) == 3, err
    assert f"ctl config {cfg}: cp must be a" in lines[0] and "HOST:PORT" in lines[0], lines
    assert f"ctl config {cfg}: hosts must be a list of" in lines[1] and 'hosts = ["10.0.0.1:7103"]' in lines[1], lines
    assert "no secret file" in lines[2] and "set secret_file in the ctl config" in lines[2], lines
    # (the daemons named badly: "no daemons named" would mislead, the lines above say what to fix)
    assert "no daemons named" not in err
    # a secret file that is not there, beside an unknown key and a bad address: all three
    cfg.write_text(f'hosts = ["127.0.0.1"]\nsecret_file = "{tmp_path / "nope"}"\nhots = 1\n')
    code, out, err = invoke("-c", str(cfg), "status")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 3 and all(line.startswith("error: ") for line in lines), err
    for want in ("unknown key 'hots'", "'127.0.0.1' is not HOST:PORT", "secret file"):
        assert any(want in line for line in lines), (want, err)


def test_an_unknown_ctl_config_key_names_the_known_ones(tmp_path: Path, secret: Path) -> None:
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(f'hosts = ["127.0.0.1:7103"]\nsecret_file = "{secret}"\ntypo = 1\n')
    line = one_line_error(
        *invoke("-c", str(cfg), "status"), 3, f"ctl config {cfg}: unknown key 'typo'", "the known keys are cp, hosts, secret_file, tls"
    )
    assert "did you mean" not in line
    cfg.write_text(f'hosts = ["127.0.0.1:7103"]\nsecret_file = "{secret}"\nsecret = "s"\n')
    one_line_error(*invoke("-c", str(cfg), "status"), 3, "unknown key 'secret'", "did you mean 'secret_file'?", "the known keys are")
