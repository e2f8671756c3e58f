"""The CP's admin link: status for hsbctl (authenticated like the host link)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsb.wire.authlink import AuthServerProtocol
from hsb.wire.framing import ProtocolError

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.server import CPServer


class CPAdminProtocol(AuthServerProtocol):
    link = "admin"
    quiet_authenticated = True  # link_authenticated at debug: asked every few seconds by monitoring
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

    SESSIONS_PAGE = 4000  # terminals per `sessions` answer at most: ~0.8 MB, under any client's frame limit

    def on_sessions(self, msg: dict[str, Any]) -> None:
        offset, limit = msg.get("offset", 0), msg.get("limit", self.SESSIONS_PAGE)
        if not (isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0):
            raise ProtocolError("bad_fields", "sessions: offset must be an int >= 0")
        if not (isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= self.SESSIONS_PAGE):
            raise ProtocolError("bad_fields", f"sessions: limit must be an int of 1..{self.SESSIONS_PAGE}")
        if (cp := self._serving()) is not None:
            data, after = cp.sessions(offset, limit)
            self.send({"t": "sessions", "data": data, "next": after})

    def on_pause(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            cp.set_paused(True, self.name, self._result)

    def on_resume(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            cp.set_paused(False, self.name, self._result)

    def _result(self, text: str) -> None:
        self.send({"t": "result", "ok": True, "msg": text})

    def on_history(self, msg: dict[str, Any]) -> None:
        if (cp := self._serving()) is not None:
            self.send({"t": "history", "data": cp.history.entries})
