"""The pair's frame sizes (docs/protocol.md §2, `max_frame`): the largest message a terminal may
send is what the CP's frames and those of both hosts of the pair can hold (`_host_frame`, at each
registration taken), and a message taken before a host of smaller frames said so (it registered
later, the CP restarted on its journal, a standby of smaller frames was granted the role) is
answered with an error instead of being delivered to that host (`_too_large_for`): delivered, it
would drop that host's link at every try.

A mixin of `hsb.cp.core.CP` (the one place that decides): the state (`host_frames`, `max_data`)
is the CP's; this module only keeps the frame-size rules, which both the hosts' half (core) and
the terminals' half (terminal_side) apply, in a file of their own.

The pair's frames are journalled (`["f", [[host, max_frame], ...]]` whenever they change, and in
every checkpoint: hsb.cp.journal.recovery), so that a CP restarted on its journal refuses a
message too large for the hosts before its ack, as the CP before it did, instead of taking it
and answering it with an error once they register again (`restore_frames`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from hsb.cp.state import Held, Term
from hsb.wire.framing import data_size, payload_max

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol

log = structlog.get_logger("hsb.cp")


class PairFrames:
    """The frame-size rules of the CP; mixed into `CP` (see the module docstring)."""

    def _host_frame(self: CP, host: HostProtocol) -> None:
        """`host`'s registration was taken (it holds a role now): the terminals' messages must fit
        the smallest max_frame the two hosts of the pair said at theirs (a host of an older hsb
        says none). The pair: the last two hosts, by name, whose registrations were taken; one
        away for a while (a reconnect, a reboot, a normal stop) still counts, and one that a host
        of a third name took the place of (the standby role, or the active's after it was lost
        or stopped) no longer does. A host holding a role, or the active the journal recorded, is
        never dropped: while three do, all three count."""
        frames = self.host_frames
        was = list(frames.items())
        before = frames.pop(host.name, 0)
        frames[host.name] = frame = host.max_frame or before  # (latest last)
        if len(frames) > 2:
            holding = {self.recorded_active} | {h.name for h in (self.active, self.standby, self.demoting, self.granting) if h is not None}
            for name in [n for n in frames if n not in holding][: len(frames) - 2]:
                del frames[name]
        self._pair_limit()
        if list(frames.items()) != was:
            # (its order too: the oldest goes first when a third host takes a place). Appended
            # before any ack of a message it now refuses could be: that ack's record comes after
            self.journal.append(["f", [[n, f] for n, f in frames.items()]])
        if frame != before:  # (after a restart: said at the restore already, if it was recorded)
            self._mismatch(host.name, frame, recorded=False)

    def _mismatch(self: CP, name: str, frame: int, recorded: bool) -> None:
        if frame and frame != self.cfg.cp.max_frame:
            log.warning(
                "max_frame_mismatch",
                host=name,
                host_max_frame=frame,
                cp_max_frame=self.cfg.cp.max_frame,
                max_data=self.max_data,
                recorded=recorded,
                msg=f"{name} has max_frame {frame}{' (as the journal recorded it)' if recorded else ''}, the CP {self.cfg.cp.max_frame}:"
                f" terminals' messages are limited to {self.max_data} bytes and replies to the smaller of the two;"
                " set the same max_frame on the CP and both hosts",
            )

    def _pair_limit(self: CP) -> None:
        """What a terminal may send: what the CP's frames and the pair's hosts' can hold."""
        self.max_data = payload_max(min([self.cfg.cp.max_frame, *(f for f in self.host_frames.values() if f)]))

    def restore_frames(self: CP, frames: dict[str, int]) -> None:
        """The pair's frames the journal recorded: the limit holds from the restart on, not only
        once the hosts register again (a message taken meanwhile would get an error after its ack)."""
        self.host_frames = dict(frames)
        self._pair_limit()
        for name, frame in frames.items():
            self._mismatch(name, frame, recorded=True)

    def _too_large_for(self: CP, term: Term, held: Held, host: HostProtocol) -> bool:
        """A message taken before `host` said its smaller max_frame (it registered later, the CP
        restarted on its journal, or a standby of smaller frames was granted the role) that its
        frames cannot hold: delivered, it would drop that host's link at every try. It is answered
        with an error instead, as the reply that discards it. The error says whether it was
        processed: not if no host ever had it; else it may have been, by the host named (it was
        delivered to an earlier active, or recovered from the journal): the terminal is told to
        check before it sends it again, not that it may."""
        size = data_size(held.data)
        limit = payload_max(host.max_frame)
        if size <= limit:
            return False
        who = self._maybe_processed_by(term, held)
        fix = "set the same max_frame on the CP and both hosts"
        if who is None:
            text = f"error: message too large for the host ({size} bytes > {limit}); it was not processed: send less, or {fix}"
            said = "it was not processed"
        else:
            text = (
                f"error: message too large for the active host {host.name} ({size} bytes > {limit}), not delivered to it;"
                f" it may have been processed by {who}: check whether it took effect before sending it again ({fix})"
            )
            said = f"it may have been processed by {who}: the terminal is told to check before sending it again"
        log.error(
            "message_too_large_for_host",
            terminal=term.name,
            id=held.id,
            size=size,
            host=host.name,
            host_max_frame=host.max_frame,
            maybe_processed_by=who,
            msg=f"not delivered to {host.name}, whose frames take {limit} bytes of data: answered with an error ({said}); {fix}",
        )
        self._answer(term.name, held.id, text, made_here=True)  # (unless a reply came, or is on its way)
        return True

    def _maybe_processed_by(self: CP, term: Term, held: Held) -> str | None:
        """Who may have processed `held` already, as said to its terminal: the active it was
        delivered to at an earlier epoch, or the active before the CP restarted (a message
        recovered from the journal, or a resend an earlier CP process may have handed over
        early); None if no host ever had it."""
        e = held.delivered_epoch
        if e > 0:
            name = self.epoch_hosts.get(e)
            return f"{name} (the active at epoch {e})" if name else f"the active host at epoch {e}"
        if e < 0 or held.id <= term.handed_floor:
            ra = self.restored_active
            return f"{ra} (the active before the CP restarted)" if ra else "the active host before the CP restarted"
        return None

    def refuse_too_large(self: CP, host: HostProtocol) -> None:
        """Before a flip to `host`: the held messages its frames cannot hold are answered with an
        error (`_too_large_for`), so the flip never sends one. Only when its max_frame is below the
        CP's (a walk of what is held; none otherwise)."""
        if not host.max_frame or host.max_frame >= self.cfg.cp.max_frame:
            return
        for term in list(self.holding):
            for held in list(term.held.values()):
                if not held.replying:
                    self._too_large_for(term, held, host)
