"""The CP's replies (SPEC §5.5, §5.7): a host's reply and discard, the reply kept until a
resuming terminal confirms it, sent once the discard is durable to one that does not resume,
and the confirmations that settle kept replies.

A mixin of `hsb.cp.core.CP` (the one place that decides): the state is the CP's. The journal
rule it keeps is hsb.cp.terminal_side's (a reply never overtakes its message's ack).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from hsb import faults
from hsb.cp.state import Held, Kept, Term
from hsb.wire.framing import data_size

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol


class Replies:
    """Replies and confirmations; mixed into `CP` (see the module docstring)."""

    def terminal_confirm(self: CP, term: Term, upto: int, seen: int | None = None, first: int = 0) -> None:
        """The terminal holds every reply up to `upto`: those are settled. Not past the highest id
        accepted from it (a terminal that claimed more, a bug, would otherwise go without the
        replies to every message it sends after), nor past one still unanswered, nor past a kept
        reply never sent, nor (`seen`: the reply frames it had read, counted as `reply_frames`)
        past one written after those, nor (`first`: a hello's) past one below the run's first id
        (`_confirmable`). One that does not move `confirmed` still settles the replies kept below
        it (sent since: at a hello, say)."""
        upto = self._confirmable(term, upto, seen=seen, first=first)
        if upto > term.confirmed:
            term.confirmed = upto
        if term.replies and min(term.replies) <= upto:
            self._drop_replies(term, upto)
            self._backpressure(term)

    def _settle_unconfirmable(self: CP, term: Term) -> None:
        """A terminal that no longer resumes will confirm nothing: the replies kept for it from
        when it did are settled once sent, as far as no message of its still waits below them
        (`terminal_lost` forgets the rest of a terminal that logged off). Not one never sent:
        made while it was away (a later run's, say, when the answer to a logoff's message comes),
        it goes at its next logon (`_send_kept_once`), which settles it (`_confirmable`)."""
        upto = self._confirmable(term, max(term.replies))
        if upto and min(term.replies) <= upto:
            self._drop_replies(term, upto)
            self._backpressure(term)

    @staticmethod
    def _confirmable(term: Term, upto: int, seen: int | None = None, first: int = 0) -> int:
        """`upto` as far as a confirmation can go: not past the highest id accepted, nor up to a
        held message whose reply has not gone out: not yet answered, or answered with its discard
        ("d") on the way, the reply to go once that is durable, kept ("r") if the terminal is away
        then (the terminal cannot hold that reply). A "c" record past such a message would drop
        its "a" (one carried forward) or that "r" at a recovery that reads it after the "c", and
        its reply would never be sent. A message recovered from the journal is one of them: this
        CP never sent its reply, and the process before it may not have (the reply goes marked
        resent, and a terminal that holds it ignores it). Nor up to a kept reply this CP never
        wrote to a connection of the terminal: made while it was away, or recovered from the
        journal. The terminal cannot hold that one, though a claim that covers an earlier run's
        ids says it does, and one that will confirm nothing (`_settle_unconfirmable`) has not had
        it either; its next logon sends it, and that settles it. Nor, for a confirm that says how
        many reply frames the terminal had read (`seen`), short of one written after those: on its
        way when the terminal wrote the confirm, which covers an earlier run's ids too; the confirm
        after it settles it. Nor, for a hello that says its run's `first` id, short of one below it:
        an earlier run's, which the claim does not cover (it may have been written to a connection
        that dropped unread: the hello sends it again)."""
        upto = min(upto, term.last_acked)
        for held in term.held.values():  # id order: the first whose reply has not gone out bounds it
            if not held.replying or held.discarding:
                upto = min(upto, held.id - 1)
                break
        read = term.reply_frames if seen is None else seen  # (no `seen`: every one written so far)
        for kept in term.replies.values():  # (not in id order: the active answers out of order)
            if kept.id <= upto and (not kept.sent or kept.at > read or kept.id < first):
                upto = kept.id - 1
        return upto

    def _drop_replies(self: CP, term: Term, upto: int, record: bool = True) -> None:
        if record:
            self.journal.append(["c", term.name, upto], lazy=True)  # need not wait: a lost one only resends
        for mid in [m for m in term.replies if m <= upto]:
            self._unkeep(term, term.replies[mid])

    def _unkeep(self: CP, term: Term, kept: Kept) -> None:
        """`kept` no longer among the terminal's kept replies (no record: the caller's)."""
        del term.replies[kept.id]
        self.journal.unpin(kept.seg)
        size = data_size(kept.data)
        term.kept_bytes -= size
        self.counts.kept_data -= size
        self.counts.kept -= 1

    def _send_kept_once(self: CP, term: Term) -> None:
        """A terminal that does not resume, logged on: each reply kept for it goes once, in id
        order, its "d" record first (it settles the reply: a restart keeps it no more) and the
        reply when that is durable (`_kept_sent`), so that neither a later logon nor a restarted
        CP sends it again, a duplicate to such a terminal. What it had from a run that resumed
        is among them: it may hold that one already, and the mark says so."""
        for kept in sorted(term.replies.values(), key=lambda k: k.id):
            self._unkeep(term, kept)
            self.journal.append(["d", term.name, kept.id], functools.partial(self._kept_sent, term, kept.id, kept.data))

    def _kept_sent(self: CP, term: Term, mid: int, data: Any) -> None:
        """A kept reply's "d" durable (`_send_kept_once`): written now, marked resent; kept again
        if its terminal is away by now (and kept until it confirms if it resumes by now)."""
        if self._written_or_kept(term, mid, data, resent=True):
            self.counters["resent"] += 1
            if term.resuming:
                self._keep_reply(term, mid, data)
        self._backpressure(term)

    def _written_or_kept(self: CP, term: Term, mid: int, data: Any, resent: bool) -> bool | None:
        """The reply to `mid`, settled ("d" durable): written to its terminal (True); kept for its
        next logon, its terminal away or found gone as it was written (False, `_keep_away`); or
        nobody's, the terminal logged off (None, counted)."""
        self._lost_if_unread_gone(term)
        if self._for_nobody(term, mid):
            self.counters["replies_after_logoff"] += 1
            return None
        msg: dict[str, Any] = {"t": "reply", "id": mid, "data": data}
        if resent:
            msg["resent"] = True
        if term.conn is None or term.conn.closed or not self._to_terminal(term, msg):
            self._keep_away(term, mid, data)
            return False
        return True

    def _keep_away(self: CP, term: Term, mid: int, data: Any) -> None:
        """The reply to `mid`, its terminal away: kept ("r", written at once) for its next logon,
        unless it is nobody's or kept already; never held in memory only (a crash of the CP
        would lose it)."""
        if mid not in term.replies and not self._for_nobody(term, mid):
            self._add_kept(term, Kept(mid, data, self.journal.append(["r", term.name, mid, data])))

    def host_reply(self: CP, host: HostProtocol, name: str, mid: int, data: Any) -> None:
        """Reply and discard in one frame (SPEC §5.5).

        A resuming terminal gets the reply at once: it is kept (its "r" record on the way) until
        the terminal confirms it, and the message is discarded once that record is durable. If
        the CP dies first, the message is recovered and answered again, and that reply goes out
        marked resent (the terminal may hold it, and ignores it then), whatever its hello said. A
        terminal that does not resume gets the reply only once the discard ("d") is durable.
        """
        self.replies_by_host[host.name] += 1
        self._answer(name, mid, data)

    def _answer(self: CP, name: str, mid: int, data: Any, made_here: bool = False) -> None:
        """The reply to `name`'s message `mid` (`host_reply`): the active's, or (`made_here`) the
        CP's own error for a message it cannot deliver (`_too_large_for`), which no host sent."""
        term = self.terms.get(name)
        if term is None:
            return
        held = term.held.get(mid)
        if held is None or held.replying or held.early is not None:
            return  # already discarded, or being: never a second reply
        if made_here:
            held.made_here = True
        if mid > term.durable_acked:  # delivered early, its record not yet durable: the ack goes first
            held.early = data
            if faults.armed("cp.reply_before_durable"):
                faults.point("cp.reply_before_durable")
                self.journal.release()  # (a visit skipped: the records go on to the disk)
            return
        self._reply(term, held, data)

    def _reply(self: CP, term: Term, held: Held, data: Any) -> None:
        """The reply to a held message whose record is durable (`host_reply`)."""
        name, mid = term.name, held.id
        held.replying = True
        # not read, and gone: lost first (a bye it gave makes this reply nobody's), so that what
        # is decided below is decided for the terminal as it now is
        self._lost_if_unread_gone(term)
        # its terminal away (recovered at a restart and not back yet, or disconnected since):
        # kept ("r") whichever kind it turns out to be (one that resumes is owed it until it
        # confirms; one that does not gets it marked resent at its hello), never held in memory
        # only, which a crash of the CP would lose
        away = term.conn is None or term.conn.closed
        nobody = self._for_nobody(term, mid)  # (gone for good: nothing to keep it for)
        if (not term.resuming and not away) or nobody:
            held.discarding = not nobody  # (no confirmation passes it until its reply has gone)
            self.journal.append(["d", name, mid], lambda: self._replied(term, held, data))
            return
        self.counters["replies"] += 1
        # (a confirmation passes no message whose reply has not gone out, `_confirmable`: only a
        # journal of a CP before that rule can have one here below it)
        keep = mid > term.confirmed
        sent = keep and not away
        if sent:
            msg: dict[str, Any] = {"t": "reply", "id": mid, "data": data}
            if held.recovered:
                msg["resent"] = True
            sent = self._to_terminal(term, msg)  # (False: found gone as it was written, `_lost_if_unread_gone`)
            if faults.armed("cp.after_reply_sent") and term.conn is not None:
                term.conn.flush()  # the crash comes after the bytes left, not with them queued
            faults.point("cp.after_reply_sent")  # sent, its record not yet written
        kept = Kept(mid, data, 0, sent)
        kept.at = term.reply_frames if sent else 0
        # lazy: the reply has gone out already; a crash before this record only means the
        # message is answered again (redelivered) and the reply resent, marked
        kept.seg = self.journal.append(["r", name, mid, data], lambda: self._settled(term, held), lazy=True)
        if keep:
            self._add_kept(term, kept)
        faults.point("cp.between_reply_and_discard")
        if self.after_switch is not None:
            self._served_after_switch(term, held)
        self._backpressure(term)

    def _keep_reply(self: CP, term: Term, mid: int, data: Any) -> None:
        """A reply already settled ("d") kept after all, until the terminal confirms it: one
        being written to a terminal that said hello resuming since (its record, lazy: lost in a
        crash, the reply was sent once, as to a terminal that does not resume)."""
        kept = term.replies.get(mid)
        if kept is None:
            kept = Kept(mid, data, self.journal.append(["r", term.name, mid, data], lazy=True), True)
            self._add_kept(term, kept)
        else:
            kept.sent = True
        kept.at = term.reply_frames  # (just written)

    def _add_kept(self: CP, term: Term, kept: Kept) -> None:
        """`kept` among the terminal's kept replies (replacing one of the same id), its record's
        segment pinned and the counts moved with it."""
        self.journal.pin(kept.seg)
        old = term.replies.get(kept.id)
        size = data_size(kept.data)
        if old is None:
            self.counts.kept += 1
        else:
            size -= data_size(old.data)
        term.replies[kept.id] = kept
        term.kept_bytes += size
        self.counts.kept_data += size

    def _replied(self: CP, term: Term, held: Held, data: Any) -> None:
        """A non-resuming terminal's message is durably discarded: its reply goes out now."""
        self.counters["replies"] += 1
        # (recovered: it may hold this reply from before the crash)
        sent = self._written_or_kept(term, held.id, data, resent=held.recovered)
        if sent is False:
            # it left while the discard was written, or was found gone as the reply was written:
            # kept ("r", as `_reply` keeps one for a terminal away), sent marked at its next
            # hello in id order with the others kept
            if self.after_switch is not None:
                self._served_after_switch(term, held)
            self._settled(term, held)
            return
        if sent and term.resuming and held.id > term.confirmed:
            # it said hello with last_reply since this record went: kept until it confirms
            self._keep_reply(term, held.id, data)
        faults.point("cp.between_reply_and_discard")
        if self.after_switch is not None:
            self._served_after_switch(term, held)
        self._settled(term, held)
        if term.replies and (not term.resuming or self._logged_off(term)):
            # A guard, reached (tests/test_cp_reach.py) but settling nothing today: a terminal that
            # does not resume holds only replies never sent (its hello unkept every one,
            # `_send_kept_once`; only `_keep_away` keeps one after, with its connection gone), which
            # `_confirmable` never passes; one logged off and gone holds none (`terminal_lost` drops
            # every reply up to its bye, which covers every id it sent)
            self._settle_unconfirmable(term)
        faults.point("cp.after_reply_sent")

    def _settled(self: CP, term: Term, held: Held) -> None:
        """The record that settles the message is durable: it is no longer held."""
        if term.held.pop(held.id, None) is not None:
            size = data_size(held.data)
            term.held_bytes -= size
            self.counts.held_data -= size
            self.counts.held -= 1
            self.journal.unpin(held.seg)
            if not term.held:
                self.holding.pop(term, None)
        self._backpressure(term)
        if term.leaving and not term.held and term.conn is not None:
            term.conn.close()
