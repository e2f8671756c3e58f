"""What a resuming terminal tells the CP it holds (docs/protocol.md §1, `hello`, `confirm`,
`reply`): the `last_reply` of its hello, its confirmations as replies arrive (every 8 replies or
50 ms, and before it logs off), and which replies the CP may send it again after a reconnect.

Its hello says the highest id up to which it holds every reply: of its own (ids in order from
its first), or else of an earlier run's that the CP sent it (below all of its own). A reply to an
earlier run's message (one that died without a `bye`) is not judged; it is counted and confirmed
like its own (the CP keeps it until confirmed, and at its bound of kept replies would take none
of this run's messages). A mixin of `hsb.term.client.TerminalClient`, whose state it reads and
changes (its slots are there); `hsb.term.answers` judges the replies.
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
    earlier_run_replies: int
    foreign_upto: int
    told_last_reply: int
    may_resend: set[int]

    def _resume_init(self: TerminalClient) -> None:
        self.prefix = 0  # marks[0:prefix] all have a reply: last_reply is the id of marks[prefix - 1]
        self.confirmed = 0  # the last id confirmed to the CP
        self.confirm_at = 0.0  # when (monotonic)
        self.confirm_timer = None
        self.earlier_run_replies = 0  # replies for ids of an earlier run (below this run's first id)
        self.foreign_upto = 0  # the highest of those: it holds every reply up to it (none of its own is below)
        self.told_last_reply = 0  # the last_reply of the latest hello: the CP may resend nothing up to it
        # ids above it whose reply this terminal held at that hello: the only replies the CP may
        # send again on this connection (marked resent) to a terminal that has them already
        self.may_resend = set()

    def last_reply(self: TerminalClient) -> int:
        """The highest id up to which this terminal holds every reply (0: none): of its own, or
        of an earlier run's that the CP sent it (`foreign_upto`, below all of its own)."""
        marks, k = self.marks, self.prefix
        while k < len(marks) and marks[k] >> REPLY_SHIFT:
            k += 1
        self.prefix = k
        return self.base + (k - 1) * self.stride if k else self.foreign_upto

    def hello_last_reply(self: TerminalClient) -> int:
        """The `last_reply` of a new connection's hello, and what the CP may send again on it."""
        self.told_last_reply = self.last_reply()
        marks, base, stride = self.marks, self.base, self.stride
        self.may_resend = {base + k * stride for k in range(self.prefix, len(marks)) if marks[k] >> REPLY_SHIFT}
        return self.told_last_reply

    def held_at_hello(self: TerminalClient, msg_id: int) -> bool:
        """A reply of its own sent again (marked resent) that it held at this connection's hello
        and has not been sent again on it before: to be ignored (if it is the same answer)."""
        if msg_id in self.may_resend:
            self.may_resend.discard(msg_id)
            return True
        return False

    def earlier_runs_reply(self: TerminalClient, msg_id: int) -> None:
        """A reply to an earlier run's message (below this run's first id): kept by the CP and
        resent, or made after this run logged on and sent as it came. Not judged, but confirmed,
        received: else the CP keeps it for good, and at its bound of kept replies takes none of
        this run's messages."""
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
            frame = encode({"t": "confirm", "id": upto})
            if self.cork is not None:
                self.cork.append(frame)
            else:
                self.transport.write(frame)
        elif self.confirm_timer is None:
            self.confirm_timer = asyncio.get_running_loop().call_later(0.05, self._confirm_due)

    def _confirm_due(self: TerminalClient) -> None:
        self.confirm_timer = None
        self._confirm(force=True)
