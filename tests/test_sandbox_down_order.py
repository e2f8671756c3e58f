"""`hsbctl sandbox down` stops the pair as an operator would (hsb.ctl.sandbox.down, ordered): the
standby, then the active, then the CP, each gone before the next is told. All at once, the
active began handing over to a standby that was itself stopping while the CP went, and logged
that as failures (stop_handover_failed, switchover_abandoned, cp_link_down, ...). Real daemons."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox

pytestmark = pytest.mark.timeout(90)

# the one warning a planned stop of the standby still leaves: the standby tells the CP nothing as
# it stops, so the CP cannot tell its link's end from a crash (docs/operations.md §16)
KEPT = {("cp", "standby_host_link_lost")}


def events_after(path: Path, start: int) -> list[dict[str, Any]]:
    out = []
    for line in path.read_bytes()[start:].decode(errors="replace").splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


async def test_sandbox_down_stops_the_standby_then_the_active_then_the_cp_without_failures(sb: Any) -> None:
    info = await sb(terminals=4)
    d = Path(info["dir"])
    logs = {name: d / f"{name}.log" for name in ("cp", "host-a", "host-b")}
    sizes = {name: p.stat().st_size for name, p in logs.items()}
    r = subprocess.run([sys.executable, "-m", "hsb.ctl", "sandbox", "down", "--dir", str(d)], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert not [p for p in json.loads(r.stdout)["stopped"] if sandbox._ours(d, p)]
    bad = [
        (name, e.get("level"), e.get("event"), e.get("reason") or e.get("msg"))
        for name, p in logs.items()
        for e in events_after(p, sizes[name])
        if e.get("level") in ("warning", "error", "critical") and (name, e.get("event")) not in KEPT
    ]
    assert not bad, bad
    stops = {name: [e for e in events_after(p, sizes[name]) if e.get("event") == "state_change"] for name, p in logs.items() if name != "cp"}
    reasons = [str(e.get("reason")) for es in stops.values() for e in es]
    assert any("the standby stops" in why for why in reasons), reasons  # the standby went first: a standby's stop
    assert not any("hand" in why and "over" in why for why in reasons), reasons  # the active had nobody to hand over to
