"""A stop's handover (SIGTERM of the active in hot standby) ends the process as the standby it
is once demoted: it does not start as the standby of the new active meanwhile. hsbcpd and both
hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


async def test_a_host_demoted_by_its_stop_s_handover_does_not_start_as_the_standby(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Demoted, host-a took the branch of a host that lives on (waiting_for_active): at the new
    active's first heartbeat it sent STANDBY STARTUP in the moments before its HA loop was
    cancelled, and host-b wrote a batch for a standby about to go. It is now `stopping` as the
    standby, and sends none, whatever the new active's heartbeats say."""
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        sent: list[dict[str, Any]] = []
        send = a.peer.send

        def noted(msg: dict[str, Any]) -> bool:
            sent.append(msg)
            return bool(send(msg))

        monkeypatch.setattr(a.peer, "send", noted)
        a.request_stop(takeover=True)  # (SIGTERM)
        await asyncio.wait_for(a.graceful_stop(), 25)
        assert a.ha.role == "standby" and a.ha.state == "stopping" and a.exit_code == 0, (a.ha.role, a.ha.state)

        # the HA loop goes on (serve() would cancel it now): until it has taken a heartbeat of
        # host-b as the active, past its start
        def seen_active() -> bool:
            h = a.peer.peer_hello
            return h is not None and h is not hello and h.get("role") == "active" and h.get("state") != "starting" and not a.ha.events

        hello = a.peer.peer_hello
        await until(seen_active, "host-a's HA loop taking host-b's heartbeat as the active", timeout=10)
        assert [m["t"] for m in sent if m["t"] == "standby_startup"] == [], sent
        assert a.ha.state == "stopping"
