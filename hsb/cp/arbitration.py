"""The CP's arbitration of the active role (SPEC §5.4): who may take it over and when, the new
epoch made durable before anything is announced, the grant, the flip of every session
(`hsb.cp.flip`) and the switch's record once it is done.

A mixin of `hsb.cp.core.CP` (the one place that decides): the state is the CP's; this module
only keeps the switchover half of the rules in a file of its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.cp.config import LEASE_MARGIN
from hsb.cp.flip import Flip
from hsb.cp.switchrec import AfterSwitch, History

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.state import Held, Term

STALL_RECHECK_S = 0.05  # a request met just after a stall of this process: judged again this much later
# a standby's `peer_closed` refused because the active's host link was still open here counts for
# the host link's close within this long (the CP may hear of it later than the standby, its loop
# busy or the close queued behind replies, and the standby's next request no longer says it)
PEER_CLAIM_S = 2.0

log = structlog.get_logger("hsb.cp")


class Arbitration:
    """Switchover rules of the CP; mixed into `CP` (see the module docstring)."""

    # the CP's state that a grant changes (set in CP.__init__)
    active: HostProtocol | None
    standby: HostProtocol | None
    loss: tuple[float, float] | None
    active_stopped_normally: str | None
    release_t0: float | None
    flipping: Flip | None
    after_switch: AfterSwitch | None
    announced: bool
    active_lost_notified: bool
    granting: HostProtocol | None
    demoting: HostProtocol | None
    recorded_active: str | None
    stopped_at: float | None
    host_lease: float
    handed_over_by: tuple[str, str, int] | None
    recovered_at: float | None
    deferred_grant: asyncio.TimerHandle | None
    deferred_registrations: dict[str, asyncio.TimerHandle]
    deferred_ask: tuple[str, str, bool, str, int | None] | None
    peer_closed_claim: tuple[str, float] | None
    _last_tick: float | None
    _tick_skipped: bool

    def host_switchover(
        self: CP, host: HostProtocol, reason: str, planned: bool, kind: str = "failover", req: int | None = None, peer_closed: bool = False
    ) -> None:
        """The standby asks for the active role. `peer_closed`: its peer link from the active was
        closed by the other end within the last second (that host's process gone, most likely)."""
        # (no settle_flip: a refusal or a deferral changes no session, and a grant settles in `_grant`)
        if host is not self.standby:
            host.send({"t": "switch_refused", "reason": "only the registered standby host may ask for a switchover"})
            return
        if self.paused and kind == "failover" and not planned:
            host.send({"t": "switch_refused", "reason": "paused by the operator: no automatic failover ('hsbctl resume', or 'hsbctl promote')"})
            log.warning("switchover_refused", requester=host.name, reason=reason, why="paused")
            return
        a = self.active
        left = max(self.restart_lease_left(host), self.stop_lease_left()) if a is None else 0.0
        if left > 0:
            # after a restart, the active of before has not registered again: a CP before this one
            # may have renewed its lease until it stopped (or was superseded); or the active just
            # stopped normally and still drains: granted once that lease has surely run out, not
            # before (the latest request is the one then taken)
            self.deferred_ask = (host.name, reason, planned, kind, req)
            if self.deferred_grant is None:
                log.info(
                    "switchover_deferred",
                    requester=host.name,
                    recorded_active=self.recorded_active or self.active_stopped_normally,
                    wait_ms=round(left * 1000, 1),
                )
                self.deferred_grant = asyncio.get_running_loop().call_later(left, self._deferred_switchover)
            return
        # The old active's lease (cp.host_lease, renewed only by heartbeats this CP answered)
        # has surely run out once it has been silent for host_timeout. A link closed by the other
        # end is its host's close (it stops serving first) or its process's death, or a reset by
        # something in between (a firewall that lost its state) that the host, alive, never saw:
        # its lease then runs on. So granted at once only when the standby's peer link from it
        # was closed too (two links closed at once: its process is gone), else once the lease it
        # may still hold has surely run out: a reset of one link never makes two actives
        # (found by the slow-links walk-through: both hosts answered /active for 143 ms)
        if a is None:
            why = "promote after normal stop" if self.active_stopped_normally else "no active host"
        elif a.closed and not a.closed_here:
            left = self.lease_left(a)
            claim = self.peer_closed_claim
            peer_closed = peer_closed or (claim is not None and claim[0] == host.name and time.monotonic() - claim[1] < PEER_CLAIM_S)
            # the requester's own process holds no lease as the active: it registered as the
            # standby since (`host_register`)
            own = a.same_process(host)
            if not peer_closed and left > 0 and not (planned and a.released) and not own:  # (a release gives the role up: as below)
                self.deferred_ask = (host.name, reason, planned, kind, req)
                if self.deferred_grant is None:
                    log.info(
                        "switchover_deferred",
                        requester=host.name,
                        recorded_active=a.name,
                        wait_ms=round(left * 1000, 1),
                        why="the active's host link was closed or reset, its peer link to the standby not: waiting out the lease it may still hold",
                    )
                    self.deferred_grant = asyncio.get_running_loop().call_later(left, self._deferred_switchover)
                return
            why = "active host link closed" + (
                "; its peer link closed too"
                if peer_closed
                else "; the requester is that host's own process, registered as the standby since"
                if own
                else f", its lease run out ({self.host_lease:g} s)"
            )
        elif (silent := time.monotonic() - a.last_rx) > self.host_timeout:
            if self.stalled():
                # this process did not run for a while: the active's heartbeats of that time may be
                # unread yet, so its silence is judged again shortly, after a read (as tick() does)
                self.deferred_ask = (host.name, reason, planned, kind, req)
                if self.deferred_grant is None:
                    log.info(
                        "switchover_deferred", requester=host.name, recorded_active=a.name, wait_ms=STALL_RECHECK_S * 1000, why="cp loop stalled"
                    )
                    self.deferred_grant = asyncio.get_running_loop().call_later(STALL_RECHECK_S, self._deferred_switchover)
                return
            why = f"active host link silent for {silent:.3f}s"
        elif planned and a.released:
            why = "planned switchover released by the active"
        else:
            age_ms = (time.monotonic() - a.last_rx) * 1000
            if peer_closed:  # (kept for the host link's close, if it comes soon: PEER_CLAIM_S)
                self.peer_closed_claim = (host.name, time.monotonic())
            what = "its link was closed by the CP" if a.closed else "it is alive on its host link"
            host.send({"t": "switch_refused", "reason": f"active host {a.name}: {what} (heard {age_ms:.0f} ms ago; its lease may still run)"})
            log.info("switchover_refused", requester=host.name, active=a.name, reason=reason)
            return
        self._grant(host, reason, why, kind="promote" if kind == "promote" or why.startswith("promote") else "failover", req=req)

    def stalled(self: CP) -> bool:
        """This process did not run for half a host_timeout just now (tick's stall guard): the
        hosts' frames of that time may still be unread."""
        last = self._last_tick
        return self._tick_skipped or (last is not None and time.monotonic() - last > self.host_timeout / 2)

    def restart_lease_left(self: CP, host: HostProtocol) -> float:
        """Seconds until the lease of the active recorded before a restart (not registered again)
        has surely run out, if `host` is another host; 0 otherwise."""
        ra = self.recorded_active
        if ra is None or ra == host.name or self.recovered_at is None:
            return 0.0
        return self.recovered_at + self.restart_lease_s - time.monotonic()

    def lease_left(self: CP, h: HostProtocol) -> float:
        """Seconds until the lease host `h` may hold has surely run out: it is renewed only from
        heartbeats this CP answered, none sent after the last frame heard from it."""
        return h.last_rx + self.host_lease + LEASE_MARGIN - time.monotonic()

    def stop_lease_left(self: CP) -> float:
        """Seconds until the lease of an active that stopped normally has surely run out (it drains
        what its service has in hand for a while: a promote before then made two actives)."""
        if self.active_stopped_normally is None or self.stopped_at is None:
            return 0.0
        return self.stopped_at + self.host_lease + LEASE_MARGIN - time.monotonic()

    def _deferred_switchover(self: CP) -> None:
        """A deferred request's time: asked again for the standby that made it (on its link now)."""
        ask, self.deferred_ask, self.deferred_grant = self.deferred_ask, None, None
        sb = self.standby
        if ask is not None and sb is not None and not sb.closed and sb.name == ask[0]:
            self.host_switchover(sb, ask[1], ask[2], ask[3], ask[4])

    def cancel_deferred_grant(self: CP, holder: HostProtocol | None = None) -> None:
        """Someone (`holder`) holds the role now, or the CP stops: a deferred request is moot. Its
        standby is told, as a refusal: it asks again only after an answer (or a second later),
        and the CP says `active_lost` once per loss, so a request left unanswered here could
        leave the pair with no active when that holder is lost soon after."""
        ask = self.deferred_ask
        if self.deferred_grant is not None:
            self.deferred_grant.cancel()
        self.deferred_grant = self.deferred_ask = None
        if holder is None:  # the CP stops: no registration as the active taken during its drain
            for timer in self.deferred_registrations.values():  # (a holder: each is refused active_exists when due)
                timer.cancel()
            self.deferred_registrations.clear()
        sb = self.standby
        if ask is not None and sb is not None and not sb.closed and sb.name == ask[0] and sb is not holder:
            why = f"host {holder.name} holds the active role now" if holder is not None else "the CP is stopping"
            sb.send({"t": "switch_refused", "reason": f"the request waited (deferred) and is moot: {why}"})
            log.info("switchover_refused", requester=sb.name, reason=ask[1], why=f"deferred request moot: {why}")

    def _grant(
        self: CP,
        host: HostProtocol,
        reason: str,
        why: str,
        demote: HostProtocol | None = None,
        kind: str = "switchover",
        req: int | None = None,
        refused: dict[str, Any] | None = None,
    ) -> None:
        """Decide: the role is the requester's from now on (a new epoch, so the old active's frames
        are refused); announced, and the sessions flipped, once the epoch is durable (`_granted`).
        `refused`: a handover's terminals whose standby session the standby refused (the record's
        `refused_standby`)."""
        self.settle_flip()
        self.end_handover()  # a planned switchover's wait ends with any grant
        t0 = time.monotonic()
        loss = self.loss
        release_t0 = self.release_t0 if demote is not None else None
        self.release_t0 = None
        old = self.active
        stopped = self.active_stopped_normally if old is None else None  # (the role's last holder: status names it)
        role_before = host.role
        epoch = self._make_active(host)
        if self.standby is host:
            self.standby = None
            host.refused_standby.clear()  # (its refusals were a standby's: made active, it refuses none)
        if old is not None and old is not demote:
            old.fenced = True  # refused from now on, told when the grant is announced
        if demote is not None:
            # no longer the active, not yet the standby: its last frames of the epoch before (an
            # open it was asked for, a reply) are a handover's, refused one by one, not a stale
            # active's (which would fence it, and the switchover would end without a standby)
            demote.role = "demoting"
        if role_before == "demoting":  # granted the role back (`_grantee_lost`): it still stamps
            host.role = "demoting"  # its frames with the epoch before until it hears of this one
        self.announced = False
        self.granting = host
        self.demoting = demote
        self.journal.append(
            ["e", epoch, host.name], lambda: self._granted(host, reason, why, demote, old, t0, loss, release_t0, epoch, kind, req, refused, stopped)
        )

    def _granted(
        self: CP,
        host: HostProtocol,
        reason: str,
        why: str,
        demote: HostProtocol | None,
        old: HostProtocol | None,
        t0: float,
        loss: tuple[float, float] | None,
        release_t0: float | None,
        epoch: int,
        kind: str,
        req: int | None = None,
        refused: dict[str, Any] | None = None,
        stopped: str | None = None,
    ) -> None:
        if epoch != self.epoch:  # a newer epoch was raised while this one was made durable
            log.warning("grant_superseded", host=host.name, epoch=epoch, current=self.epoch)
            if self.granting is host:
                self.granting = self.demoting = None
            self._drop_standby_sessions(host)
            for h in (old, demote):  # told, as a grant that took effect would have told them
                if h is not None and not h.closed and h is not self.active and h is not self.standby:
                    self._fence(h, f"a newer epoch {self.epoch} was raised")
            return
        self.granting = self.demoting = None
        if host.closed:
            self._grantee_lost(host, reason, demote, old)
            return
        host.role = "active"  # (it was "demoting" if granted the role back)
        self.announced = True
        fenced_old: str | None = None
        keep: HostProtocol | None = None  # the demoted active, when its sessions stay as its standby ones
        if demote is not None and old is demote:
            self.handed_over_by = (demote.name, demote.instance or "", self.epoch)
        elif old is None or not old.same_process(host):
            # (kept across the role given again to the process it was granted to, which never read
            # that grant: the old active may still come back as the active, and is told it handed over)
            self.handed_over_by = None
        log.info("switchover_granted", host=host.name, old=old.name if old else None, epoch=self.epoch, reason=reason, why=why)
        granted: dict[str, Any] = {"t": "switch_granted", "epoch": self.epoch, "lease": self.host_lease}
        if req is not None:  # the request this grant answers: the host's lease runs from its sending
            granted["req"] = req
        host.send(granted)
        host.flush()  # written now: the new active gets ready while the sessions flip here
        faults.point("cp.after_grant")
        # the old active hears it now too, not after the flip: the new active's
        # ACTIVE STARTUP on the peer link should not find it still handing over
        if demote is not None and old is demote and not old.closed and self.standby is not None and not self.standby.closed:
            # a standby registered meanwhile (`host_register` refuses one while a planned grant is
            # pending: a bug if it comes to this): the old active cannot be the standby too
            self._fence(old, f"{self.standby.name} is the standby; {host.name} was made active")
            fenced_old = old.name
        elif demote is not None and old is demote and not old.closed:
            # planned: the old active becomes the standby on the same link
            old.role = "standby"
            old.released = False
            old.adopt_gap = []  # (what it named after its adoption was cut is its standby's now, or nobody's)
            self.standby = old
            # keeps: its active sessions become its standby sessions in the flip (hsb.cp.flip),
            # named to it in `standby_kept` frames, instead of 10,000 standby opens after it
            keep = old if old.keeps_standby else None
            old.send({"t": "demoted", "epoch": self.epoch, "active": host.name, "keeps": keep is not None})
            old.flush()
            log.info("host_demoted", host=old.name, epoch=self.epoch)
        elif old is not None and not old.closed:
            self._fence(old, f"host {host.name} was made active at epoch {self.epoch}")
            fenced_old = old.name
        rec = {
            "kind": kind,
            "epoch": self.epoch,
            "from": old.name if old else None,
            "stopped": stopped,  # (from nobody: the active that had stopped normally, if one had)
            "to": host.name,
            "reason": reason,
            "why": why,
            "at": time.time(),
            "planned": demote is not None,
            # last frame heard from the old active -> the CP noticed its loss (EOF, or silence past
            # host_timeout) -> the grant
            "silence_to_loss_ms": None if loss is None or demote is not None else round((loss[0] - loss[1]) * 1000, 3),
            "loss_to_grant_ms": None if loss is None or demote is not None else round((t0 - loss[0]) * 1000, 3),
            "release_to_grant_ms": None if release_t0 is None else round((t0 - release_t0) * 1000, 3),
            # (a planned switchover: the terminals the standby refused a standby session, on the classic path)
            "refused_standby": refused,
        }
        if self.after_switch is not None:  # a switch right after a switch: the older record ends
            self.after_switch.finish(None)
        # replies to what the switch kept waiting are followed from the first slice on
        self.after_switch = AfterSwitch(t0, rec, self.history.switch_done)
        lead = loss[1] if loss is not None and demote is None else release_t0  # silence (or release) -> grant
        self.refuse_too_large(host)  # (nothing to do unless its max_frame is below the CP's)
        # (an undone switchover's terminals are told of a switchover: their sessions stay where they were.
        # A guard: the flip tells `switched` only to a terminal whose standby session is at the
        # host granted, and the active given its role back holds none (no hsbd opens one while it
        # hands over; the CP takes one only from the standby or the host being granted). Were one
        # opened meanwhile, its terminal gets a kind it knows, not "undone": tests/test_cp_reach.py)
        flip_kind = "switchover" if kind == "undone" else kind
        self.flipping = Flip(self, host, flip_kind, t0, self.flip_slice, lambda f: self._flipped(f, rec, t0, lead, fenced_old), keep)
        self.flipping.start()

    def _grantee_lost(self: CP, host: HostProtocol, reason: str, demote: HostProtocol | None, old: HostProtocol | None) -> None:
        """The host a grant named was lost before its epoch was durable. A planned switchover's
        old active, still there, is granted the role back (a new epoch: it serves on, its
        sessions as they were, what waited for it delivered). Otherwise nobody serves: the
        terminals are told, a failover's old active still connected is fenced (as the grant
        would have told it), and a standby that registers is told the active was lost."""
        self._drop_standby_sessions(host)
        if old is not None and old is not demote and not old.closed:
            self._fence(old, f"host {host.name} was made active at epoch {self.epoch}")
        if demote is not None and not demote.closed and not demote.fenced:
            demote.released = False
            demote.known_epoch = demote.epoch  # what it stamps until it hears of the new one
            log.warning("switchover_undone", host=demote.name, lost=host.name, msg="the old active serves on")
            self._grant(demote, f"{host.name} was lost before the {reason} took effect", "granted host lost", kind="undone")
            return
        self.announced = True
        self.loss = (time.monotonic(), host.last_rx)
        if demote is not None and not demote.fenced:
            # the old active's link lost too (this CP stalled, or its network, in the switchover):
            # it released the role, and registering again as the active it is told it handed over
            # (it comes back as the standby: `host_register`), not refused and fenced
            self.handed_over_by = (demote.name, demote.instance or "", self.epoch)
        holder = demote or old
        if holder is not None:
            # the terminals' sessions wait for a host to take them (RETURN_WAIT_S: the grantee,
            # alive, registers again as the standby, and asks): those it holds a standby session
            # for are flipped then, the others closed (hsb.cp.alone), not all closed at once
            self.keep_for_return(holder)
        else:
            self._sessions_lost_without_standby()
        self.active_lost_notified = False  # a standby that registered meanwhile takes over
        self._notify_active_lost(host.name, "eof")

    def _fence(self: CP, h: HostProtocol, why: str) -> None:
        """Tell a host it no longer holds the role (the epoch it knew is stale) and close its link."""
        h.send({"t": "fenced", "epoch": self.epoch, "msg": why})
        h.fenced = True
        h.close()

    def settle_flip(self: CP) -> None:
        """A grant's flip still going is completed now, in one pass, before something changes
        more than one terminal's sessions (a host lost, registering or stopping, a release, a
        grant, an adoption's end: hsb.cp.flip)."""
        f = self.flipping
        if f is not None:
            f.finish()

    def settle_flip_for(self: CP, term: Term) -> None:
        """A grant's flip still going that has not reached `term` flips it alone now, before a
        frame about it alone changes its sessions (its hello or bye, a host opening or closing
        its session); the rest of the flip goes on in its slices (hsb.cp.flip `Flip.one`)."""
        f = self.flipping
        if f is not None:
            f.one(term)

    def _flipped(self: CP, f: Flip, rec: dict[str, Any], t0: float, lead: float | None, fenced_old: str | None) -> None:
        """Every terminal flipped: the switch's record, its history entry and the notices owed."""
        if self.flipping is f:
            self.flipping = None
        self.counters["classic_closed"] += f.classic
        # an undone switchover (its grantee lost, the role back to the active that asked) is
        # neither: no other host served, and an alert on failovers must not fire for it
        self.counters["switchovers_undone" if rec["kind"] == "undone" else "switchovers" if rec["planned"] else "failovers"] += 1
        rec.update(
            switch_ms=round((time.monotonic() - t0) * 1000, 3),
            switched=f.switched,
            standby_kept=f.kept,
            classic=f.classic,
            requested=f.requested,
            slices=f.slices,
            ahead=f.ahead,
            in_flight_terminals=f.flight_terms,
            in_flight_messages=f.flight_msgs,
        )
        self.switchovers.append(rec)
        del self.switchovers[:-50]
        log.info("switchover_complete", **rec)
        self.history.add(
            {
                "kind": rec["kind"],
                "at": rec["at"],
                "epoch": f.epoch,
                "from": rec["from"],
                "stopped": rec["stopped"],
                "to": rec["to"],
                "reason": rec["reason"],
                "why": rec["why"],
                "duration_ms": None if lead is None else round((t0 - lead) * 1000, 3),
                "switched": f.switched,
                "classic": f.classic,
                "refused_standby": History.refused(rec["refused_standby"]),
            }
        )
        if fenced_old is not None:
            self.history.add({"kind": "fence", "at": rec["at"], "epoch": f.epoch, "host": fenced_old, "reason": f"{rec['to']} was made active"})
        a = self.after_switch
        if a is not None and a.rec is rec and a.counted(f.flight_terms):
            self.after_switch = None
        self.notices.owe(f.terms, rec, t0, wait_for_reply=f.waiting > 0)  # the switched ones have a notice set

    def _served_after_switch(self: CP, term: Term, held: Held) -> None:
        """A reply went out after a grant. The CP's own error for a message too large for the new
        active (`_too_large_for`) is no service by it: it ends that message's wait, and is neither
        the first reply the switch notices wait for nor a pause."""
        a = self.after_switch
        assert a is not None
        now = time.monotonic()
        served = not held.made_here
        if served and a.rec["first_reply_ms"] is None:
            a.rec["first_reply_ms"] = round((now - a.t0) * 1000, 3)
            self.notices.first_reply()
        if a.reply(term, held.t, held.redelivered, now, served):
            self.after_switch = None
