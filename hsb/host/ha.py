"""The one place that decides: the active/standby state machine of hsbd (SPEC §5).

Links (peer link, host link to the CP, admin link) only *record* what they saw
as events and wake the loop; `run_cycle()` takes the events in order, carries
out the patent's procedures, and returns one human-readable sentence that is
logged (and asserted in tests). Every role/state change is one `state_change`
event with the previous state, the new one and the reason.

Session traffic (session requests, deliveries) does not wait for this loop:
`hsb.host.sessions_ctl` handles it directly, since it must never be held up by
a batch write.

The loop pings systemd's watchdog, so it never waits long on anything but the takeover file's
storage (bounded by `storage_timeout`): what can take longer (a planned switchover's replies in
progress, the CP's answers to a batch read's standby opens) runs in a task of its own (`spawn`),
whose end comes back as an event; the loop goes on handling the others meanwhile.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from hsb.fsutil import bulk_seconds
from hsb.host.ha_cp import TAKEOVER_REFUSED, CPSide
from hsb.host.ha_lease import LeaseSide
from hsb.host.ha_standby import HotStandbySide, batch_complete_wait
from hsb.host.ha_switch import SwitchSide
from hsb.host.ha_view import HAView
from hsb.host.hooks import NOT_SERVING
from hsb.host.lease import Lease
from hsb.host.sessions import ACTIVE, CLOSED, STANDBY
from hsb.host.states import (
    AWAITING_BATCH,
    BATCH_READING,
    BATCH_RETRY,
    BATCH_WRITING,
    ESTABLISHED,
    FENCED,
    HANDING_OVER,
    RELEASING,
    SERVING,
    STARTING,
    STOPPING,
    WAITING,
)
from hsb.ops.notify import Watchdog
from hsb.waits import event_within

if TYPE_CHECKING:
    from hsb.host.server import HostServer

log = structlog.get_logger("hsb.host")

# An established standby that went out of sight with the peer link less than this long ago may be
# back in a moment (a blip: the link tries again every 0.5 s at most, each try bounded by 2 s to
# connect and 2 s to authenticate, so this is two tries and more): a stop of the active waits for
# it briefly (HostServer.standby_back), then hands over through the CP all the same.
STANDBY_BLIP_S = 10.0


class Exit(Exception):
    """Leave the daemon with this status and message."""

    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg


def batch_wait(tk: Any) -> float:
    """How long a standby waits for BATCH WRITE COMPLETE (`tk`: the [takeover] section)."""
    return batch_complete_wait(tk) + bulk_seconds((1 + 1 / 3) * tk.records * tk.record_size)


class HA(CPSide, LeaseSide, SwitchSide, HotStandbySide, HAView):
    def __init__(self, server: HostServer, role: str) -> None:
        self.srv = server
        self.name = server.cfg.host.name
        self.role = role
        self.started_role = role
        self.role_announced = False  # the role-change hook has run for a role this process holds
        # whether the hook's last run for the active role said it acts as the active (None: no run
        # for the active role yet): a host that stops acting without a role change (its CP link
        # lost, its lease run out, a normal stop) is announced too, and again when it acts again
        self.acting_told: bool | None = None
        self.state = STARTING
        self.state_since = time.time()  # (shown in status: wall time)
        self.state_since_mono = time.monotonic()  # (timers: a step of the wall clock moves no timer)
        self.instance = secrets.token_hex(8)
        self.events: deque[tuple[str, dict[str, Any]]] = deque()
        self.wake = asyncio.Event()
        self.epoch = 0
        self.registered = False
        self.established_since: float | None = None
        self.switchovers_ended = 0  # planned switchovers refused or abandoned (a stop waiting on one stops waiting)
        self.switch_refusals = 0  # takeovers (a failover's, a promote's) the CP refused: hsbctl promote watches it
        self.own_startup_id: int | None = None  # standby: the id sent in STANDBY STARTUP
        self.partner_startup_id: int | None = None  # active: the standby's id (311)
        self.partner_instance: str | None = None  # standby: the active process it follows
        self.announced_by: str | None = None  # standby: the last active process whose ACTIVE STARTUP came (it is registered)
        self.partner_batch_records: int | None = None  # standby: B read from the file (522)
        self.generation: int | None = None
        self.file_mismatch: str | None = None
        self.last_error: str | None = None
        self.last_sentence = ""
        self.takeover: dict[str, Any] | None = None
        self.takeover_t0 = 0.0  # (monotonic: its duration)
        self.exit: Exit | None = None
        self.next_poll = 0.0
        self.switch_requested_at: float | None = None
        self.switch_peer_closed = False
        self.switch_kind = "failover"  # (the last request's)
        self.told_timeout_below: tuple[float, float] | None = None
        self.active_stopped_by: str | None = None
        self.active_stop_confirmed = False  # the CP knows of that normal stop (its word, or the peer's)
        self.torn_polls = 0
        self.ring_failing: tuple[float, float, int] | None = None  # the ring's reads failing: (since, last logged, failures)
        self.ring_unwritten = False  # active: its ring writes have failed too long, the standby's view is stale
        self.active_ring_failing: str | None = None  # standby: the active says it cannot write the ring (why)
        self.batch_failures = 0
        self.resync_at = 0.0
        self.resync_reason = ""
        self.resync_held = False  # standby: a batch asked for waits for its takeover storage to answer
        self.batch_ended: tuple[float, float] | None = None  # active: the last batch write's end and duration (monotonic)
        self.batches_unread = 0  # active: batch writes in a row the standby did not say ready after
        self.held_batch: tuple[float, dict[str, Any]] | None = None  # active: a batch write asked too soon after one unread (when due, what)
        self.counters = {"failovers": 0, "switchovers": 0, "resyncs": 0, "two_actives_claimed": 0}
        self.peer_ring_next: int | None = None  # the standby's read position, from its heartbeats
        # Made the active by the CP at this epoch (set in link order). Acting on it also needs a
        # valid lease: see `serving`.
        self.granted = False
        self.lease = Lease()
        self.register_sent_at = 0.0
        # switchover requests still unanswered: number -> when it went (lease clock). The CP's grant
        # names the one it answers (`req`): the lease runs from that one's sending, never from a
        # request the CP may not have had
        self.switch_sent: dict[int, float] = {}
        self.switch_req_n = 0
        self._lease_timer: asyncio.TimerHandle | None = None
        self.lost_serving = False
        self.release_pending = False
        self.handover_sent = False  # our handover is at the CP, unanswered: nothing goes to the service
        self.switch_token = 0  # each planned switchover's; an ended one's late steps are ignored
        self.switch_after_resync: float | None = None  # a planned switchover waits for a resync (until then)
        self.resyncing = False  # active: batch writing for a resync of the established standby
        self.deferred_batch: dict[str, Any] | None = None  # a resync/standby startup held during a handover
        self.stopping = False  # the process is ending normally: no switchover or batch starts now
        self.stop_handing_over = False  # a stop waits on a planned switchover: if it ends, the normal stop follows
        self.stop_asks_until: float | None = None  # ... unless the CP had no standby registered: asked again until then
        self.stop_may_ask_again = False  # (set when it ended so: HostServer._hand_over_for_stop asks again)
        self.standby_out_of_sight: float | None = None  # active: established standby lost with the peer link (when)
        self.stopping_why = "normal termination"  # the stop's reason, for the role-change hook
        self.batch_token = 0  # each batch read's; an older one's end is ignored
        self.batch_announced: tuple[int, float, int] | None = None  # standby: BATCH WRITE COMPLETE's generation, re-read until (monotonic), re-reads
        self.batch_apply: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self.switched_sessions = 0
        # how long a standby waits for BATCH WRITE COMPLETE before it starts again: longer than
        # the active may take, by the same bound it allows itself (hsb.takeover.store: a batch of
        # a third of the file, and opening it for writing, which may scan it whole), or at a few
        # 100,000 terminals the standby gave up on every batch while it was still being written
        self.batch_wait_s = batch_wait(server.cfg.takeover)

    # ------------------------------------------------------------------ plumbing
    def post(self, kind: str, **data: Any) -> None:
        """Record an event (from a link or the API) and wake the loop; only the loop acts."""
        self.events.append((kind, data))
        self.wake.set()

    def spawn(self, coro: Any, failed: Callable[[Exception], None]) -> asyncio.Task[None]:
        """Run `coro` beside the loop (it reports back with `post`); cancelled by `close`. An
        exception in it (a bug) is logged and handed to `failed`, which posts the event that ends
        the step the loop waits on (else the host would stay in that state for ever)."""

        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: said, as one in the loop is
                log.exception("ha_task_error", error=repr(exc))
                self.last_error = f"internal error: {exc!r}"
                failed(exc)

        t = asyncio.get_running_loop().create_task(guarded())
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def close(self) -> None:
        """The process ends: nothing of the state machine runs on (the lease timer, its tasks)."""
        self.closed = True
        if self._lease_timer is not None:
            self._lease_timer.cancel()
            self._lease_timer = None
        for t in list(self.tasks):
            t.cancel()

    def set_state(self, state: str, reason: str, role: str | None = None) -> None:
        prev_role, prev = self.role, self.state
        if role is not None:
            self.role = role
        if state == prev and self.role == prev_role:
            return
        if self.role == "active" and prev_role == "active" and self.established_since is not None and state in (SERVING, BATCH_WRITING):
            self.hot_standby_lost(reason)
        if state not in (ESTABLISHED, RELEASING, HANDING_OVER):
            # (a planned switchover keeps it: refused, the host is established as before)
            self.established_since = None
        if state != SERVING:
            self.standby_out_of_sight = None
        if state != BATCH_WRITING:
            self.resyncing = False
        if state == STOPPING:
            self.stopping_why = reason
        self.state = state
        self.state_since = time.time()
        self.state_since_mono = time.monotonic()
        log.info("state_change", prev_role=prev_role, prev=prev, role=self.role, state=state, reason=reason)
        if self.role != prev_role or (state == FENCED and prev != FENCED) or self._first_held(state):
            # (fenced, the role is still "active" here: the command must hear it stops acting; the
            # role it started in is announced once it holds it, as keepalived's notify at its start)
            self.role_announced = True
            self._fire_hook(state, reason)
        self.srv.on_state_change()

    def _first_held(self, state: str) -> bool:
        """This process holds the standby role it started in for the first time: past its start
        (following an active, or waiting for one). The active's is its grant (`_announce_active`)."""
        return not self.role_announced and self.role == "standby" and state not in (STARTING, STOPPING, FENCED)

    def _idle_wait(self, ping_due: float | None) -> float:
        """How long the loop waits for an event before its next pass: 0.2 s, an established
        standby until its next ring poll, a retry until it is due; never past the watchdog's next
        ping (`ping_due` seconds from now: a ring_poll_interval longer than that went unpinged)."""
        now = time.monotonic()
        wait = 0.2
        if self.role == "standby" and self.state == ESTABLISHED:
            wait = max(0.0, self.next_poll - now)
        elif self.state == BATCH_RETRY:
            wait = max(0.0, self.resync_at - now)
        return wait if ping_due is None else min(wait, ping_due)

    async def _cycle_pinged(self, watchdog: Watchdog) -> str:
        """One `run_cycle()`, the watchdog pinged meanwhile for as long as the cycle's storage
        operations may legitimately take (each has its deadline: the first batch write of a large
        file opens and writes it, seconds on a slow mount); a cycle that outlasts them all is hung,
        the pings stop, and systemd restarts the daemon."""
        if watchdog.every is None:
            return await self.run_cycle()
        cycle = asyncio.ensure_future(self.run_cycle())
        bound = time.monotonic() + 2 * self.srv.takeover.store.bulk_timeout(1.0) + watchdog.every
        try:
            while True:
                done, _ = await asyncio.wait({cycle}, timeout=watchdog.every / 2)
                if done:
                    return cycle.result()
                now = time.monotonic()
                if now < bound:
                    watchdog.tick(now)
        finally:
            if not cycle.done():  # (this loop cancelled: the host stops)
                cycle.cancel()

    def _fire_hook(self, state: str, reason: str) -> None:
        self.acting_told = self.srv.is_serving_active() if self.role == "active" else None
        self.srv.hook.fire(self.role, state, self.epoch, reason)

    def hook_acting(self) -> None:
        """The active stopped acting as the active, or acts again, with no role change (its CP
        link lost or back, its lease run out or renewed, a normal stop): the role-change hook runs
        with state `not_serving` (or `stopping`), then with its state once it acts again, so that
        a command holding a virtual address for the active gives it up (a fence has its own run)."""
        if self.role != "active" or self.acting_told is None or self.state == FENCED:
            return
        acting = self.srv.is_serving_active()
        if acting == self.acting_told:
            return
        self.acting_told = acting
        if acting:
            self.srv.hook.fire(self.role, self.state, self.epoch, "acting as the active again")
        else:
            state = STOPPING if self.state == STOPPING else NOT_SERVING
            self.srv.hook.fire(self.role, state, self.epoch, self._not_acting_why())

    def _not_acting_why(self) -> str:
        if self.state == STOPPING:
            return self.stopping_why
        if self.state == HANDING_OVER:
            return "handing over to the standby (planned switchover)"
        if not self.granted:
            return "its link to the CP is lost: not serving until registered again"
        if not self.lease.valid():
            return f"no heartbeat answered by the CP within its {self.lease.duration:g} s lease"
        return f"not serving ({self.state})"

    async def run(self) -> None:
        watchdog = Watchdog()  # systemd's WatchdogSec: pinged from this loop, which runs every 0.2 s at least
        while self.exit is None:
            now = time.monotonic()
            watchdog.tick(now)
            # (until the next ping is due, counted from the last one: an event just before it would
            # otherwise put a whole WatchdogSec between two pings)
            timeout = self._idle_wait(None if watchdog.every is None else max(0.0, watchdog.last + watchdog.every - now))
            await event_within(self.wake, timeout)  # (hsb.waits: a stop's cancellation is never lost)
            self.wake.clear()
            try:
                sentence = await self._cycle_pinged(watchdog)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in one procedure must not leave the daemon headless
                log.exception("ha_cycle_error", error=repr(exc))
                self.last_error = f"internal error: {exc!r}"
                continue
            if sentence != self.last_sentence:
                self.last_sentence = sentence
                log.info("ha_cycle", sentence=sentence)

    async def run_cycle(self) -> str:
        while self.events and self.exit is None:
            kind, data = self.events.popleft()
            handler = getattr(self, f"ev_{kind}")
            await handler(**data)
        if self.exit is not None:
            return f"exiting: {self.exit.msg}"
        if self.role == "standby" and self.state == ESTABLISHED and time.monotonic() >= self.next_poll:
            await self.ring_poll()
        self.check_ring_writes()
        self.resync_if_due()
        self.held_batch_if_due()
        if self.switch_after_resync is not None:
            self.resync_done()
        if self.role == "standby" and self.state == AWAITING_BATCH and time.monotonic() - self.state_since_mono > self.batch_wait_s:
            self.set_state(WAITING, f"no BATCH WRITE COMPLETE within {self.batch_wait_s:.0f}s; starting again")
            self.maybe_standby_startup()
        return self.describe()

    def hot_standby_lost(self, reason: str) -> None:
        """Said as a warning, but as info when the standby said it stops (its last heartbeat on the
        peer link, hsb.host.peer.PeerLink.said_stopping) and the link then ended: a planned stop
        of the standby (a restart, an upgrade), which the operator made."""
        peer = self.srv.peer
        if not peer.up and peer.said_stopping:
            log.info("hot_standby_lost", peer=peer.peer_name, reason=f"{reason}: the standby said it is stopping")
        else:
            log.warning("hot_standby_lost", peer=peer.peer_name, reason=reason)

    def fail(self, code: int, msg: str, event: str) -> None:
        log.error(event, msg=msg)
        self.last_error = msg
        self.exit = Exit(code, msg)
        self.srv.request_exit(code, msg)

    # ------------------------------------------------------------------ a planned switchover's end
    def switchover_ended(self, event: str, why: str, reason: Any, code: str | None = None) -> None:
        """A planned switchover that ends without the grant (`why`, logged as `event` with `reason`):
        the active serves on, established as before unless its standby went meanwhile; a stop
        waiting on it stops waiting."""
        self.last_error = why
        log.warning(event, reason=reason)
        self.switchover_over(code)
        self.switch_token += 1
        self.switch_after_resync = None
        self.release_pending = False
        self.set_state(ESTABLISHED if self.established_since else SERVING, why)
        self.srv.delivery.reopen()  # what waited while it handed over goes on
        deferred, self.deferred_batch = self.deferred_batch, None
        if deferred is None:
            return
        if self.stopping:  # a stop waited on it: the normal stop follows, no batch write beside it
            log.info("batch_write_dropped", notice=deferred.get("t"), msg="a stop follows the ended switchover")
            return
        self.post("peer_frame", msg=deferred)  # held during the handover: its turn now

    # ------------------------------------------------------------------ peer link events
    async def ev_peer_up(self) -> None:
        self.maybe_standby_startup()  # the sending side may have come up after the peer's hello

    async def ev_peer_down(self, why: str) -> None:
        if self.role == "active":
            if self.state in (ESTABLISHED, BATCH_WRITING):
                was = self.state == ESTABLISHED or self.resyncing
                self.set_state(SERVING, f"peer link down ({why}); the ring is still written for the standby")
                # the standby itself may be established still (a blip): a stop waits for it
                # briefly; not for one that said it stops (PeerLink.said_stopping)
                if was and not self.srv.peer.said_stopping:
                    self.standby_out_of_sight = time.monotonic()
            elif self.state in (RELEASING, HANDING_OVER):
                if self.established_since is not None:
                    self.hot_standby_lost(f"peer link down ({why}) during a planned switchover")
                    self.standby_out_of_sight = time.monotonic()
                self.established_since = None  # if the CP refuses the handover: serving, not established
            return
        if self.state in (ESTABLISHED, AWAITING_BATCH, BATCH_READING, BATCH_RETRY):
            await self.request_switchover(f"peer link lost: {why}")
        elif self.switch_requested_at is not None and self.srv.peer.closed_by_peer():
            # a request is out (the CP told of the active's loss first, in another state): sent
            # again saying the peer link closed too, so that the CP need not wait out the lease
            await self.request_switchover(f"peer link lost: {why}", kind=self.switch_kind)

    def standby_behind_cut(self) -> bool:
        """An active serving without its standby only because the peer link dropped while hot
        standby was established (and the standby did not say it stops): the standby may well be
        established still, registered at the CP and following the ring, as a crash now would
        find it. A stop hands over to it through the CP all the same (the CP grants a handover
        only to a standby registered there, else `no_standby`: the normal stop follows); the
        operator's switchover is refused."""
        return self.role == "active" and self.state == SERVING and self.standby_out_of_sight is not None

    def out_of_sight_s(self) -> float:
        """Seconds since the established standby went out of sight with the peer link (0: it did not)."""
        return 0.0 if self.standby_out_of_sight is None else time.monotonic() - self.standby_out_of_sight

    def standby_may_return(self) -> bool:
        """An active serving without its standby because the peer link dropped less than
        STANDBY_BLIP_S ago while hot standby was established (a blip: the standby itself may be
        established still): a stop waits a moment for it (HostServer.standby_back), and hsbctl stop
        says so. For one out of sight longer a stop does not wait (it hands over through the CP
        at once: `standby_behind_cut`)."""
        return (
            self.role == "active"
            and self.state == SERVING
            and self.standby_out_of_sight is not None
            and time.monotonic() - self.standby_out_of_sight < STANDBY_BLIP_S
        )

    async def ev_peer_frame(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "hb":
            rn = msg.get("ring_next")
            self.peer_ring_next = rn if isinstance(rn, int) else None
            self.note_active_ring(msg)
            if self.role == "standby" and self.state == WAITING and msg.get("role") == "active":
                self.maybe_standby_startup()
            return
        handler = getattr(self, f"peer_{t}", None)
        if handler is not None:
            await handler(msg)

    async def peer_peer_hello(self, msg: dict[str, Any]) -> None:
        prole, inst = msg.get("role"), msg.get("instance")
        if self.role == "standby" and prole == "active":
            # The hello carries what ACTIVE STARTUP says, so a lost notice is not fatal [0056].
            if inst != self.partner_instance:
                await self.peer_active_startup({"instance": inst, "name": msg.get("name")})
            elif self.state == ESTABLISHED:
                log.info("peer_link_restored", peer=msg.get("name"))
                if self.last_error is not None and self.last_error.startswith(TAKEOVER_REFUSED):
                    self.last_error = None  # (the active it asked to replace is back on the peer link: history)
                self.srv.peer.send({"t": "standby_ready", "startup_id": self.own_startup_id, "instance": self.instance})
        elif self.role == "active" and prole == "standby":
            if msg.get("partner") == self.instance and msg.get("state") == ESTABLISHED and msg.get("startup_id") == self.partner_startup_id:
                if self.state == SERVING:
                    self.set_state(ESTABLISHED, "peer link restored; the standby kept following the ring")
                    self.established_since = time.time()
                    log.info("hot_standby_established", peer=msg.get("name"), startup_id=self.partner_startup_id, how="peer link restored")
        elif self.role == "active" and prole == "active" and self.state != HANDING_OVER and msg.get("state") != STARTING:
            # (a peer still starting holds no role: it asks the CP; one granted says so by ACTIVE STARTUP)
            self.peer_claims_active(msg)

    def peer_claims_active(self, msg: dict[str, Any]) -> None:
        """The peer says it is the active while this host's role is too. Two actives only while
        this one still holds the role at the CP with a valid lease (the alert's metric); one whose
        CP link is gone (its lease lapsed or not renewed) was taken over from: a failover, said so.
        A peer claiming an older epoch than this host's is that epoch's active not yet told it
        was fenced (peer_claims_older_epoch, not counted). A peer granted a higher epoch than
        this host's may have been granted after it: the CP
        took the role from this host though its lease still runs here (its link reset on the CP's
        side alone, which the CP takes for the host's close). This host then drops its CP link,
        which stops it serving at once, and registers again: the CP decides, and refuses it if
        the other host holds the role (an epoch is not compared across CP journals: one set aside
        starts again from 0, and the peer's may be the stale one)."""
        peer_epoch = msg.get("epoch")
        if self.state == STOPPING:  # (a stop's handover granted late: the CP's `demoted` follows)
            log.info("peer_took_over", peer=msg.get("name"), msg="during this host's stop")
            return
        if self.granted and self.lease.valid() and isinstance(peer_epoch, int) and peer_epoch > self.epoch:
            why = f"the peer {msg.get('name')} claims the active role at epoch {peer_epoch}, above this host's {self.epoch}"
            log.error(
                "taken_over_while_serving",
                peer=msg.get("name"),
                epoch=self.epoch,
                peer_epoch=peer_epoch,
                lease_left_s=round(self.lease.remaining(), 3),
            )
            self.last_error = f"{why}: the CP link dropped, the CP asked again who is active"
            self.srv.cp.drop(why)
            return
        if self.granted and self.lease.valid() and isinstance(peer_epoch, int) and peer_epoch < self.epoch:
            # an older epoch's active not yet told it was fenced (frozen, or cut off from the CP,
            # and back: operations.md §13's freeze test does it): the CP granted this host after that
            # epoch's active went silent for host_timeout, longer than its lease. Counted, it fired
            # HsbTwoActivesClaimed ("treat it as a bug") at every such failover. Had the peer's
            # lease still run (its CP link reset at the CP alone), the peer says so itself:
            # taken_over_while_serving
            log.warning(
                "peer_claims_older_epoch",
                peer=msg.get("name"),
                epoch=self.epoch,
                peer_epoch=peer_epoch,
                msg="the peer was taken over from and has not yet heard it was fenced",
            )
            return
        if self.granted and self.lease.valid():
            self.last_error = f"the peer {msg.get('name')} also claims to be active"
            self.counters["two_actives_claimed"] += 1
            log.error("two_actives_claimed", peer=msg.get("name"))
        elif self.state == STARTING and self.epoch == 0:
            # started as the active (hsbd@active restarted after a handover or a failover) and not
            # registered yet (no epoch of the CP's): it never held the role, so nobody took it
            # over from this host. The CP decides: it refuses this host the role, and this host
            # rejoins as the standby (hsb.host.rejoin). Nothing for an operator to do, and no
            # last error to show
            log.info(
                "peer_is_active_at_start",
                peer=msg.get("name"),
                msg=f"the peer {msg.get('name')} is the active; this host, started as the active, is not registered at the CP yet:"
                " the CP decides (refused, it rejoins as the standby)",
            )
        else:
            self.last_error = f"the peer {msg.get('name')} is the active now; this host holds no lease (its CP link is down)"
            log.warning("peer_took_over", peer=msg.get("name"), msg=self.last_error)

    async def peer_active_stopping(self, msg: dict[str, Any]) -> None:
        confirmed = msg.get("cp_confirmed")
        await self.on_active_lost(str(msg.get("name", "")), "stopping", via="peer", cp_confirmed=confirmed if isinstance(confirmed, bool) else None)


__all__ = ["HA", "Exit", "ACTIVE", "CLOSED", "STANDBY"]
