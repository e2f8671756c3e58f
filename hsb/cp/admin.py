"""The CP's admin link: status for hsbctl (authenticated like the host link)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsb.wire.authlink import AuthServerProtocol

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.server import CPServer


class CPAdminProtocol(AuthServerProtocol):
    link = "admin"
    dispatch = {"status": "on_status", "sessions": "on_sessions", "pause": "on_pause", "resume": "on_resume", "history": "on_history"}
    read_under_write_pressure = False  # a client pipelining requests without reading the answers is not read

    def __init__(self, srv: CPServer, **kw: Any) -> None:
        super().__init__(**kw)
        self.srv = srv
        self.server_name = srv.cfg.cp.name

    def _serving(self) -> CP | None:
        """The CP, or None (and an error sent) while this hsbcpd waits to take over."""
        cp = self.srv.cp
        if cp is None:
            self.send({"t": "error", "code": "cp_waiting", "msg": f"{self.server_name} is waiting to take over (not serving); ask the serving CP"})
        return cp

    def on_status(self, msg: dict[str, Any]) -> None:
        self.send({"t": "status", "data": self.srv.status()})

    def on_sessions(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            self.send({"t": "sessions", "data": cp.sessions()})

    def on_pause(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            self.send({"t": "result", "ok": True, "msg": cp.set_paused(True, self.name)})

    def on_resume(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            self.send({"t": "result", "ok": True, "msg": cp.set_paused(False, self.name)})

    def on_history(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            self.send({"t": "history", "data": cp.history.entries})
