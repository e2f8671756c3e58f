"""The flip at a grant (SPEC §5.4): every standby session of the new active becomes its
terminal's active session, and what each terminal holds is re-delivered to the new active.

Owns the pass over the terminals, a slice at a time (`[cp] flip_slice` terminals per turn
of the event loop, about 1-2 µs each, each message handed over counting as one more terminal:
4,096 terminals holding 256 each were one slice of 0.4-0.6 s, bench/flip_backlog.py), so heartbeats, acknowledgements and the new active's
first replies keep flowing while 100,000 sessions flip. Between slices a terminal not yet
reached is exactly as every terminal was between the old active's loss and the grant: its
messages are held (and acknowledged) and go out with its re-delivery when its turn comes.
The frequent, safe frames (messages, confirmations, replies of the new active, heartbeats, a
terminal going away) are handled in between as they come. A frame about one terminal that
touches its sessions (its hello or bye, a host opening, refusing or closing its session, its
adoption, its removal by a reload) first flips that terminal alone, ahead of the pass
(`CP.settle_flip_for`, `Flip.one`): the same work the pass does for it, its re-delivery
included; the pass then passes it over (`Term.flipped`, the epoch of the flip that reached it).
One terminal logging on during a flip of 100,000 costs that terminal, not the whole pass.
What changes more than one terminal's sessions (the active or standby host lost or stopping,
a new host registering, a release, another grant, an adoption's end) first completes the flip
(`CP.settle_flip`), which is then one pass, as a flip always was before slicing.

When few terminals hold messages (those in flight at the grant, at most one terminal in
FIRST_SHARE), the pass takes them first (`CP.holding`), so what was kept waiting by the switch
goes to the new active in the first slice instead of when each terminal's turn in the table
comes; the pass meets them again later and passes them over, as it does those flipped ahead.

Re-delivery is batched: each slice's messages go to the new active in `deliver_batch`
frames joined from the items kept encoded since each message's first delivery
(hsb.cp.deliver), so the switch does not encode 100,000 messages again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.cp import deliver as dv
from hsb.wire.framing import encode

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.state import Term

log = structlog.get_logger("hsb.cp")

FIRST_SHARE = 8  # terminals holding messages go first when at most 1 in this many holds any
KEPT_PER_FRAME = 1024  # names in one standby_kept frame (a pass finished at once may name them all)


class Flip:
    """One grant's pass over the terminals; `done` is called once, when every terminal is flipped."""

    __slots__ = (
        "cp",
        "host",
        "epoch",
        "t0",
        "terms",
        "i",
        "slice_n",
        "switched",
        "classic",
        "requested",
        "waiting",
        "flight_terms",
        "flight_msgs",
        "switched_frame",
        "opened_frame",
        "handle",
        "done",
        "finished",
        "running",
        "slices",
        "ahead",
        "keep",
        "kept",
    )

    def __init__(
        self, cp: CP, host: HostProtocol, kind: str, t0: float, slice_n: int, done: Callable[[Flip], None], keep: HostProtocol | None = None
    ) -> None:
        self.cp = cp
        self.host = host
        self.epoch = cp.epoch
        self.t0 = t0  # the grant (monotonic): messages held from before it are in flight
        terms = list(cp.terms.values())
        holding = cp.holding
        if holding and len(holding) * FIRST_SHARE <= len(terms):
            # the few terminals holding messages (in flight at the grant) go first, so their
            # re-delivery leaves in the first slice, not when their turn in the table comes;
            # the pass then meets them again, already switched, and leaves them as they are
            first = [t for t in holding if (sb := t._standby) is not None and sb.host is host and cp.terms.get(t.name) is t]
            terms = first + terms
        self.terms = terms
        self.i = 0
        self.slice_n = slice_n
        self.switched = self.classic = self.requested = 0
        self.waiting = 0  # switched terminals with messages in flight from before the grant
        self.flight_terms = self.flight_msgs = 0  # held at the grant: waiting + classic ones
        self.switched_frame = encode({"t": "switched", "epoch": self.epoch, "kind": kind})  # one encoding for all
        self.opened_frame = encode({"t": "session", "state": "open", "epoch": self.epoch})
        self.handle: asyncio.Handle | None = None
        self.done = done
        self.finished = False
        self.running = False  # a close inside a slice can call back into the CP: no pass within a pass
        self.slices = 0  # passes it took (1: at once; the last may have been a settle_flip)
        self.ahead = 0  # terminals flipped alone, ahead of the pass, for a frame of their own (`one`)
        # a planned switchover: the demoted active's sessions become its standby sessions, named
        # to it after each slice (`standby_kept`), the last frame marked
        self.keep = keep
        self.kept = 0

    def start(self) -> None:
        """The first slice now; the rest on later turns of the loop."""
        self._turn()

    def _turn(self) -> None:
        self.handle = None
        if not self.run(self.slice_n):
            self.handle = asyncio.get_running_loop().call_soon(self._turn)

    def finish(self) -> None:
        """Flip whatever is left now, in one pass (something is about to change sessions)."""
        if self.running:  # a close inside a slice calling back: cannot happen on asyncio or uvloop
            log.error("flip_settled_from_within_a_slice", epoch=self.epoch, at=self.i, of=len(self.terms))
            return  # the slice running goes on, and the next is still scheduled
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if not self.finished:
            self.run(None)

    def one(self, term: Term) -> None:
        """Flip `term` alone now, if the pass has not reached it (a frame about it is to be
        handled: its hello or bye, a host opening or closing its session): what the pass would do
        for it, its held messages handed over in order; the pass passes it over when it comes."""
        if self.finished or term.flipped == self.epoch:
            return
        if self.running:  # as in finish(): cannot happen on asyncio or uvloop
            log.error("flip_settled_from_within_a_slice", epoch=self.epoch, at=self.i, of=len(self.terms), terminal=term.name)
            return
        self.running = True
        try:
            self._run(None, term)
        finally:
            self.running = False
        self.ahead += 1
        log.debug("terminal_flipped_ahead", terminal=term.name, epoch=self.epoch, at=self.i, of=len(self.terms))

    def run(self, budget: int | None) -> bool:
        """Flip up to `budget` more terminals (None: all); True once every terminal is done."""
        self.running = True
        self.slices += 1
        try:
            return self._run(budget)
        finally:
            self.running = False

    def _failed(self, term: Any, at: int) -> None:
        """Flipping `term` raised (a bug): logged, and the pass goes on with the next terminal.
        Stopped there, it would have left every terminal after it without its new active
        session, and the CP waiting for a flip that never ends."""
        log.exception(
            "flip_terminal_failed",
            epoch=self.epoch,
            terminal=term.name,
            at=at,
            of=len(self.terms),
            msg="a bug: this terminal's sessions may be wrong (it logs on again to mend them); the flip goes on",
        )

    def _send_failed(self, host: Any, what: str) -> None:
        """Sending a slice's frames to `host` raised (a bug): logged, and its link closed, as if
        lost, so that what it missed is not taken for delivered: the held messages go again,
        marked redelivered, to the next active, as after any lost link. Raised out of the
        slice, it stopped the flip for good, as a terminal's error did (`_failed`)."""
        log.exception(
            "flip_send_failed",
            epoch=self.epoch,
            host=host.name,
            at=self.i,
            of=len(self.terms),
            msg=f"a bug: {what} could not be sent to {host.name}; its link is closed (it connects again) and the flip goes on",
        )
        host.abort()  # (not close(): its flush would write, and raise, again)

    def _run(self, budget: int | None, one: Term | None = None) -> bool:
        """Up to `budget` more terminals of the pass (None: all), or `one` terminal alone, ahead
        of it (the pass's place and end untouched)."""
        whole = one is None
        terms = self.terms if one is None else [one]
        start = self.i if whole else 0
        end = len(terms) if budget is None else min(len(terms), start + budget)
        host = self.host
        epoch = self.epoch
        t0 = self.t0
        cp = self.cp
        switched_frame, opened_frame = self.switched_frame, self.opened_frame
        limit = host.deliver_batch_bytes  # 0: a host of before, (terminal, id, data, redelivered) each
        out: list[Any] = []  # else encoded items and their flags (hsb.cp.deliver)
        again_n = biggest = 0
        TRUE, FALSE = dv.TRUE, dv.FALSE
        # its link gone (a settle_flip from host_lost): sessions still move, for the loss that
        # follows to close them, but nothing is marked delivered to it, for nothing reaches it
        # (a message no host had would go to the next active marked redelivered)
        dead = host.closed
        mid_switch = faults.armed("cp.mid_switch")
        mid_redelivery = faults.armed("cp.mid_redelivery")
        send_owed = cp._send_owed_notice
        counts = cp.counts
        i = start
        switched = waiting = flight_msgs = 0  # this slice's; added to the totals at its end
        gone = opened = 0  # standby sessions taken, active sessions added: the CP's totals at the end
        keep = self.keep if self.keep is not None and not self.keep.closed and cp.standby is self.keep else None
        kept: list[str] = []
        work = 0  # terminals passed and messages handed over: a slice's budget counts both
        try:
            while i < end:
                if budget is not None and work >= budget:
                    break  # (a terminal holding 256 messages costs as much as 256 without any)
                term = terms[i]
                i += 1
                work += 1
                try:
                    if term.flipped == epoch:
                        continue  # flipped already: ahead of the pass (`one`), or met first among the holders
                    term.flipped = epoch
                    # the sessions' slots directly, the totals kept here: properties cost ~30 ms at 100,000
                    sb = term._standby
                    if sb is not None and sb.host is host:
                        term._standby = None
                        gone += 1
                        if term.conn is not None and not term.leaving and not sb.stale:
                            # a session closed by a normal stop reopens; a live one is switched.
                            # The notice is owed, not written: it goes out ahead of the next frame
                            # to that terminal (a reply to a re-delivered message, say), or with
                            # the rest once service has resumed (hsb.cp.notices).
                            if term.notice is not None:
                                send_owed(term)  # still owed from the grant before: it goes first
                            was = term._active
                            term.notice = switched_frame if was is not None else opened_frame
                            term._active = sb
                            if was is None:
                                opened += 1
                            elif keep is not None and was.host is keep:
                                term._standby = was  # the demoted active's session, now its standby session
                                gone -= 1
                                kept.append(term.name)
                            held_now = term.held
                            if held_now and not dead:
                                durable = term.durable_acked
                                resuming = term.resuming
                                nf = 0  # held since before the grant and still to be answered: the switch kept it waiting
                                for held in held_now.values():
                                    if held.t <= t0 and not (held.replying and resuming):
                                        nf += 1
                                    # the choice and marks of CP._deliver_pending
                                    if held.delivered_epoch != epoch and held.id <= durable and not held.replying:
                                        again = held.delivered_epoch != 0 or held.id <= term.handed_floor
                                        held.delivered_epoch = epoch
                                        term.delivered(held.id, epoch)
                                        held.redelivered = again
                                        again_n += again
                                        work += 1
                                        if limit:
                                            w = held.wire or dv.item_of(term.name, held, limit)  # kept: no call
                                            if len(w) > biggest:
                                                biggest = len(w)
                                            out.append(w)
                                            out.append(TRUE if again else FALSE)
                                        else:
                                            out.append((term.name, held.id, held.data, again))
                                if nf:
                                    term.flight = nf
                                    term.flight_epoch = epoch
                                    flight_msgs += nf
                                    waiting += 1
                                if mid_redelivery and out:  # a crash part-way: what was collected goes first
                                    self._send(out, again_n, biggest)
                                    out, again_n = [], 0
                                    faults.point("cp.mid_redelivery")
                            switched += 1
                            if mid_switch:
                                self._send(out, again_n, biggest)  # as a pass that sent each as it went
                                out, again_n = [], 0
                                faults.point("cp.mid_switch")
                            continue
                        term.active = None
                        host.send({"t": "session_closed", "terminal": term.name, "reason": "logoff" if sb.stale else "disconnect"})
                        if cp.logoff_held(term) and not dead:
                            work += cp.deliver_logoffs(term, host)  # logged off, its messages still to answer
                        if sb.stale and term.conn is not None and not term.leaving:
                            host.request_session(term)  # a later run: a session of its own
                            self.requested += 1
                        continue
                    was = term._active
                    if term.conn is not None and was is not None and was.host is not host:
                        # Classic path of [0002]: no standby session; the terminal reconnects.
                        # (An active session with the new active: switched already, it went first.)
                        term.active = None
                        term.conn.lost_why = term.conn.lost_why or "classic_path"
                        term.conn.close()
                        self.classic += 1
                        nf = sum(1 for h in term.held.values() if h.t <= t0 and not (h.replying and term.resuming))
                        if nf:
                            term.flight = nf
                            term.flight_epoch = epoch
                            self.flight_msgs += nf
                            self.flight_terms += 1
                    elif was is not None and was.host is host:
                        # already the new active's: it serves on after its planned switchover's
                        # grantee was lost (what waited while it was released goes to it now)
                        conn = term.conn
                        if conn is not None and conn.session_untold is was:
                            # back during that grant's wait, its session kept: its welcome went
                            # alone, and the session's opening is owed now as the others' notices are
                            conn.session_untold = None
                            if term.notice is not None:
                                send_owed(term)
                            term.notice = opened_frame
                        if term.held and not dead:
                            work += cp._deliver_pending(term, host)
                    elif term.conn is not None and term.active is None and not term.leaving:
                        host.request_session(term)
                        self.requested += 1
                    elif cp.logoff_held(term):  # (connected or not: logged off, it does not come back for them)
                        if not dead:  # (else they wait, unmarked, for the next active)
                            work += cp.deliver_logoffs(term, host)  # logged off, its messages still to answer
                    elif term.conn is None and term._active is not None and term._active.host is not host:
                        # kept for a terminal not back yet (hsb.cp.adopt): it went with the old active
                        term.active = None
                except Exception:  # (a bug) this terminal only: the pass goes on
                    self._failed(term, i - 1 if whole else self.i)
        finally:  # what this slice did counts, and what it collected goes, even if it stopped early
            counts.standby -= gone
            counts.active += opened
            if whole:
                self.i = i
            self.switched += switched
            self.waiting += waiting
            self.flight_msgs += flight_msgs
            if out:
                try:
                    self._send(out, again_n, biggest)
                except Exception:  # (a bug) not this slice's end: the flip goes on
                    self._send_failed(host, "the held messages it was handing over")
            last = whole and i >= len(terms)
            if keep is not None and (kept or last):
                try:
                    for k in range(0, max(len(kept), 1), KEPT_PER_FRAME):  # within what the host's frames hold
                        part = kept[k : k + KEPT_PER_FRAME]
                        keep.send({"t": "standby_kept", "epoch": epoch, "items": part, "last": last and k + KEPT_PER_FRAME >= len(kept)})
                    self.kept += len(kept)
                except Exception:
                    self._send_failed(keep, "which sessions it keeps as standby ones")
        if not last:
            return False
        self.finished = True
        self.flight_terms += self.waiting
        self.done(self)
        return True

    def _send(self, out: list[Any], redelivered: int, biggest: int) -> None:
        """What a slice collected to the new active: encoded items and flags, or tuples for a host of before."""
        counters = self.cp.counters
        batched = self.host.deliver_batch_bytes > 0
        n = len(out) // 2 if batched else len(out)
        if batched:
            self.host.deliver_parts(out, biggest)
        else:
            self.host.deliver_all(out)
        counters["redelivered"] += redelivered  # (counted once sent: a failed send's go again, and count then)
        counters["delivered"] += n - redelivered
