"""An hsbd's SessionsCtl in-process, for tests of its session hooks and its standby and active
session changes: a bare one (`ctl`), one over a session table with a CP link that records what
it sent (`standby_ctl`), and the states the tests put its host in."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from hsb.host.sessions_ctl import SessionsCtl


def ctl() -> SessionsCtl:
    return SessionsCtl(SimpleNamespace(sessions=None))  # type: ignore[arg-type]


class FakeCP:
    """The host's CP link as SessionsCtl sees it: what it sent while up."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> bool:
        self.sent.append(msg)
        return True

    def send_raw(self, frame: bytes) -> None:
        from hsb.wire.framing import Decoder

        self.sent.extend(Decoder().feed(frame))

    async def drain(self) -> None:
        return None


def standby_ctl(n: int) -> tuple[SessionsCtl, Any]:
    from hsb.host.server import HostServer
    from hsb.host.sessions import SessionTable
    from hsb.terminals import TerminalDef, TerminalSpec

    async def hook(*_: Any) -> None:
        return None

    defs: dict[str, TerminalSpec] = {f"T{i:05d}": TerminalDef(name=f"T{i:05d}", attrs={"k": 1}) for i in range(1, n + 1)}
    srv: Any = SimpleNamespace(
        sessions=SessionTable(defs),
        cp=FakeCP(),
        cfg=SimpleNamespace(host=SimpleNamespace(fast_switch=True)),
        ha=SimpleNamespace(granted=False, lost_serving=False, lease=SimpleNamespace(reset=lambda: None), post=lambda *a, **k: None),
        service=SimpleNamespace(open_session=hook, close_session=hook),
        delivery=SimpleNamespace(cancel=lambda: None, handed={"T00002": 9}),  # (what it handed to its service)
    )
    srv.sessions_ctl = c = SessionsCtl(srv)
    srv.cp_down = lambda why: HostServer._cp_down(srv, why)
    return c, srv


def granted_on_a_link(srv: Any) -> None:
    """`standby_ctl`'s host made the active (epoch 3, its lease granted, deliveries open) on a CP
    link of its own (`srv.cp.fs`), its ring writes dropped."""
    srv.ha.granted, srv.ha.epoch, srv.ha.name = True, 3, "host-a"
    srv.delivery.wait_open = lambda: asyncio.sleep(0, True)
    srv.cp.fs = object()
    srv.takeover = SimpleNamespace(ring_change=lambda *a: None)


def active_on_a_link(c: SessionsCtl, srv: Any, epoch: int) -> None:
    """`standby_ctl`'s host registered at the CP at `epoch`, every session of its table open as
    active on the link (as an active about to be demoted has them)."""
    from hsb.host.sessions import ACTIVE

    srv.ha.epoch = epoch
    c.cp_registered = True
    for ts in srv.sessions.table.values():
        ts.state = ACTIVE
        srv.sessions.join_link(ts)


def recording_service(srv: Any) -> list[tuple[str, str]]:
    """The service's session hooks, noted in order: ("open" or "close", terminal)."""
    hooks: list[tuple[str, str]] = []

    async def open_session(name: str, *_: Any) -> None:
        hooks.append(("open", name))

    async def close_session(name: str) -> None:
        hooks.append(("close", name))

    srv.service.open_session, srv.service.close_session = open_session, close_session
    return hooks
