"""`hsbctl sandbox up --service MODULE:FACTORY --service-option KEY=VALUE`: a service of one's
own tried in the sandbox without editing its configs (the service author's walk-through had to
edit both hosts' configs, drop `logon_ms`, stop both hosts and start them again by hand). Its
options as TOML values; an import or option it refuses said before any daemon starts; and a real
sandbox answering with the author's service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hsb.ctl.main import main, service_options

pytestmark = pytest.mark.timeout(120)

SERVICE = """
class Upper:
    def __init__(self, host, suffix="!"):
        self.suffix = suffix

    async def handle(self, terminal, message_id, data, redelivered):
        return str(data).upper() + self.suffix

    async def open_session(self, terminal, attrs, standby):
        pass

    async def close_session(self, terminal):
        pass

    async def close(self):
        pass
"""


def test_service_options_are_read_as_toml_values_else_as_text() -> None:
    got = service_options(('suffix="?"', "n=3", "on=true", "dsn=postgresql://hsb@/hsb?host=/tmp", "ratio=1.5"))
    assert got == {"suffix": "?", "n": 3, "on": True, "dsn": "postgresql://hsb@/hsb?host=/tmp", "ratio": 1.5}


@pytest.mark.parametrize(
    ("given", "says"),
    [(("novalue",), "'novalue' is not KEY=VALUE"), (("a=1", "a=2"), "'a' is given twice"), (("no key=1",), "is not KEY=VALUE")],
)
def test_a_service_option_not_key_value_once_is_refused(given: tuple[str, ...], says: str) -> None:
    with pytest.raises(click.BadParameter, match=says):
        service_options(given)


@pytest.mark.parametrize("spec", ["nosuch", "a b:C", "mod:", ":Factory", "mod:1x"])
def test_a_service_neither_built_in_nor_module_factory_is_a_usage_error(tmp_path: Path, spec: str) -> None:
    r = CliRunner().invoke(main, ["sandbox", "up", "--dir", str(tmp_path / "sb"), "--service", spec])
    assert r.exit_code == 2 and "is not echo, journal, ledger or a service of your own as MODULE:FACTORY" in r.output, r.output
    assert not (tmp_path / "sb").exists()


@pytest.mark.parametrize(
    ("spec", "options", "says"),
    [
        ("walk_nosuch_module:Svc", [], "cannot import walk_nosuch_module"),
        ("sbsvc_upper:Nope", [], "sbsvc_upper has no 'Nope'"),
        ("sbsvc_upper:Upper", ["--service-option", "colour=1"], "bad [service_options]"),
    ],
)
def test_a_service_of_ones_own_that_cannot_be_built_is_said_before_any_daemon_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: str, options: list[str], says: str
) -> None:
    (tmp_path / "sbsvc_upper.py").write_text(SERVICE)
    monkeypatch.syspath_prepend(str(tmp_path))
    r = CliRunner().invoke(main, ["sandbox", "up", "--dir", str(tmp_path / "sb"), "--service", spec, *options])
    assert r.exit_code == 1 and says in r.output and r.output.startswith("error: "), r.output
    assert not (tmp_path / "sb" / "cp.toml").exists(), "nothing written, nothing started"


def test_logon_ms_and_dsn_are_the_built_in_services_options(tmp_path: Path) -> None:
    for extra, says in (
        (["--logon-ms", "5"], "--logon-ms is an option of the built-in services"),
        (["--dsn", "postgresql://x/y"], "--dsn is for --service ledger"),
    ):
        r = CliRunner().invoke(main, ["sandbox", "up", "--dir", str(tmp_path / "sb"), "--service", "m:F", *extra])
        assert r.exit_code == 2 and says in r.output, r.output


def test_a_sandbox_runs_a_service_of_ones_own(tmp_path: Path) -> None:
    """Real daemons: both hosts run the author's service with the option given, and a terminal
    gets its answer."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "sbsvc_upper.py").write_text(SERVICE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg")}
    d = tmp_path / "sb"
    ctl = [sys.executable, "-m", "hsb.ctl"]
    try:
        up = subprocess.run(
            [*ctl, "sandbox", "up", "--dir", str(d), "--terminals", "4", "--service", "sbsvc_upper:Upper", "--service-option", 'suffix="?"'],
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        info = json.loads(up.stdout)
        for h in ("host-a", "host-b"):
            cfg = tomllib.loads((d / f"{h}.toml").read_text())
            assert cfg["host"]["service"] == "sbsvc_upper:Upper" and cfg["service_options"] == {"suffix": "?"}, cfg
        said = subprocess.run(
            [sys.executable, "-m", "hsb.term", "connect", "--cp", info["cp"]["terminal"], "T00001"],
            input="hello\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert said.returncode == 0 and ": HELLO? (" in said.stdout, said.stdout + said.stderr
    finally:
        subprocess.run([*ctl, "sandbox", "down", "--dir", str(d)], env=env, capture_output=True, timeout=60)
