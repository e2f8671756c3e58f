"""hsbd's HostServer built and not started, registered by hand as the active (no CP, no peer; its
real HA and Delivery wired as in the daemon), with a service that records its calls: for the
in-process tests of the host's decisions and of its lease."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hsb.host.lease import clock as lease_clock
from hsb.host.server import HostServer


class Recording:
    """A service that answers at once and records each call: (terminal, id, redelivered)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, bool]] = []

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        self.calls.append((terminal, message_id, redelivered))
        return data


def unstarted_active(tmp_path: Path) -> tuple[HostServer, Recording]:
    """hsbd's HostServer as the active, built and not started, registered by hand with a lease of
    2 s from now; its service records its calls."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    svc = Recording()
    srv.delivery.service = svc  # type: ignore[assignment]
    srv.ha.register_sent_at = lease_clock()
    srv.ha.link_event({"t": "registered", "role": "active", "epoch": 3, "lease": 2.0})
    assert srv.ha.serving and srv.is_serving_active()
    return srv, svc
