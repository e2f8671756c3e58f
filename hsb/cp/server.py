"""hsbcpd's lifecycle: startup (admin, the terminal and host listeners bound, then the journal
taken over and served on), tick (host-link silence, heartbeats, the journal's generation),
reload. Its stops are hsb.cp.stopping's; its terminal and host listeners (bound ahead of the
takeover, served on once it serves) hsb.cp.listeners'.

Two ways to start (`[cp] takeover`): "at_start" takes the journal over at once; "on_wake"
(two CP machines behind keepalived, docs/operations.md) first waits with the config loaded and
the admin link and /health up, until SIGUSR1 (keepalived's notify script, on this machine
becoming master) or until this machine holds terminal_listen's address while the serving CP's
heartbeat has stood still for `takeover_stale` seconds (that phase: hsb.cp.waiting). Serving, it stops at once when a newer
CP takes the journal over (exit 75), and when `on_wake` and its address is gone from this
machine (keepalived moved it: exit 0, systemd starts it again, waiting).

Signal handlers only set flags; the loops act on them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import structlog

from hsb import __version__, gcpolicy
from hsb.bootclock import boot_now
from hsb.config import parse_addr
from hsb.cp import supervise
from hsb.cp.admin import CPAdminProtocol
from hsb.cp.config import CPConfig, CPSection
from hsb.cp.core import CP
from hsb.cp.host_link import HostProtocol
from hsb.cp.journal import Journal
from hsb.cp.journal.generation import Generations
from hsb.cp.listeners import Listeners
from hsb.cp.stopping import EXIT_SUPERSEDED as EXIT_SUPERSEDED  # (hsbcpd's exit when superseded)
from hsb.cp.stopping import Stopping
from hsb.cp.taking_over import TAKEOVER_STEP_MIN_S, TakingOver
from hsb.cp.waiting import Waiting, holds_address
from hsb.fsutil import BULK_RATE as BULK_RATE  # (what a takeover step moving the journal is given: bulk_seconds)
from hsb.ops.http import json_route, start_http
from hsb.ops.limits import accept_queue_fits, listen_backlog, raise_nofile, serves_terminals, somaxconn, storm_timing, terminals_fit
from hsb.ops.listen import ListenError
from hsb.ops.metrics import CPCollector, registry_for
from hsb.ops.metrics import render as render_metrics
from hsb.ops.notify import Watchdog, notify
from hsb.ops.wrapper import killing_wrapper
from hsb.wire.framing import encode
from hsb.wire.tls import TLS, log_misnamed, reload_tls, set_default_client

log = structlog.get_logger("hsb.cp")
_HB = encode({"t": "hb"})
KEEP_APPLIED_AFTER_S = 5.0  # a worker forked again leaves its config for the next one this long after it starts serving


class CPServer(Listeners, Waiting, TakingOver, Stopping):
    RELOADABLE = ("cp.held_bound", "cp.held_bytes", "cp.held_total_bytes", "cp.host_timeout", "terminals", "terminal_groups")

    def __init__(self, cfg: CPConfig, secret: bytes, config_path: str | None = None, tls_pem: dict[str, bytes] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.reload_requested = False
        self._reloading: asyncio.Future[None] | None = None
        # the takeover's file step under way (name, since when: monotonic), and how long one may
        # take before /health fails and the watchdog pings stop (a hung mount, not a big journal)
        self.takeover_step: tuple[str, float, float] | None = None  # (name, began, extra seconds its bytes get)
        self.takeover_step_s = max(TAKEOVER_STEP_MIN_S, 5 * cfg.cp.journal_timeout)
        self.sighups = 0
        self.wake_requested = False
        self.secret = secret
        self.cp: CP | None = None  # None while waiting to take over
        self.state = "starting"  # starting | waiting | serving | stopping
        self.exit_code = 0
        self.superseded = False
        self.open_files: dict[str, Any] = {}
        self.accept_queue: dict[str, Any] = {}  # the terminal port's listen backlog, as the kernel allows it
        self.took_over: dict[str, Any] = {}
        self.split_takeover = False  # the wait ended by split_brain_takeover (hsb.cp.waiting): its gen-N says so
        self.supervisor: dict[str, Any] | None = None  # hsbcpd --supervise: the master's pid, the restarts before this worker
        self.should_exit = asyncio.Event()
        self.woken = asyncio.Event()
        self.servers: list[asyncio.base_events.Server] = []
        self.hosts: set[HostProtocol] = set()
        self.bound: dict[str, str] = {}
        # the terminal and host listeners bound before the journal is taken over (`bind_ahead`),
        # served on once the CP serves (`start_serving`)
        self.ahead: dict[str, asyncio.base_events.Server] = {}
        self._tickling: asyncio.Future[None] | None = None
        self._takeover_beats: asyncio.Task[None] | None = None  # its generation's heartbeat until the tick loop beats
        # TLS (hsb.wire.tls): mutual on the host and admin listeners, optional on the terminals'
        if cfg.tls is None:
            self.tls = None
        else:  # (tls_pem: forked again while the files are broken, what the worker before loaded)
            self.tls = TLS(cfg.tls.files(), terminals=cfg.tls.terminals, pem=tls_pem)
        if self.tls is not None:
            supervise.keep_tls(self.tls.pem)
            log_misnamed(self.tls, cfg.cp.name)
        set_default_client(self.tls.client if self.tls is not None else None)
        durable = cfg.cp.durability != "none"
        self.gens = Generations(Path(cfg.cp.journal)) if durable else None
        if self.gens is not None and cfg.cp.takeover == "at_start":
            Path(cfg.cp.journal).mkdir(parents=True, exist_ok=True)  # an unusable directory fails the start here
        # (on_wake: the journal is on the shared storage, made once there; never made here, see _journal_missing)

    # ------------------------------------------------------------------ what the admin link sees
    def status(self) -> dict[str, Any]:
        tls = self.tls.status() if self.tls is not None else {"enabled": False}
        if self.cp is not None:
            return {
                **self.cp.status(),
                "cp_state": self.state,
                "takeover": self.cfg.cp.takeover,
                "tls": tls,
                "open_files": self.open_files,
                "accept_queue": self.accept_queue,
                **({"tickle_list": self.cp.tickles.status()} if self.cp.tickles is not None else {}),
                **self.took_over,
                "supervisor": self.supervisor,
            }
        return {
            "name": self.cfg.cp.name,
            "role": "cp",
            "version": __version__,
            "pid": os.getpid(),
            "state": "waiting",
            "cp_state": self.state,
            "takeover": self.cfg.cp.takeover,
            "generation": None,
            # the last look at the storage (on a thread: a hung mount does not block this answer)
            "journal_generation": self.storage[1] if self.storage is not None else None,
            "journal_missing": self.storage is not None and self.storage[0],  # (on_wake: not mounted?)
            "journal_unanswered_s": None if (t := self.storage_unanswered()) is None else round(t, 1),
            "journal_error": self.storage_error,
            "holds_address": holds_address(self.cfg.cp.terminal_listen),
            "tls": tls,
            "supervisor": self.supervisor,
        }

    def _journal(self) -> Journal | None:
        return self.cp.journal if self.cp is not None and self.cp.journal.durable else None

    # ------------------------------------------------------------------ startup
    async def start_admin(self) -> None:
        """The admin link and /health first: they answer while waiting too."""
        c = self.cfg.cp
        n = len(self.cfg.terminal_table)
        soft, hard = raise_nofile()
        serves_terminals()  # (the pair's own links get in past the terminals' share: hsb.ops.limits)
        self.open_files = {"soft": soft, "hard": hard, "warning": terminals_fit(n, soft)}
        if self.open_files["warning"]:
            log.warning("open_files_too_few", limit=soft, terminals=n, msg=self.open_files["warning"])
        cap = somaxconn()
        backlog = listen_backlog(n)
        self.accept_queue = {"backlog": backlog if cap < 0 else min(backlog, cap), "somaxconn": cap, "warning": accept_queue_fits(n, cap)}
        if self.accept_queue["warning"]:
            log.warning("accept_queue_too_small", somaxconn=cap, terminals=n, msg=self.accept_queue["warning"])
        wrapper = killing_wrapper("hsbcpd")
        if wrapper is not None:
            log.warning("started_under_su", msg=wrapper)
        storm = storm_timing(n, c.host_timeout)
        if storm is not None:
            log.warning("host_timeout_short_for_storms", host_timeout=c.host_timeout, terminals=n, msg=storm)
        loop = asyncio.get_running_loop()

        tls = self.tls.server if self.tls is not None else None

        def admin() -> CPAdminProtocol:
            return CPAdminProtocol(
                self, secret=self.secret, auth_timeout=c.auth_timeout, idle_timeout=30.0, max_frame=c.max_frame, tls=tls, tls_timeout=c.auth_timeout
            )

        h, p = parse_addr(c.admin_listen)
        srv = await self._listen(
            "admin",
            lambda sock: loop.create_server(admin, sock=sock, backlog=64),
            lambda: loop.create_server(admin, h, p, backlog=64, reuse_address=True),
        )
        self.servers.append(srv)
        sock = srv.sockets[0].getsockname()
        self.bound["admin"] = f"{sock[0]}:{sock[1]}"
        if c.http_listen:
            reg = registry_for(CPCollector(self.status, self._journal, lambda: self.cp.history if self.cp is not None else None))
            routes = {
                # 200 while this process is fine, waiting or serving (keepalived's track script):
                # 503 once its journal cannot be written, so that the address moves on
                "/health": json_route(lambda: (self._healthy(), self.status())),
                "/active": json_route(lambda: (False, {"msg": "hsbcpd is the CP, not a host"})),
                "/standby": json_route(lambda: (False, {"msg": "hsbcpd is the CP, not a host"})),
                "/metrics": lambda: render_metrics(reg),
            }
            srv2, self.bound["http"] = await self._listen(
                "http", lambda sock: start_http(c.http_listen, routes, sock=sock), lambda: start_http(c.http_listen, routes)
            )
            self.servers.append(srv2)

    def _healthy(self) -> bool:
        if self.state == "stopping":
            return False
        if self.state == "taking_over":  # its file work on a thread: healthy while each step keeps to its bound
            return self._takeover_on_time()
        if self.cp is None and self.storage is not None and self.storage[0]:  # waiting, the shared storage not mounted:
            return False  # keepalived's track script fails, and the address goes to the machine that has it
        if self.cp is None and (self.storage_unanswered() is not None or self.storage_error is not None):
            return False  # waiting, the storage hangs or fails: it could not take over
        j = self._journal()
        if j is None:
            return True
        # no clean generation check for fresh_s (its mount hangs: an idle CP writes nothing, so its
        # journal still says ok): it may be superseded and renews no lease, so it cannot serve here
        c = j.checked_at  # (once serving: the ticks check it every 0.1 s, and a reload before the listeners is no tick)
        return j.state == "ok" and (self.state != "serving" or c is None or boot_now() - c < j.fresh_s)

    async def startup(self, reason: str = "started") -> None:
        """The admin link, the terminal and host listeners bound, the journal taken over, the
        listeners served on: what `serve()` does before its tick loop when it need not wait
        (in-process users, tests)."""
        if not self.servers:
            await self.start_admin()
        if self.cp is None and not self.superseded:  # (a CP forked again by its master has taken the journal over already)
            try:
                await self.bind_ahead()
                self.state = "taking_over"
                await self.take_over(reason)
            except BaseException:  # (what the takeover raises ends the start: nothing left bound)
                self.close_bound_ahead()
                raise
        if self.superseded:  # superseded while taking over: nothing to serve
            return
        await self._still_here()
        if self.reload_requested and self.cp is not None:
            # a SIGHUP while it waited was only checked then: applied now, before the listeners
            # open (terminals added meanwhile would be refused, and their sessions the active
            # names at its registration closed)
            self.reload_requested = False
            await self._reload_logged()
        self.state = "starting"  # the listeners next: an error now is the ports', not the journal's
        await self.start_serving()
        if self.cp is not None and self.cp.tickles is not None:
            self._tickling = asyncio.ensure_future(self.tickle(self.cp.tickles.gen))

    def take_early_signals(self) -> None:
        """The reloads and wakes sent while this worker started (hsb.cp.supervise): acted on now."""
        from hsb.cp.supervise import EARLY_SIGNALS as early

        for sig in early:
            if sig == signal.SIGHUP:
                self._sighup()
            else:
                self._wake()
        early.clear()

    def _wake(self) -> None:
        self.wake_requested = True  # the flag only; the loops act on it
        self.woken.set()

    async def tick_loop(self) -> None:
        assert self.cp is not None
        last_hb = 0.0
        last_journal = 0.0
        last_beat = 0.0
        last_state = ""
        watchdog = Watchdog()
        follow = self.cfg.cp.takeover == "on_wake"
        keep_at = time.monotonic() + KEEP_APPLIED_AFTER_S if self.supervisor and supervise.FORKED_AGAIN else None
        while not self.should_exit.is_set():
            self.cp.tick()
            if time.monotonic() - last_beat >= 0.1:  # the generation check and heartbeat, also when idle
                last_beat = time.monotonic()
                self.cp.journal.heartbeat()
                self._end_takeover_beats()  # (its own from now on)
                if follow:  # serve only while this machine holds the address (keepalived)
                    self.wake_requested = False
                    if not await asyncio.get_running_loop().run_in_executor(None, holds_address, self.cfg.cp.terminal_listen):
                        log.warning(
                            "cp_released",
                            address=self.cfg.cp.terminal_listen,
                            msg="the address left this machine (keepalived): stop serving; systemd starts a waiting hsbcpd",
                        )
                        self.should_exit.set()
                        break
            watchdog.tick(time.monotonic())
            if self.cp.tickles is not None:
                self.cp.tickles.tick(time.monotonic())
            if time.monotonic() - last_journal >= 1.0:
                last_journal = time.monotonic()
                self.cp.journal_tick()
            if self.reload_requested and (self._reloading is None or self._reloading.done()):
                # on its own: this loop beats, checks the generation and pings the watchdog meanwhile
                self.reload_requested = False  # (now: one asked for from here on is another)
                self._reloading = asyncio.ensure_future(self._reload_logged())
            elif keep_at is not None and time.monotonic() >= keep_at and (self._reloading is None or self._reloading.done()):
                # a worker forked again runs on the file as it reads now: the next one may need it
                # (not at once: a restart's logon storm comes first)
                keep_at = None
                self._reloading = asyncio.ensure_future(self.keep_applied())
            st = f"{'active ' + self.cp.active.name if self.cp.active is not None and not self.cp.active.closed else 'no active host'}, epoch {self.cp.epoch}"
            if st != last_state:
                last_state = st
                notify(STATUS=st)
            now = time.monotonic()
            timeout = self.cp.host_timeout  # (each pass: a reload may change it)
            if now - last_hb >= min(timeout / 4, 0.1):
                last_hb = now
                for h in list(self.hosts):
                    if h.closed:
                        self.hosts.discard(h)
                    elif h.authed and h.role is not None:
                        h.send_raw(_HB)
            try:
                await asyncio.wait_for(self.should_exit.wait(), min(timeout / 10, 0.05))
            except TimeoutError:
                pass

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.should_exit.set)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        loop.add_signal_handler(signal.SIGUSR1, self._wake)
        self.take_early_signals()
        if self.supervisor and self.supervisor["restarts"] and self.cfg.cp.takeover == "at_start":
            await self._recover_beside_admin()  # forked again after a crash
        else:
            await self.start_admin()
        reason = "started"
        if self.cfg.cp.takeover == "on_wake":
            why = await self.wait_for_takeover()
            if why is None or self.should_exit.is_set():  # (a stop during its last poll: no takeover)
                await self.shutdown()
                return 0
            reason = why
        try:
            await self.startup(reason)
        except ListenError as exc:
            if not await self._address_lost(exc):
                raise
            log.warning(
                "cp_address_lost_at_takeover",
                address=exc.addr,
                key=exc.key,
                error=str(exc.cause),
                generation=self.took_over.get("generation"),  # (None: it left before one was taken)
                msg="the address left this machine (keepalived) as the CP took over, before it served: not serving; systemd starts a waiting hsbcpd",
            )
            await self.shutdown()  # (as cp_released: exit 0, restarted by the unit, waiting)
            return 0
        if self.superseded:
            await self.shutdown()
            return self.exit_code
        gcpolicy.apply()
        try:
            await self.tick_loop()
        finally:
            await self.shutdown()
        return self.exit_code

    async def _recover_beside_admin(self) -> None:
        """A worker forked again after a crash: the journal taken over while the admin link and
        /health come up beside it, as at any start they answer during the takeover (`take_over`).
        Not one after the other: on the master's listeners the admin link is up at once, but one
        this worker binds itself (an address given as a host name) may wait for the dead CP's port
        (`_bind`, up to BIND_WAIT_S), and the recovery does not wait for that."""
        admin = asyncio.ensure_future(self.start_admin())
        admin.add_done_callback(lambda t: t.cancelled() or t.exception())  # (said below, or dropped with a takeover that failed)
        self.state = "taking_over"
        try:
            await self.take_over("started")
        except BaseException:
            admin.cancel()
            raise
        self.state = "starting"  # an error of the admin listener's now is the ports', not the journal's
        await admin

    def _sighup(self) -> None:
        self.reload_requested = True  # the flags only; the tick loop reloads (a waiting CP: its TLS)
        self.sighups += 1

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except Exception:  # a bug: said in the log, the CP goes on with what it has
            log.exception("config_reload_error")

    async def reload(self) -> None:
        from hsb.cp.state import Term
        from hsb.ops import reload

        if reload_tls(self.tls, self.cfg.cp.name) and self.tls is not None:
            supervise.keep_tls(self.tls.pem)
        # read and checked on a thread (0.6 s for 19,000 terminals listed one by one): the loop
        # answers heartbeats meanwhile; applied here, on the loop
        planned = await asyncio.get_running_loop().run_in_executor(None, reload.plan, self.config_path, CPConfig, self.cfg, self.RELOADABLE)
        if planned is None:
            return
        new, applied, restart = planned
        cp = self.cp
        if cp is None:
            return
        cp.held_bound = self.cfg.cp.held_bound = new.cp.held_bound
        cp.held_bytes = self.cfg.cp.held_bytes = new.cp.held_bytes
        cp.held_total_bytes = self.cfg.cp.held_total_bytes = new.cp.held_total_bytes
        cp.recheck_slowed()  # a bound raised lets go the terminals it held, now
        if CPSection.lease_allows(new.cp.host_timeout, cp.host_lease):
            cp.host_timeout = self.cfg.cp.host_timeout = new.cp.host_timeout
        applied, restart = CPSection.reload_host_timeout(applied, restart, new.cp.host_timeout, cp.host_lease)
        added = 0
        for name, d in new.terminal_table.items():
            t = cp.terms.get(name)
            if t is None:
                cp.terms[name] = Term(d, cp.counts)
                added += 1
            else:
                t.defn = d  # standby_capable and attributes apply to the next session
        # kept while it is connected or owed anything (held messages, replies not yet confirmed)
        removed = [n for n in cp.terms if n not in new.terminal_table and (t := cp.terms[n]).conn is None and not t.held and not t.replies]
        for n in removed:
            # a grant's flip still going closes a removed terminal's standby session at the new
            # active: it must flip it before the terminal is forgotten (that one alone)
            cp.settle_flip_for(cp.terms[n])
            t = cp.terms.pop(n)
            cp._close_active_session(t, "disconnect")  # one kept for it (hsb.cp.adopt) is closed at the active
            t.forget()
        # what runs now: the next reload compares with it (else these were "applied" every time)
        self.cfg.terminals, self.cfg.terminal_groups, self.cfg._defs = new.terminals, new.terminal_groups, new.terminal_table
        await self.keep_applied()  # before it is said: a worker forked again from then on finds it
        # removed from the table but kept (connected, holding messages, owed replies): named, or
        # the operator cannot tell they are still served until a later reload drops them
        kept = sorted(n for n in cp.terms if n not in new.terminal_table)
        reload.report(applied, restart, terminals_added=added, terminals_removed=len(removed), terminals_kept=len(kept))
        if kept:
            log.info(
                "terminals_kept_after_removal",
                terminals=kept[:20],
                count=len(kept),
                msg="not in the table any more, but connected, holding messages or owed replies: still served; a reload once they are"
                " disconnected and owed nothing drops them",
            )

    async def keep_applied(self, cfg: CPConfig | None = None) -> None:
        """Under a master (--supervise): leave the config this worker runs on (or `cfg`, one it
        checked while waiting) where a worker forked again finds it if the file is broken by then
        (hsb.cp.supervise.AppliedConfig). Encoded on a thread: 19,000 terminals listed one by one
        take a while."""
        if supervise.APPLIED is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(None, supervise.APPLIED.store, cfg if cfg is not None else self.cfg)
            except Exception:  # a bug: said; the next worker falls back to the file or the start's config
                log.exception("applied_config_store_failed")
