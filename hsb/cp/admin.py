"""The CP's admin link: status for hsbctl (authenticated like the host link)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsb.wire.authlink import AuthServerProtocol

if TYPE_CHECKING:
    from hsb.cp.core import CP


class CPAdminProtocol(AuthServerProtocol):
    link = "admin"
    dispatch = {"status": "on_status", "sessions": "on_sessions", "pause": "on_pause", "resume": "on_resume", "history": "on_history"}

    def __init__(self, cp: CP, **kw: Any) -> None:
        super().__init__(**kw)
        self.cp = cp
        self.server_name = cp.name

    def on_status(self, msg: dict[str, Any]) -> None:
        self.send({"t": "status", "data": self.cp.status()})

    def on_sessions(self, msg: dict[str, Any]) -> None:
        self.send({"t": "sessions", "data": self.cp.sessions()})

    def on_pause(self, msg: dict[str, Any]) -> None:
        self.send({"t": "result", "ok": True, "msg": self.cp.set_paused(True, self.name)})

    def on_resume(self, msg: dict[str, Any]) -> None:
        self.send({"t": "result", "ok": True, "msg": self.cp.set_paused(False, self.name)})

    def on_history(self, msg: dict[str, Any]) -> None:
        self.send({"t": "history", "data": self.cp.history.entries})
