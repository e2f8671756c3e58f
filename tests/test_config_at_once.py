"""--check-config says every error of a config in one run: a key that fails its schema no longer
hides the rules across the other keys of its section, the terminal table (a name twice), the TLS
files or the service (each needed a run of its own, after the first error was fixed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)


def check(mod: str, cfg: Path) -> list[str]:
    r = subprocess.run([sys.executable, "-m", mod, "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert all(line.startswith("config error: ") for line in lines), r.stderr
    return lines


def said(lines: list[str], *wants: str) -> None:
    text = "\n".join(lines)
    for want in wants:
        assert text.count(want) == 1, (want, text)


def secret(d: Path) -> None:
    (d / "secret").write_text("x" * 64)
    (d / "secret").chmod(0o600)


TERMINALS = """
[[terminals]]
name = "D"
[[terminals]]
name = "D"
[[terminals]]
name = "has space"
"""


def test_a_cp_config_with_independent_errors_says_every_one_in_one_run(tmp_path: Path) -> None:
    secret(tmp_path)
    cfg = tmp_path / "cp.toml"
    cfg.write_text(
        '[cp]\nsecret_file = "secret"\nheld_bound = 0\nhost_lease = 1.0\nhost_timeout = 0.5\n'
        'terminal_listen = "127.0.0.1:7000"\nhost_listen = "127.0.0.1:7000"\nadmin_listen = "127.0.0.1:7002"\n'
        '[tls]\nca_file = "ca.pem"\ncert_file = "cert.pem"\nkey_file = "key.pem"\nterminal_ca_file = "tca.pem"\nmin_version = "1.0"\n' + TERMINALS
    )
    lines = check("hsb.cp", cfg)
    said(
        lines,
        "cp.held_bound: Input should be greater than or equal to 1",  # a key's own error
        "tls.min_version: ",
        "terminals[2].name: terminal name must be",
        # the rules across the valid keys of [cp] and [tls], each section's in one line as before
        "cp: terminal_listen and host_listen both listen on port 7000",
        "host_lease (1 s) + margin (0.1 s) must be less than host_timeout (0.5 s)",
        "tls: terminal_ca_file is set but terminals = false",
        "(top level): terminals[1]: terminal 'D' is defined twice",  # among the valid entries
    )
    assert len(lines) == 6, lines
    # [tls] valid itself: its files are checked too, though [cp] failed
    cfg.write_text(cfg.read_text().replace('min_version = "1.0"\n', "terminals = true\n"))
    lines = check("hsb.cp", cfg)
    said(lines, "cp.held_bound", "cp: terminal_listen and host_listen", "terminal 'D' is defined twice")
    for key, name in (("ca_file", "ca.pem"), ("cert_file", "cert.pem"), ("key_file", "key.pem"), ("terminal_ca_file", "tca.pem")):
        said(lines, f"tls.{key}: {tmp_path / name} does not exist")
    assert len(lines) == 8, lines


def test_a_host_config_with_independent_errors_says_every_one_in_one_run(tmp_path: Path) -> None:
    secret(tmp_path)
    (tmp_path / "t.dat").mkdir()
    cfg = tmp_path / "host.toml"
    cfg.write_text(
        '[host]\nname = "a"\npeer = "127.0.0.1:7101"\npeer_listen = "127.0.0.1:7101"\ncp = "127.0.0.1:0"\n'
        'admin_listen = "127.0.0.1:7101"\nsecret_file = "secret"\nheartbeat_interval = 0.5\nheartbeat_timeout = 0.6\n'
        'service = "nosuch.mod:make"\nhook_timeout = 0\ntypo_key = 1\n'
        '[takeover]\npath = "t.dat"\nrecords = 2\n'
        '[tls]\nca_file = "ca.pem"\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'
        + TERMINALS
        + '[[terminals]]\nname = "E"\nattrs = { when = 2024-01-01 }\n'
    )
    lines = check("hsb.host", cfg)
    said(
        lines,
        "host.cp: '127.0.0.1:0' has port 0",  # the keys' own errors
        "host.hook_timeout: Input should be greater than or equal to 0.1",
        "host.typo_key: unknown key",
        "takeover.records: Input should be greater than or equal to 4",
        "terminals[2].name: terminal name must be",
        # the rules across the valid keys of [host], in one line as before
        "host: heartbeat_timeout (0.6s) must be greater than two heartbeat intervals (1.0s)",
        "host.peer must be the other host's peer_listen, not this host's own",
        "peer_listen and admin_listen both listen on port 7101",
        # the terminal table, of its valid entries
        "terminals[1]: terminal 'D' is defined twice",
        "terminals[3].attrs: attrs cannot be kept in the takeover file",
        # what the start checks of the files and the service
        f"tls.ca_file: {tmp_path / 'ca.pem'} does not exist",
        f"tls.cert_file: {tmp_path / 'cert.pem'} does not exist",
        f"tls.key_file: {tmp_path / 'key.pem'} does not exist",
        "host.service: service 'nosuch.mod:make': cannot import nosuch.mod",
        "takeover.path: takeover file",
    )
    assert len(lines) == 12, lines  # (one line for the rules of [host], one for the terminal table)


def test_the_cp_check_says_a_schema_error_and_what_the_start_refuses_of_this_machine_in_one_run(tmp_path: Path) -> None:
    """The machine checks of [cp] (the journal directory this user can make and write, the
    journal's I/O mode, the NFS options and ip_nonlocal_bind of two CP machines) ran only once
    the whole config loaded: fixed one batch of errors, the operator got another. Each runs now
    when the keys it needs are valid, beside the schema's errors; not on a key that failed."""
    secret(tmp_path)
    (tmp_path / "afile").write_text("not a directory")
    cfg = tmp_path / "cp.toml"
    cfg.write_text('[cp]\nsecret_file = "secret"\nheld_bound = 0\njournal = "afile/cp-journal"\n[[terminals]]\nname = "T1"\n')
    lines = check("hsb.cp", cfg)
    said(lines, "cp.held_bound: Input should be greater than or equal to 1", f"cp.journal: {tmp_path / 'afile' / 'cp-journal'} cannot be made")
    assert len(lines) == 2, lines
    # a check whose keys failed is not made: durability given wrong, the journal may not be used
    cfg.write_text(cfg.read_text().replace("held_bound = 0", 'durability = "sometimes"'))
    lines = check("hsb.cp", cfg)
    said(lines, "cp.durability: ")
    assert len(lines) == 1, lines


def test_the_host_check_says_a_listen_name_and_the_cp_generation_file_beside_a_schema_error(tmp_path: Path) -> None:
    """A rule of [host] that failed (the heartbeat) hid the listen name that does not resolve
    and a damaged CP generation file: each came only in the run after the first was fixed. They
    run now on the valid keys, beside the schema's error, as the CP's listen checks do."""
    secret(tmp_path)
    (tmp_path / "host-a.cp-generation").write_text('{"bad')
    cfg = tmp_path / "host.toml"
    cfg.write_text(
        '[host]\nname = "host-a"\npeer_listen = "nosuch.invalid:7111"\npeer = "127.0.0.1:7121"\ncp = "127.0.0.1:7001"\n'
        'admin_listen = "127.0.0.1:7112"\nsecret_file = "secret"\nheartbeat_timeout = 0.1\n'
        '[takeover]\npath = "takeover.dat"\nrecords = 64\n'
    )
    lines = check("hsb.host", cfg)
    said(
        lines,
        "host: heartbeat_timeout (0.1s) must be greater than two heartbeat intervals",
        "cannot listen on host.peer_listen = \"nosuch.invalid:7111\": the name 'nosuch.invalid' does not resolve",
        f"the CP generation file {tmp_path / 'host-a.cp-generation'} is damaged (not JSON)",
    )
    assert len(lines) == 3, lines
    # a check whose keys failed is not made: the host's name given wrong, its file is not known
    cfg.write_text(cfg.read_text().replace('name = "host-a"', "name = 7"))
    lines = check("hsb.host", cfg)
    said(lines, "host.name: ", 'host.peer_listen = "nosuch.invalid:7111"')
    assert not any("cp-generation" in line for line in lines), lines
