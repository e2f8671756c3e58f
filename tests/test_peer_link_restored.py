"""The peer link restored after a stall, both hosts in hot standby throughout (found by the
slow-links walk-through, session 67): the standby's last error of a takeover the CP refused
during the stall is history once the active is back, and the active says
`hot_standby_established` once, not once for the standby's hello and again for its
`standby_ready`. hsbcpd and both hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.host import ha as ha_mod
from hsb.host import ha_standby
from hsb.host.ha_cp import TAKEOVER_REFUSED
from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby
from tests.support.logrec import RecordingLog

pytestmark = pytest.mark.timeout(60)


async def test_the_standbys_refused_takeover_is_history_once_the_active_says_hello(tmp_path: Path) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        b.ha.last_error = f"{TAKEOVER_REFUSED}active host host-a: it is alive on its host link (heard 3 ms ago)"
        hello = {"t": "peer_hello", "role": "active", "name": "host-a", "instance": b.ha.partner_instance}
        await b.ha.peer_peer_hello(hello)
        assert b.ha.last_error is None
        b.ha.last_error = "ring read failed: [Errno 5] Input/output error"  # (another error stays)
        await b.ha.peer_peer_hello(hello)
        assert b.ha.last_error == "ring read failed: [Errno 5] Input/output error"


async def test_the_active_says_hot_standby_established_once_when_the_peer_link_is_restored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        rec = RecordingLog()
        monkeypatch.setattr(ha_mod, "log", rec)
        monkeypatch.setattr(ha_standby, "log", rec)
        a.ha.state = "serving"  # (the peer link was down: serving without a standby)
        await a.ha.peer_peer_hello(
            {
                "t": "peer_hello",
                "role": "standby",
                "name": "host-b",
                "partner": a.ha.instance,
                "state": "established",
                "startup_id": a.ha.partner_startup_id,
            }
        )
        await a.ha.peer_standby_ready({"t": "standby_ready", "startup_id": a.ha.partner_startup_id, "instance": b.ha.instance})
        assert a.ha.state == "established"
        said = rec.events("hot_standby_established")
        assert len(said) == 1 and said[0]["how"] == "peer link restored", said
