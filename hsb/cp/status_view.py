"""What the CP says of itself: `status` (hsbctl status, /health, the metrics) and the
per-terminal `sessions` view. Read-only: a mixin of `hsb.cp.core.CP` that changes nothing.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from hsb import __version__
from hsb.wire.conn import PROTOCOL_ERRORS

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol


class StatusView:
    """The CP's status answers; mixed into `CP`."""

    # ------------------------------------------------------------------ status
    def status(self: CP) -> dict[str, Any]:
        active_s = standby_s = held = kept = paused = 0
        for t in self.terms.values():
            if t.active is not None:
                active_s += 1
            if t.standby is not None:
                standby_s += 1
            held += len(t.held)
            kept += len(t.replies)
            paused += t.paused

        def host_info(h: HostProtocol | None) -> dict[str, Any] | None:
            if h is None:
                return None
            return {
                "name": h.name,
                "role": h.role,
                "peer": h.peer,
                "connected": not h.closed,
                "heard_ms_ago": round((time.monotonic() - h.last_rx) * 1000, 1),
            }

        return {
            "name": self.name,
            "role": "cp",
            "version": __version__,
            "pid": os.getpid(),
            "state": "serving" if self.active is not None and self.active.usable else "no_active",
            "epoch": self.epoch,
            "terminals": {
                "defined": len(self.terms),
                "connected": self.connected,
                "active_sessions": active_s,
                "standby_sessions": standby_s,
                "backpressured": paused,
            },
            "held_messages": held,
            "active": host_info(self.active),
            "standby": host_info(self.standby),
            "active_stopped_normally": self.active_stopped_normally,
            "switchovers": len(self.switchovers),
            "last_switchover": self.switchovers[-1] if self.switchovers else None,
            "counters": dict(self.counters),
            "paused": self.paused,
            "journal": {**self.journal.status(), "outstanding": held + kept},
            "replies_by_host": dict(self.replies_by_host),
            "protocol_errors": [{"link": k[0], "code": k[1], "count": v} for k, v in sorted(PROTOCOL_ERRORS.items())],
            "uptime_s": round(time.time() - self.started, 1),
        }

    def sessions(self: CP) -> dict[str, Any]:
        """Per-terminal session view (for tests and `hsbctl status --sessions`)."""
        out: dict[str, Any] = {}
        for t in self.terms.values():
            if t.active is None and t.standby is None and t.conn is None and not t.held:
                continue
            out[t.name] = {
                "connected": t.conn is not None,
                "active": {"host": t.active.host.name, "attrs": t.active.attrs} if t.active else None,
                "standby": {"host": t.standby.host.name, "attrs": t.standby.attrs} if t.standby else None,
                "held": len(t.held),
            }
        return out
