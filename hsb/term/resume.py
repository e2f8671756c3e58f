"""What a resuming terminal tells the CP it holds (docs/protocol.md §1, `hello`, `confirm`,
`reply`): the `last_reply` of its hello, its confirmations as replies arrive (every 8 replies or
50 ms, and before it logs off), and which replies the CP may send it again after a reconnect.

Its hello says the highest id up to which it holds every reply, of its own (ids in order from its
first), and `first`, its first id: the claim covers no earlier run's id (one that died without a
`bye` may still have messages to be answered, below its own ids, and the ack or reply that would
show it that run can be lost with a dropped connection): the CP sends again at every hello each
reply it keeps below `first`. Once it knows of an earlier run it says `last_reply` 0 all the
same, for a CP older than `first`, which would take a claim up to one of its own ids as covering
that run's replies: the CP then sends again every reply it keeps, and the terminal ignores, once
each, those it held then. So it does after a welcome from another CP process than the last: that one sends every reply it
recovered from its journal, whatever the hello said, and the reply to every message it recovered
(answered again: the process before may not have sent it), on whichever of its connections that
reply is made.

A reply to an earlier run's message is not judged; it is counted once and confirmed like its own
(the CP keeps it until confirmed, and at its bound of kept replies would take none of this run's
messages). A mixin of `hsb.term.client.TerminalClient`, whose state it reads and changes (its
slots are there); `hsb.term.answers` judges the replies.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from hsb.term.verdict import REPLY_SHIFT
from hsb.wire.framing import encode

if TYPE_CHECKING:
    from hsb.term.client import TerminalClient


class Resume:
    """The resume bookkeeping of `TerminalClient` (see the module docstring)."""

    __slots__ = ()  # (the terminal is one slotted object: no instance dict through this base)

    # the terminal's state that this keeps (set in `_resume_init`)
    prefix: int
    confirmed: int
    confirm_at: float
    confirm_timer: asyncio.TimerHandle | None
    earlier_run: bool
    earlier_ids: set[int] | None
    earlier_run_replies: int
    foreign_upto: int
    told_last_reply: int
    recovered_upto: int
    held_upto: int
    may_resend: set[int]
    resent_below: set[int] | None
    said_last_reply: int
    recovered_resent: set[int] | None
    replies_read: int

    def _resume_init(self: TerminalClient) -> None:
        self.prefix = 0  # marks[0:prefix] all have a reply: the id of marks[prefix - 1] is its own last_reply
        self.confirmed = 0  # the last id confirmed to the CP
        self.confirm_at = 0.0  # when (monotonic)
        self.confirm_timer = None
        # an earlier run of this terminal may have messages still to be answered (a welcome's
        # last_acked, an ack or a reply below this run's first id): its hellos claim nothing
        self.earlier_run = False
        self.earlier_ids = None  # ids of the earlier run's replies it got (made when first needed)
        self.earlier_run_replies = 0  # how many (below this run's first id: not judged, confirmed)
        self.foreign_upto = 0  # the highest of those: a confirm with no reply of its own says it
        self.told_last_reply = 0  # the last_reply of the latest hello: the CP may resend nothing up to it
        # the ids the CP process now serving may have recovered from its journal (up to its first
        # welcome's last_acked; 0: none): it sends their replies again whatever a hello said
        self.recovered_upto = 0
        self.held_upto = 0  # the id up to which it held every reply of its own at that hello
        # ids above it whose reply this terminal held at that hello: with those up to held_upto
        # (above told_last_reply), the only replies the CP may send again on this connection
        # (marked resent) to a terminal that has them already, once each
        self.may_resend = set()
        self.resent_below = None  # those up to held_upto sent again so far on this connection
        self.said_last_reply = 0  # what the latest hello said (told_last_reply, before a welcome changed it)
        # ids up to recovered_upto that a hello said it holds, sent again by the CP process now
        # serving: it sends each at most once (not again at a later hello that covers it)
        self.recovered_resent = None
        self.replies_read = 0  # reply frames read on this connection: a confirm's `seen`

    def last_reply(self: TerminalClient) -> int:
        """The highest id up to which this terminal holds every reply of its own (0: none), else
        the highest of an earlier run's it was sent (`foreign_upto`, below all of its own): what
        a `confirm` says (the CP has sent it every reply it keeps below, at the hello)."""
        marks, k = self.marks, self.prefix
        while k < len(marks) and marks[k] >> REPLY_SHIFT:
            k += 1
        self.prefix = k
        return self.base + (k - 1) * self.stride if k else self.foreign_upto

    def hello_last_reply(self: TerminalClient) -> int:
        """The `last_reply` of a new connection's hello, and what the CP may send again on it."""
        self.last_reply()  # (moves `prefix` on)
        own = self.base + (self.prefix - 1) * self.stride if self.prefix else 0
        self.held_upto = own
        self.told_last_reply = self.said_last_reply = 0 if self.earlier_run else own
        marks, base, stride = self.marks, self.base, self.stride
        self.may_resend = {base + k * stride for k in range(self.prefix, len(marks)) if marks[k] >> REPLY_SHIFT}
        self.resent_below = None
        return self.told_last_reply

    def held_at_hello(self: TerminalClient, msg_id: int) -> bool:
        """A reply of its own sent again (marked resent) that it held at this connection's hello
        and has not been sent again on it before: to be ignored (if it is the same answer). Up to
        the hello's last_reply only for a message the serving CP process may have recovered."""
        if msg_id in self.may_resend:
            self.may_resend.discard(msg_id)
            return True
        if msg_id > self.held_upto or self.recovered_upto < msg_id <= self.told_last_reply:
            return False
        if msg_id <= self.recovered_upto and msg_id <= self.said_last_reply:
            # recovered, and the hello said it holds it: once per CP process, whichever connection
            if self.recovered_resent is None:
                self.recovered_resent = set()
            seen = self.recovered_resent
        else:  # kept above the hello's word: sent again at every hello until confirmed
            if self.resent_below is None:
                self.resent_below = set()
            seen = self.resent_below
        if msg_id in seen:
            return False
        seen.add(msg_id)
        return True

    def other_cp_process(self: TerminalClient, last_acked: int) -> None:
        """Welcomed by another CP process than the last (restarted, or taking over on its
        journal): it sends again every reply it recovered, those the hello said it holds too (it
        cannot know which the process before it wrote), and the reply to every message it
        recovered (up to this welcome's `last_acked`), on this connection or a later one: each
        it held then is ignored once while this process serves (once per connection if the
        hello said less: the CP resends at each hello what it keeps above the hello's word)."""
        self.told_last_reply = 0
        self.recovered_upto = last_acked
        self.recovered_resent = None

    def held_resent(self: TerminalClient, msg_id: int) -> None:
        """A reply it held, sent again (and ignored): the CP keeps it until a confirm covers it,
        and took one of ours that did short of it (it had not sent it, as far as it knew: one
        recovered after a restart), so say it again."""
        if msg_id <= self.confirmed:
            self.confirmed = msg_id - 1
        self._confirm()

    def earlier_runs_reply(self: TerminalClient, msg_id: int) -> None:
        """A reply to an earlier run's message (below this run's first id): kept by the CP and
        resent, or made after this run logged on and sent as it came. Not judged, but confirmed,
        received: else the CP keeps it for good, and at its bound of kept replies takes none of
        this run's messages."""
        self.earlier_run = True
        if self.earlier_ids is None:
            self.earlier_ids = set()
        if msg_id not in self.earlier_ids:  # (one it had, resent after a hello that claimed none)
            self.earlier_ids.add(msg_id)
            self.earlier_run_replies += 1
        if msg_id > self.foreign_upto:
            self.foreign_upto = msg_id
        if msg_id <= self.confirmed:
            # sent though a confirm of ours covered it: the CP took that confirm short of it (a
            # message below was unanswered then), so say it again
            self.confirmed = msg_id - 1
        if self.resume:
            self._confirm()

    def _confirm(self: TerminalClient, force: bool = False) -> None:
        """Tell the CP which replies it may forget: every 8 replies, after 50 ms, or now (`force`)."""
        if not self.resume or not self.logged_on or self.transport is None:
            return
        upto = self.last_reply()
        if upto <= self.confirmed:
            return
        now = time.monotonic()
        if force or (upto - self.confirmed) >= 8 * self.stride or now - self.confirm_at >= 0.05:
            if self.confirm_timer is not None:
                self.confirm_timer.cancel()
                self.confirm_timer = None
            self.confirmed, self.confirm_at = upto, now
            # seen: the CP takes it no further than the replies it had written by then (one on its
            # way, an earlier run's below our ids, is not held yet though `upto` covers it)
            frame = encode({"t": "confirm", "id": upto, "seen": self.replies_read})
            if self.cork is not None:
                self.cork.append(frame)
            else:
                self.transport.write(frame)
        elif self.confirm_timer is None:
            self.confirm_timer = asyncio.get_running_loop().call_later(0.05, self._confirm_due)

    def _confirm_due(self: TerminalClient) -> None:
        self.confirm_timer = None
        self._confirm(force=True)
