"""hsbd's HostServer built and not started (no CP, no peer; its real HA, takeover file and
Delivery wired as in the daemon), as the active (`active_host`, registered by hand with a lease) or
the standby (`standby_host`), what it sends to its peer and to the CP recorded (`Sent`): for the
in-process tests of the hot standby procedures and switchover rules (hsb/host/ha_standby.py,
hsb/host/ha_switch.py) that call the HA's handlers as its loop would."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hsb.host.server import HostServer
from hsb.host.states import ESTABLISHED, HANDING_OVER, RELEASING, SERVING
from tests.support.unstarted import unstarted_active


class Sent:
    """What the host sent to its peer and to the CP (both links replaced: nothing is connected)."""

    def __init__(self, srv: HostServer) -> None:
        self.peer: list[dict[str, Any]] = []
        self.cp: list[dict[str, Any]] = []
        srv.peer.send = lambda msg: self.peer.append(msg) or True  # type: ignore[method-assign, func-returns-value]
        srv.cp.send = lambda msg: self.cp.append(msg) or True  # type: ignore[method-assign, func-returns-value]

    def peer_kinds(self) -> list[str]:
        return [m["t"] for m in self.peer]


def active_host(tmp_path: Path, state: str = SERVING) -> tuple[HostServer, Sent]:
    srv, _ = unstarted_active(tmp_path)
    sent = Sent(srv)
    srv.ha.registered = True
    srv.ha.set_state(state, "test")
    if state in (ESTABLISHED, RELEASING, HANDING_OVER):
        srv.ha.established_since = time.time()
    return srv, sent


def standby_host(tmp_path: Path) -> tuple[HostServer, Sent]:
    """hsbd's HostServer as the standby, built and not started, registered at the CP by hand."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-b", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "standby", SECRET, EchoService("host-b"), str(p))
    sent = Sent(srv)
    srv.ha.registered = True
    return srv, sent


def peer_active(srv: HostServer, state: str = SERVING, instance: str = "A1") -> None:
    """The peer link up, its hello from an active process `instance` in `state`."""
    srv.peer.up = True
    srv.peer.outbound = object()  # type: ignore[assignment]  # (send is replaced: never written to)
    srv.peer.peer_hello = {"t": "peer_hello", "role": "active", "state": state, "instance": instance, "name": "host-a"}


def close(srv: HostServer) -> None:
    srv.ha.close()
    srv.takeover.stop_ring_writer()
    srv.delivery.cancel()


async def until(cond: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def standby_startup(sid: int) -> dict[str, Any]:
    return {"t": "standby_startup", "startup_id": sid, "name": "host-b"}


def hooked(srv: HostServer) -> list[tuple[Any, ...]]:
    """The role-change hook's runs (role, state, epoch, reason), recorded instead of run."""
    fired: list[tuple[Any, ...]] = []
    srv.hook.fire = lambda *a: fired.append(a)  # type: ignore[method-assign]
    return fired


def calls(obj: Any, name: str) -> list[tuple[Any, ...]]:
    """`obj.name` replaced by a recorder of its calls (args, then kwargs as a sorted tuple)."""
    got: list[tuple[Any, ...]] = []
    setattr(obj, name, lambda *a, **k: got.append((*a, *sorted(k.items()))))
    return got
