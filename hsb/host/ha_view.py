"""What the state machine says of itself: the one-line sentence (`describe`, logged by every
cycle and shown by hsbctl), `status` (hsbctl status, /health, the metrics) and the ring's
positions. Read-only: a mixin of `hsb.host.ha.HA` that changes nothing."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from hsb import __version__
from hsb.host.ha_standby import batch_hold_max
from hsb.host.states import ACTIVE_STOPPED, BATCH_WRITING, ESTABLISHED, FENCED, SERVING, STARTING, STOPPING, WAITING

if TYPE_CHECKING:
    from hsb.host.ha import HA


class HAView:
    """The state machine's read-only answers; mixed into `HA`."""

    def describe(self: HA) -> str:
        peer = self.srv.peer
        pn = peer.peer_name or "peer"
        if self.role == "active":
            if self.lease_lost:
                ago = self.lease_status()["lost_ms_ago"]
                return (
                    f"active at epoch {self.epoch}: LEASE LOST{f' {ago / 1000:.1f} s ago' if ago is not None else ''}"
                    f" (the CP answered no heartbeat within the {self.lease.duration:g} s lease); not serving"
                )
            if not self.serving and self.state not in (STARTING, STOPPING, FENCED):
                return f"active at epoch {self.epoch}: not serving (host link to the CP down; waiting to register again)"
            if self.state == ESTABLISHED and self.ring_unwritten:
                return (
                    f"active at epoch {self.epoch}: hot standby with {pn} NOT ready: this host cannot write the takeover ring"
                    f" ({self.ring_write_error()}); {pn}'s view of the sessions is stale"
                )
            if self.state == ESTABLISHED:
                return f"active at epoch {self.epoch}: hot standby established with {pn}"
            if self.held_batch is not None:
                return (
                    f"active at epoch {self.epoch}: a batch write for {pn} waits: the last {self.batches_unread} were not read"
                    f" (written further apart each time, up to {batch_hold_max(self.srv.cfg.takeover):g} s)"
                )
            if self.state == BATCH_WRITING:
                return f"active at epoch {self.epoch}: batch writing for {pn}"
            if self.state == SERVING:
                why = "peer link down" if not peer.up else "no standby established"
                return f"active at epoch {self.epoch}: serving without a standby ({why})"
            return f"active: {self.state}"
        if self.state == ESTABLISHED and not self.registered:
            return f"standby: following {pn}'s ring, but not registered at the CP (its link is down): it cannot take over until it is"
        if self.state == ESTABLISHED and self.active_ring_failing is not None:
            return f"standby: following {pn}'s ring, but {pn} cannot write it ({self.active_ring_failing}): this host's view of the sessions is stale"
        if self.state == ESTABLISHED:
            return f"standby: hot standby established, following {pn}'s ring"
        if self.state == ACTIVE_STOPPED:
            if not self.active_stop_confirmed:
                return (
                    f"standby: the active ({self.active_stopped_by}) stopped normally, but the CP did not confirm it;"
                    " not taking over unless the CP reports the active lost"
                )
            return f"standby: the active ({self.active_stopped_by}) stopped normally; not taking over"
        if self.state == WAITING:
            return "standby: waiting for an active host"
        return f"standby: {self.state}"

    def is_established(self: HA) -> bool:
        """Hot standby from this host's side; a standby also needs to be registered at the CP (it
        asks the CP for the active role: cut off from it, it could not take over). Not while the
        active cannot write the ring (`check_ring_writes`): the standby's view of the sessions is
        then frozen where the writes stopped, and a failover would take over that view."""
        if self.state != ESTABLISHED or self.standby_view_stale():
            return False
        return self.role != "standby" or self.registered

    def standby_view_stale(self: HA) -> bool:
        """The active's ring writes have been failing too long (its own word, or on the standby
        the active's, from its heartbeats): the standby reads none of the changes meanwhile."""
        return self.ring_unwritten if self.role == "active" else self.role == "standby" and self.active_ring_failing is not None

    def ring_write_error(self: HA) -> str:
        """Active: why it cannot write the takeover ring (the sentence, a refused switchover, the
        standby's heartbeats): the last error, or that the writes fail."""
        return self.srv.takeover.last_error or "ring writes failing"

    def hello(self: HA) -> dict[str, Any]:
        return {
            "t": "peer_hello",
            "name": self.name,
            "role": self.role,
            "state": self.state,
            "instance": self.instance,
            "partner": self.partner_instance,
            "startup_id": self.own_startup_id if self.role == "standby" else self.partner_startup_id,
            "ring_next": self.ring_next(),
            "epoch": self.epoch,
            # (the standby is told: it then says it is not ready either)
            "ring_write_failing": self.ring_write_error()[:200] if self.role == "active" and self.ring_unwritten else None,
        }

    def status(self: HA) -> dict[str, Any]:
        peer = self.srv.peer
        age = peer.heartbeat_age()
        return {
            "name": self.name,
            "version": __version__,
            "role": self.role,
            "started_as": self.started_role,  # (--role: the unit's name)
            "rejoined_as_standby_of": self.srv.rejoined_from,  # started as the active while this one was (hsb.host.rejoin)
            "state": self.state,
            "state_since": self.state_since,
            "sentence": self.describe(),
            "serving": self.srv.is_serving_active(),
            "lease": self.lease_status(),
            "epoch": self.epoch,
            "pid": os.getpid(),
            "instance": self.instance,
            "established": self.is_established(),
            "standby_view_stale": self.standby_view_stale(),
            "established_since": self.established_since,
            "registered_at_cp": self.registered,
            "cp_link": "up" if self.srv.cp.up else "down",
            "cp_generation": self.srv.cp.generation_status(),
            "peer_link": {
                "up": peer.up,
                "peer": peer.peer_name,
                "heartbeat_age_ms": None if age is None else round(age * 1000, 1),
                "notices_lost": peer.lost_notices,
            },
            "startup_id": {"own": self.own_startup_id, "partner": self.partner_startup_id},
            "batch_records": {"own": self.srv.takeover.own_batch_records, "partner": self.partner_batch_records},
            "generation": self.generation,
            "takeover_file": self.srv.takeover.status(),
            "terminals": self.srv.sessions.counts(),
            "open_failed": self.srv.sessions_ctl.open_failures.status(),  # session opens the CP refused
            "standby_refusing": self.srv.sessions_ctl.refusing_status(),  # standby sessions this host refuses
            "file_mismatch": self.file_mismatch,
            "active_stopped_by": self.active_stopped_by,
            "last_takeover": self.takeover,
            "last_error": self.last_error,
            "switchovers_ended": self.switchovers_ended,  # planned ones that ended without the grant (refused, abandoned)
            "switch_refusals": self.switch_refusals,  # takeovers it asked for (a failover, a promote) that the CP refused
            "delivery": dict(self.srv.delivery.counters),
            "service": self.srv.service_status(),
            "tls": self.srv.tls.status() if self.srv.tls is not None else {"enabled": False},
            "counters": dict(self.counters),
            "ring_lag": self.ring_lag(),
        }

    def ring_lag(self: HA) -> int | None:
        """On the active: ring records written that the standby has not read (from its heartbeats),
        and those its changes still waiting to be written will take (none read while writes fail)."""
        wp = self.srv.takeover.store.write_position
        if self.role != "active" or wp is None or self.peer_ring_next is None or self.state != ESTABLISHED:
            return None
        return max(0, wp[1] - (self.peer_ring_next - 1)) + self.srv.takeover.pending_records()

    def ring_next(self: HA) -> int | None:
        rp = self.srv.takeover.store.read_position if self.role == "standby" and self.state == ESTABLISHED else None
        return None if rp is None else int(rp[1])
