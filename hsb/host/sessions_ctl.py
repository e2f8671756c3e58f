"""Session handling of one host: CP session requests on the active (S204),
standby sessions on the standby (S225, S228), and the fast-switch link.

These run straight from the host link, not through the HA loop, so a batch
write never holds up a logon. On the active, every open/close of a linked
terminal is handed to the ring writer (S210).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.open_failures import OpenFailures
from hsb.host.session_hooks import SessionHooks
from hsb.host.sessions import ACTIVE, CLOSED, STANDBY, TerminalState
from hsb.terminals import name_problem
from hsb.waits import event_within
from hsb.wire.framing import encode

if TYPE_CHECKING:
    from hsb.host.server import HostServer

log = structlog.get_logger("hsb.host")

KEPT_WAIT_S = 2.0  # the batch read waits this long at most for the CP to name the sessions it kept


class SessionsCtl(SessionHooks):
    OPENS_PER_TURN = 1024  # standby opens (and adoption's names) per turn of the loop: heartbeats and replies go on

    def __init__(self, server: HostServer) -> None:
        self.srv = server
        self.sessions = server.sessions
        self.pending_standby: dict[str, float] = {}  # standby opens not yet answered by the CP
        self.opening: dict[str, Any] = {}  # terminals whose logon (a session_request) is under way: the link it came on
        self.reasked: dict[str, tuple[Any, bool]] = {}  # ... asked for again on a newer link meanwhile: (that link, standby_capable)
        # registered on the CP link now (set and cleared as the frames arrive, not by the HA
        # loop): a standby session changed while not registered is only marked, and all of
        # them are sent again once registered (reopen_standby_sessions)
        self.cp_registered = False
        self.open_batch_bytes = 0  # the CP takes open_batch frames of up to this many bytes (0: single opens)
        self.answered = asyncio.Event()
        # demoted at a planned switchover: the sessions the CP kept as our standby sessions
        # (`standby_kept`), which the batch read then need not open; set once the last came
        self.kept: set[str] = set()
        self.kept_done = asyncio.Event()
        self.kept_done.set()
        self.refused: dict[str, str] = {}
        self.refusing: dict[str, str] = {}  # the standby sessions this host refuses, told to the CP (`_close_standby`)
        self.open_failures = OpenFailures()  # the CP's open_failed answers, for the status and metrics
        self.tasks: set[asyncio.Task[None]] = set()
        # the service's session hooks, in order per terminal (hsb.host.session_hooks, which types them)
        self.hooks = {}
        self.hooks_ready = deque()
        self.hook_workers = 0
        self.adopt_gen = 0  # each registration's adoption (adopt_sessions); a newer one stops the older
        self.closing = False  # close() began: no session work starts any more

    async def close(self) -> None:
        """The process ends: its session work (logons, hooks, adoption) is cancelled before the
        service closes under it, and none starts from then on (a cancelled hook's `finally` would
        hand its terminal's next hooks to a new worker, which ran them on a closing service)."""
        self.closing = True
        tasks = list(self.tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)  # (a hook that does not end on a cancel is left)

    def _spawn(self, coro: Any) -> None:
        if self.closing:
            coro.close()
            return
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ from the CP
    def on_cp_frame(self, msg: dict[str, Any]) -> bool:
        """Handle a session/traffic frame; False if it is for the HA loop."""
        t = msg["t"]
        if t == "deliver":
            name, mid = _name(msg["terminal"]), _id(msg["id"])  # (a bad one is the link's protocol error, granted or not)
            if self.srv.ha.granted:  # with the lease lapsed, it waits in Delivery
                self.srv.delivery.deliver(name, mid, msg["data"], bool(msg.get("redelivered")))
            return True
        if t == "deliver_batch":  # [terminal, id, data, redelivered] each: deliveries, and a flip's re-delivery
            items = [(_name(terminal), _id(mid), data, bool(again)) for terminal, mid, data, again in msg["items"]]
            if self.srv.ha.granted:
                deliver = self.srv.delivery.deliver
                for item in items:  # (all checked first: a bad item drops the link, none of it delivered)
                    deliver(*item)
            return True
        # (a field of the wrong type raises here, before anything is done: the link's protocol error)
        if t == "session_request":
            attrs = msg.get("attrs") or {}
            if not isinstance(attrs, dict):
                raise TypeError(f"session_request: attrs must be a map, not {type(attrs).__name__}")
            self._spawn(self.session_request(_name(msg["terminal"]), bool(msg.get("standby_capable")), attrs))
            return True
        if t == "session_closed":
            self.active_closed(_name(msg["terminal"]), str(msg.get("reason", "")))
            return True
        if t == "opened":
            name = _name(msg["terminal"])
            self.open_failures.opened(name)
            if msg.get("kind") == "standby":
                self._answered(name)
            return True
        if t == "standby_kept":  # (every name checked before any is taken, for this demotion or not)
            items = msg.get("items") or []
            if not isinstance(items, list):
                raise TypeError(f"standby_kept: items must be an array, not {type(items).__name__}")
            self.standby_kept(msg, [_name(n) for n in items])
            return True
        if t == "opened_batch":
            for name in [_name(n) for n in msg["terminals"]]:
                self.open_failures.opened(name)
                self._answered(name)
            return True
        if t == "open_failed":
            name, reason = _name(msg["terminal"]), str(msg.get("reason", ""))
            ts = self.sessions.get(name)
            self.open_failures.failed(name, str(msg.get("kind")), reason)
            if msg.get("kind") == "standby":
                if ts is not None and ts.state == STANDBY:
                    ts.state = CLOSED
                    self._hook(self.srv.service.close_session, name)  # (its open ran: the service hears it close)
                self.refused[name] = reason
                log.error("standby_session_refused", terminal=name, reason=f"CP: {reason}")
                self._answered(name)
            else:
                log.error("active_session_open_failed", terminal=name, reason=reason)
            return True
        return False

    def refusing_status(self) -> dict[str, Any]:
        """The standby sessions this host refuses now (their attributes here differ from the
        active's, or the terminal is not defined here): how many, and the first few with why. Each
        takes the classic path at the next switchover or failover (disconnected, it logs on again)."""
        return {"count": len(self.refusing), "terminals": [{"terminal": n, "reason": r[:200]} for n, r in list(self.refusing.items())[:8]]}

    def expect_kept(self) -> None:
        """Demoted at a planned switchover by a CP that keeps our active sessions as standby ones."""
        self.kept.clear()
        self.kept_done.clear()

    def standby_kept(self, msg: dict[str, Any], names: list[str]) -> None:
        """The CP made these active sessions of ours (`names`, the frame's items checked) our
        standby sessions (hsb.cp.flip): the service hears the active one close and the standby
        one open, and nothing goes to the CP."""
        if self.srv.ha.granted or msg.get("epoch") != self.srv.ha.epoch:
            return  # not for this demotion
        if self.kept_done.is_set():
            # after the batch read gave up waiting (or the CP link was lost): whatever the CP
            # kept that this host does not hold as a standby session is closed there
            for name in names:
                ts = self.sessions.get(name)
                if self.cp_registered and (ts is None or ts.state != STANDBY):
                    self.srv.cp.send({"t": "close", "terminal": name, "kind": "standby"})
            return
        for name in names:
            ts = self.sessions.get(name)
            if ts is None or ts.state == STANDBY:
                continue
            if ts.state == ACTIVE:  # the demotion's own close of it has not run yet
                self._hook(self.srv.service.close_session, name)
            ts.state = STANDBY
            ts.standby_capable = True
            self.sessions.join_link(ts)
            self.kept.add(name)
            self._hook(self.srv.service.open_session, name, dict(ts.attrs), True)
        if msg.get("last") is True:
            log.info("standby_sessions_kept", count=len(self.kept), epoch=msg.get("epoch"))
            self.kept_done.set()

    def _answered(self, name: str) -> None:
        if self.pending_standby.pop(name, None) is not None and not self.pending_standby:
            self.answered.set()

    # ------------------------------------------------------------------ active side
    async def session_request(self, name: str, standby_capable: bool, cp_attrs: dict[str, Any]) -> None:
        cp = self.srv.cp
        ha = self.srv.ha
        if not ha.granted or not await self.srv.delivery.wait_open():  # no logon work while the lease lapsed
            return
        link = cp.fs  # the link it came on: an answer belongs to that link's registration only
        ts = self.sessions.get(name)
        if ts is None:
            reason = f"terminal {name!r} is not defined on host {ha.name}; add it to [[terminals]] there"
            log.error("session_refused", terminal=name, reason=reason)
            cp.send({"t": "refuse", "terminal": name, "reason": reason, "epoch": ha.epoch})
            return
        # Asked again (an adoption's end and the flip of a grant both ask for a terminal without
        # a session at the CP): the service's logon runs once, a second would log it on twice.
        if ts.state == ACTIVE:  # open here already: answered as it is
            cp.send({"t": "open", "terminal": name, "kind": "active", "attrs": ts.attrs, "epoch": ha.epoch})
            return
        if name in self.opening:  # its logon under way: that logon answers this request too
            if self.opening[name] is not link:  # (asked for on a link since lost: it answers on this one)
                self.reasked[name] = (link, standby_capable)
            return
        self.opening[name] = link
        try:
            await self._session_request(name, ts, standby_capable, link)
        finally:
            del self.opening[name]
            self.reasked.pop(name, None)

    async def _session_request(self, name: str, ts: TerminalState, standby_capable: bool, link: Any) -> None:
        cp = self.srv.cp
        ha = self.srv.ha
        failed: Exception | None = None
        try:
            await self.run_hook(self.srv.service.open_session, name, dict(ts.attrs), False)
        except Exception as exc:
            failed = exc
        again = self.reasked.pop(name, None)
        if cp.fs is not link and cp.fs is not None and ha.granted and again is not None and again[0] is cp.fs:
            link, standby_capable = again  # asked for again on the link it has now: answered there
        if failed is not None:  # the application's logon failed: refuse, do not leave the terminal hanging
            reason = f"logon of {name!r} failed on host {ha.name}: {type(failed).__name__}: {failed}"[:200]
            log.error("session_refused", terminal=name, reason=reason)
            if cp.fs is link:
                cp.send({"t": "refuse", "terminal": name, "reason": reason, "epoch": ha.epoch})
            return
        if not ha.granted or cp.fs is not link:
            # the link it came on went during the hook (lost, or replaced and registered again):
            # its answer, stamped with the new link's epoch, would refuse or open a session the
            # CP there did not ask for (it asks again on that link if it wants one)
            if cp.fs is not link:
                log.info("session_request_outlived_its_link", terminal=name)
            if ts.state != ACTIVE:  # the logon the hook made is answered to nobody: undone (the CP asks again)
                self._hook(self.srv.service.close_session, name)
            return
        ts.state = ACTIVE
        ts.standby_capable = standby_capable
        if standby_capable:
            self.sessions.join_link(ts)
        cp.send({"t": "open", "terminal": name, "kind": "active", "attrs": ts.attrs, "epoch": ha.epoch})
        if name in self.sessions.link:
            self.srv.takeover.ring_change(name, ts.attrs, True)

    def active_closed(self, name: str, reason: str) -> None:
        ts = self.sessions.get(name)
        if ts is None or ts.state != ACTIVE:
            return
        ts.state = CLOSED
        if name in self.sessions.link:
            self.srv.takeover.ring_change(name, ts.attrs, False)
        self._hook(self.srv.service.close_session, name)

    def close_unkept(self) -> int:
        """Registered as the active at a CP that did not keep our sessions: each one still open here
        is closed (its close hook, its ring entry), as the CP closed it with the old link. Left
        open, a terminal gone meanwhile would stay active here for ever, named in every batch and
        carried to the standby; one still connected is asked for again, and opened again."""
        names = [ts.name for ts in self.sessions.in_state(ACTIVE)]
        for name in names:
            self.active_closed(name, "not kept by the CP")
        if names:
            log.info("active_sessions_closed", sessions=len(names), reason="the CP registered this host without keeping its sessions")
        return len(names)

    def cp_lost(self) -> None:
        self.pending_standby.clear()
        self.answered.set()
        self.kept.clear()  # the CP holds no session of ours now: the next registration reopens them
        self.kept_done.set()
        self.adopt_gen += 1  # an adoption under way stops: the next registration starts its own

    def adopt_sessions(self) -> None:
        """Registered as the active at a CP that keeps sessions (after its restart, say): name every
        session open here in `adopt` frames, the last one marked, so its terminals resume on them
        instead of logging on here again (hsb.cp.adopt)."""
        self.adopt_gen += 1
        names = [ts.name for ts in self.sessions.in_state(ACTIVE)]
        self._spawn(self._adopt(self.adopt_gen, names))

    async def _adopt(self, gen: int, names: list[str]) -> None:
        """Each frame carries the host's epoch as it is when the frame goes: a planned grant undone
        part-way re-grants this host at a newer epoch (the naming goes on, protocol.md), and once a
        frame of ours carried that one the CP refuses the older as stale and fences the host."""
        cp = self.srv.cp
        ha = self.srv.ha
        t0 = time.monotonic()
        n = 0
        # first, every terminal's highest id handed to the service (not only those of sessions
        # still open: a terminal that went away may send again a message the CP lost), so that
        # the CP marks such a message redelivered wherever it goes next (hsb.cp.adopt)
        for chunk in self._handed_chunks():
            if gen != self.adopt_gen or not self.srv.ha.granted:
                return
            cp.send({"t": "adopt", "items": [], "handed": chunk, "epoch": ha.epoch, "last": False})
            await cp.drain()
            await asyncio.sleep(0)
        for k in range(0, len(names), self.OPENS_PER_TURN):  # in slices: heartbeats and replies go on
            if gen != self.adopt_gen or not self.srv.ha.granted:
                return
            items: list[list[Any]] = []
            for name in names[k : k + self.OPENS_PER_TURN]:
                ts = self.sessions.get(name)
                if ts is not None and ts.state == ACTIVE:  # closed meanwhile: not named
                    items.append([name, ts.attrs])
            self._send_batched("adopt", items, epoch=ha.epoch, last=False)
            n += len(items)
            await cp.drain()
            await asyncio.sleep(0)
        if gen == self.adopt_gen and self.srv.ha.granted:  # not if demoted or fenced meanwhile
            cp.send({"t": "adopt", "items": [], "epoch": ha.epoch, "last": True})
            log.info("sessions_named_for_adoption", sessions=n, epoch=ha.epoch, took_ms=round((time.monotonic() - t0) * 1000, 1))

    # ------------------------------------------------------------------ standby side
    def _check(self, name: str, attrs: dict[str, Any]) -> str | None:
        ts = self.sessions.get(name)
        if ts is None:
            return f"terminal {name!r} is open on the active but not defined on this host"
        if ts.attrs != attrs:
            return f"terminal {name!r}: this host's session attributes {ts.attrs} differ from the active's {attrs}"
        return None

    def _open_standby(self, name: str, active_attrs: dict[str, Any], batch: list[list[Any]] | None = None) -> bool:
        ts = self.sessions.get(name)
        if self.srv.ha.granted or (ts is not None and ts.state == ACTIVE):
            # made active meanwhile (a ring entry or a batch slice read just before the switch was
            # granted): the session is ours now, never turned back into a standby one, nor refused
            # (the CP would take that for its new active closing the terminal's session)
            return False
        why = self._check(name, active_attrs)
        if why is not None:
            # refused (its attributes here differ): one open already, with the attributes of
            # before, is closed, so that a switch never carries the terminal onto them (§5.2.7:
            # close, then open with the same checks)
            self._close_standby(name, refused=why)
            self.refused[name] = why
            log.error("standby_session_refused", terminal=name, reason=why)
            return False
        ts = self.sessions.table[name]
        self.sessions.join_link(ts)
        if not self.srv.cfg.host.fast_switch:
            return False  # conventional hot standby: no standby sessions at the CP [0002]
        # (open already: the CP replaces it, attributes and all, on the `open` below; a `close`
        # first could reach the CP after a grant had switched the session to this host, and be
        # taken for this host losing it)
        already = ts.state == STANDBY
        ts.state = STANDBY
        ts.standby_capable = True
        self.refused.pop(name, None)
        self.refusing.pop(name, None)
        if self.cp_registered:
            self.pending_standby[name] = time.monotonic()
            self.answered.clear()
            self._ask_standby(name, ts.attrs, batch)
        if not already:  # (open at the service already, the same attributes: a second logon would be one too many)
            self._hook(self.srv.service.open_session, name, dict(ts.attrs), True)
        return True

    def _ask_standby(self, name: str, attrs: dict[str, Any], batch: list[list[Any]] | None) -> None:
        """Ask the CP for a standby session: into `batch`, the open_batch frame to come, when
        there is one and the CP takes them; else a single `open` frame now."""
        if batch is not None and self.open_batch_bytes:
            batch.append([name, attrs])
        else:
            self.srv.cp.send({"t": "open", "terminal": name, "kind": "standby", "attrs": attrs})

    def _send_open_batch(self, batch: list[list[Any]]) -> None:
        """Standby opens in `open_batch` frames within the size the CP takes."""
        self._send_batched("open_batch", batch, kind="standby")

    def _handed_chunks(self) -> Iterator[dict[str, int]]:
        """The handed ids (hsb.host.delivery) in pieces that fit the frames the CP takes (none
        to a CP that takes no batches: one of before, which ignores them)."""
        limit = self.open_batch_bytes - 64  # (the frame's own fields)
        if limit <= 0:
            return
        chunk: dict[str, int] = {}
        size = 0
        for name, mid in list(self.srv.delivery.handed.items()):
            cost = len(name) * 4 + 16  # at most: a name's UTF-8 and its int, encoded
            if chunk and size + cost > limit:
                yield chunk
                chunk, size = {}, 0
            chunk[name] = mid
            size += cost
        if chunk:
            yield chunk

    def _send_batched(self, t: str, batch: list[list[Any]], **fields: Any) -> None:
        """[terminal, attrs] items in `t` frames within the size the CP takes (halved until they fit)."""
        if not batch:
            return
        frame = encode({"t": t, **fields, "items": batch})
        if len(frame) > self.open_batch_bytes and len(batch) > 1:
            half = len(batch) // 2
            self._send_batched(t, batch[:half], **fields)
            self._send_batched(t, batch[half:], **fields)
            return
        self.srv.cp.send_raw(frame)

    def _close_standby(self, name: str, refused: str | None = None) -> bool:
        """Close `name`'s standby session, if open. `refused`: this host refuses it (why), which the
        CP is told even with none open (a handover must not wait for it), and again on a new link.
        A refusal ends with a plain `close` (it read of the terminal's logoff, say): the CP then
        waits for its next standby session again. A host made active refuses nothing."""
        ts = self.sessions.get(name)
        was = ts is not None and ts.state == STANDBY
        if not self.srv.cfg.host.fast_switch:  # (conventional: none is asked for)
            refused = None
        ended = self.refusing.pop(name, None) is not None and refused is None and not self.srv.ha.granted
        if refused is not None:
            self.refusing[name] = refused
        if self.cp_registered and (was or ended):  # else the CP dropped it with the link
            # (plain, and first: a grant not yet heard of may have switched it to this host, which
            # the CP then closes and asks for again; it takes no `refused` from its active)
            self.srv.cp.send({"t": "close", "terminal": name, "kind": "standby"})
        if self.cp_registered and refused is not None and not self.srv.ha.granted:
            self._send_refusal(name, refused)
        if ts is None or not was:
            return False
        ts.state = CLOSED
        self._hook(self.srv.service.close_session, name)
        return True

    async def apply_batch(self, entries: list[Any], timeout: float = 30.0) -> None:
        """Open a standby session for each session open on the active [0077]; close the rest.
        One the CP kept for us at a planned switchover (standby_kept) is open already."""
        if not self.kept_done.is_set():  # the CP names them right after the grant: this wait is rare
            if not await event_within(self.kept_done, KEPT_WAIT_S):
                log.warning("standby_kept_incomplete", kept=len(self.kept), msg="opening every standby session again")
                self.kept.clear()
                self.kept_done.set()
        kept, self.kept = self.kept, set()
        want_open: dict[str, dict[str, Any]] = {}
        for e in entries:
            if e.open:
                want_open[e.terminal] = e.attrs
        for ts in self.sessions.in_state(STANDBY):
            if ts.name not in want_open:
                self._close_standby(ts.name)
        for name in [n for n in self.refusing if n not in want_open]:  # (closed at the active since)
            self._close_standby(name)
        self.answered.set()
        batch: list[list[Any]] = []  # opens for one open_batch frame, when the CP takes them
        for k, (name, attrs) in enumerate(want_open.items(), 1):
            if name in kept and self.sessions.table[name].state == STANDBY:
                if self._check(name, attrs) is None:
                    continue  # kept at the CP at the demotion: open there already
                self._close_standby(name)  # and refused below, as an open would be
            self._open_standby(name, attrs, batch)
            if k % self.OPENS_PER_TURN == 0:  # the open storm in slices: heartbeats and replies go on
                self._send_open_batch(batch)
                batch = []
                await self.srv.cp.drain()
                await asyncio.sleep(0)
        self._send_open_batch(batch)
        await self.srv.cp.drain()
        if self.pending_standby and not await event_within(self.answered, timeout):
            log.warning("standby_opens_unanswered", count=len(self.pending_standby))

    def apply_ring(self, entries: list[Any]) -> None:
        """S228: an open entry (re)opens the standby session, a close entry closes it."""
        for e in entries:
            if e.open:
                self._open_standby(e.terminal, e.attrs)
            else:
                self._close_standby(e.terminal)

    def close_all_standby(self) -> int:
        """Fig. 3: walk the fast-switch link and close every standby session."""
        n = 0
        for name in self.sessions.link:
            n += self._close_standby(name)
        return n

    def reopen_standby_sessions(self) -> None:
        """Registered again: the CP holds none of our standby sessions (dropped with the old link)."""
        batch: list[list[Any]] = []
        for ts in self.sessions.in_state(STANDBY):
            self._ask_standby(ts.name, ts.attrs, batch)
            if len(batch) >= self.OPENS_PER_TURN:
                self._send_open_batch(batch)
                batch = []
        self._send_open_batch(batch)
        for name, why in self.refusing.items():  # (what it refuses, the new link's CP is told again)
            self._send_refusal(name, why)

    def _send_refusal(self, name: str, why: str) -> None:
        """Tell the CP this standby refuses `name`'s standby session, and why (a handover waits
        for none of those): `close` with `refused`."""
        self.srv.cp.send({"t": "close", "terminal": name, "kind": "standby", "refused": why})

    def drop_active_sessions(self) -> int:
        """After a planned switchover: our active sessions now belong to the other host."""
        n = 0
        for ts in self.sessions.in_state(ACTIVE):
            ts.state = CLOSED
            self._hook(self.srv.service.close_session, ts.name)
            n += 1
        return n

    def promote_standby_sessions(self) -> int:
        self.refusing.clear()  # (the active's sessions are its own: it refuses none)
        n = 0
        for ts in self.sessions.in_state(STANDBY):
            ts.state = ACTIVE
            n += 1
        return n


def _id(mid: Any) -> int:
    """A delivered message's id as the CP sends it: a positive int (TypeError or ValueError, said
    as bad_fields and the link dropped, for anything else: a CP of another make, or a bug)."""
    if type(mid) is not int:
        raise TypeError(f"a message id must be an integer, not {type(mid).__name__}")
    if mid <= 0:  # (the CP numbers a terminal's messages from 1; Delivery.handed keeps the highest)
        raise ValueError(f"a message id must be positive, not {mid}")
    return mid


def _name(terminal: Any) -> str:
    """A terminal name as the CP sends it: one its config could hold (hsb.terminals.name_problem).
    Anything else is the CP link's protocol error, never handed on: a name reaches the service
    and stays a key of Delivery.handed for the process's life."""
    why = name_problem(terminal)
    if why is None:
        return terminal  # type: ignore[no-any-return]
    if type(terminal) is not str:
        raise TypeError(f"a terminal name {why}")
    shown = repr(terminal[:32]) + ("..." if len(terminal) > 32 else "")
    raise ValueError(f"terminal name {shown} ({len(terminal)} characters) {why}")
