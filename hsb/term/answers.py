"""What a simulated terminal makes of the CP's acknowledgements and replies to its messages,
judged strictly (the verdict of `hsb.term.report`): a reply to an id it never sent, or to one the
CP had not yet acknowledged, is *unexpected* or *early*; with `check_data`, a first reply whose
data is not what was sent (the `echo` and `journal` services answer with the message's own data)
is *bad data*; a second reply is a *duplicate*, but for a reply the CP sends again after a
reconnect (marked `resent`) that the terminal held when it said hello, ignored once if it is the
same answer (and confirmed again: the CP keeps it until then); a reply for an id below its first (an earlier run's: resent, or made after this run
logged on) is not judged, and is confirmed (`hsb.term.resume`). Each lands in the terminal's marks (`hsb.term.verdict`) and is told to its
`Listener`. A mixin of `hsb.term.client.TerminalClient`, whose state it reads and changes; the
connection and what the terminal sends are there."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hsb.term.verdict import ACKED, REPLY_MAX, REPLY_ONE, REPLY_SHIFT

if TYPE_CHECKING:
    from hsb.term.client import TerminalClient


class Answers:
    """The acknowledgement and reply rules of `TerminalClient` (see the module docstring)."""

    __slots__ = ()  # (the terminal is one slotted object: no instance dict through this base)

    # the terminal's state that these rules change (set in TerminalClient.__init__)
    marks: bytearray
    outstanding: dict[int, float]
    waited: dict[int, float]
    payloads: dict[int, Any] | None
    acked_max: int
    unexpected_acks: int
    unexpected: int
    earlier_run: bool
    resent_ignored: int
    early: int
    bad_data: int
    bad_data_ids: list[int]

    def _on_ack(self: TerminalClient, msg_id: int) -> None:
        k = self.index(msg_id)
        marks = self.marks
        if msg_id > self.sent_upto:
            k = -1  # never written to a connection: the CP cannot have it
        if k >= 0 and not marks[k] & ACKED:
            marks[k] |= ACKED
            if msg_id > self.acked_max:
                self.acked_max = msg_id
            self.listener.on_ack(self, msg_id, True)
        else:
            if k < 0 and msg_id >= self.floor:  # the CP acknowledges only what this terminal sent: misdelivered or made up
                self.unexpected_acks += 1
            elif k < 0:  # below the run's first id: an earlier run's, made durable late
                self.earlier_run = True
            self.listener.on_ack(self, msg_id, False)

    def _on_reply(self: TerminalClient, msg_id: int, data: Any, resent: bool = False) -> None:
        k = self.index(msg_id)
        marks = self.marks
        if k < 0:
            if msg_id < self.floor:
                # an earlier run's (hsb.term.resume), resent or not: its hello's `first` claims
                # none of them, and the CP sends again at each hello every one it keeps
                self.earlier_runs_reply(msg_id)
                return
            self.unexpected += 1  # never sent by this terminal (another's id, say): resent or not
            self.listener.on_reply(self, msg_id, data, None, "unexpected")
            return
        m = marks[k]
        count = m >> REPLY_SHIFT
        if count and resent and self.held_at_hello(msg_id):
            # sent again after a reconnect and this terminal had it then (its hello could not say
            # so: an earlier reply is missing, or it claimed none): ignored once, if it is the same
            # answer. A resent copy of a reply that first came on this connection is a duplicate
            if self._same_again(k, msg_id, data):
                self.resent_ignored += 1
            else:
                self._bad(msg_id)
            if self.resume:
                self.held_resent(msg_id)
            return
        # a second reply (a resent one for an id its hello said it holds is one too: a duplicate)
        if count < REPLY_MAX:
            marks[k] = m + REPLY_ONE
        if count:
            self.listener.on_reply(self, msg_id, data, None, "duplicate")
            return
        if self.workload is not None:
            right = self.workload.check(self.idx, k, data)
        else:
            right = not self.check_data or data == self.payload(msg_id)
        if self.check_data and not right:
            self._bad(msg_id)
        early = not m & ACKED
        if early:
            self.early += 1
        t0 = self.outstanding.pop(msg_id, None)
        if self.payloads is not None:
            self.payloads.pop(msg_id, None)
        latency = time.monotonic() - t0 + self.waited.pop(msg_id, 0.0) if t0 is not None else None
        self.listener.on_reply(self, msg_id, data, latency, "early" if early else "first")
        if self.resume:
            self._confirm()

    def _same_again(self: TerminalClient, k: int, msg_id: int, data: Any) -> bool:
        """A reply sent again is the answer this terminal got the first time."""
        if not self.check_data:
            return True
        if self.workload is not None:
            return bool(self.workload.same_reply(self.idx, k, data))
        if self.payloads is not None and msg_id not in self.payloads:
            return True  # its data went with the first reply: nothing to compare with
        return bool(data == self.payload(msg_id))

    def _bad(self: TerminalClient, msg_id: int) -> None:
        self.bad_data += 1
        if len(self.bad_data_ids) < 5:
            self.bad_data_ids.append(msg_id)
