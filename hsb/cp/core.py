"""The CP's one place that decides (SPEC §5.4, §5.5): dual sessions, holding,
delivery, arbitration of switchover, fencing.

The link protocols (terminal_link, host_link, admin) parse and validate frames
and call into `CP`; only `CP` changes state. Every state change is a named
structlog event. This file holds the hosts' half (registration, a normal
stop, a lost link, the tick); the terminals' half, the sessions hosts open and
close with the planned switchover, the arbitration of the active role, the
journal's half, the pair's frame sizes and the status answers are mixins in
files of their own (terminal_side, host_sessions, arbitration, journal_side,
pair_frames, first_host, status_view).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from hsb.cp.adopt import Adoption
from hsb.cp.alone import Alone
from hsb.cp.arbitration import Arbitration
from hsb.cp.config import LEASE_MARGIN, CPConfig
from hsb.cp.drops import Drops
from hsb.cp.first_host import FirstHost
from hsb.cp.flip import Flip
from hsb.cp.host_sessions import HostSessions, _Handover
from hsb.cp.journal import Journal, NullJournal
from hsb.cp.journal_side import JournalSide
from hsb.cp.logons import Logons
from hsb.cp.notices import Notices
from hsb.cp.pair_frames import PairFrames
from hsb.cp.replies import Replies
from hsb.cp.state import Counts, Term
from hsb.cp.status_view import StatusView
from hsb.cp.switchrec import AfterSwitch, History
from hsb.cp.terminal_side import TerminalSide
from hsb.wire.framing import payload_max

if TYPE_CHECKING:
    from hsb.cp.host_link import HostProtocol
    from hsb.cp.tickle import TickleList

log = structlog.get_logger("hsb.cp")

RECORDED_ACTIVE_WAIT_S = 3.0  # after a restart, the active of before has this long to register again
EPOCH_HOSTS_KEPT = 64  # the actives of this many recent epochs are named in error replies (older: by epoch)


class CP(TerminalSide, PairFrames, Replies, HostSessions, Arbitration, Adoption, Alone, JournalSide, FirstHost, StatusView):
    def __init__(self, cfg: CPConfig, journal: Journal | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.cp.name
        self.held_bound = cfg.cp.held_bound
        # this CP process, in every welcome: a terminal that logs on again to another one knows the
        # CP restarted, even if its port never refused it (a master holding the listener)
        self.instance = secrets.token_hex(8)
        self.held_bytes = cfg.cp.held_bytes
        self.held_total_bytes = cfg.cp.held_total_bytes
        self.total_over = False  # the data held reached held_total_bytes (until below TOTAL_LOW of it)
        self._unread_due: deque[Term] = deque()  # paused terminals still to be asked after (sweep_unread)
        self._unread_next = 0.0
        self.slowed: set[Term] = set()  # terminals not read for the CP's own bound (rechecked by recheck_slowed)
        self.host_timeout = cfg.cp.host_timeout
        self.host_lease = cfg.cp.host_lease  # the active role's lease, told to the hosts
        self.counts = Counts()
        self.terms: dict[str, Term] = {n: Term(d, self.counts) for n, d in cfg.terminal_table.items()}
        # terminals holding at least one message, oldest first: a flip reaches them first (hsb.cp.flip)
        self.holding: dict[Term, None] = {}
        self.epoch = 0
        self.active: HostProtocol | None = None
        self.standby: HostProtocol | None = None
        self.tickles: TickleList | None = None  # the terminal connections, for the next CP (hsb.cp.tickle)
        # The active's loss as the CP saw it: (noticed at, last frame heard), monotonic.
        self.loss: tuple[float, float] | None = None
        self.active_lost_notified = False
        self.init_alone()  # (the active's loss with no standby heard: hsb.cp.alone)
        self.active_stopped_normally: str | None = None
        self.switchovers: list[dict[str, Any]] = []
        self.drops = Drops()  # terminal connections lost, by cause (hsb.cp.drops)
        self.counters = {
            "delivered": 0,
            "redelivered": 0,
            "replies": 0,
            "acks": 0,
            "delivered_early": 0,  # handed to the active while their records were being made durable
            "reacks": 0,
            "resent_unknown": 0,  # messages a terminal sent again (marked resent) that this CP did not have
            "resent": 0,
            "classic_closed": 0,
            "failovers": 0,
            "switchovers_undone": 0,
            "switchovers": 0,
            "adopted": 0,
            "adopted_expired": 0,
            "replies_after_logoff": 0,  # answered for a terminal that logged off and went: told nobody
            "connections_gone": 0,  # connections not read (a bound) found closed by their terminals
        }
        # The journal (hsb.cp.journal): nothing is acknowledged or answered before its record is
        # durable (delivered early only to a host that marks repeats). None: memory only.
        self.journal: Journal = journal if journal is not None else NullJournal()
        self.journal.checkpoint = self._checkpoint
        self.init_first_host()  # a durable journal's acks wait until a host accepts it (hsb.cp.first_host)
        self.recorded_active: str | None = None  # who holds the active role (journalled with the epoch)
        # the recent epochs' actives, and the one recorded when this CP restored its journal: who
        # may have processed a message answered with an error later (`_too_large_for`)
        self.epoch_hosts: dict[int, str] = {}
        self.restored_active: str | None = None
        self.paused = False  # the operator's pause: no automatic failover (journalled)
        self.history = History(self.journal.append)  # every failover, switchover, promote and fence
        self.announced = True  # False while a new active's epoch is being made durable
        self.granting: HostProtocol | None = None  # the host a grant names while its epoch is made durable
        self.demoting: HostProtocol | None = None  # and a planned switchover's old active meanwhile
        # the last planned switchover's old active (name, instance, epoch): if its link went with
        # the CP's `demoted`, that process registers as the active again; it is told it handed over
        self.handed_over_by: tuple[str, str, int] | None = None
        self.stopped_at: float | None = None  # when the active stopped normally (its lease runs out after)
        self.deferred_registrations: dict[str, asyncio.TimerHandle] = {}  # hosts waiting out that lease to register as the active
        self.recovered_at: float | None = None
        # the active recorded before a restart, told to the standby as not back (tick): told again
        # at a resume and to a standby that registers, until a host holds the role
        self.not_back: str | None = None
        # the lease bound the CP of before recorded (its host_lease, its fresh_s): a lease it granted
        # may run that long after it stopped renewing, whatever this CP's config says now
        self.recovered_lease: tuple[float, float] = (0.0, 0.0)
        self.deferred_grant: asyncio.TimerHandle | None = None  # a switchover asked too early after a restart
        self.deferred_ask: tuple[str, str, bool, str, int | None] | None = None  # its (host, reason, planned, kind, req): the latest asked
        # a standby's word that its peer link from the active closed, refused while the active's
        # host link was still open here: (standby, when); hsb.cp.arbitration
        self.peer_closed_claim: tuple[str, float] | None = None
        self.started = time.time()
        # reply frames taken from each host (acted on, or found already answered): a fenced host has none
        self.replies_by_host: Counter[str] = Counter()
        self.connected = 0
        # After a grant: the replies to what the switch kept waiting (hsb.cp.switchrec).
        self.after_switch: AfterSwitch | None = None
        self.release_t0: float | None = None
        self.notices = Notices()  # switch notices owed after a grant and their writers
        self.logons = Logons()  # hellos beyond a burst in one turn wait and are taken a slice at a time
        self._handover: _Handover | None = None  # a planned handover waiting for standby sessions
        self._last_tick: float | None = None  # tick(): this process's own stalls
        self._tick_skipped = False
        self.flip_slice = cfg.cp.flip_slice
        self.resume_window = cfg.cp.resume_window  # an adopted session waits this long for its terminal (hsb.cp.adopt)
        # a CP process wrote this journal before this one (hsb.cp.server sets it from the
        # generation it took): a terminal's resend this CP never had may be a message that process
        # handed to the active early, so it is marked. One started on a new journal has nobody's
        # hand-overs to hide, and marks nothing a host never had.
        self.follows_a_cp = True
        self.open_batch_bytes = cfg.cp.max_frame // 2  # what an open_batch frame may hold (docs/protocol.md §3)
        # the largest message a terminal may send: what both hosts of the pair can take in a frame
        # too (their max_frame, said at their registers: `_host_frame`), or a message acknowledged
        # here would drop that host's link at each delivery, for ever
        self.host_frames: dict[str, int] = {}
        self.max_data: int = payload_max(cfg.cp.max_frame)
        self.flipping: Flip | None = None  # a grant's flip still going, a slice per turn (hsb.cp.flip)

    # ------------------------------------------------------------------ the operator
    def set_paused(self, paused: bool, by: str, answer: Callable[[str], None] | None = None) -> None:
        """`hsbctl pause|resume`: no automatic failover while paused (a planned switchover and a
        promote still work); journalled, so a restarted CP stays paused: `answer` gets the
        operator's line once the record is durable (a pause said done and lost by a restart
        would turn automatic failover on again in the middle of a maintenance)."""
        again = paused == self.paused  # (its record may still be on the way: this answer waits for one of its own)
        if again:
            text = f"already {'paused' if paused else 'running'}"
        else:
            text = "paused: no automatic failover until 'hsbctl resume'" if paused else "resumed: automatic failover on"
        self.paused = paused  # (before the append: a memory-only journal answers at once)
        self.journal.append(["p", paused], None if answer is None else lambda: answer(text))
        if again:
            return
        if paused:  # a warning while it lasts: automatic failover is off (the HsbPaused alert says so too)
            log.warning("paused", by=by, msg="no automatic failover until 'hsbctl resume'")
        else:  # the end of the pause: things are as they should be again, nothing to look at
            log.info("resumed", by=by, msg="automatic failover on again")
        self.history.add({"kind": "pause" if paused else "resume", "at": time.time(), "epoch": self.epoch, "reason": f"operator ({by})"})
        a = self.active
        if not paused and a is not None and (a.closed or self.loss is not None):
            self.active_lost_notified = False  # lost while paused: the standby hears it again now
            self._notify_active_lost(a.name, "eof" if a.closed else "silent")
        elif not paused and a is None:
            self._tell_not_back()  # (its request was refused while paused)

    # ------------------------------------------------------------------ hosts
    def host_register(self, host: HostProtocol, role: str, startup_id: int) -> None:
        self.host_accepts_journal(host)  # (it checked this CP's journal and generation first: the acks that waited go)
        self.settle_flip()
        if role == "active":
            cur = self.active
            if cur is not None and not cur.closed and cur is not host and cur.same_process(host):
                # the same host process on a new link: its old link broke on its side (a reset we
                # have not seen yet). The new link replaces the old one; refusing it would fence
                # a healthy active (and, after a failover, its successor too)
                log.warning(
                    "host_link_replaced",
                    host=host.name,
                    role="active",
                    epoch=self.epoch,
                    msg="the active host registered again on a new link: its old link is dropped",
                )
                self.active = None
                cur.abort()
                self._become_active(host, reason="registered again on a new link")
                return
            ho = self.handed_over_by
            dm = self.demoting  # a planned switchover's grant being made durable: its old active
            if dm is not None and self.granting is cur and dm is not host and host.instance and (host.name, host.instance) == (dm.name, dm.instance):
                ho = (dm.name, dm.instance or "", self.epoch)  # (whose link broke meanwhile) handed over too
            if cur is not None and ho is not None and host.instance and (host.name, host.instance) == ho[:2]:
                # the old active of a planned switchover, its link lost with the `demoted` frame:
                # it handed over; told so, it registers again as the standby (it is not fenced).
                # Also when the new active's link is down too (this CP stalled, or its network, in
                # the switchover: both links lost at once): the standby path decides who serves
                log.info("registration_redirected", host=host.name, role=role, active=cur.name, epoch=self.epoch, reason="handed over")
                host.send(
                    {
                        "t": "error",
                        "code": "handed_over",
                        "active": cur.name,
                        "epoch": ho[2],
                        "msg": f"{host.name} handed the role to {cur.name} at epoch {ho[2]}: register as the standby",
                    }
                )
                host.close()
                return
            if self.active is not None and not self.active.closed:
                log.warning("registration_refused", host=host.name, role=role, active=self.active.name, epoch=self.epoch)
                host.close_with_error(
                    "active_exists",
                    f"{self.active.name} is already the active host (epoch {self.epoch}); start {host.name} with --role standby",
                    active=self.active.name,  # (a host started as active rejoins as its standby: hsb.host.rejoin)
                )
                return
            if (
                cur is not None
                and cur.closed
                and cur.name != host.name
                and self.announced
                and (cur.closed_here or self.paused or self.lease_left(cur) > 0)
            ):
                # the active's link is down and no failover has happened yet, and either the CP
                # closed that link or the lease its host may hold still runs (a reset by something
                # in between: the host may still be serving on it; hsb.cp.arbitration), or the
                # operator paused failover: another host arriving as active took the role at once,
                # past all three. (A link its host closed, its lease surely run out, unpaused: the
                # role is free, as for a standby; found by review, session 67)
                log.warning("registration_refused", host=host.name, role=role, active=cur.name, epoch=self.epoch, reason="active link down")
                host.close_with_error(
                    "active_exists",
                    f"{cur.name} holds the active role at epoch {self.epoch} (its link is down); start {host.name} with --role standby:"
                    f" it takes over once {cur.name} is lost ('hsbctl promote' after a normal stop)",
                    active=cur.name,
                )
                return
            ra = self.recorded_active
            if self.active is None and ra is not None and ra != host.name:
                # after a CP restart: the role is still the host's that held it before
                log.warning("registration_refused", host=host.name, role=role, active=ra, epoch=self.epoch, reason="recorded active")
                host.close_with_error(
                    "active_exists",
                    f"{ra} held the active role at epoch {self.epoch} when the CP restarted; start {host.name} with --role standby",
                    active=ra,
                )
                return
            left = self.stop_lease_left()
            if self.active is None and left > 0 and self.active_stopped_normally != host.name:
                # the active of before stopped normally a moment ago and may still drain on its
                # lease: the role is this host's once that lease has surely run out (as a promote's
                # is), asked again then
                log.info("registration_deferred", host=host.name, wait_ms=round(left * 1000, 1), stopped=self.active_stopped_normally)
                earlier = self.deferred_registrations.pop(host.name, None)
                if earlier is not None:  # (the same host on a new link: only its newest registration counts)
                    earlier.cancel()
                self.deferred_registrations[host.name] = asyncio.get_running_loop().call_later(left, self._registered_later, host, startup_id)
                return
            if self.standby is host:
                self.standby = None
            self._become_active(host, reason="registered")
        elif role == "standby":
            old = self.standby
            if old is not None and not old.closed and old is not host and old.same_process(host):
                log.warning(
                    "host_link_replaced", host=host.name, role="standby", msg="the standby registered again on a new link: its old link is dropped"
                )
                self.standby = None
                self._drop_standby_sessions(old)
                old.abort()
            if self.standby is not None and not self.standby.closed and self.standby is not host:
                log.warning("registration_refused", host=host.name, role=role, standby=self.standby.name, epoch=self.epoch, reason="standby exists")
                host.close_with_error("standby_exists", f"{self.standby.name} is already the standby host")
                return
            d = self.demoting
            if d is not None and not d.closed and d is not host:
                log.info("registration_refused", host=host.name, role=role, demoting=d.name, epoch=self.epoch, reason="becoming the standby")
                host.close_with_error("standby_exists", f"{d.name} is becoming the standby (a planned switchover); try again")
                return
            if self.active is host:
                host.close_with_error("bad_role", "the active host cannot re-register as standby on the same link")
                return
            gone = self.standby
            if gone is not None and gone is not host:  # closed, its loss not yet seen: its sessions go now
                self._drop_standby_sessions(gone)
            self.standby = host
            host.role = "standby"
            # its "f" is not waited for: every later message's ack waits for it, and a standby
            # registers again after a crash before it is given anything (docs/cp-journal.md)
            self._host_frame(host)
            log.info("host_registered", host=host.name, role="standby", startup_id=startup_id, epoch=self.epoch)
            h = self._handover
            if h is not None and h.standby is not host:
                # a planned switchover waits for standby sessions on a link that is gone: it waits
                # for them on this one (it reopens them), not until its timer grants without them
                self.end_handover()
                asyncio.get_running_loop().call_soon(self._rewait_handover, h.active)
            # A standby that finds no active waits: it takes over only on evidence of
            # an abnormal loss (or an operator's promote), never just by arriving first.
            host.send(
                {
                    "t": "registered",
                    "role": "standby",
                    "epoch": self.epoch,
                    "active": self._active_name(),
                    "standby": host.name,
                    "lease": self.host_lease,
                    "open_batch": self.open_batch_bytes,  # standby opens may come batched, this many bytes a frame
                    "max_frame": self.cfg.cp.max_frame,  # the host's replies must fit it
                    "held_bound": self.held_bound,  # messages held per terminal at most (hsb.service.once's keep_last)
                }
            )
            host.told_held_bound = self.held_bound
            a = self.active
            if a is not None and self.loss is not None and not self.active_stopped_normally:
                # the active was lost abnormally while no standby was listening (or told a link
                # of the standby's that is gone now): said on this link, once the active has had
                # time to register again (nobody heard both: this CP may have been cut off itself)
                self.loss_told_after(host)
                self.active_lost_notified = False
                self._notify_active_lost(a.name, "eof" if a.closed else "silent")
            elif a is None:  # (told to a link of the standby's that is gone now)
                self._tell_not_back()
        else:
            host.close_with_error("bad_role", f"role must be 'active' or 'standby', not {role[:20]!r}")

    def _active_name(self) -> str | None:
        return self.active.name if self.active is not None and not self.active.closed else None

    def _registered_later(self, host: HostProtocol, startup_id: int) -> None:
        """A registration as the active deferred by `stop_lease_left`: taken now, if its link is."""
        self.deferred_registrations.pop(host.name, None)
        if not host.closed and host.role is None:
            self.host_register(host, "active", startup_id)

    def _raise_epoch(self, active: str) -> int:
        """A new epoch, journalled: it is announced only once durable, so that after a crash the
        CP never goes back to an older one (a host fenced before it stays fenced)."""
        self.epoch += 1
        self.recorded_active = active
        self.epoch_hosts[self.epoch] = active
        self.epoch_hosts.pop(self.epoch - EPOCH_HOSTS_KEPT, None)
        return self.epoch

    def _make_active(self, host: HostProtocol) -> int:
        """`host` holds the active role from now on, at a new epoch (returned); no loss pending."""
        self.kept_sessions_to(host, flip=True)  # (a grant's: those kept for the lost active flipped, or closed)
        epoch = self._raise_epoch(host.name)
        for h in (self.active, host):  # an adoption under the epoch before ends with it (hsb.cp.adopt):
            if h is not None and h.adopting:  # its last frame may never come, and logons would wait for it
                self._adoption_cut(h)
        self.active = host
        host.role = "active"
        host.epoch = epoch
        if host.adopt_gap:  # given the role back by a grant it had lost (hsb.cp.adopt)
            self.adopt_gap_taken(host)
        self.cancel_deferred_grant(host)  # (someone holds the role now: a deferred request is moot)
        self.peer_closed_claim = None
        self.not_back = None
        self.granting = self.demoting = None  # (a grant sets them again)
        self.loss = None
        self.active_lost_notified = False
        self.active_stopped_normally = None
        return epoch

    def _become_active(self, host: HostProtocol, reason: str) -> None:
        self.kept_sessions_to(host, flip=False)  # (those kept for a lost active: its own again, or closed)
        epoch = self._make_active(host)
        self.announced = False
        # its frames count once it is registered; their record ("f") goes before the epoch's, so
        # its `registered` waits for both
        self._host_frame(host)
        self.journal.append(["e", epoch, host.name], lambda: self._registered_active(host, epoch, reason))

    def _registered_active(self, host: HostProtocol, epoch: int, reason: str) -> None:
        if host is not self.active or host.closed or epoch != self.epoch:
            return
        self.announced = True
        log.info("host_registered", host=host.name, role="active", epoch=self.epoch, reason=reason)
        adopt = self._adoption_starts(host)  # it names its open sessions first (hsb.cp.adopt)
        host.send(
            {
                "t": "registered",
                "role": "active",
                "epoch": self.epoch,
                "active": host.name,
                "standby": self.standby.name if self.standby else None,
                "lease": self.host_lease,
                "open_batch": self.open_batch_bytes,
                "max_frame": self.cfg.cp.max_frame,
                "held_bound": self.held_bound,
                "adopt": adopt,
            }
        )
        host.told_held_bound = self.held_bound  # (a reload's change is told in a heartbeat's answer)
        for term in self.terms.values():
            if term.active is not None and term.active.host is not host:
                term.active = None
            if self.logoff_held(term):  # (connected or not: a terminal that logged off does not come back for them)
                self.deliver_logoffs(term, host)  # logged off, its messages still to answer
        if not adopt:  # else once the active has named its sessions
            self._request_sessions(host)

    def _drop_standby_sessions(self, host: HostProtocol) -> None:
        """Every standby session of `host` goes (its link is gone or replaced)."""
        for term in self.terms.values():
            if term.standby is not None and term.standby.host is host:
                term.standby = None

    def host_stopping(self, host: HostProtocol) -> None:
        """Normal termination of the active (SPEC §5.3): close its sessions, keep held, no switch."""
        if host is not self.active:
            return
        self.settle_flip()
        log.info("active_stopped_normally", host=host.name, epoch=self.epoch)
        self.active_stopped_normally = host.name
        self.stopped_at = time.monotonic()  # its heartbeats are answered no more from now on
        self.active = None
        self.loss = None  # (a silence just before its stop is no loss: a later promote's record must not count from it)
        # nobody holds the role now, journalled too: another host may register as the active, and
        # neither this CP nor the next one (after a restart) tells the standby that a host "did not
        # come back" (an automatic takeover after a normal termination, which must not happen)
        self.recorded_active = None
        self.end_handover()  # (a planned switchover's wait, if one was under way, ends with the role)
        host.role = "stopped"
        n = 0
        for term in self.terms.values():
            if term.active is not None and term.active.host is host:
                term.active = None
                n += 1
                if term.conn is not None:
                    self._tell(term, {"t": "session", "state": "closed", "epoch": self.epoch, "reason": "active host stopped normally"})
        log.info("active_sessions_closed", host=host.name, sessions=n)
        # the host waits for this before it closes: closing with our deliveries unread
        # would reset the connection and could discard its stopping frame here. Sent once the
        # role's end is durable: a CP restarted after a crash right after it must not wait for
        # this host as "the active of before", then tell the standby it did not come back
        epoch = self.epoch
        self.journal.append(["e", epoch, None], lambda: host.send({"t": "stopped", "epoch": epoch}))
        if self.standby is not None and self.standby.usable:
            self.standby.send({"t": "active_lost", "host": host.name, "why": "stopping"})

    def host_lost(self, host: HostProtocol) -> None:
        h = self._handover
        if host is self.active or host is self.standby or (h is not None and host in (h.active, h.standby)):
            self.settle_flip()  # a fenced old active's link closing (after the grant) changes nothing here
        if host is self.active and host is self.granting:
            # lost before its grant took effect: `_granted` decides, once the epoch is durable,
            # who serves (the old active of a planned switchover, else nobody until a host asks)
            log.warning("granted_host_lost", host=host.name, epoch=self.epoch, msg="lost before its grant took effect")
            self._drop_standby_sessions(host)
        elif host is self.active:
            if host.closed_here:
                # closed by us (a protocol error, a stale epoch): the host may not know yet and
                # holds its lease until it runs out; tick() reports the loss once it surely has
                log.warning("active_host_link_closed_by_cp", host=host.name, epoch=self.epoch)
            else:
                log.warning("active_host_link_lost", host=host.name, epoch=self.epoch)
                self.loss_seen(host)
                self._notify_active_lost(host.name, "eof")
            if self.standby is None or self.standby.closed:
                self.keep_for_return(host)
        elif host is self.standby:
            log.warning("standby_host_link_lost", host=host.name)
            self.standby = None
            self._drop_standby_sessions(host)
            a = self.active
            if a is not None and a.closed:
                # the active's sessions were kept for a flip that cannot come now: they wait for
                # the active to register again (the CP may have been cut off itself), else are lost
                self.keep_for_return(a)
        h = self._handover
        if h is not None and host in (h.active, h.standby):
            active = h.active
            self.end_handover()
            if host is not active and active is self.active:
                # that standby is gone: with none now, refused (the active serves on); with a new
                # one (its link made again), the wait for its standby sessions begins again
                self.host_handover(active)

    def _tell_not_back(self) -> None:
        """The recorded active not back after a restart (tick), said again: owed until a host holds the role."""
        if self.not_back is not None:
            self.active_lost_notified = False
            self._notify_active_lost(self.not_back, "not back after the CP restarted")

    def _notify_active_lost(self, name: str, why: str) -> None:
        if self.active_lost_notified or self.loss_quiet():  # (hsb.cp.alone: said later)
            return
        if self.standby is not None and self.standby.usable:
            self.active_lost_notified = True  # only once it reached a standby
            self.standby.send({"t": "active_lost", "host": name, "why": why})

    def _sessions_lost_without_standby(self, host: HostProtocol | None = None, unless_standby_at: HostProtocol | None = None) -> None:
        """Every active session (of `host` only, if given; not one with a standby session at
        `unless_standby_at`) closed, its terminal told."""
        for term in self.terms.values():
            if (
                term.active is not None
                and (host is None or term.active.host is host)
                and (unless_standby_at is None or term.standby is None or term.standby.host is not unless_standby_at)
            ):
                term.active = None
                if term.conn is not None:
                    self._tell(term, {"t": "session", "state": "closed", "epoch": self.epoch, "reason": "active host lost, no standby"})

    @property
    def restart_lease_s(self) -> float:
        """After a restart or a takeover of the journal, the recorded active has this long to
        register again, and no other host gets the role before: a lease the CP before renewed may
        run until then (it answered heartbeats until at most `fresh_s` after its last clean
        generation check, begun before this CP took the journal, and a lease is under host_timeout).
        The lease and fresh_s of the CP before, as its journal recorded them, count too: a config
        with a shorter host_lease (or two CP machines configured apart) must not shorten the wait
        for a lease granted under the longer one."""
        lease, fresh = self.recovered_lease
        before = fresh + lease + LEASE_MARGIN if lease else 0.0
        return max(RECORDED_ACTIVE_WAIT_S, self.journal.fresh_s + self.host_timeout, before)

    def lease_bound(self) -> tuple[float, float]:
        """(host_lease, fresh_s) for this CP's checkpoints: its own, or while the wait after a
        restart runs, the recovered ones if longer (a second crash meanwhile still waits for them)."""
        own = (self.host_lease, self.journal.fresh_s)
        if self.recovered_at is None or time.monotonic() - self.recovered_at > self.restart_lease_s:
            return own
        lease, fresh = self.recovered_lease
        return (max(own[0], lease), max(own[1], fresh))

    def tick(self) -> None:
        """Periodic: detect a silent active and tell the standby at once; drop a silent standby;
        after a restart, stop waiting for the active of before if it does not come back."""
        if (
            self.recorded_active is not None
            and self.active is None
            and self.recovered_at is not None
            and time.monotonic() - self.recovered_at > self.restart_lease_s
        ):
            sb = self.standby
            if sb is not None and sb.usable:
                log.warning("recorded_active_not_back", host=self.recorded_active, waited_s=self.restart_lease_s)
                sb.send({"t": "active_lost", "host": self.recorded_active, "why": "not back after the CP restarted"})
                # said once; owed again until someone holds the role: the standby's request may be
                # refused (paused) or lost with its link, and nothing else would tell it again
                self.not_back = self.recorded_active
                self.recorded_active = None
        now = time.monotonic()
        last, self._last_tick = self._last_tick, now
        if last is not None and now - last > self.host_timeout / 2 and not self._tick_skipped:
            # This process itself did not run for a while (a storm of connection events, the
            # machine's CPU): the hosts' frames of that time are still unread, so their silence
            # is judged at the next tick, after a read. (Judging later only delays a grant.)
            self._tick_skipped = True
            log.warning("cp_loop_stalled", stalled_ms=round((now - last) * 1000, 1), msg="host silence judged again at the next tick")
            return
        self._tick_skipped = False
        self.tick_alone(now)
        self.sweep_unread(now)
        self.drops.tick(now, self.connected)
        sw = self.after_switch
        if sw is not None and sw.expired(now):  # (its terminals never served, and no reply came to end it)
            self.after_switch = None
        s = self.standby
        if s is not None and not s.closed and time.monotonic() - s.last_rx > self.host_timeout:
            log.warning("standby_host_link_silent", host=s.name, silent_s=round(time.monotonic() - s.last_rx, 3))
            s.abort()  # close() would wait to flush into a dead link
            self.host_lost(s)
        a = self.active
        if a is None or (a.closed and not a.closed_here):
            return
        now = time.monotonic()
        if now - a.last_rx <= self.host_timeout:
            if not a.closed:
                # heard again: that loss is over, and the next one is told to the standby anew
                # (else a standby that did not take over then would never hear of a later one)
                self.loss = None
                self.active_lost_notified = False
            return
        if self.loss is None:
            log.warning("active_host_link_silent", host=a.name, silent_s=round(now - a.last_rx, 3))
            self.loss_seen(a)
        self._notify_active_lost(a.name, "silent")
