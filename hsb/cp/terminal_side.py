"""The CP's decisions about terminals (SPEC §5.5-§5.7): logon and resume, holding, the
journal-before-acknowledge rule, delivery to the active, bounds and back-pressure (the replies
and their confirmation: hsb.cp.replies; a message too large for the host's frames:
hsb.cp.pair_frames).

A mixin of `hsb.cp.core.CP` (the one place that decides): the state is the CP's; this module
only keeps the terminal half of the rules in a file of its own.

The journal rule (hsb.cp.journal): a message is acknowledged only once its record is durable,
and its reply goes to the terminal only after that ack. It is handed to the active at once
(`_deliver_early`, to a host that marks repeats itself), every other path delivers only durable
messages. A reply to a terminal that does not resume goes out once the record that settles its
message ("d") is durable; a resuming terminal's goes at once, its "r" record lazily. With
`durability = "none"` the journal calls back at once and all of this is the memory-only path.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.cp.state import Held, Term
from hsb.wire.framing import ProtocolError, data_size

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.terminal_link import TerminalProtocol

log = structlog.get_logger("hsb.cp")

SWEEP_EVERY_S, SWEEP_MAX = 1.0, 1000  # connections not read: this many peers asked after a second at most (two getsockopt each)
WELCOME_WAIT_S = 0.1  # a welcome waits this long at most for the session's opening to go with it
TOTAL_LOW = 0.9  # past held_total_bytes, the CP's own bound holds until the data is below this share of it


class TerminalSide:
    """Terminal rules of the CP; mixed into `CP` (see the module docstring)."""

    _unread_next: float  # when sweep_unread asks again (set in CP.__init__)

    # ------------------------------------------------------------------ logon and resume
    def terminal_hello(self: CP, proto: TerminalProtocol, name: str, last_reply: int | None = None) -> None:
        term = self.terms.get(name)
        if term is None:
            log.warning("terminal_refused", terminal=name[:64], peer=proto.peer, reason="unknown_terminal")
            proto.close_with_error("unknown_terminal", f"terminal {name[:64]!r} is not in the CP's terminal table")
            return
        self.settle_flip_for(term)
        if term.conn is not None and not term.conn.closed and term.conn.peer_gone():
            # not read (at a bound, say), so its reset or close was not seen yet: it went, and this
            # is its reconnect (else refused as already connected until the bound is left)
            self._connection_gone(term, "reconnect")
        if term.conn is not None and not term.conn.closed:
            # its terminal back on a new connection, most likely, the old one dead without a word
            # (the terminal's machine restarted, a reset lost on the way): the kernel is asked to
            # probe the old one's peer now, so a dead one is gone by the terminal's next try
            term.conn.probe_peer()
            log.warning("terminal_refused", terminal=name, peer=proto.peer, reason="already_connected", connected_from=term.conn.peer)
            proto.close_with_error(
                "already_connected",
                f"terminal {name!r} is already connected from {term.conn.peer} (that connection's peer is being asked:"
                " if it is gone, try again in a second or two)",
            )
            return
        if term.conn is not None:  # closed here and not gone yet (its queued bytes still going out)
            self.terminal_lost(term)
        term.conn = proto
        term.leaving = False  # (what it left behind stays its logoff's: `_for_nobody`)
        proto.term = term
        proto.reply_base = term.reply_frames
        self.connected += 1
        # last_acked: only what is durable was acknowledged; the rest the terminal sends again.
        # With an active to ask, the welcome waits (WELCOME_WAIT_S at most) for the session's
        # opening and both go in one write: in a logon storm that is a write per terminal less.
        active = self.active if self.active is not None and self.active.usable and self.announced else None
        welcome = {"t": "welcome", "terminal": name, "last_acked": term.durable_acked, "cp": self.instance}
        proto.welcome_acked = term.durable_acked
        if term.last_acked > term.durable_acked:  # (rare: a connection gone before its group commit)
            proto.unacked_at_welcome = {mid: h.data for mid, h in term.held.items() if mid > term.durable_acked}
        adopted = term.active is not None and active is not None and term.active.host is active
        if term.active is not None and (not term.active.host.usable or term.active.host is not self.active):
            # adopted for it by an active since lost (or whose role a grant is giving away), and
            # kept for a flip: this connection was never told of that session, so the flip must
            # open one (or ask for one), not say `switched`
            term.active = None
        if active is not None and not adopted:
            proto.send_soon(welcome, WELCOME_WAIT_S)
        else:
            proto.send(welcome)
            if adopted:  # its session outlived the CP (hsb.cp.adopt): open at once, nothing to ask
                proto.send({"t": "session", "state": "open", "epoch": self.epoch})
            elif term.active is not None:
                # kept for it with the host a grant not yet announced gives the role back to (a
                # planned switchover undone): the flip that follows tells it, as it tells the others
                proto.session_untold = term.active
        log.debug("terminal_connected", terminal=name, peer=proto.peer, last_reply=last_reply)
        if last_reply is not None:
            term.resuming = True
            below = proto.first or 0  # (an earlier run's ids: the hello's claim covers none below its `first`)
            self.terminal_confirm(term, last_reply, first=below)  # (no further than a reply kept and never sent)
            for kept in sorted(term.replies.values(), key=lambda k: k.id):  # STSN: what it lacks, marked
                if kept.id <= last_reply and kept.sent and kept.id >= below:
                    # it holds it: kept only because the hello was taken short of a message still
                    # unanswered (or a reply never sent, or one below `first`) below it: the next
                    # confirm covers it. One never sent goes whatever the hello said: its claim may
                    # cover an earlier run's ids, and a recovered one may be held already (it
                    # ignores it, marked); so does one below `first`, an earlier run's, which may
                    # have been written to a connection that dropped before the terminal read it
                    continue
                proto.send({"t": "reply", "id": kept.id, "data": kept.data, "resent": True})
                kept.sent = True
                term.reply_frames += 1
                kept.at = term.reply_frames
                self.counters["resent"] += 1
        else:
            term.resuming = False
            if term.replies:  # kept for it (owed while it was away, or from when it resumed): each
                # sent once, marked (it may hold one from when it resumed), once settled
                self._send_kept_once(term)
        self._backpressure(term)
        if adopted:
            self.owe_if_handing_over(term)  # (not connected at the handover: its standby session is waited for now)
            if active is not None and not active.released:
                self._deliver_pending(term, active)
        elif active is not None and not active.adopting:  # else the announcement, or the adoption's end, asks
            active.request_session(term)

    # ------------------------------------------------------------------ messages
    def terminal_msg(self: CP, term: Term, mid: int, data: Any, resent: bool = False) -> None:
        conn = term.conn
        first_here = conn is None or mid > conn.sent_upto  # (not a repeat on this connection)
        if conn is not None and first_here:
            conn.sent_upto = mid
        noted = conn.unacked_at_welcome if conn is not None and first_here else None
        if noted and conn is not None and mid >= max(noted):
            conn.unacked_at_welcome = {}  # (none of those ids can come first on this connection after this one)
        if mid <= term.last_acked:
            held = term.held.get(mid)
            before = held.data if held is not None else noted.get(mid, data) if noted else data
            if before != data:
                if first_here and conn is not None and mid <= conn.welcome_acked:
                    pass  # its welcome said it was acknowledged: a repeat of an acknowledged id (below)
                elif first_here or mid > term.durable_acked:
                    # another message under an id held from an earlier connection, unacknowledged when
                    # this one was welcomed (a terminal that lost what it sent and went on from that
                    # last_acked; its ack may have reached this connection since, unseen when this was
                    # sent), or a repeat here before its ack: taken for a resend, it would be
                    # acknowledged and answered with the other message's reply, never processed
                    raise ProtocolError(
                        "id_reused",
                        f"msg {mid}: another message with this id was sent before and not acknowledged when this"
                        " connection was welcomed; connect again (the welcome then says whether it was acknowledged) and go on above it",
                    )
            if mid <= term.durable_acked:  # a repeat of an acknowledged id: acknowledged again, not delivered twice (SPEC §6.2)
                self.counters["reacks"] += 1
                self._tell(term, {"t": "ack", "id": mid})
                return
            if held is None:
                # never accepted (held until durable, and answered only after): an id below one
                # accepted, which ids may not be (SPEC §6.2); dropped silently, the terminal would
                # take it for acknowledged once a welcome said a higher last_acked
                raise ProtocolError("bad_id", f"msg {mid}: ids must increase (the last accepted is {term.last_acked})")
            return  # accepted and not yet durable: its ack is on its way
        term.last_acked = mid
        if resent and self.follows_a_cp:
            # sent before and never acknowledged, new here: an earlier CP process may have handed
            # it to the active before it died (early delivery), and that host's memory of it may
            # be gone too (restarted, replaced): marked redelivered wherever it goes first
            self.counters["resent_unknown"] += 1
            if mid > term.handed_floor:
                term.handed_floor = mid
        held = Held(mid, data, time.monotonic())
        if not term.held:
            self.holding[term] = None
        else:
            held.prev = next(reversed(term.held))  # the message before it, still held
        term.held[mid] = held
        size = data_size(data)
        term.held_bytes += size
        self.counts.held_data += size
        self.counts.held += 1
        held.seg = self.journal.append(["a", term.name, mid, data], lambda: self._accepted(term, held))
        self.journal.pin(held.seg)
        if term.leaving:  # sent after its bye, on the same connection: the logoff's too
            self.logged_off(term)
        else:
            self._deliver_early(term, held)
        self._backpressure(term)

    def _deliver_early(self: CP, term: Term, held: Held) -> None:
        """Hand a message to the active while its record is being made durable, so that the
        group commit and the service's work overlap. Its ack still waits for the record, and so
        does its reply (`host_reply` defers one that comes first). Only to a host that marks an
        id it handed to its service before as redelivered (`marks_repeats`): if this CP dies
        before the record is durable, the terminal sends the message again as a new one."""
        j = self.journal
        if not j.durable or j.state != "ok" or j.superseded is not None:
            return  # (memory only: nothing to overlap; a journal that cannot write: nothing ahead of it)
        s = term.active
        a = self._taking()
        if s is None or a is None or s.host is not a or not a.marks_repeats:
            return
        if not a.adopts or self.resume_window <= 0:
            return  # (without adoption a restarted CP cannot learn what the active had: see handed_floor)
        if not self._follows_delivered(term, held):
            return  # an earlier one is not with the active yet: this one follows it
        self._deliver(term, held, a)
        if held.delivered_epoch != self.epoch:
            return  # answered with an error instead (too large for this host)
        self.counters["delivered_early"] += 1
        if faults.armed("cp.reply_before_durable"):
            self.journal.hold()  # its record stays off the disk until the reply has come

    def _taking(self: CP) -> HostProtocol | None:
        """The active, if messages may be handed to it now (usable, not releasing its role, its
        epoch announced); else None."""
        a = self.active
        return a if a is not None and a.usable and not a.released and self.announced else None

    def _follows_delivered(self: CP, term: Term, held: Held) -> bool:
        """Every earlier held message of the terminal is with the active of this epoch: its
        predecessor is at or below the terminal's delivery mark (every path delivers a
        terminal's messages in id order, so the delivered ones are a prefix). Cautious: a
        predecessor answered but not delivered at this epoch says no."""
        return held.prev == 0 or (term.deliv_epoch == self.epoch and held.prev <= term.deliv_upto)

    def _accepted(self: CP, term: Term, held: Held) -> None:
        """The message's record is durable: acknowledge it, and hand it to the active (or act on
        the reply that came for it meanwhile). Not before a host has accepted this CP's journal
        (hsb.cp.first_host): until then it waits, as if its record were not durable yet."""
        if self.ack_waits_for_a_host(term, held):
            return
        if held.id > term.durable_acked:
            term.durable_acked = held.id
        self.counters["acks"] += 1
        if term.conn is not None:
            self._tell(term, {"t": "ack", "id": held.id})
        if held.early is not None:
            data, held.early = held.early, None
            if term.held.get(held.id) is held and not held.replying:
                self._reply(term, held, data)
            return
        s = term.active
        a = self._taking()
        if a is None or term.held.get(held.id) is not held:
            return  # (no active to hand it to now: the grant's flip, or the next active, does)
        if s is not None and s.host is a:
            if held.delivered_epoch != self.epoch:
                if self._follows_delivered(term, held):
                    self._deliver(term, held, a)
                else:  # an earlier one is not with this active yet (it waited for a flip, say): in order, before it
                    self._deliver_pending(term, a, held.id)
        elif term.leaving or held.id <= term.logoff_upto:  # logged off after sending it, no session: still answered, in order
            self._answer_leaving(term, a)

    def terminal_bye(self: CP, term: Term) -> None:
        self.settle_flip_for(term)
        log.debug("terminal_logoff", terminal=term.name)
        self.logged_off(term)
        term.notice = None  # logged off: no session news any more
        if term.active is None:
            term.bye_unannounced = True
        self._close_active_session(term, "logoff")
        if not term.held and term.conn is not None:
            term.conn.close()
        a = self._taking()
        if term.held and a is not None:
            self._answer_leaving(term, a)  # what never went (it had no session) goes now
        self.owed_no_more(term)

    def logged_off(self: CP, term: Term) -> None:
        """Its logoff: what it holds is answered without it, and so after a CP restart too (its
        "o" record; lazy: every record that settles those messages comes after it, so a crash
        that loses it came before any of them, as if the bye had not been read)."""
        term.leaving = True
        term.bye_upto = term.last_acked
        sb = term.standby
        if sb is not None:  # that run's: its host closes it once it reads of the logoff (the ring)
            sb.stale = True
        if term.held or term.replies:
            self.journal.append(["o", term.name, term.last_acked], lazy=True)

    def _answer_leaving(self: CP, term: Term, a: HostProtocol) -> None:
        """A terminal that logged off still holds messages: every one not yet with the active
        goes to it, in order (its connection closes once all are answered, `_settled`)."""
        self.settle_flip_for(term)
        self.deliver_logoffs(term, a)

    def terminal_lost(self: CP, term: Term) -> None:
        # no settle_flip(_for): a terminal not yet flipped that goes is closed by the flip when reached
        # (its old active is no longer the active, so nothing is sent for it here)
        conn = term.conn
        if conn is None:
            return
        term.conn = None
        term.notice = None  # a new connection gets a new welcome and session state instead
        self.owed_no_more(term)
        term.paused = False
        self.connected -= 1
        why = "logoff" if term.leaving else conn.why_ended()
        self.drops.add(why)
        log.debug("terminal_disconnected", terminal=term.name, held=len(term.held), why=why)
        self._close_active_session(term, "logoff" if term.leaving else "disconnect")
        if term.leaving:  # what it sent before its bye is answered to nobody from now on
            term.logoff_upto = max(term.logoff_upto, term.bye_upto)
        if term.leaving and term.replies:  # logged off and gone: it confirms nothing more
            self._settle_unconfirmable(term)
            if term.replies and min(term.replies) <= term.logoff_upto:
                # above a message still unanswered (no "c" may pass it): forgotten without a
                # record; a restart forgets them too (restore), never resends them to a later run
                self._drop_replies(term, term.logoff_upto, record=False)
        a = self._taking()
        if self.logoff_held(term) and a is not None:
            # a logoff's messages not with this active yet (a flip's classic path closed the
            # connection, say): they go now, nobody will come back for them
            self.deliver_logoffs(term, a)

    @staticmethod
    def _logged_off(term: Term) -> bool:
        """It said bye and its connection is gone: a reply for it has nobody to go to (it logs
        on again, if ever, as a new run: replies of before would be strangers to it)."""
        return term.leaving and term.conn is None

    @staticmethod
    def _for_nobody(term: Term, mid: int) -> bool:
        """The reply to message `mid` has nobody to go to: the terminal sent it before a bye
        whose connection is gone (`terminal_lost`), whether or not it has logged on since (a new
        run knows nothing of it). The same after a CP restart (hsb.cp.journal_side.restore)."""
        if mid <= term.logoff_upto:
            return True
        # its bye's connection closed by the CP (an idle timeout, a protocol error) and not yet
        # gone: as good as gone for a reply
        return term.leaving and mid <= term.bye_upto and (term.conn is None or term.conn.closed)

    def sweep_unread(self: CP, now: float) -> None:
        """Once a second: ask the kernel after the peers of up to SWEEP_MAX connections not read
        (their held bound), in turn; one whose terminal reset or closed it, or that TCP keepalive
        gave up on, is lost now (a reading connection sees that at once; one not read never would,
        until its bound is left)."""
        if now < self._unread_next or not (self._unread_due or self.counts.paused_terms):
            return
        self._unread_next = now + SWEEP_EVERY_S
        due = self._unread_due
        if not due:
            due.extend(self.counts.paused_terms)
        for _ in range(min(SWEEP_MAX, len(due))):
            term = due.popleft()
            conn = term.conn
            if conn is not None and term.paused and conn.reading_paused and not conn.closed and conn.peer_gone():
                self._connection_gone(term, "sweep")

    def _connection_gone(self: CP, term: Term, at: str) -> None:
        """`term`'s connection, not read, was closed or reset by its terminal (or given up on by
        keepalive): lost now, said and counted; a defect on the way drops that connection only."""
        conn = term.conn
        assert conn is not None
        self.counters["connections_gone"] += 1
        log.info("terminal_connection_gone", terminal=term.name, peer=conn.peer, at=at, msg="its unread connection had been closed by the peer")
        try:
            conn.gone()
        except Exception:  # (inside the tick, a reply or a logon: none of them may stop for it)
            log.exception("terminal_lost_failed", terminal=term.name, peer=conn.peer)
            conn.abort()

    def _close_active_session(self: CP, term: Term, reason: str) -> None:
        s = term.active
        term.active = None
        if s is not None:
            self.refusal_ends(term)
        # (the old active of a planned switchover whose grant is being made durable still holds
        # it: told too, or the switchover undone would give it the role back with it still open)
        if s is not None and (s.host is self.active or s.host is self.demoting) and s.host.usable:
            s.host.send({"t": "session_closed", "terminal": term.name, "reason": reason})

    def _backpressure(self: CP, term: Term) -> None:
        """At the bound of held messages, stop reading a terminal; at the bound of kept replies,
        take its confirmations only (they are what brings the replies below it: a connection
        not read at all would wait for ever); below both, read it as usual."""
        bound, size = self.held_bound, self.held_bytes
        self._follow_total()
        own_over = len(term.held) >= bound or term.held_bytes >= size
        slow = self.total_over and bool(term.held) and self._settles_without(term)
        held_over = own_over or slow
        kept_over = len(term.replies) >= bound or term.kept_bytes >= size
        if slow:
            self.slowed.add(term)
        elif self.slowed:
            self.slowed.discard(term)
        conn = term.conn
        if conn is None:
            return
        if kept_over or conn.parked is not None:  # (every message and reply passes here)
            conn.park(kept_over)
        if (held_over or kept_over) and not term.paused:
            term.paused = True
            (log.info if own_over or kept_over else log.debug)(  # (the CP's own bound alone: its events say it)
                "terminal_backpressure",
                terminal=term.name,
                held=len(term.held),
                kept_replies=len(term.replies),
                held_bytes=term.held_bytes,
                kept_bytes=term.kept_bytes,
                cp_held_bytes=self.counts.held_data,
            )
        elif not (held_over or kept_over) and term.paused:
            term.paused = False
            if not conn.bye_waiting:  # (its bye waits in the logoff storm's queue: read in its turn)
                conn.resume_reading()
        if held_over:
            conn.pause_reading()
        elif kept_over and not conn.bye_waiting:  # only the kept replies at the bound: read on, for the confirmations
            conn.resume_reading()

    def _follow_total(self: CP) -> None:
        """The CP's own bound crossed either way since last looked at: noted, and said."""
        if self.total_over is not self._over_total():
            self._total_bound(not self.total_over)

    def _over_total(self: CP) -> bool:
        """Whether the CP's own bound holds now: from `held_total_bytes` until below TOTAL_LOW of it."""
        b = self.counts.held_data  # (not kept replies: only confirmations shrink those, not reading less)
        return b >= self.held_total_bytes * TOTAL_LOW if self.total_over else b >= self.held_total_bytes

    def _settles_without(self: CP, term: Term) -> bool:
        """Whether `term`'s held messages are answered without it being read: it has its session
        at the active, or there is no active now (they wait for the next one either way). A
        terminal without a session at a serving active is read: its messages go only once a
        session opens, or with its logoff or its next hello, and it is bounded by held_bound /
        held_bytes alone. (A session the active refuses or closes rechecks its terminal:
        `session_gone`.)"""
        a = self.active
        if a is None or not a.usable:
            return True
        s = term.active
        return s is not None and s.host is a

    def session_gone(self: CP, term: Term) -> None:
        """The active refused or closed `term`'s session: held for the CP's own bound, it is read
        again (its messages now go only with its logoff or a new session); a handover waiting for
        its standby session waits no more."""
        if term in self.slowed:
            self._backpressure(term)
        self.refusal_ends(term)
        self.owed_no_more(term)

    def recheck_slowed(self: CP) -> None:
        """A reload changed the bounds: the terminals not read for one of them (the CP's own, a
        terminal's held_bound or held_bytes, its kept replies), looked at again. Those held at
        their own bound were let go only when one of their messages settled, which a terminal
        whose session was refused waits for in vain: its logoff is not read."""
        self._follow_total()
        for term in [t for t in self.terms.values() if t.paused or t in self.slowed or (t.conn is not None and t.conn.parked is not None)]:
            self._backpressure(term)

    def _total_bound(self: CP, over: bool) -> None:
        """The data held for all terminals together crossed `held_total_bytes` (NCP's
        slowdown: a front end short of buffers stops reading its terminals, it drops nothing)."""
        self.total_over = over
        c = self.counts
        if over:
            log.warning(
                "cp_held_total_reached",
                held_bytes=c.held_data,
                bound=self.held_total_bytes,
                held=c.held,
                kept_replies=c.kept,
                msg="terminals whose messages wait for the active are not read until it answers them; nothing is dropped"
                " (raise [cp] held_total_bytes if this machine has the memory)",
            )
        else:
            log.info("cp_held_total_below", held_bytes=c.held_data, bound=self.held_total_bytes)

    # ------------------------------------------------------------------ delivery to the active
    def _deliver(self: CP, term: Term, held: Held, host: HostProtocol) -> None:
        if host.max_frame and host.max_frame < self.cfg.cp.max_frame and self._too_large_for(term, held, host):
            return
        redelivered = held.delivered_epoch != 0 or held.id <= term.handed_floor
        held.delivered_epoch = self.epoch
        held.redelivered = redelivered
        self.counters["redelivered" if redelivered else "delivered"] += 1
        host.deliver_held(term.name, held, redelivered)
        term.delivered(held.id, self.epoch)

    @staticmethod
    def logoff_held(term: Term) -> bool:
        """Messages of a logoff are held (`_for_nobody`): they go to the active without a session."""
        return bool(term.held) and (term.leaving or next(iter(term.held)) <= term.logoff_upto)

    def deliver_logoffs(self: CP, term: Term, host: HostProtocol) -> int:
        """A logoff's held messages to `host`, in order, without a session (a later run's own,
        above them, wait for its session); how many went."""
        return self._deliver_pending(term, host, term.bye_upto if term.leaving else term.logoff_upto)

    def _deliver_pending(self: CP, term: Term, host: HostProtocol, upto: int | None = None) -> int:
        """`term`'s held messages not yet with `host` at this epoch to it, in order; how many went."""
        n = 0
        for held in list(term.held.values()):
            if upto is not None and held.id > upto:
                break
            if held.delivered_epoch != self.epoch and held.id <= term.durable_acked and not held.replying:
                self._deliver(term, held, host)
                n += 1
                faults.point("cp.mid_redelivery")
        return n

    def _tell(self: CP, term: Term, msg: dict[str, Any]) -> None:
        """Send to the terminal's connection; a switch notice still owed to it goes first."""
        conn = term.conn
        if conn is None:
            return
        self._send_owed_notice(term)
        conn.send(msg)

    @staticmethod
    def _send_owed_notice(term: Term) -> None:
        if term.notice is not None and term.conn is not None:
            term.conn.send_raw(term.notice)
            term.notice = None

    def _lost_if_unread_gone(self: CP, term: Term) -> None:
        """Its connection, not read (its held bound), gone by the kernel's word: lost now."""
        conn = term.conn
        if conn is not None and conn.reading_paused and not conn.closed and conn.peer_gone():
            self._connection_gone(term, "reply")

    def _to_terminal(self: CP, term: Term, msg: dict[str, Any]) -> bool:
        """Whether `msg` was written to the terminal's connection (a kept reply is `sent` only
        then); one not written is kept by the caller (`_reply`, `_replied`: an "r" record)."""
        # not read (its held bound): a reply written into a connection its terminal left is lost
        self._lost_if_unread_gone(term)
        if term.conn is not None and not term.conn.closed:
            self._tell(term, msg)
            term.reply_frames += 1  # (a confirm's `seen` counts them)
            return True
        if msg["t"] == "reply" and self._logged_off(term):
            self.counters["replies_after_logoff"] += 1  # answered at the active; nobody to tell
        return False
