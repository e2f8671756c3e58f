"""hsbd's admin link: status, and operator intents (promote, switchover, stop) that wake the
HA loop or the lifecycle; they only record the intent."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hsb.wire.authlink import AuthServerProtocol

if TYPE_CHECKING:
    from hsb.host.server import HostServer


class HostAdminProtocol(AuthServerProtocol):
    link = "admin"
    quiet_authenticated = True  # link_authenticated at debug: asked every few seconds by monitoring
    dispatch = {"status": "on_status", "promote": "on_promote", "switchover": "on_switchover", "stop": "on_stop"}
    read_under_write_pressure = False  # a client pipelining requests without reading the answers is not read

    def __init__(self, srv: HostServer, **kw: Any) -> None:
        super().__init__(**kw)
        self.srv = srv
        self.server_name = srv.cfg.host.name

    def on_status(self, msg: dict[str, Any]) -> None:
        self.send({"t": "status", "data": self.srv.status()})

    def on_promote(self, msg: dict[str, Any]) -> None:
        ha = self.srv.ha
        why = ha.promote_refusal()
        if why is not None:
            self.send({"t": "result", "ok": False, "msg": why})
            return
        ha.post("promote")  # record the intent; only the HA loop acts
        self.send({"t": "result", "ok": True, "msg": f"promotion of {ha.name} requested"})

    def on_switchover(self, msg: dict[str, Any]) -> None:
        ha = self.srv.ha
        why = ha.switchover_refusal()
        if why is not None:
            self.send({"t": "result", "ok": False, "msg": f"switchover refused: {why}"})
            return
        ha.post("switchover")  # record the intent; only the HA loop acts
        self.send({"t": "result", "ok": True, "msg": f"planned switchover from {ha.name} started"})

    def on_stop(self, msg: dict[str, Any]) -> None:
        ha = self.srv.ha
        takeover = msg.get("takeover", True)
        if not isinstance(takeover, bool):  # ("false" is true to bool(): it would hand over)
            self.send({"t": "result", "ok": False, "msg": "stop: field 'takeover' must be true or false; nothing done"})
            return
        hands_over = ha.role == "active" and takeover and ha.switchover_refusal(stop=True) is None
        if hands_over and ha.standby_behind_cut():  # (the peer link down: through the CP, which decides)
            what = f"hands over to the standby through the CP, then stops; {self.srv.cut_caveat()}"
        elif hands_over:
            what = "hands over to the standby, then stops"
            if ha.standby_view_stale():  # (still: a normal stop would end the service for everyone)
                what += f"; {ha.stale_view_caveat()}"
        elif ha.role == "active" and takeover and not ha.registered:
            # (the CP stalled, or its network: it cannot be told of the stop, and takes the end of
            # this host's link for the active's loss; hsb.cp.alone)
            what = (
                "stops; its link to the CP is down, so the CP cannot be told: it takes the end of that link for the"
                " active's loss, and a standby registered there takes over (in a few seconds); else nobody serves"
            )
        elif ha.role == "active":
            what = "stops normally: nobody takes over (" + ("no established standby" if takeover else "--no-takeover") + ")"
        else:
            what = "stops (it is the standby: the active serves on without one)"
        # `hands_over`: hsbctl stop then checks the standby became the active (else it failed)
        # `cp_unaware`: the CP may fail over to the standby by itself (hsbctl stop waits a while for it)
        cp_unaware = ha.role == "active" and takeover and not hands_over and not ha.registered
        self.send({"t": "result", "ok": True, "msg": f"{ha.name} {what}", "hands_over": hands_over, "cp_unaware": cp_unaware})
        self.flush()
        self.srv.request_stop(takeover)
