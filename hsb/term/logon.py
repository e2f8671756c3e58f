"""How a simulated terminal logs on (docs/protocol.md §1, `welcome`), and what that and its
failed connects tell of the CP: the states of its connection (`DOWN` to `WELCOMED`); the checks
of a welcome (one per connection, for this terminal); the messages its `last_acked` shows the CP
holds (an ack lost with the old connection: taken as acknowledged; an id never sent or one below
an ack seen before: counted against the CP) and those the connection owes it (written at once);
and the changes of CP process the terminal lived through (`cp_reconnects`: a connect that failed
after it was logged on, or a welcome from another process, `cp`) or the drops the CP's absence
does not explain (`cp_present_drops`: welcomed again by the same process). A mixin of
`hsb.term.client.TerminalClient`, whose state it reads and changes (its slots are there); a
process change is `hsb.term.resume`'s to handle too (what it may send again).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hsb.wire.framing import ProtocolError

if TYPE_CHECKING:
    from hsb.term.client import TerminalClient

# Connection states.
DOWN = 0  # not connected, maybe waiting for a reconnect
CONNECTING = 1  # TCP connect in progress
HELLO = 2  # connected, hello sent, no welcome yet
WELCOMED = 3  # logged on: may send


class Logon:
    """The welcome and the CP's absence, for `TerminalClient` (see the module docstring)."""

    __slots__ = ()  # (the terminal is one slotted object: no instance dict through this base)

    # the terminal's state that these change (set in TerminalClient.__init__)
    state: int
    last_error: str | None
    welcomed_at: float | None
    dropped: bool
    failed_since_drop: bool
    cp_instance: str | None
    cp_present_drops: int
    cp_reconnects: int
    away_counted: bool
    away_since_welcome: int
    unexpected_acks: int
    earlier_run: bool
    acks_forgotten: int

    def _on_welcome(self: TerminalClient, msg: dict[str, Any]) -> None:
        """A `welcome`: logged on. What it says of the CP process, of the messages the CP holds
        (an ack lost with the old connection), and what this connection owes it (written now)."""
        if self.state == WELCOMED:
            raise ProtocolError("bad_fields", "welcome: a second one on the same connection")
        if msg.get("terminal") != self.name:
            # logged on as another terminal: its acks and replies would pass for this one's
            raise ProtocolError("bad_fields", f"welcome: for terminal {str(msg.get('terminal'))[:64]!r}, not {self.name!r}")
        last_acked = int_field(msg, "last_acked")
        cp = msg.get("cp")
        if self.dropped:
            self.dropped = False
            # the same CP process welcomes it again: that CP was there all along, whatever connects
            # failed meanwhile (one failed connect anywhere parks every terminal of the group as if
            # the CP were away, and a connect can fail here for reasons of our own); a CP that does
            # not say which process it is: away only if a connect of this terminal failed
            if (cp == self.cp_instance) if isinstance(cp, str) else not self.failed_since_drop:
                self.cp_present_drops += 1
        if isinstance(cp, str):
            if self.cp_instance is not None:
                if cp == self.cp_instance:
                    # the same CP process: what failed meanwhile (an overloaded CP's backlog, a
                    # connect failing for reasons of ours) was no change of it
                    self.cp_reconnects -= self.away_since_welcome
                else:
                    self.other_cp_process(last_acked)  # (it resends what it recovered, below the hello's last_reply too)
                    if not self.away_since_welcome:
                        self.cp_reconnects += 1  # another CP process, though its port never refused us
            elif self.welcomed_at is not None:
                # welcomed before by a CP that named no process (an hsbcpd of before 0.5, the
                # build an upgrade replaced): this one is another process, and resends what it
                # recovered from that one's journal, below the hello's last_reply too (not
                # counted in cp_reconnects: an older CP's restarts were not either)
                self.other_cp_process(last_acked)
            self.cp_instance = cp
        self.away_since_welcome = 0
        self.away_counted = False
        self.state = WELCOMED
        self.backoff.reset()
        self.last_error = None
        first = self.welcomed_at is None
        if first:
            self.welcomed_at = time.monotonic()
        self.listener.on_welcome(self, first)
        # an id of this run this terminal never sent (above its last, or submitted while away and
        # not yet written, say) is an unexpected ack, as in an `ack` frame; one below the run's
        # first id is an earlier run's
        if last_acked >= self.floor and (self.index(last_acked) < 0 or last_acked > self.sent_upto):
            self.unexpected_acks += 1
        if 0 < last_acked < self.floor:  # an earlier run's messages: some may be answered yet
            self.earlier_run = True
        if last_acked < self.acked_max:  # an ack that was not durable after all: the CP forgot it
            self.acks_forgotten += 1
        # the CP holds everything up to last_acked: an ack lost with the old connection; the
        # rest is owed (nothing is written on a connection before its welcome: all of it)
        held, owed = min(last_acked, self.sent_upto), []
        for i in self.unacked_ids():
            if i <= held:
                self._on_ack(i)
            else:
                owed.append(i)
        if owed and self.transport is not None and not self.bye_said:
            self.listener.on_resent(self, len(owed), sum(1 for i in owed if i > self.sent_upto))
            self._write_owed(owed)

    def cp_away(self: TerminalClient, found: bool = True) -> None:
        """The CP cannot be reached now: a connect of this terminal failed (`found`), or the
        connector parked it, knowing the group's CP away (one failed connect anywhere: this
        terminal found nothing itself, and counts no change of CP process for it)."""
        self.state = DOWN
        if self.welcomed_at is None:
            return
        self.failed_since_drop = True  # the CP is not there: a restart of it, not a failover
        if found and not self.away_counted:
            self.away_counted = True
            self.away_since_welcome += 1
            self.cp_reconnects += 1


def int_field(msg: dict[str, Any], key: str) -> int:
    """Field `key` of a frame from the CP, an int (not a bool); else a protocol error."""
    v = msg.get(key)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ProtocolError("bad_fields", f"{msg.get('t')}: field {key!r} must be int")
    return v
