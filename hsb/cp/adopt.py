"""Sessions the active still holds when it registers: adopted, not opened again.

After hsbcpd restarts on its journal (or a second CP machine takes over, or the active's link is
replaced), the active host still has every session it had: they never closed. A host that says
`adopt` in its `register` is told `adopt` in `registered` and answers with `adopt` frames naming
them (docs/protocol.md §3). The CP takes each as its terminal's active session at once, so a
terminal that comes back is served by its welcome alone: no `session_request`, no logon at the
active again, no entry on the takeover file's ring. In a logon storm of 10,000 that is a round
trip to the active per terminal less.

While the frames come (until the one marked `last`) no session is asked for: a terminal that
logs on meanwhile waits for its session with the others, and those the active did not name are
asked for at the end, as every connected terminal was before. (A grant that cuts the adoption
short asks, as every grant does, for the connected terminals still without a session; if that
grant is undone and the role comes back, the active names some of them on: it answers a request
for a session it holds with that session's `open`, as it is, without a second logon.) A session
adopted for a terminal that does not come back within `[cp] resume_window` seconds is closed at
the active then, as at a disconnect.

A mixin of `hsb.cp.core.CP` (the one place that decides), like `TerminalSide`.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.cp.state import Session
from hsb.wire.framing import encode

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol

log = structlog.get_logger("hsb.cp")


class Adoption:
    """The adoption of the active's open sessions; mixed into `CP` (see the module docstring)."""

    def _adoption_starts(self: CP, host: HostProtocol) -> bool:
        """The active registered: ask it for its sessions if it can name them; True if asked."""
        if not host.adopts or self.resume_window <= 0:
            return False
        host.adopting = True
        host.adopt_gap = []
        host.adopt_waiting = []
        host.adopt_n = 0
        host.adopt_t0 = time.monotonic()
        return True

    def host_adopt(self: CP, host: HostProtocol, items: list[tuple[str, dict[str, Any]]], last: bool, handed: dict[str, int] | None = None) -> None:
        if handed:
            self.note_handed(handed)
        if host is not self.active or not (host.adopting or host.adopt_cut):
            if host.adopt_cut and host.role == "demoting" and not host.closed:
                # cut by a planned grant not yet durable: it may be given the role back (its
                # grantee lost), and then these sessions are its own again (`adopt_gap_taken`)
                host.adopt_gap.append((items, last))
            return  # the role moved on meanwhile: that host's sessions are not the active's any more
        if last:  # its end asks a session for every terminal without one: all of them flipped first
            self.settle_flip()
        else:
            for name, _ in items:
                if (t := self.terms.get(name)) is not None:
                    self.settle_flip_for(t)
        # (cut by a grant and the active again, given the role back: it goes on naming, unaware of
        # the cut, and what it names is kept as at any adoption, and expires likewise)
        self._adopt(host, items, deliver=True)
        if last:
            self._adoption_done(host)

    def adopt_gap_taken(self: CP, host: HostProtocol) -> None:
        """`host` is made the active again after a grant cut its adoption: what it named while that
        grant was pending is adopted now (ignored, those sessions stayed open at it for good when
        their terminals never came back). Nothing is delivered here: the grant's flip delivers
        to the terminals whose session is with it."""
        gap, host.adopt_gap = host.adopt_gap, []
        for items, last in gap:
            self._adopt(host, items, deliver=False)
            if last:
                self._adoption_done(host)

    def _adopt(self: CP, host: HostProtocol, items: list[tuple[str, dict[str, Any]]], deliver: bool) -> None:
        opened = encode({"t": "session", "state": "open", "epoch": self.epoch})  # one encoding for all
        for name, attrs in items:
            term = self.terms.get(name)
            if term is None:
                host.send({"t": "session_closed", "terminal": name, "reason": f"terminal {name!r} is not defined at the CP"})
                continue
            if term.leaving or term.bye_unannounced:  # (that run's session: a later run gets its own)
                term.bye_unannounced = False
                host.send({"t": "session_closed", "terminal": name, "reason": "logoff"})
                continue
            if term.active is not None:
                continue  # named twice: the first stands
            term.active = Session(host, attrs)
            host.adopt_n += 1
            conn = term.conn
            if conn is not None and not conn.closed:  # logged on again before its session was named
                self._send_owed_notice(term)
                conn.send_raw(opened)
                self.owe_if_handing_over(term)
                # not while the epoch that gives it the role back is made durable: the host drops
                # what it is sent then at the `switch_granted` that follows, and the flip, finding
                # it delivered at its epoch, would not send it again (it delivers it instead)
                if deliver and self._taking() is host:
                    self._deliver_pending(term, host)
            else:
                host.adopt_waiting.append(name)

    def note_handed(self: CP, handed: dict[str, int]) -> None:
        """The highest id an active handed to its service, per terminal: a message up to it is
        marked redelivered at its first delivery, whoever serves next (docs/cp-journal.md)."""
        for name, mid in handed.items():
            t = self.terms.get(name)
            if t is not None and mid > t.handed_floor:
                t.handed_floor = mid

    def _adoption_done(self: CP, host: HostProtocol) -> None:
        host.adopting = host.adopt_cut = False
        asked = self._request_sessions(host)
        log.info(
            "sessions_adopted",
            host=host.name,
            epoch=self.epoch,
            adopted=host.adopt_n,
            waiting_for_terminal=len(host.adopt_waiting),
            asked=asked,
            took_ms=round((time.monotonic() - host.adopt_t0) * 1000, 1),
        )
        self._adopted_so_far(host)

    def _adoption_cut(self: CP, host: HostProtocol) -> None:
        """A grant ends `host`'s adoption before its last frame: what it adopted for terminals not
        back is still closed at it after `resume_window` if they stay away (those the grant moves
        away from it are passed over then); forgotten, they stayed open at the active for good.
        Given the role back, it names on (it does not know of the cut): `host_adopt` takes those
        too, and its last frame ends the adoption as usual."""
        host.adopting = False
        host.adopt_cut = True
        log.info("adoption_cut", host=host.name, epoch=self.epoch, adopted=host.adopt_n, waiting_for_terminal=len(host.adopt_waiting))
        self._adopted_so_far(host)  # (what it names later counts, and expires, from its last frame)

    def _adopted_so_far(self: CP, host: HostProtocol) -> None:
        """What `host` adopted until now is counted, and its sessions kept for terminals not back
        are closed `resume_window` from now if their terminals stay away."""
        self.counters["adopted"] += host.adopt_n
        host.adopt_n = 0
        if host.adopt_waiting:
            asyncio.get_running_loop().call_later(self.resume_window, self._adopted_expire, host, host.adopt_waiting)
            host.adopt_waiting = []

    def _adopted_expire(self: CP, host: HostProtocol, names: list[str], start: int = 0, closed: int = 0) -> None:
        """`resume_window` after the adoption: close the sessions whose terminal never came back,
        `flip_slice` names a turn of the loop (as the flip goes: 100,000 terminals that stayed
        away made one long turn, nothing else relayed meanwhile); `closed` so far. A grant's flip
        going is let finish first, in its own slices (settled here, it would be one long turn)."""
        if self.flipping is not None:
            asyncio.get_running_loop().call_later(0.01, self._adopted_expire, host, names, start, closed)
            return
        end = min(len(names), start + max(1, self.flip_slice))
        for name in names[start:end]:
            term = self.terms.get(name)
            if term is None or term.conn is not None:
                continue
            s = term.active
            if s is not None and s.host is host:
                term.active = None
                closed += 1
                if host.usable:
                    host.send({"t": "session_closed", "terminal": name, "reason": "disconnect"})
        if end < len(names):
            asyncio.get_running_loop().call_soon(self._adopted_expire, host, names, end, closed)
            return
        if closed:
            self.counters["adopted_expired"] += closed
            log.info("adopted_sessions_expired", host=host.name, sessions=closed, window_s=self.resume_window)
