"""The host link (docs/protocol.md §3): authenticated hsbd connections to the CP."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb.bootclock import boot_now
from hsb.cp import deliver as dv
from hsb.wire.authlink import AuthServerProtocol
from hsb.wire.conn import require
from hsb.wire.framing import ProtocolError, batch_bytes

if TYPE_CHECKING:
    from hsb.cp.core import CP
    from hsb.cp.state import Held, Term

log = structlog.get_logger("hsb.cp")

# Frames only the active host may send; each carries the epoch it believes in.
_EPOCHED = frozenset({"reply", "refuse", "stopping", "release", "handover", "adopt"})


class HostProtocol(AuthServerProtocol):
    link = "host"
    dispatch = {
        "register": "on_register",
        "hb": "on_hb",
        "open": "on_open_session",
        "open_batch": "on_open_batch",
        "adopt": "on_adopt",
        "refuse": "on_refuse",
        "close": "on_close_session",
        "reply": "on_reply",
        "stopping": "on_stopping",
        "release": "on_release",
        "handover": "on_handover",
        "switchover": "on_switchover",
        "error": "on_error",
    }

    def __init__(self, cp: CP, **kw: Any) -> None:
        super().__init__(**kw)
        self.cp = cp
        self.told_held_bound: int | None = None  # the held_bound its registration said (a reload's change goes in a heartbeat answer)
        self.role: str | None = None
        self.epoch = 0
        self.fenced = False
        self.released = False
        self.known_epoch: int | None = None  # an epoch before the current one still taken from it (arbitration)
        self.instance: str | None = None
        self.server_name = cp.name
        self.marks_repeats = False  # the host marks an id it handed to its service before redelivered itself
        self.deliver_batch_bytes = 0  # the host reads `deliver_batch` frames of up to this many bytes (0: it does not)
        self.max_frame = 0  # the host's max_frame, said at its register (0: not said)
        # hsb.cp.adopt: the host names its open sessions when registered as the active
        self.adopts = False  # it said it can (`adopt` in its register)
        self.keeps_standby = False
        self.adopting = False  # asked, and its last `adopt` frame not yet here
        self.adopt_cut = False  # a grant ended its adoption before that frame (hsb.cp.adopt._adoption_cut)
        self.adopt_n = 0
        self.adopt_waiting: list[str] = []  # adopted for terminals not connected (yet)
        self.adopt_gap: list[tuple[list[tuple[str, dict[str, Any]]], bool]] = []  # named while a grant that cut it was pending
        self.adopt_t0 = 0.0
        # standby: the terminals whose standby session it refused (their attributes there differ),
        # with its reason: a planned handover does not wait for those (hsb.cp.host_sessions)
        self.refused_standby: dict[str, str] = {}

    @property
    def usable(self) -> bool:
        return self.authed and not self.closed and not self.fenced

    def same_process(self, other: HostProtocol) -> bool:
        """Whether `other` (another link, say) is of this very hsbd process (its `instance`)."""
        return bool(other.instance) and (self.name, self.instance) == (other.name, other.instance)

    def auth_ok_extra(self) -> dict[str, Any]:
        # hosts refuse a CP older than one they saw, and one on another journal than theirs
        ok: dict[str, Any] = {"generation": self.cp.journal.gen}
        if self.cp.journal.journal_id is not None:  # (none: memory-only)
            ok["journal"] = self.cp.journal.journal_id
        if self.cp.journal.takeover is not None:  # and which takeover made the generation: a copy's is another
            ok["takeover"] = self.cp.journal.takeover
        return ok

    def _handle(self, msg: dict[str, Any]) -> None:
        if self.authed and msg["t"] not in ("register", "hb") and self.role is None:
            self.protocol_error(ProtocolError("not_registered", "send register before anything else"))
            return
        # (a host granted the role back, still "demoting", stamps the epoch before: not checked)
        if self.authed and self.role == "active" and msg["t"] in _EPOCHED | {"open", "close"}:
            epoch = msg.get("epoch")
            if msg["t"] in ("open", "close") and msg.get("kind") == "standby":
                pass
            elif not isinstance(epoch, int) or isinstance(epoch, bool):
                # the epoch is what fences a replaced active: a frame of the active without one
                # (or with true, 1.0) would pass that check
                self.protocol_error(ProtocolError("bad_fields", f"{str(msg['t'])[:40]}: the active's frames carry the epoch (an integer)"))
                return
            elif epoch == self.cp.epoch:
                if self.known_epoch is not None:  # granted the role back: it has heard of the new epoch
                    self.known_epoch = None
            elif epoch == self.known_epoch and self is self.cp.active and not self.fenced:
                pass  # granted the role back, it has not heard of the new epoch yet (arbitration)
            else:
                log.warning("stale_epoch_refused", host=self.name, frame=msg["t"], epoch=msg.get("epoch"), current=self.cp.epoch)
                self.cp.history.add(
                    {
                        "kind": "fence",
                        "at": time.time(),
                        "epoch": self.cp.epoch,
                        "host": self.name,
                        "reason": f"{msg['t']} at stale epoch {msg.get('epoch')!r}",
                    }
                )
                self.close_with_error("fenced", f"epoch {msg.get('epoch')!r} is not the current epoch {self.cp.epoch}")
                return
        super()._handle(msg)

    def on_register(self, msg: dict[str, Any]) -> None:
        if self.role is not None:
            raise ProtocolError("bad_role", "already registered on this link")
        role = require(msg, "role", str)
        sid = msg.get("startup_id", 0)
        inst = msg.get("instance")
        self.instance = inst if isinstance(inst, str) else None  # the host process (random per start)
        self.deliver_batch_bytes = batch_bytes(msg, "deliver_batch")
        self.max_frame = batch_bytes(msg, "max_frame")  # what its frames may hold (0: not said)
        self.adopts = msg.get("adopt") is True
        self.keeps_standby = msg.get("keep_standby") is True  # demoted, it takes its sessions as standby ones
        self.marks_repeats = msg.get("marks_repeats") is True  # it marks a repeated id redelivered itself (early delivery)
        self.cp.host_register(self, role, sid if isinstance(sid, int) else 0)

    def request_session(self, term: Term) -> None:
        """Ask the active for a session of a terminal that has none (docs/protocol.md §3)."""
        self.send({"t": "session_request", "terminal": term.name, "standby_capable": term.defn.standby_capable, "attrs": term.defn.attrs})

    def deliver(self, terminal: str, mid: int, data: Any, redelivered: bool) -> None:
        """One held message to the active (docs/protocol.md §3, `deliver`)."""
        self.send({"t": "deliver", "terminal": terminal, "id": mid, "data": data, "redelivered": redelivered})

    def deliver_held(self, terminal: str, held: Held, redelivered: bool) -> None:
        """A held message to the active: a `deliver_batch` frame of one item, its item kept
        encoded for a flip (hsb.cp.deliver), to a host that reads them; else a `deliver` frame."""
        limit = self.deliver_batch_bytes
        if limit and len(held.data) <= dv.WIRE_MAX:
            w = dv.item_of(terminal, held, limit)
            if dv.fits_alone(w, limit):  # not so for text of many-byte characters
                self.send_raw(dv.frame_one(w, redelivered))
                return
        self.deliver(terminal, held.id, held.data, redelivered)

    def deliver_all(self, items: list[tuple[str, int, Any, bool]]) -> None:
        """Deliver [terminal, id, data, redelivered] items in order, one `deliver` frame each
        (a host of before, which does not read `deliver_batch`)."""
        for name, mid, data, again in items:
            self.deliver(name, mid, data, again)

    def deliver_parts(self, parts: list[bytes], biggest: int) -> None:
        """Deliver items encoded by hsb.cp.deliver (item, flag, item, flag, ...) in order, in
        `deliver_batch` frames of about the `deliver_batch_bytes` the host said it reads
        (`biggest`: the longest item): a flip re-delivers to every terminal at once."""
        for f in dv.frames(parts, biggest, self.deliver_batch_bytes):
            self.send_raw(f)

    def on_hb(self, msg: dict[str, Any]) -> None:
        # last_rx is refreshed on every byte received. The answer names the heartbeat: the host
        # renews the active role's lease from the time it *sent* the heartbeat we answered.
        n = msg.get("n")
        # (a host stopped normally is no longer the active: its heartbeats renew no lease, so the
        # one it holds runs out, with the role given to another host no earlier: `stop_lease_left`)
        if isinstance(n, int) and self.role not in (None, "stopped") and not self.fenced and self.cp.journal.vouches(boot_now()):
            # (a replaced active is fenced from the grant on, before its record is durable and
            # it is told: an answer now would renew its lease beside the new active's)
            answer: dict[str, Any] = {"t": "hb", "ack": n}
            bound = self.cp.held_bound
            if self.told_held_bound is not None and bound != self.told_held_bound:  # a reload changed it
                answer["held_bound"] = self.told_held_bound = bound
            self.send(answer)
        elif self.authed and not self.fenced:
            # not registered yet (its HA loop busy, say), or this CP cannot vouch that it still
            # owns its journal: a sign of life, renewing no lease, so that the host does not take
            # a silent CP for a dead one and connect again
            self.send({"t": "hb"})

    def on_open_session(self, msg: dict[str, Any]) -> None:
        attrs = msg.get("attrs", {})
        if not isinstance(attrs, dict):
            raise ProtocolError("bad_fields", "open: attrs must be a map")
        self.cp.host_open(self, require(msg, "terminal", str), require(msg, "kind", str), attrs)

    def on_open_batch(self, msg: dict[str, Any]) -> None:
        if require(msg, "kind", str) != "standby":
            raise ProtocolError("bad_fields", "open_batch: only standby sessions are opened in batches")
        self.cp.host_open_batch(self, _session_items(msg))

    def on_adopt(self, msg: dict[str, Any]) -> None:
        if self is not self.cp.active and self.role != "demoting":
            return
        # demoted (a planned switchover) while it was naming them: not the active's sessions now,
        # kept aside in case the role comes back (hsb.cp.adopt); what it handed to its service,
        # said before it heard of the grant, still counts
        self.cp.host_adopt(self, _session_items(msg), msg.get("last") is True, _handed(msg))

    def on_refuse(self, msg: dict[str, Any]) -> None:
        self.cp.host_refuse(self, require(msg, "terminal", str), str(msg.get("reason", "refused by the host")))

    def on_close_session(self, msg: dict[str, Any]) -> None:
        refused = msg.get("refused")  # (a standby's: it will not hold this session, and why)
        self.cp.host_close(self, require(msg, "terminal", str), require(msg, "kind", str), refused[:300] if isinstance(refused, str) else None)

    def on_reply(self, msg: dict[str, Any]) -> None:
        # (the old active of a planned switchover, until its grant takes effect, answers too: it
        # was handed the message, and the new active has not been yet)
        if self is not self.cp.active and self.role != "demoting":
            ho = self.cp.handed_over_by
            epoch = msg.get("epoch")
            if self.role == "standby" and ho is not None and ho[:2] == (self.name, self.instance or "") and type(epoch) is int and epoch < ho[2]:
                # demoted by the last planned switchover, a service call of before it heard (a
                # handover whose reply wait ran out; sent under the epoch before it, whatever the
                # epoch is now): the message was re-delivered to the new active, which answers it.
                # Closing the link would drop the standby sessions kept.
                log.info("reply_after_handover_ignored", host=self.name, terminal=msg.get("terminal"), id=msg.get("id"), epoch=self.cp.epoch)
                return
            raise ProtocolError("not_active", "only the active host may reply")
        data = require(msg, "data", (bytes, str))
        self.cp.host_reply(self, require(msg, "terminal", str), require(msg, "id", int), data)

    def on_stopping(self, msg: dict[str, Any]) -> None:
        self.cp.host_stopping(self)

    def on_release(self, msg: dict[str, Any]) -> None:
        self.cp.host_release(self)

    def on_handover(self, msg: dict[str, Any]) -> None:
        self.cp.host_handover(self)

    def on_switchover(self, msg: dict[str, Any]) -> None:
        kind = msg.get("kind", "failover")
        req = msg.get("req")  # the host's number for this request, named again in the grant
        self.cp.host_switchover(
            self,
            str(msg.get("reason", ""))[:200],
            bool(msg.get("planned", False)),
            kind if kind in ("failover", "promote") else "failover",
            req=req if isinstance(req, int) and not isinstance(req, bool) else None,
            peer_closed=msg.get("peer_closed") is True,  # (an older hsbd says nothing: its lease is waited out)
        )

    def on_error(self, msg: dict[str, Any]) -> None:
        """The host found a frame of ours it cannot take, and drops the link: said here too."""
        log.warning("host_reported_error", host=self.name, code=str(msg.get("code"))[:40], msg=str(msg.get("msg"))[:200])
        self.close()

    def on_lost(self, exc: Exception | None) -> None:
        # (an error, a reset, may be a middlebox's that the host never saw: the grant waits out
        # its lease unless the standby's peer link from it closed too, hsb.cp.arbitration; said
        # here for the log)
        if self.authed:
            log.info("host_link_closed", host=self.name, role=self.role, peer=self.peer, error=None if exc is None else type(exc).__name__)
            self.cp.host_lost(self)


def _handed(msg: dict[str, Any]) -> dict[str, int]:
    """An adopt frame's `handed` {terminal: highest id handed to the service} (entries that are
    not a name and a positive id are left out: they only mark fewer messages)."""
    h = msg.get("handed")
    if not isinstance(h, dict):
        return {}
    return {k: v for k, v in h.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v > 0}


def _session_items(msg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The [terminal, attrs] items of an open_batch or adopt frame."""
    items: list[tuple[str, dict[str, Any]]] = []
    for it in require(msg, "items", list):
        if not (isinstance(it, list) and len(it) == 2 and isinstance(it[0], str) and isinstance(it[1], dict)):
            raise ProtocolError("bad_fields", f"{msg['t']}: each item must be [terminal, attrs]")
        items.append((it[0], it[1]))
    return items
