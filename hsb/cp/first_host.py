"""Acknowledgements wait for the first host to accept this CP's journal (SPEC §5.7, §5.8).

A CP proves to itself that it owns its journal (its generation file, hsb.cp.journal.generation),
but not that its journal is *the* journal: one started on a stale copy (an old backup restored,
the directory copied aside and started at the serving CP's address) raises a generation the
hosts have already seen passed, and every host refuses it (hsb.host.cplink). Whatever it
acknowledged meanwhile would be in no journal the serving CP reads: lost once terminals go back
to the real one. So a CP with a durable journal sends no `ack` until a host has registered
with it since it took the journal over: a host registers only after it checked the CP's journal
id, generation and takeover id against those it keeps (hsb.host.cplink). Until then each
message's record is written as usual and its acknowledgement waits here, as it would behind a
slow group commit; the terminal keeps the message and sends it again if it reconnects. The first
registration is written to the journal (an "f" record), and once that is durable every waiting
acknowledgement goes, in order. A CP restarted on the journal before that counts the waiting
ones as never acknowledged (the checkpoints' `acks_waiting`, hsb.cp.journal.recovery), and its
acknowledgements wait for a host in turn. A memory-only CP (`durability = "none"`) has no journal
to be stale: it acknowledges as before.

A mixin of `CP`: the waiting list is emptied only by `_release_acks`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.state import Held, Term

log = structlog.get_logger("hsb.cp")


class FirstHost:
    """The acknowledgements a CP holds until a host accepts its journal; mixed into `CP`."""

    journal_accepted: bool  # a host registered since this CP took its journal over, said durably (or memory only)
    journal_accepting: bool  # a host registered: the journal's record of it ("f") is being made durable
    acks_waiting: list[tuple[Term, Held]]  # durable, not yet acknowledged, in the order they became durable
    acks_waiting_since: float | None  # (time.time() of the first one)

    def init_first_host(self: CP) -> None:
        self.journal_accepted = not self.journal.durable
        self.journal_accepting = False
        self.acks_waiting = []
        self.acks_waiting_since = None

    def ack_waits_for_a_host(self: CP, term: Term, held: Held) -> bool:
        """True (and the acknowledgement kept) while no host has accepted this CP's journal."""
        if self.journal_accepted:
            return False
        if not self.acks_waiting:
            self.acks_waiting_since = time.time()
            log.warning(
                "acks_wait_for_a_host",
                terminal=term.name,
                generation=self.journal.gen,
                msg="no host has registered with this CP since it took its journal over: messages are written to the"
                " journal and acknowledged only once one does (a host refuses a CP on a stale copy of the journal)",
            )
        self.acks_waiting.append((term, held))
        return True

    def host_accepts_journal(self: CP, host: HostProtocol) -> None:
        """`host` registers: it checked this CP's journal and generation and took them. The
        acknowledgements that waited go once the journal says so durably: an "f" record (the
        pair's frames, as they are: hsb.cp.journal.recovery), which a CP restarted on this journal
        reads as "every ack that waited before it went". Released before that record is durable,
        a crash would leave the terminals acknowledged ids the next CP counts as never sent."""
        if self.journal_accepted or self.journal_accepting:
            return
        self.journal_accepting = True
        name = host.name
        self.journal.append(["f", [[n, f] for n, f in self.host_frames.items()]], lambda: self._release_acks(name))

    def _release_acks(self: CP, host: str) -> None:
        """The first host's registration is durable: every acknowledgement that waited goes, in order."""
        self.journal_accepted = True
        waiting, self.acks_waiting = self.acks_waiting, []
        since, self.acks_waiting_since = self.acks_waiting_since, None
        log.info(
            "journal_accepted_by_host",
            host=host,
            generation=self.journal.gen,
            acks_released=len(waiting),
            waited_ms=None if since is None else round((time.time() - since) * 1000, 1),
        )
        for term, held in waiting:
            self._accepted(term, held)

    def acks_waiting_status(self: CP) -> dict[str, Any] | None:
        """For the status: how many acknowledgements wait for a host, since when (None: none)."""
        if self.journal_accepted:
            return None
        return {"messages": len(self.acks_waiting), "since": self.acks_waiting_since}
