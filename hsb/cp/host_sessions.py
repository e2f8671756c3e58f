"""The sessions hosts open and close at the CP (SPEC §5.2): a new active asked for every
connected terminal's session, the active's and the standby's opens (one at a time or in a
batch), refusals and closes; and the planned switchover's two steps (SPEC §5.3): the release,
then the handover, which waits for the standby sessions still owed so that no terminal is
disconnected.

A mixin of `hsb.cp.core.CP` (the one place that decides): the state is the CP's.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.cp.state import Session
from hsb.plural import agree, many

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.state import Term

log = structlog.get_logger("hsb.cp")

# A planned switchover waits at most this long for the standby to open the standby sessions it
# still owes (terminals that logged on just before, not yet followed on the ring); the rest
# would take the classic path, a disconnect in a switchover the operator chose.
HANDOVER_WAIT_S = 2.0
# the terminals whose standby session the standby refused, named at a handover (the warning, the
# switch record): the first few, with the count of all
REFUSED_NAMED = 8


class _Handover:
    """A planned handover waiting for the standby sessions still owed to it."""

    __slots__ = ("active", "standby", "owed", "timer")

    def __init__(self, active: HostProtocol, standby: HostProtocol, owed: set[str], timer: asyncio.TimerHandle) -> None:
        self.active = active
        self.standby = standby
        self.owed = owed  # terminal names
        self.timer = timer


class HostSessions:
    """The hosts' sessions and the planned switchover; mixed into `CP` (see the module docstring)."""

    _handover: _Handover | None

    def _request_sessions(self: CP, host: HostProtocol) -> int:
        """A `session_request` to a new active for every connected terminal without a session."""
        asked = 0
        for term in self.terms.values():
            if term.conn is not None and term.active is None and not term.leaving:
                host.request_session(term)
                asked += 1
        return asked

    def host_open(self: CP, host: HostProtocol, name: str, kind: str, attrs: dict[str, Any]) -> None:
        term = self.terms.get(name)
        if term is None:
            host.send({"t": "open_failed", "terminal": name, "kind": kind, "reason": f"terminal {name!r} is not defined at the CP"})
            return
        self.settle_flip_for(term)
        if kind == "active":
            if host is not self.active:
                host.send({"t": "open_failed", "terminal": name, "kind": kind, "reason": "this host is not the active host"})
                return
            if term.conn is None or term.leaving:
                host.send({"t": "session_closed", "terminal": name, "reason": "disconnect"})
                return
            term.active = Session(host, attrs)
            term.bye_unannounced = False  # (the active's session is this run's now)
            self._tell(term, {"t": "session", "state": "open", "epoch": self.epoch})
            host.send({"t": "opened", "terminal": name, "kind": "active"})
            self.owe_if_handing_over(term)
            if not host.released and self.announced:  # a releasing active gets no new work, nor one not yet announced
                self._deliver_pending(term, host)
        elif kind == "standby":
            why = self._open_standby(host, term, attrs)
            if why is not None:
                host.send({"t": "open_failed", "terminal": name, "kind": kind, "reason": why})
                return
            host.send({"t": "opened", "terminal": name, "kind": "standby"})
            self._standby_opened(host, [name])
        else:
            host.close_with_error("bad_fields", f"open: kind must be 'active' or 'standby', not {kind[:20]!r}")

    def _open_standby(self: CP, host: HostProtocol, term: Term, attrs: dict[str, Any]) -> str | None:
        """A standby session of `host` for `term`; why not, or None once it is open. The host a
        grant names still opens them while its epoch is made durable (it reads the ring until it
        hears of the grant): the flip switches those too."""
        if host is not self.standby and host is not self.granting:
            return "this host is not the registered standby"
        if not term.defn.standby_capable:
            return f"terminal {term.name!r} is not standby-capable at the CP"
        term.standby = Session(host, attrs)
        host.refused_standby.pop(term.name, None)
        return None

    def _standby_opened(self: CP, host: HostProtocol, names: list[str]) -> None:
        """After the host was told: a planned handover waiting for these sessions may go on."""
        h = self._handover
        if h is not None and host is h.standby:
            for name in names:
                if self._handover is h:
                    self._owed_standby(name)

    def host_open_batch(self: CP, host: HostProtocol, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Standby sessions for many terminals from one frame (the standby's open storm after a
        batch read or a new registration): one `opened_batch` for those opened, an `open_failed`
        for each of the others, as single opens would have had."""
        opened: list[str] = []
        for name, attrs in items:
            term = self.terms.get(name)
            if term is not None:
                self.settle_flip_for(term)  # (each alone: at most what the whole pass would have done)
            why = f"terminal {name!r} is not defined at the CP" if term is None else self._open_standby(host, term, attrs)
            if why is None:
                opened.append(name)
            else:
                host.send({"t": "open_failed", "terminal": name, "kind": "standby", "reason": why})
        if opened:
            host.send({"t": "opened_batch", "kind": "standby", "terminals": opened})
            self._standby_opened(host, opened)

    def host_refuse(self: CP, host: HostProtocol, name: str, reason: str) -> None:
        term = self.terms.get(name)
        if term is None or host is not self.active:
            return
        self.settle_flip_for(term)
        term.active = None
        log.warning("session_refused", terminal=name, host=host.name, reason=reason)
        if term.conn is not None:
            self._tell(term, {"t": "session", "state": "closed", "epoch": self.epoch, "reason": reason[:200]})
        self.session_gone(term)

    def host_close(self: CP, host: HostProtocol, name: str, kind: str, refused: str | None = None) -> None:
        term = self.terms.get(name)
        if term is None:
            return
        self.settle_flip_for(term)
        if refused is not None and host is not self.standby:
            # (the refusal of a host that is active now, or becoming it: a ring entry read before
            # its grant and applied after, say. Never taken as the active closing its session,
            # which may be the terminal's new one there; one it held it closes first, plainly)
            log.info("standby_refusal_ignored", terminal=name, host=host.name, msg="not from the standby host")
            return
        if kind == "standby" and host is self.standby and refused is None:
            host.refused_standby.pop(name, None)  # (it refuses it no more: it read of its logoff, say)
        if kind == "standby" and refused is not None:
            # the standby will not hold this session (its attributes there differ, say): a
            # handover waiting for it would wait HANDOVER_WAIT_S for nothing, every terminal paused
            host.refused_standby[name] = refused
            if term.standby is not None and term.standby.host is host:
                term.standby = None
            self.owed_no_more(term)
        elif kind == "standby" and term.standby is not None and term.standby.host is host:
            term.standby = None
            self.owe_if_handing_over(term)  # (still served at the active: its standby session is owed again)
        elif term.active is not None and term.active.host is host and (kind == "active" or (kind == "standby" and host is self.active)):
            # (a standby's close: sent before the host heard of its grant, the flip having switched
            # the session to it meanwhile: the new active does not hold it, it promotes only the
            # standby sessions it still has, so a new one is asked for)
            switched = kind == "standby"
            if switched:
                log.info("switched_session_closed_by_host", terminal=name, host=host.name, msg="a new session is asked for")
            term.active = None
            if term.conn is not None:
                self._tell(term, {"t": "session", "state": "closed", "epoch": self.epoch, "reason": "closed by the host"})
                if switched and not term.leaving:
                    host.request_session(term)
            self.session_gone(term)

    def host_release(self: CP, host: HostProtocol) -> None:
        """Planned switchover, step 1: stop delivering to the active; it finishes what it has."""
        self.settle_flip()
        if host is not self.active:
            return
        host.released = True
        self.release_t0 = time.monotonic()
        log.info("active_released", host=host.name, epoch=self.epoch)
        host.send({"t": "released", "epoch": self.epoch})

    def host_handover(self: CP, host: HostProtocol, wait: bool = True) -> None:
        """Planned switchover, step 2: the released active has answered everything it had.
        Granted once the standby holds a standby session for every terminal that can have one
        (at most HANDOVER_WAIT_S later), so that no terminal is disconnected."""
        self.settle_flip()
        sb = self.standby
        if host is not self.active or not host.released:
            host.send({"t": "handover_refused", "reason": "release first"})  # (another host's frame: the
            return  # active's handover, waiting for standby sessions, goes on)
        self.end_handover()
        if sb is None or not sb.usable:
            host.released = False
            host.send({"t": "handover_refused", "reason": "no standby host is registered at the CP", "code": "no_standby"})
            for term in self.terms.values():
                if term.active is not None and term.active.host is host:
                    self._deliver_pending(term, host)
                elif self.logoff_held(term):
                    self.deliver_logoffs(term, host)
            return
        if wait:
            owed = {t.name for t in self.terms.values() if self._owes_standby(t, host, sb)}
            if owed:
                log.info("handover_waits_for_standby_sessions", active=host.name, standby=sb.name, owed=len(owed), at_most_s=HANDOVER_WAIT_S)
                timer = asyncio.get_running_loop().call_later(HANDOVER_WAIT_S, self.host_handover, host, False)
                self._handover = _Handover(host, sb, owed, timer)
                return
        said, refused = self._refused_at_handover(host, sb)
        self._grant(sb, "planned switchover", f"released by {host.name}{said}", demote=host, refused=refused)

    def _refused_at_handover(self: CP, active: HostProtocol, sb: HostProtocol) -> tuple[str, dict[str, Any] | None]:
        """The terminals a handover from `active` grants without the standby session that `sb`
        refused them, said (a warning) with its reason: what the grant's `why` adds ("" if none),
        and the switch record's `refused_standby` (the count, the first few with the standby's
        reason each: what hsbctl switchover names; None if none)."""
        names = [n for n in sb.refused_standby if (t := self.terms.get(n)) is not None and self._needs_standby(t, active, sb)]
        if not names:
            return "", None
        first = names[0]
        n = len(names)
        said = (
            f"{many(n, 'terminal')} {agree(n, 'takes', 'take')} the classic path: {sb.name} refused"
            f" {agree(n, 'its', 'their')} standby session ({first}: {sb.refused_standby[first]})"
        )
        log.warning(
            "handover_without_refused_standby_sessions",
            active=active.name,
            standby=sb.name,
            count=len(names),
            terminals=names[:REFUSED_NAMED],
            msg=f"{said}: disconnected, {agree(n, 'it logs', 'they log')} on again; make {agree(n, 'its', 'their')} attrs identical on both hosts",
        )
        named = [{"terminal": n, "reason": sb.refused_standby[n]} for n in names[:REFUSED_NAMED]]
        return f"; {said}", {"standby": sb.name, "count": len(names), "terminals": named}

    @staticmethod
    def _needs_standby(t: Term, active: HostProtocol, sb: HostProtocol) -> bool:
        """`t` is served at `active`, connected, can have a standby session, and has none at `sb`."""
        return (
            t.active is not None
            and t.active.host is active
            and t.conn is not None
            and not t.leaving
            and t.defn.standby_capable
            and (t.standby is None or t.standby.host is not sb)
        )

    @classmethod
    def _owes_standby(cls, t: Term, active: HostProtocol, sb: HostProtocol) -> bool:
        """A handover from `active` to `sb` waits for `t`'s standby session: it needs one
        (`_needs_standby`) that `sb` has not refused (it never opens that one)."""
        return cls._needs_standby(t, active, sb) and t.name not in sb.refused_standby

    def refusal_ends(self: CP, term: Term) -> None:
        """`term`'s active session went: the standby's refusal was of that session's standby one.
        Its next session the standby opens or refuses again once it reads of it, and a handover
        meanwhile waits for it (the attrs made the same and the standby reloaded, say)."""
        sb = self.standby
        if sb is not None:
            sb.refused_standby.pop(term.name, None)

    def owe_if_handing_over(self: CP, term: Term) -> None:
        """`term` came to need a standby session while a handover waits: the released active
        opened (or named) its session (a logon hook that ended after the release), its terminal
        came back to a session adopted for it, or the standby closed the one it held (it read a
        close on the ring before the open after it, say). It is waited for too, within the same
        HANDOVER_WAIT_S, or the grant would disconnect it."""
        h = self._handover
        if h is not None and self._owes_standby(term, h.active, h.standby):
            h.owed.add(term.name)

    def owed_no_more(self: CP, term: Term) -> None:
        """`term` may no longer need the standby session a handover waits for (it logged off or
        went, its active session was closed or refused): not waited for then, or every terminal's
        service paused HANDOVER_WAIT_S for a session the standby may never open."""
        h = self._handover
        if h is not None and term.name in h.owed and not self._owes_standby(term, h.active, h.standby):
            self._owed_standby(term.name)

    def end_handover(self: CP) -> None:
        """A planned switchover's wait for standby sessions (`_handover`), if one is under way, ends."""
        h = self._handover
        if h is not None:
            h.timer.cancel()
            self._handover = None

    def _rewait_handover(self: CP, active: HostProtocol) -> None:
        """After the standby registered again (its `registered` gone out first)."""
        if active is self.active and active.released and self._handover is None:
            self.host_handover(active)

    def _owed_standby(self: CP, name: str) -> None:
        """A standby session owed to a waiting handover is open (or no longer needed)."""
        h = self._handover
        assert h is not None
        h.owed.discard(name)
        if not h.owed:
            self.host_handover(h.active, wait=False)
