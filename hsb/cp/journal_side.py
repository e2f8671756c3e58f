"""The CP's state and its journal (hsb.cp.journal): restored from it before anything is accepted,
written back as the snapshot of a new generation, and kept small by carrying the few live records
of an old segment forward.

A mixin of `hsb.cp.core.CP` (the one place that decides): the state is the CP's; this module only
keeps the journal's half of it in a file of its own, as hsb.cp.terminal_side does for terminals.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.cp.journal.format import JOURNAL_FORMAT
from hsb.cp.journal.recovery import in_id_order
from hsb.cp.state import Held, Kept, Term
from hsb.terminals import TerminalDef
from hsb.wire.framing import data_size

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.journal import Recovered

log = structlog.get_logger("hsb.cp")


class JournalSide:
    """The journal's half of the CP; mixed into `CP` (see the module docstring)."""

    # ------------------------------------------------------------------ the journal
    def restore(self: CP, r: Recovered) -> None:
        """Before anything is accepted: what the journal holds (hsb.cp.journal.recovery)."""
        self.epoch = r.epoch
        self.recorded_active = self.restored_active = r.active
        self.paused = r.paused
        self.history.restore(r.history)
        self.recovered_at = time.monotonic()
        self.recovered_lease = r.lease
        self.restore_frames(r.frames)  # (none from a journal of before them: learnt at the registrations)
        unknown: list[str] = []
        holding = self.holding
        held_n = kept_n = held_data = kept_data = 0
        for name in set(r.last_acked) | set(r.held) | set(r.replies):
            term = self.terms.get(name)
            if term is None:
                if not r.held.get(name) and not r.replies.get(name):
                    continue
                # removed from the terminal table while it had messages: kept, never dropped
                unknown.append(name)
                term = self.terms[name] = Term(TerminalDef(name=name, standby_capable=False), self.counts)
            term.last_acked = term.durable_acked = r.last_acked.get(name, 0)
            if r.acks_waiting is not None and name in r.acks_waiting and not self.journal_accepted:
                # the CP before acknowledged nothing above this (no host had registered with it:
                # hsb.cp.first_host), nor does this one before a host registers with it
                term.durable_acked = min(term.last_acked, r.acks_waiting[name])
            term.confirmed = r.confirmed.get(name, 0)
            # the journal's objects themselves (hsb.cp.journal.recovery builds them), in id order
            held = r.held.get(name)
            if held:
                term.held = in_id_order(held)
                term.held_bytes = sum(data_size(h.data) for h in held.values())
                held_data += term.held_bytes
                held_n += len(held)
                holding[term] = None
                for h in term.held.values():
                    if h.id > term.durable_acked:
                        self.ack_waits_for_a_host(term, h)
            kept = r.replies.get(name)
            term.logoff_upto = term.bye_upto = r.logoff.get(name, 0)  # (every connection went with the crash)
            if r.leaving(name):  # logged off holding messages: answered without it (replies go nowhere)
                term.leaving = True
            if kept and term.logoff_upto and min(kept) <= term.logoff_upto:
                # a logoff's, its connection gone with the crash: nobody's (as at terminal_lost)
                kept = {m: k for m, k in kept.items() if m > term.logoff_upto}
            if kept:
                term.replies = in_id_order(kept)
                term.kept_bytes = sum(data_size(k.data) for k in kept.values())
                kept_data += term.kept_bytes
                kept_n += len(kept)
                term.resuming = True
        self.counts.held += held_n
        self.counts.kept += kept_n
        self.counts.held_data += held_data
        self.counts.kept_data += kept_data
        self._follow_total()  # (more held than the bound allows now: said at once, not at the first message)
        if unknown:
            log.warning(
                "journal_terminals_not_in_table",
                terminals=sorted(unknown)[:20],
                count=len(unknown),
                msg="the journal holds messages of terminals no longer in the CP's table; they are kept",
            )

    def _checkpoint(self: CP) -> list[Any]:
        """The first record of every new journal segment: what older segments would otherwise
        be needed for once they are dropped."""
        acked = {t.name: t.last_acked for t in self.terms.values() if t.last_acked}
        # ("o" records before it) the logoffs whose messages are still held
        logoff = {t.name: t.bye_upto for t in self.terms.values() if t.bye_upto and (t.held or t.replies)}
        j = self.journal
        lease, fresh = self.lease_bound()
        extra = {
            "format": JOURNAL_FORMAT,  # (a later hsbcpd that changes what a record means raises it)
            "history": self.history.entries,
            "paused": self.paused,
            "first": j.first_seg,
            "logoff": logoff,
            "lease": [lease, fresh],
            "frames": [[n, f] for n, f in self.host_frames.items()],  # (as its "f" records, in their order)
        }
        # (no host registered yet: whose acks wait, from which id; hsb.cp.first_host. Not once the
        # first one's "f" is appended: this checkpoint comes after it, so it is read only with it)
        if not self.journal_accepted and not self.journal_accepting:
            extra["acks_waiting"] = {t.name: t.durable_acked for t in self.terms.values() if t.last_acked > t.durable_acked}
        return ["ck", self.epoch, self.recorded_active, j.gen, acked, extra]

    def snapshot(self: CP) -> list[list[Any]]:
        """Every live record, for the first segment of this CP's generation (hsb.cp.journal):
        held messages, kept replies, and how far each terminal confirmed."""
        out: list[list[Any]] = []
        for t in self.terms.values():
            for held in t.held.values():
                out.append(["a", t.name, held.id, held.data])
            if t.confirmed:
                out.append(["c", t.name, t.confirmed])
            for kept in t.replies.values():
                out.append(["r", t.name, kept.id, kept.data])
        return out

    def repin(self: CP, seg: int) -> None:
        """The snapshot is durable in segment `seg`: every live record now sits there."""
        for t in self.terms.values():
            for held in t.held.values():
                held.seg = seg
            for kept in t.replies.values():
                kept.seg = seg

    def journal_tick(self: CP) -> None:
        """Periodic: shrink a settled journal; carry the live records of old segments forward."""
        j = self.journal
        j.maybe_rotate_idle()
        segs = j.to_clean()
        if not segs:
            return
        moved = 0
        for term in self.terms.values():
            for held in term.held.values():
                # not one being answered: its settling record is on its way, and an "a" written
                # after it would bring the message back at a recovery (it settles, and unpins
                # this segment, soon enough)
                if held.seg in segs and not held.replying:
                    self._carry(held, ["a", term.name, held.id, held.data])
                    moved += 1
            for kept in term.replies.values():
                if kept.seg in segs:
                    self._carry(kept, ["r", term.name, kept.id, kept.data])
                    moved += 1
        if moved:  # (none while its only live messages are being answered: they settle soon)
            log.info("journal_segment_carried_forward", segments=sorted(segs), records=moved)

    def _carry(self: CP, item: Held | Kept, rec: list[Any]) -> None:
        old = item.seg
        item.seg = self.journal.append(rec, lambda: self.journal.unpin(old))
        self.journal.pin(item.seg)
