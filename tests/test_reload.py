"""SIGHUP reloads what can change while running and names what needs a restart (issue 6 item 4)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from tests.support.procs import wait_for


def events(log: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in log.read_text().splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            e = json.loads(line)
            if e.get("event") == name:
                out.append(e)
    return out


async def test_sighup_reloads_cp_and_host(sb: Any) -> None:
    info = await sb(terminals=10)
    d = Path(info["dir"])
    st = sandbox.load_state(d)
    cp_toml = d / "cp.toml"
    text = cp_toml.read_text()
    cp_toml.write_text(text.replace("held_bound = 256", "held_bound = 64").replace(st["cp"]["http"], "127.0.0.1:1"))
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    ev = wait_for(lambda: events(d / "cp.log", "config_reloaded"), 10, what="CP reload")[0]
    assert ev["applied"] == ["cp.held_bound"] and ev["needs_restart"] == ["cp.http_listen"]
    wait_for(lambda: events(d / "cp.log", "config_reload_incomplete"), 10, what="the restart-only settings named")  # the next line logged
    host_toml = Path(st["hosts"]["host-b"]["config"])
    assert "ring_poll_interval" not in host_toml.read_text()  # the sandbox leaves it at its default
    host_toml.write_text(host_toml.read_text().replace("[takeover]", "ring_poll_interval = 0.2\n\n[takeover]", 1))
    os.kill(st["hosts"]["host-b"]["pid"], signal.SIGHUP)
    ev = wait_for(lambda: events(d / "host-b.log", "config_reloaded"), 10, what="host reload")[0]
    assert ev["applied"] == ["host.ring_poll_interval"] and ev["needs_restart"] == []
    # a broken file is refused as a whole and the daemon goes on with what it has
    cp_toml.write_text("[cp\n")
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    wait_for(lambda: events(d / "cp.log", "config_reload_failed"), 10, what="refused reload")
    s = await sandbox.status(d)
    assert s["established"] and sandbox._alive(st["cp"]["pid"])
