"""A SIGHUP whose config does not load (hsb.ops.reload.plan): one `config_reload_failed` line
that names the file, every error, that the running config stays, and the fix. It gave the bare
errors only (`TOML syntax error: Invalid value (at end of document)`): no file, no word that
nothing changed, nothing to do next."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.host.config import HostConfig
from hsb.ops import reload
from tests.support.logrec import RecordingLog
from tests.support.procs import host_config

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize(
    ("broken", "error"),
    [
        ("x = [\n", "TOML syntax error"),
        ("[host]\n|[host]\nheartbeat_timout = 0.5\n", "host.heartbeat_timout: unknown key (typo?)"),
    ],
)
def test_a_reload_refused_says_the_file_the_errors_that_nothing_changed_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str, error: str
) -> None:
    from hsb.config import load

    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    running = load(p, HostConfig)
    text = p.read_text()
    if "|" in broken:
        old, new = broken.split("|")
        assert text.count(old) == 1
        p.write_text(text.replace(old, new))
    else:
        p.write_text(text + broken)
    rec = RecordingLog()
    monkeypatch.setattr(reload, "log", rec)
    assert reload.plan(p, HostConfig, running, ("host.heartbeat_timeout",)) is None
    said = rec.events("config_reload_failed")
    assert len(said) == 1 and [e["event"] for e in rec.entries] == ["config_reload_failed"], rec.entries
    e = said[0]
    assert e["path"] == str(p) and any(error in x for x in e["errors"]), e
    msg = e["msg"]
    assert msg.startswith(f"{p} not reloaded, the running config stays: ") and error in msg, msg
    assert msg.endswith("fix the file (--check-config with the daemon's --config says every error), then reload again") and "\n" not in msg, msg
