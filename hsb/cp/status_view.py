"""What the CP says of itself: `status` (hsbctl status, /health, the metrics) and the
per-terminal `sessions` view. Read-only: a mixin of `hsb.cp.core.CP` that changes nothing.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb import __version__
from hsb.cp.state import Counts
from hsb.wire.conn import PROTOCOL_ERRORS

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol

log = structlog.get_logger("hsb.cp")
AUDIT = os.environ.get("HSB_AUDIT_COUNTS") == "1"  # tests only: check the kept totals at every status


class StatusView:
    """The CP's status answers; mixed into `CP`."""

    # ------------------------------------------------------------------ status
    def status(self: CP) -> dict[str, Any]:
        c = self.counts  # kept as terminals change: no walk over every terminal (hsb.cp.state.Counts)
        if AUDIT:
            self.audit_counts()
        active_s, standby_s, held, kept, paused = c.active, c.standby, c.held, c.kept, c.paused

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
            "instance": self.instance,  # (the welcome's `cp`: this process, random at each start)
            "state": "serving" if self.active is not None and self.active.usable else "no_active",
            "epoch": self.epoch,
            "terminals": {
                "defined": len(self.terms),
                "connected": self.connected,
                "active_sessions": active_s,
                "standby_sessions": standby_s,
                "backpressured": paused,
                "disconnects": self.drops.status(),
            },
            "held_messages": held,
            # the data of the held messages and kept replies, against the CP's own bound
            "held_bytes": {"total": c.held_data, "kept": c.kept_data, "bound": self.held_total_bytes, "reached": self.total_over},
            "active": host_info(self.active),
            "standby": host_info(self.standby),
            "active_stopped_normally": self.active_stopped_normally,
            "switchovers": len(self.switchovers),
            "last_switchover": self.switchovers[-1] if self.switchovers else None,
            "counters": {
                **self.counters,
                "logons_queued": self.logons.deferred,
                "logoffs_queued": self.logons.deferred_byes,
                "disconnects_queued": self.logons.deferred_losses,
            },
            "paused": self.paused,
            "journal": {**self.journal.status(), "outstanding": held + kept, "acks_waiting_for_host": self.acks_waiting_status()},
            "replies_by_host": dict(self.replies_by_host),
            "protocol_errors": [{"link": k[0], "code": k[1], "count": v} for k, v in sorted(PROTOCOL_ERRORS.items())],
            "uptime_s": round(time.time() - self.started, 1),
        }

    def audit_counts(self: CP) -> None:
        """Tests (HSB_AUDIT_COUNTS=1): the kept totals against a walk over every terminal; a
        difference is a bug, and the CP exits at once (code 70) so that no test can miss it."""
        walk = Counts()
        for t in self.terms.values():
            walk.active += t.active is not None
            walk.standby += t.standby is not None
            walk.held += len(t.held)
            walk.kept += len(t.replies)
            walk.paused += t.paused
            if t.paused:
                walk.paused_terms.add(t)
            walk.held_data += t.held_bytes
            walk.kept_data += t.kept_bytes
        diff = {k: (getattr(self.counts, k), getattr(walk, k)) for k in Counts.__slots__ if getattr(self.counts, k) != getattr(walk, k)}
        if diff:
            log.critical("cp_counts_mismatch", kept_vs_walked=diff)
            logging.shutdown()
            os._exit(70)

    def sessions(self: CP, offset: int = 0, limit: int | None = None) -> tuple[dict[str, Any], int | None]:
        """Per-terminal session view, a page of it: the terminals at positions offset .. offset +
        limit of the table (a page, so that an answer fits a frame and builds in a few ms at
        100,000 terminals); and the next page's offset, or None after the last."""
        out: dict[str, Any] = {}
        end = len(self.terms) if limit is None else min(len(self.terms), offset + limit)
        for t in itertools.islice(self.terms.values(), offset, end):
            if t.active is None and t.standby is None and t.conn is None and not t.held:
                continue
            out[t.name] = {
                "connected": t.conn is not None,
                "active": {"host": t.active.host.name, "attrs": t.active.attrs} if t.active else None,
                "standby": {"host": t.standby.host.name, "attrs": t.standby.attrs} if t.standby else None,
                "held": len(t.held),
            }
        return out, (end if end < len(self.terms) else None)
