"""Making a standby hot and keeping it so, the patent's procedure on the fast-switch link
(SPEC §5.1, §5.2): the active's ACTIVE STARTUP, the standby's new startup identifier and
STANDBY STARTUP, the active's batch write of the takeover file and BATCH WRITE COMPLETE, the
standby's batch read and its standby sessions, then its poll of the sequential area (the ring)
for every change after the batch. A mixin of `hsb.host.ha.HA`, the one place that decides: the
state is the HA loop's; this module keeps these procedures in a file of their own."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog

from hsb import faults
from hsb.backoff import doubling
from hsb.host.states import (
    AWAITING_BATCH,
    BATCH_READING,
    BATCH_RETRY,
    BATCH_WRITING,
    ESTABLISHED,
    HANDING_OVER,
    RELEASING,
    SERVING,
    STARTING,
    WAITING,
)
from hsb.takeover.startup_id import startup_id as new_startup_id

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")

TORN_RETRIES = 5  # polls a torn ring record may stay torn (a write in progress) before it counts as damage
RING_FAIL_LOG_S = 10.0  # a ring that keeps failing to read is logged once this often (with the count), not at every poll
RING_FAIL_RESYNC_S = 2.0  # failing for this long (or storage_timeout, if longer), the standby asks for a new batch
BATCH_RETRY_MAX_S = 30.0  # a standby's batch reads that keep failing ask again at most this far apart (from 50 ms, doubling)
STALE_HEADER_RETRY_S = (0.05, 1.0)  # a header older than BATCH WRITE COMPLETE says: read again after (first, doubling to)
STORAGE_RECHECK_S = 0.25  # a batch asked for while this host's takeover storage does not answer: looked at again this often
# after a batch write the standby did not read (its read failed, it never said ready) the active
# writes the next one only BATCH_GAP_FIRST_S after it ended, doubling with each unread one in a row
# (and never sooner than 4 times the last one's duration), up to batch_hold_max: each is the whole
# link (26 MiB and two syncs at 100,000 terminals), likely aimed at the storage that is struggling
BATCH_GAP_FIRST_S = 0.5
BATCH_EVERY_S = 10.0


def batch_complete_wait(tk: Any) -> float:
    """How long a standby waits for BATCH WRITE COMPLETE before the transfer's own time (`tk`: its
    [takeover] section; `ha.batch_wait` adds that), and re-reads a header older than it announced."""
    return float(max(5.0, 3 * tk.storage_timeout))


def batch_hold_max(tk: Any) -> float:
    """The longest gap the active puts after an unread batch write (`tk`: its [takeover] section):
    half the standby's own wait for BATCH WRITE COMPLETE (max(5 s, 3 x storage_timeout), plus the
    transfer, `ha.batch_wait`), at most BATCH_EVERY_S. Held longer, the write (within its own
    storage_timeout) landed after the standby had given up and asked again with a new startup id:
    a whole batch for an id nobody waits for, and the next ask held as long again."""
    return min(BATCH_EVERY_S, 0.5 * batch_complete_wait(tk))


RING_WRITE_STALE_S = 2.0  # the active's ring writes failing this long (or storage_timeout, if longer): hot standby not ready


class HotStandbySide:
    """The startup and batch procedures of `HA` (see the module docstring)."""

    # the state machine's state that these procedures change (set in HA.__init__)
    resyncing: bool
    partner_startup_id: int | None
    own_startup_id: int | None
    partner_instance: str | None
    announced_by: str | None
    partner_batch_records: int | None
    generation: int | None
    last_error: str | None
    file_mismatch: str | None
    established_since: float | None
    active_stopped_by: str | None
    active_stop_confirmed: bool
    deferred_batch: dict[str, Any] | None
    batch_token: int
    batch_announced: tuple[int, float, int] | None
    batch_failures: int
    batch_apply: asyncio.Task[None] | None
    resync_reason: str
    resync_at: float
    resync_held: bool
    batch_ended: tuple[float, float] | None
    batches_unread: int
    held_batch: tuple[float, dict[str, Any]] | None
    next_poll: float
    torn_polls: int
    ring_failing: tuple[float, float, int] | None  # (since, last logged, failures): monotonic
    ring_unwritten: bool
    active_ring_failing: str | None
    counters: dict[str, int]

    # --- active side (§5.1)
    def send_active_startup(self: HA) -> None:
        log.info("active_startup_sent", peer_up=self.srv.peer.up)
        # with the epoch the CP granted: an active still serving on a lease the CP no longer
        # counts (its link reset on the CP's side only) learns from it that it was taken over from
        self.srv.peer.send({"t": "active_startup", "name": self.name, "instance": self.instance, "epoch": self.epoch})

    def hold_batch(self: HA, msg: dict[str, Any]) -> bool:
        """A batch write asked for (`msg`) while it must not start: during a planned switchover's
        handover (it would end the handover: a resync's batch write leaves `releasing`), it waits
        for the switchover to end (`switchover_ended` asks again; a completed one drops it: the
        other host is the active); while stopping, it is dropped."""
        if self.stopping:
            return True
        if self.state not in (RELEASING, HANDING_OVER):
            return False
        self.deferred_batch = msg
        log.info("batch_write_deferred", notice=msg.get("t"), reason=msg.get("reason"), msg="a planned switchover is under way")
        return True

    async def peer_standby_startup(self: HA, msg: dict[str, Any]) -> None:
        if self.role != "active" or self.hold_batch(msg):
            return
        if self.state == STARTING:
            # not yet the active at the CP, which may refuse it (another host is: it rejoins as the
            # standby, hsb.host.rejoin): no batch for a role it does not hold. Its ACTIVE STARTUP
            # once registered makes the standby ask again (peer_active_startup)
            log.info("standby_startup_ignored", peer=msg.get("name"), msg="not registered at the CP as the active yet")
            return
        sid = int(msg["startup_id"])
        if sid != self.partner_startup_id:
            # a new start of the standby (a new process, or one whose wait ran out): the batches
            # another startup id did not read count as one step, not all (a 10 s hold for each)
            self.batches_unread = min(self.batches_unread, 1)
        if self.batch_too_soon(msg):
            return
        self.resyncing = False  # a standby starting again is not established
        self.partner_startup_id = sid
        log.info("standby_startup_received", startup_id=sid, peer=self.srv.peer.peer_name)
        await self.batch_write(reason="standby startup")

    async def peer_resync_request(self: HA, msg: dict[str, Any]) -> None:
        if self.role != "active":
            return
        if msg.get("startup_id") != self.partner_startup_id or self.hold_batch(msg) or self.batch_too_soon(msg):
            return
        log.warning("resync_requested", reason=msg.get("reason"), record=msg.get("record"))
        if self.state == ESTABLISHED:
            self.resyncing = True  # a planned switchover asked meanwhile waits for it (ev_switchover)
        await self.batch_write(reason=f"resync: {msg.get('reason')}", clear=msg.get("record"))

    def batch_too_soon(self: HA, msg: dict[str, Any]) -> bool:
        """A batch write asked for (`msg`) too soon after the last one ended, which the standby did
        not read (BATCH_GAP_FIRST_S, doubling per unread one, at least 4 times the last one's
        duration, at most `batch_hold_max`): held until then (the newest ask replaces one held; a
        standby startup is not replaced by a resync). A standby whose reads failed at once (a hung
        mount) asked every 2 s, each ask a full batch write with two syncs."""
        if self.batches_unread == 0 or self.batch_ended is None:
            return False
        ended, took = self.batch_ended
        hold = batch_hold_max(self.srv.cfg.takeover)
        due = ended + min(max(doubling(BATCH_GAP_FIRST_S, hold, self.batches_unread - 1), 4 * took), hold)
        if time.monotonic() >= due:
            return False
        if self.held_batch is not None and self.held_batch[1].get("t") == "standby_startup" and msg.get("t") == "resync_request":
            return True
        if self.held_batch is None:
            log.info("batch_write_held", notice=msg.get("t"), reason=msg.get("reason"), in_s=round(due - time.monotonic(), 1))
        self.held_batch = due, msg
        return True

    def held_batch_if_due(self: HA) -> None:
        """A held batch write's turn: asked again as it came (the state may have moved on meanwhile)."""
        if self.held_batch is not None and time.monotonic() >= self.held_batch[0]:
            msg, self.held_batch = self.held_batch[1], None
            self.post("peer_frame", msg=msg)

    async def batch_write(self: HA, reason: str, clear: int | None = None) -> None:
        """S205-S208: header, batch write of the fast-switch link, durable, BATCH WRITE COMPLETE."""
        assert self.partner_startup_id is not None
        self.held_batch = None  # (this one writes what it asked for)
        self.batches_unread += 1  # (until the standby says ready)
        self.set_state(BATCH_WRITING, reason)
        tio = self.srv.takeover
        tio.stop_ring_writer()
        # changes from now on go to the ring after the batch; those made while the link is
        # walked (in slices) may be in the batch too: a ring entry sets a state, so twice is once
        tio.buffer_ring_changes()
        entries = await self.srv.sessions.link_entries()
        t0 = time.monotonic()
        try:
            # (the standby's name: a header by neither host of this pair is another pair's, not written over)
            gen = await tio.batch_write(self.partner_startup_id, entries, clear, peer=self.srv.peer.peer_name)
        except Exception as exc:
            self.batch_ended = time.monotonic(), time.monotonic() - t0
            msg = f"batch write failed: {exc}"
            log.error("batch_write_failed", error=str(exc))
            self.last_error = msg
            tio.discard_ring_buffer()
            if not self.stopping:  # (a normal stop begun meanwhile keeps its state: not serving)
                self.set_state(SERVING, msg)
            return
        faults.point("host.between_batch_and_notice")
        self.batch_ended = time.monotonic(), time.monotonic() - t0
        self.generation = gen
        tio.start_ring_writer()
        log.info("batch_write_complete", generation=gen, entries=len(entries), ms=round((time.monotonic() - t0) * 1000, 1))
        if self.stopping:  # a normal stop began while it was written: no standby sessions for a stopping host
            log.info("batch_write_complete_not_sent", msg="this host is stopping")
            return
        self.srv.peer.send({"t": "batch_write_complete", "startup_id": self.partner_startup_id, "generation": gen})
        log.info("service_start_notice", monitor="local")

    def check_ring_writes(self: HA) -> None:
        """Active: ring writes that keep failing (EIO, a read-only or hung mount) were retried for
        ever while status said established: the standby's polls found nothing new, and a failover
        took over a view frozen for as long as the outage lasted. Failing for RING_WRITE_STALE_S
        (or storage_timeout), hot standby is not ready (status, /standby, the verdict, the metrics)
        and the standby is told (heartbeats), until a write succeeds."""
        tio = self.srv.takeover
        failing = tio.write_failing_for() if self.role == "active" else None
        stale = failing is not None and failing >= max(RING_WRITE_STALE_S, self.srv.cfg.takeover.storage_timeout)
        if stale == self.ring_unwritten:
            return
        self.ring_unwritten = stale
        if stale:
            log.error(
                "standby_view_stale",
                peer=self.srv.peer.peer_name,
                failing_s=round(failing or 0.0, 1),
                pending=len(tio.pending),
                error=tio.last_error,
                msg="the takeover ring cannot be written: the standby's view of the sessions is stale; check the takeover storage",
            )
        else:
            log.info("standby_view_current", peer=self.srv.peer.peer_name, msg="the takeover ring is written again")
        self.srv.on_state_change()

    def note_active_ring(self: HA, msg: dict[str, Any]) -> None:
        """Standby: the active's heartbeat (or hello) says whether it can write the ring."""
        if self.role != "standby" or msg.get("role") != "active":
            return
        why = msg.get("ring_write_failing")
        why = why if isinstance(why, str) else None
        if why == self.active_ring_failing:
            return
        if why is not None and self.active_ring_failing is None:
            log.warning("active_ring_writes_failing", peer=self.srv.peer.peer_name, error=why, msg="this host's view of the sessions is stale")
        elif why is None:
            log.info("active_ring_writes_recovered", peer=self.srv.peer.peer_name)
        self.active_ring_failing = why
        self.srv.on_state_change()

    async def peer_standby_ready(self: HA, msg: dict[str, Any]) -> None:
        if self.role != "active" or msg.get("startup_id") != self.partner_startup_id or self.stopping:
            return
        self.batches_unread = 0  # (the next batch asked for is written at once)
        self.held_batch = None
        if self.state in (RELEASING, HANDING_OVER):  # (the peer link back during a planned switchover)
            if self.established_since is None:
                self.established_since = time.time()  # a refused handover leaves it established
                log.info("hot_standby_established", peer=self.srv.peer.peer_name, startup_id=self.partner_startup_id, how="peer link restored")
            return
        self.last_error = None
        self.file_mismatch = None
        if self.state == ESTABLISHED and self.established_since is not None:
            return  # (said already: the standby's hello came first when the peer link was restored)
        self.set_state(ESTABLISHED, "standby ready")
        self.established_since = time.time()
        log.info("hot_standby_established", peer=self.srv.peer.peer_name, startup_id=self.partner_startup_id)

    async def peer_file_mismatch(self: HA, msg: dict[str, Any]) -> None:
        self.file_mismatch = (
            f"{self.name} writes {self.srv.cfg.takeover.path} but {self.srv.peer.peer_name} read startup id "
            f"{msg.get('found')} instead of {msg.get('startup_id')} in {msg.get('path')}: the two hosts name different takeover files"
        )
        log.error("takeover_file_mismatch", msg=self.file_mismatch)
        self.srv.takeover.stop_ring_writer()
        if self.state in (ESTABLISHED, BATCH_WRITING):
            self.set_state(SERVING, "standby reported a takeover file mismatch")

    # --- standby side (§5.2, §5.3)
    async def peer_active_startup(self: HA, msg: dict[str, Any]) -> None:
        if self.role != "standby":
            if self.state == HANDING_OVER:  # the CP's "demoted" is on its way
                log.info("peer_took_over", peer=msg.get("name"))
            elif self.role == "active":
                self.peer_claims_active(msg)
            return
        if self.stopping:  # (demoted during its stop: it does not start again as the standby)
            return
        if self.partner_instance is not None and msg.get("instance") != self.partner_instance:
            # Fig. 3: the active restarted; drop every standby session by walking the link.
            n = self.srv.sessions_ctl.close_all_standby()
            self.srv.takeover.stop_following()
            log.info("active_restarted", peer=msg.get("name"), standby_sessions_closed=n)
        self.cancel_batch_apply()
        self.partner_instance = msg.get("instance")
        self.active_ring_failing = None  # (that active's word; the new one's comes with its heartbeats)
        self.resync_held = False
        self.active_stopped_by = None
        self.active_stop_confirmed = False
        self.established_since = None
        if msg.get("t") == "active_startup":  # (not a hello taken for it: sent once registered at the CP)
            self.announced_by = msg.get("instance")
        self.set_state(WAITING, "ACTIVE STARTUP received")
        self.maybe_standby_startup()

    def maybe_standby_startup(self: HA) -> None:
        """S222-S224: a new startup identifier, then STANDBY STARTUP. Not to an active still
        starting (not registered at the CP, which may refuse it the role), unless its ACTIVE STARTUP
        came (sent once registered: its heartbeats say so only at the next one)."""
        if self.role != "standby" or self.state != WAITING or not self.registered:
            return
        if (
            not self.srv.takeover.ring_settled()
        ):  # (a ring write of ours as the active still out: not over the new batch; asked again at the active's next heartbeat)
            return
        hello = self.srv.peer.peer_hello
        if not self.srv.peer.up or self.srv.peer.outbound is None or hello is None or hello.get("role") != "active":
            return
        if hello.get("state") == STARTING and hello.get("instance") != self.announced_by:  # (asked at its next heartbeat or ACTIVE STARTUP)
            return
        self.partner_instance = hello.get("instance")
        self.own_startup_id = new_startup_id(after=self.own_startup_id or 0)
        if self.srv.peer.send({"t": "standby_startup", "startup_id": self.own_startup_id, "name": self.name}):
            log.info("standby_startup_sent", startup_id=self.own_startup_id)
            self.set_state(AWAITING_BATCH, "STANDBY STARTUP sent")

    async def peer_batch_write_complete(self: HA, msg: dict[str, Any]) -> None:
        if self.role != "standby" or self.state not in (AWAITING_BATCH, ESTABLISHED, BATCH_READING, BATCH_RETRY):
            return
        if msg.get("startup_id") != self.own_startup_id:
            return  # for an earlier attempt
        # a header read older than this (the page cache of the O_DIRECT fallback) is read again until
        # then, not taken for another file's: as long as the active's wait for a batch allows
        self.batch_announced = int(msg["generation"]), time.monotonic() + batch_complete_wait(self.srv.cfg.takeover), 0
        await self.batch_read()

    def stale_header(self: HA, found: int | None, own_id: bool = False) -> bool:
        """The header read (generation `found`) is older than BATCH WRITE COMPLETE announced (or,
        `own_id`, read again it holds this standby's id after all), and there is time to read it
        again: a retry is set (`ev_batch_reread`), said, and True."""
        announced = self.batch_announced
        if announced is None or time.monotonic() >= announced[1]:
            return False
        if not own_id and (found is None or found >= announced[0]):
            return False
        # re-reads are counted apart: batch_failures is the backoff of a read that failed, which
        # a stale read followed by a real failure would otherwise start too high
        gen, until, rereads = announced
        self.batch_announced = gen, until, rereads + 1
        delay = doubling(*STALE_HEADER_RETRY_S, rereads)
        log.warning("batch_read_stale", generation=found, announced=announced[0], retry_in_s=delay)
        self.last_error = f"batch read: the takeover file's header says generation {found}, BATCH WRITE COMPLETE {announced[0]}: read again"
        token = self.batch_token
        asyncio.get_running_loop().call_later(delay, lambda: self.post("batch_reread", token=token))
        return True

    async def ev_batch_reread(self: HA, token: int) -> None:
        if token != self.batch_token or self.role != "standby" or self.state != BATCH_READING:
            return  # (another batch read since, or the state moved on)
        await self.batch_read()

    async def batch_read(self: HA) -> None:
        """S225-S227: compare the startup id, take B from the file, open standby sessions."""
        from hsb.takeover.errors import StartupIdMismatch

        self.cancel_batch_apply()  # (an earlier batch read's opens: this batch replaces them)
        self.batch_token += 1
        self.set_state(BATCH_READING, "BATCH WRITE COMPLETE received")
        tio = self.srv.takeover
        t0 = time.monotonic()
        try:
            # (a header another pair's host wrote is ForeignWriter, a failed batch read naming it: its
            # startup id is that pair's standby's, and "different files" would be the wrong diagnosis)
            gen, b, entries = await tio.batch_read(self.own_startup_id, peer=self.srv.peer.peer_name)
        except StartupIdMismatch as exc:
            found = getattr(exc, "found", None)
            if self.stale_header(tio.mismatch_generation, own_id=found == self.own_startup_id):
                return  # a stale read (an older generation than announced, or this standby's id read again)
            if found == self.own_startup_id and found is not None:  # (its own id after all: no file mismatch)
                self.batch_failed(f"{exc}; read again, the header holds this standby's startup id")
                return
            self.srv.peer.send({"t": "file_mismatch", "startup_id": self.own_startup_id, "found": found, "path": self.srv.cfg.takeover.path})
            await self.srv.peer_drain()
            self.fail(1, f"takeover file mismatch: {exc}", "takeover_file_mismatch")
            return
        except Exception as exc:
            self.batch_failed(str(exc))  # never apply a bad batch
            return
        if self.stale_header(gen):  # (this standby's id, an older batch: a resync's stale read)
            return
        announced = self.batch_announced
        if announced is not None and gen < announced[0]:
            # still older past the re-reads' deadline: never applied (a resync's stale header would
            # be taken for the new batch); failed, so the active is asked again
            self.batch_failed(
                f"the takeover file's header says generation {gen}, BATCH WRITE COMPLETE {announced[0]}: still older after the re-reads"
            )
            return
        self.batch_failures = 0
        self.batch_announced = None
        self.generation = gen
        self.partner_batch_records = b
        log.info("batch_read_complete", generation=gen, partner_batch_records=b, entries=len(entries), ms=round((time.monotonic() - t0) * 1000, 1))
        # the standby opens and the CP's answers to them (up to 2 + 30 s) in a task: a failover
        # (active_lost, peer_down) is acted on meanwhile; `ev_batch_applied` goes on, and an
        # exception in it (a bug) ends the batch read as failed (`ev_batch_apply_failed`)
        token = self.batch_token
        self.batch_apply = self.spawn(
            self._apply_batch(token, entries), failed=lambda exc: self.post("batch_apply_failed", token=token, error=repr(exc))
        )

    def batch_failed(self: HA, why: str) -> None:
        """A batch read that cannot be used: ask the active again, backing off so that a damaged
        disk is not hammered (BATCH_RETRY, then `resync_request` from `run_cycle`)."""
        self.batch_failures += 1
        self.batch_announced = None  # (the next BATCH WRITE COMPLETE announces its own)
        delay = doubling(0.05, BATCH_RETRY_MAX_S, self.batch_failures - 1)
        self.last_error = f"batch read failed: {why}"
        log.error("batch_read_failed", error=why, retry_in_s=delay, failures=self.batch_failures)
        self.set_state(BATCH_RETRY, self.last_error)
        self.resync_reason = why[:200]
        self.resync_at = time.monotonic() + delay

    def resync_if_due(self: HA) -> None:
        """BATCH_RETRY: ask the active for a new batch once the backoff has passed, but not while
        this host's takeover storage does not answer (an operation stuck on a hung mount): every
        batch read would fail at once, and each ask costs the active a full batch write. Asked
        as soon as the storage answers again."""
        if self.role != "standby" or self.state != BATCH_RETRY or time.monotonic() < self.resync_at:
            return
        if not self.srv.takeover.store.responding:
            self.resync_at = time.monotonic() + STORAGE_RECHECK_S
            if not self.resync_held:
                self.resync_held = True
                self.last_error = f"takeover storage not responding: no new batch asked for until it answers ({self.resync_reason})"
                log.warning(
                    "resync_waits_for_storage", reason=self.resync_reason, msg="a batch read would fail at once: asked once the storage answers"
                )
            return
        if self.resync_held:
            self.resync_held = False
            log.info("resync_storage_answers", reason=self.resync_reason)
        self.srv.peer.send({"t": "resync_request", "startup_id": self.own_startup_id, "reason": self.resync_reason})
        self.set_state(AWAITING_BATCH, "asked the active for a new batch")

    async def _apply_batch(self: HA, token: int, entries: list[Any]) -> None:
        await self.srv.sessions_ctl.apply_batch(entries)
        self.post("batch_applied", token=token)

    def cancel_batch_apply(self: HA) -> None:
        """A batch read's standby opens stop (another batch read, the active restarted, a grant)."""
        t, self.batch_apply = self.batch_apply, None
        if t is not None:
            t.cancel()

    async def ev_batch_apply_failed(self: HA, token: int, error: str) -> None:
        if token != self.batch_token or self.role != "standby" or self.state != BATCH_READING:
            return  # (as ev_batch_applied)
        self.batch_apply = None
        self.batch_failed(f"standby sessions not opened: {error}")

    async def ev_batch_applied(self: HA, token: int) -> None:
        if token != self.batch_token or self.role != "standby" or self.state != BATCH_READING:
            return  # an older batch read's, or the state moved on meanwhile (a grant, a normal stop)
        self.batch_apply = None
        tio = self.srv.takeover
        tio.follow()
        self.ring_failing = None  # (a failure before this batch read counts for nothing now)
        self.resync_held = False
        self.last_error = None
        self.set_state(ESTABLISHED, "batch read done and standby sessions open")
        self.established_since = time.time()
        log.info("hot_standby_established", peer=self.srv.peer.peer_name, startup_id=self.own_startup_id)
        self.srv.peer.send({"t": "standby_ready", "startup_id": self.own_startup_id, "instance": self.instance})
        self.next_poll = 0.0  # S228: read the ring at once

    async def ring_poll(self: HA) -> None:
        tio = self.srv.takeover
        self.next_poll = time.monotonic() + self.srv.cfg.host.ring_poll_interval
        try:
            status, entries, detail = await tio.ring_poll()
        except Exception as exc:
            self.last_error = f"ring read failed: {exc}"
            now = time.monotonic()
            since, logged, n = self.ring_failing or (now, -RING_FAIL_LOG_S, 0)
            self.ring_failing = since, logged, n + 1
            if now - logged >= RING_FAIL_LOG_S:  # (at every poll it filled the log, 20 lines a second)
                log.error("ring_read_failed", error=str(exc), failures=n + 1, failing_s=round(now - since, 1))
                self.ring_failing = since, now, n + 1
            if now - since < max(RING_FAIL_RESYNC_S, self.srv.cfg.takeover.storage_timeout):
                return
            # it cannot follow the active: not established (its view of the sessions is frozen),
            # a new batch asked for; a batch read that fails too retries and says so
            self.ring_failing = None
            status, entries, detail = "unreadable", [], f"unreadable for {now - since:.1f} s ({exc})"
        else:
            self.ring_failing = None
        if entries:
            self.srv.sessions_ctl.apply_ring(entries)
        if status == "torn":
            # maybe a write in progress: retry, but a record that stays torn is damage
            self.torn_polls += 1
            self.last_error = f"takeover ring {detail}: torn"
            if self.torn_polls < TORN_RETRIES:
                return
            status = "corrupt"
        else:
            self.torn_polls = 0
        if status in ("lapped", "new_generation", "corrupt", "unreadable"):
            # never guess: ask the active for a new batch takeover (SPEC §5.2 step 8)
            log.warning("ring_resync_needed", status=status, detail=detail)
            if status == "corrupt":
                self.last_error = f"takeover ring {detail}: corrupt"
            if status != "unreadable" and tio.foreign_writer is not None:  # another pair's host wrote the new batch (logged by the reader)
                self.last_error = tio.foreign_writer
            bad = tio.bad_record if status == "corrupt" else None  # the active's batch write clears it
            tio.stop_following()
            self.torn_polls = 0
            self.counters["resyncs"] += 1
            if not tio.store.responding:  # (a hung mount: asked once it answers, resync_if_due)
                self.resync_reason, self.resync_at = status, 0.0
                self.set_state(BATCH_RETRY, f"ring {status}: a new batch is asked for once the takeover storage answers")
                return
            ask: dict[str, Any] = {"t": "resync_request", "startup_id": self.own_startup_id, "reason": status}
            if bad is not None:
                ask["record"] = bad
            self.srv.peer.send(ask)
            self.set_state(AWAITING_BATCH, f"ring {status}: asked the active for a new batch takeover")
        elif status == "new":
            self.next_poll = 0.0  # more may be waiting
