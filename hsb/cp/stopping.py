"""hsbcpd's stop: the graceful one at the end of `serve()` (SIGTERM, the address gone from this
machine, a waiting CP told to stop), which takes nothing new from the connections still open,
drains the journal and then closes it; and the one at once when a newer CP takes the journal
over (superseded), or this CP's own generation file is gone with none newer (GenerationGone):
every connection aborted, nothing more goes out, exit 75 (`at_start`, and GenerationGone in
both modes: not restarted by itself) or 0 (`on_wake`: systemd starts it again, waiting).

A mixin of `hsb.cp.server.CPServer`, whose state it reads and changes; the lifecycle that ends
here is there.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

import structlog

from hsb.cp import supervise
from hsb.cp.config import CPConfig
from hsb.cp.core import CP
from hsb.cp.host_link import HostProtocol
from hsb.cp.journal.generation import GenerationGone, Superseded
from hsb.ops.notify import notify

log = structlog.get_logger("hsb.cp")
EXIT_SUPERSEDED = 75  # a newer CP took the journal over: not restarted as the serving CP by itself
STOP_AFTER_DRAIN_S = 0.5  # a stop whose journal did not drain: how much longer the write still out may take


class Stopping:
    """The stops of CPServer (see the module docstring; the attributes below are CPServer's)."""

    cfg: CPConfig
    cp: CP | None
    state: str
    exit_code: int
    superseded: bool
    should_exit: asyncio.Event
    servers: list[asyncio.base_events.Server]
    hosts: set[HostProtocol]
    _tickling: asyncio.Future[None] | None

    if TYPE_CHECKING:  # (hsb.cp.taking_over.TakingOver's)

        def _end_takeover_beats(self) -> None: ...

        def close_bound_ahead(self) -> None: ...  # (hsb.cp.listeners.Listeners')

    def _superseded(self, exc: Superseded) -> None:
        """A newer CP owns the journal: stop at once (nothing more is acknowledged already).
        With `on_wake` systemd starts it again, waiting (exit 0); with `at_start` it must not come
        back by itself and take the journal back (exit 75, RestartPreventExitStatus). Its own
        generation file gone with none newer (GenerationGone) is 75 in both: a CP started again
        on a directory put in its place (an older copy) would take it over at once, on its
        machine's keepalived master, and serve without what was acknowledged since the copy."""
        self.superseded = True
        again = self.cfg.cp.takeover == "on_wake" and not isinstance(exc, GenerationGone)
        self.exit_code = 0 if again else EXIT_SUPERSEDED
        self._abort_all()  # now, not at the stop's turn of the loop: nothing more goes out from here
        self.should_exit.set()

    def _abort_all(self) -> None:
        for h in list(self.hosts):
            h.abort()
        if self.cp is not None:
            for t in self.cp.terms.values():
                if t.conn is not None:
                    t.conn.abort()

    async def shutdown(self) -> None:
        self.state = "stopping"
        supervise.mark_final(self.exit_code)  # under a master: no other worker if this one dies now
        notify(STOPPING=1, STATUS="stopping")
        held = sum(len(t.held) for t in self.cp.terms.values()) if self.cp is not None else 0
        log.info("cp_stopping", held=held, superseded=self.superseded)
        if self.superseded:  # at once: close every connection, nothing more goes out
            self._abort_all()
        if self.cp is not None:
            # hellos still waiting: dropped, they log on at the next CP; byes: logged off now (not
            # by a superseded CP: the newer one has their messages, and nothing more goes out)
            self.cp.logons.close(step_lost=not self.superseded)
            self.cp.cancel_deferred_grant()  # (no grant during the stop's drain)
        self._end_takeover_beats()
        if self._tickling is not None:
            self._tickling.cancel()
        for srv in self.servers:
            srv.close()
        self.close_bound_ahead()
        # Under a master (--supervise) these listening sockets are also the master's: closed
        # here, they would go on completing connections nobody accepts, reset only when the
        # master exits. Shut down, they refuse at once, as without a master (the master exits
        # after any worker that stops: no next worker needs them).
        for held in supervise.LISTENERS.values():
            try:
                held.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        if self.cp is not None and not self.superseded:
            # nothing new is taken from the connections still open (closing the listeners does
            # not stop them): the journal's drain below then finishes instead of meeting new
            # records until its timeout; what they send meanwhile is sent again to the next CP
            for t in self.cp.terms.values():
                if t.conn is not None:
                    t.conn.freeze()
            for h in list(self.hosts):
                h.freeze()
        for srv in self.servers:
            try:
                await asyncio.wait_for(srv.wait_closed(), 1.0)
            except TimeoutError:
                pass
        if self.cp is not None:
            drained = self.superseded or await self.cp.journal.drain()
            if not drained:
                log.warning(
                    "journal_not_drained",
                    pending=self.cp.journal.pending,
                    msg="records still unwritten at the stop: recovered as if the CP had crashed",
                )
            # the loop runs on meanwhile; a write that drain() already waited for gets only a little more
            await self.cp.journal.stop(timeout=None if drained else STOP_AFTER_DRAIN_S)
            if self.cp.tickles is not None:
                self.cp.tickles.close()
        log.info("cp_stopped", exit=self.exit_code)
