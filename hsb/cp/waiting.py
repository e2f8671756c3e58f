"""A second CP machine's hsbcpd waiting to take the journal over (`[cp] takeover = "on_wake"`,
docs/operations.md "Two CP machines"): whether this machine holds the virtual address that
keepalived moves, whether keepalived made it master (its notify script's state file, SIGUSR1),
whether the serving CP still beats, and whether the journal's shared storage is there at all.

A mixin of `hsb.cp.server.CPServer` (its lifecycle): the waiting is one phase of it, kept in a
file of its own.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from hsb.backoff import doubling
from hsb.config import address_ip, parse_addr
from hsb.cp.config import CPConfig, CPSection
from hsb.cp.journal.generation import Generations
from hsb.fsutil import LASTING
from hsb.ops.listen import ListenError
from hsb.ops.notify import Watchdog, notify
from hsb.waits import event_within
from hsb.wire.tls import TLS, reload_tls

log = structlog.get_logger("hsb.cp")
WAIT_POLL = 0.05  # seconds between a waiting CP's looks at the address and the serving CP's heartbeat
STORAGE_POLL = 0.5  # seconds between looks at the journal's storage for status and /health (on a thread)
STORAGE_STUCK = 2.0  # a look unanswered this long: the storage hangs, /health fails (a hung NFS mount)
FAILED = object()  # what a look at the storage that failed returns (`_look`)
MISSING = (
    'the CP journal {journal} does not exist: with takeover = "on_wake" it is on the storage both CP machines share.'
    " Is it mounted? This CP takes over only once it is there (made once, on the shared storage: mkdir -p {journal})"
)


class JournalMissing(Exception):
    """`takeover = "on_wake"` and the journal directory is not there (the shared storage not mounted)."""


def nonlocal_bind_problem(addr: str, proc: str = "/proc/sys/net") -> str | None:
    """Why this machine cannot tell whether it holds `addr` (net.ipv4/ipv6.ip_nonlocal_bind = 1:
    every bind succeeds, so `holds_address` says yes everywhere and a waiting CP could take over
    on the machine without the address), or None."""
    ip = address_ip(addr)
    if ip is None:
        return None  # (refused by the config check already)
    key = f"ipv{ip.version}/ip_nonlocal_bind"
    try:
        on = Path(proc, key).read_text().strip() == "1"
    except OSError:
        return None
    if not on:
        return None
    sysctl = "net." + key.replace("/", ".")
    return (
        f'takeover = "on_wake": {sysctl} is 1 on this machine, so it cannot tell whether it holds'
        f" {ip} (every bind succeeds) and could take the journal over where the address is not;"
        f" set it to 0 (sysctl -w {sysctl}=0) for hsbcpd's machines"
    )


def holds_address(addr: str, unknown: bool = True) -> bool:
    """Whether `addr`'s host is an address of this machine (the virtual address keepalived
    moves); a wildcard or a name counts as held. When it cannot be told (no socket to be had:
    the open-files limit, say), `unknown`: the serving CP serves on, a waiting one waits."""
    host, _ = parse_addr(addr)
    ip = address_ip(addr)
    if ip is None:
        return True  # a name: not a moving address this CP can check
    if ip.is_unspecified:
        return True
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_DGRAM)
    except OSError as exc:
        if exc.errno == errno.EAFNOSUPPORT:  # no IPv6 on this machine: not an address it has
            return False
        return _check_failed(addr, exc, unknown)
    with s:
        try:
            s.bind((host, 0))
            return True
        except OSError as exc:
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EINVAL, errno.EAFNOSUPPORT):
                return False
            return _check_failed(addr, exc, unknown)


_check_failed_at = 0.0


def _check_failed(addr: str, exc: OSError, unknown: bool) -> bool:
    """The check could not be made: `unknown`, said at most once a minute (it runs 10 times a second)."""
    global _check_failed_at
    now = time.monotonic()
    if now - _check_failed_at >= 60.0:
        _check_failed_at = now
        log.warning("address_check_failed", address=addr, error=str(exc), assumed="held" if unknown else "not held")
    return unknown


class Waiting:
    """The waiting phase of `CPServer` (see the module docstring)."""

    # the server's state that the waiting uses (set in CPServer.__init__)
    cfg: CPConfig
    gens: Generations | None
    state: str
    wake_requested: bool
    split_takeover: bool
    woken: asyncio.Event
    should_exit: asyncio.Event
    sighups: int
    tls: TLS | None
    config_path: str | None
    RELOADABLE: tuple[str, ...]
    # what status and /health say of the journal's storage while waiting, read on a thread
    # (`_watch_storage`): a hung mount must not block the loop that answers them
    storage: tuple[bool, int | None] | None = None  # (journal missing, its generation), the last look's
    storage_asked: float | None = None  # when the look under way began (monotonic)
    storage_error: str | None = None  # the last look's error, until a look answers

    if TYPE_CHECKING:  # (CPServer's)

        async def keep_applied(self, cfg: CPConfig | None = None) -> None: ...

    def _storage_view(self, said: bool = True) -> tuple[bool, int | None]:
        missing = self._journal_missing(said)
        return missing, None if missing or self.gens is None else self.gens.current()

    async def _watch_storage(self) -> None:
        while not self.should_exit.is_set():
            self.storage_asked = time.monotonic()
            try:
                polled, view = await self._unless_stopping(self._storage_view)
            except OSError as exc:
                # the storage answered with an error (ESTALE after an NFS server's restart, EIO):
                # said, and looked at again. Raised here, it ended this watcher for good, and the
                # look it left unanswered kept /health failing after the storage came back
                self.storage_asked = None
                self._storage_failed(exc)
                polled, view = True, None
            if not polled:
                return
            if view is not None:
                self._storage_answered()
                self.storage, self.storage_asked = view, None
            await event_within(self.should_exit, STORAGE_POLL)

    def _storage_failed(self, exc: OSError) -> None:
        """A look at the journal's storage failed: said once, and in status and /health (503)
        until a look answers (`_watch_storage`)."""
        if self.storage_error is None:
            log.warning(
                "journal_storage_error",
                dir=self.cfg.cp.journal,
                error=str(exc),
                msg="the waiting CP could not take over now; looked at again",
            )
        self.storage_error = f"{type(exc).__name__}: {exc}"

    def _storage_answered(self) -> None:
        if self.storage_error is not None:
            log.info("journal_storage_answers", dir=self.cfg.cp.journal)
        self.storage_error = None

    async def _look(self, fn: Any, *args: Any) -> tuple[bool, Any]:
        """`_unless_stopping(fn, *args)` for a look at the journal's storage that the wait decides
        on: an error that may pass (ESTALE while the NFS server restarts, EIO) is said and comes
        back as FAILED, and the wait looks again after a backoff. Raised, it ended the waiting CP
        (exit 1) just when the other CP may need it, down for its restart's backoff. One that
        lasts (permissions, the uid differing between the machines: hsb.fsutil.LASTING) is
        raised: the start stops, naming the journal (exit 73)."""
        try:
            return await self._unless_stopping(fn, *args)
        except OSError as exc:
            if exc.errno in LASTING:
                raise
            self._storage_failed(exc)
            return True, FAILED

    def storage_unanswered(self) -> float | None:
        """Seconds the storage has not answered a look (status, /health), past STORAGE_STUCK; else None."""
        if self.storage_asked is None:
            return None
        t = time.monotonic() - self.storage_asked
        return t if t >= STORAGE_STUCK else None

    def _filed_master(self) -> bool | None:
        """Whether the wake file says MASTER (None: no wake file configured; unreadable: no)."""
        f = self.cfg.cp.wake_file
        if not f:
            return None
        try:
            return Path(f).read_text().strip().upper().endswith("MASTER")
        except OSError:
            return False

    async def wait_for_takeover(self) -> str | None:
        """`takeover = "on_wake"`: until this machine holds the address and no CP serves the
        journal (woken by keepalived and the serving CP's heartbeat older than takeover_stale on
        this clock, or not seen to move for takeover_stale); the reason, or None if asked to exit."""
        assert self.gens is not None
        self.state = "waiting"
        loop = asyncio.get_running_loop()
        watchers = [loop.create_task(self._chores())]
        # ready (up and waiting) before the first look: a mount hung already at the start would
        # otherwise hold READY=1 back until systemd's start timeout killed this CP
        notify(READY=1, STATUS="waiting to take over (keepalived)")
        try:
            self.storage_asked = time.monotonic()  # (status and /health say it if this look hangs)
            polled, view = await self._look(self._storage_view, False)  # (said if missing)
            if not polled:
                return None
            self.storage_asked = None
            if view is not FAILED:
                self.storage = view
            watchers.append(loop.create_task(self._watch_storage()))
            return await self._wait_for_takeover(view is not FAILED and view[0])
        finally:
            for w in watchers:
                w.cancel()
            # (a look cut off by the cancel says nothing of the storage: not "unanswered")
            self.storage_asked = self.storage_error = None

    async def _chores(self) -> None:
        """What a waiting CP does whatever its polls wait on (a hung mount stops them, not this
        loop): systemd's watchdog pinged, as a serving CP's tick pings it (a restart would hang
        on the same mount; /health already fails, which is what keepalived acts on), and a
        SIGHUP acted on at once: new certificates for the admin link and /health now, the config
        file checked now (`_check_config`); the rest of it (reload_requested stays set) once
        this CP serves."""
        watchdog = Watchdog()
        seen = self.sighups
        check: asyncio.Task[None] | None = None
        while True:
            watchdog.tick(time.monotonic())
            if self.sighups != seen and (check is None or check.done()):  # (one under way: the next turn after it)
                seen = self.sighups
                reload_tls(self.tls, self.cfg.cp.name)
                check = asyncio.get_running_loop().create_task(self._check_config_logged())
            await asyncio.sleep(WAIT_POLL)

    async def _wait_for_takeover(self, missing: bool) -> str | None:
        c = self.cfg.cp
        assert self.gens is not None
        log.info(
            "cp_waiting",
            name=c.name,
            address=c.terminal_listen,
            generation=self.storage[1] if self.storage else None,
            msg="waiting to take over the journal: keepalived making this machine master (wake_file, SIGUSR1) while no CP serves it",
        )
        stamp: tuple[int, int] | None = None
        still_since = time.monotonic()
        told = False
        woke_stamp: Any = None  # the heartbeat when first woken holding the address: a beat after it is a split brain
        # when a wake came while this CP waited (SIGUSR1, or the wake file turning MASTER), holding
        # the address: this machine is the newest master. One read at the start (MASTER written
        # before this process) is not: it may be the stale state of a keepalived that died here
        woke_at: float | None = None
        was_filed: bool | None = None  # the wake file's word at the last look (None: not looked yet, or none)
        split_gen: tuple[int, bool] | None = None  # (generation, taken in a split brain itself), looked at once each
        failed = 0  # looks at the storage that failed in a row: each waits longer before the next
        while not self.should_exit.is_set():
            due: float | None = None  # woken, the heartbeat not yet stale: when it will be
            polled, held = await self._unless_stopping(holds_address, c.terminal_listen, False)
            if not polled:
                break
            asked, filed = self.wake_requested, self._filed_master()
            woken = asked or bool(filed)
            arrived = asked or (filed is True and was_filed is False)
            was_filed = filed
            if not held:
                woke_stamp = None
            if not held or filed is False:  # (keepalived no longer says master here)
                woke_at = None
            elif arrived and woke_at is None:
                woke_at = time.monotonic()
            if woken and not held and asked:
                log.info("cp_wake_ignored", address=c.terminal_listen, msg="woken, but this machine does not hold the address")
            self.wake_requested = False
            gone: Any = False
            now_stamp: Any = None
            if held:
                polled, gone = await self._look(self._journal_missing, missing)
                if not polled:
                    break
                if gone is False:
                    polled, now_stamp = await self._look(self.gens.stamp)
                    if not polled:
                        break
            failed = failed + 1 if gone is FAILED or now_stamp is FAILED else 0
            if failed:  # nothing decided on a look that failed: looked at again below, after a backoff
                self.wake_requested = self.wake_requested or asked  # (a SIGUSR1 is kept for it)
                stamp = None  # a time it was not looked at is not a time the heartbeat was seen still
            elif held and gone:
                self._storage_answered()
                missing = True  # the shared storage not mounted: an empty journal made here would lose all it holds
            elif held:
                self._storage_answered()
                missing = False
                if now_stamp != stamp:
                    stamp, still_since = now_stamp, time.monotonic()
                if now_stamp[0] == 0:
                    return "the address is here and no CP ever served this journal"
                gen, age = self.gens.age(now_stamp)  # the stamp just read: no second listdir
                if woken and (age is None or age >= c.takeover_stale):
                    beat = "never" if age is None else f"{age:.3f} s ago"
                    return f"woken holding the address; the CP of generation {gen} last beat {beat}"
                if time.monotonic() - still_since >= c.takeover_stale:
                    return f"the address is here and the CP of generation {gen} has not beaten for {c.takeover_stale:g} s"
                if woken and age is not None:  # looked at again when it is due, not a poll later
                    due = max(0.001, c.takeover_stale - age)
                if woken and woke_stamp is None:
                    # (a failover: the CP before stopped a moment ago, its last beat younger than
                    # takeover_stale; deferred, said only if it beats again)
                    woke_stamp = now_stamp
                elif woke_stamp is not None and now_stamp != woke_stamp:
                    if woke_at is not None and c.split_brain_takeover and (split_gen is None or split_gen[0] != gen):
                        polled, was_split = await self._look(self.gens.taken_in_split, gen)
                        if not polled:
                            break
                        split_gen = (gen, was_split is True)
                    withheld = split_gen == (gen, True)
                    may = woke_at is not None and c.split_brain_takeover > 0 and split_gen == (gen, False)
                    if not told:
                        told = True
                        self._say_deferred(gen, age, c.split_brain_takeover if may else 0, withheld)
                    if may and woke_at is not None:
                        if time.monotonic() - woke_at >= c.split_brain_takeover:
                            self.split_takeover = True
                            return (
                                f"master here for {time.monotonic() - woke_at:.1f} s while the CP of generation {gen} still beats"
                                " (keepalived dead or hung on its machine, or a VRRP split brain): the address's traffic comes here"
                            )
                        due = max(0.001, woke_at + c.split_brain_takeover - time.monotonic())
            else:
                stamp = None
            self.woken.clear()
            wait = doubling(WAIT_POLL, STORAGE_POLL, failed)  # (a failed look's backoff)
            await event_within(self.woken, wait if due is None else min(wait, due))
        return None

    @staticmethod
    def _say_deferred(gen: int, age: float | None, bound: float, withheld: bool) -> None:
        """Woken, another CP still beats: said once. `bound`: taken over after that long unless
        the address leaves; `withheld`: that CP took the journal from one that still beat itself."""
        msg = "master here, but another CP serves the journal and beats: not taking over (split brain?)"
        if bound:
            msg += f"; taking it over in {bound:g} s unless the address leaves this machine (the address's traffic comes here)"
        elif withheld:
            msg += "; that CP took the journal over from one that still beat (split_brain_takeover): not taken back by the same rule, waiting while it beats"
        log.warning("cp_wake_deferred", generation=gen, last_beat_s=age, takeover_in_s=bound or None, withheld=withheld, msg=msg)

    async def _address_lost(self, exc: ListenError) -> bool:
        """A takeover's bind refused with EADDRNOTAVAIL while `takeover = "on_wake"`, or the
        address gone once the journal was read (`hsb.cp.listeners.Listeners._still_here`): the virtual address the
        wait saw here has moved away since (keepalived), not a config naming another machine's
        address (exit 73).
        Either the failed address is the terminal one the wait checked, or that one is gone too."""
        c = self.cfg.cp
        if c.takeover != "on_wake" or exc.errno != errno.EADDRNOTAVAIL or exc.key not in ("cp.terminal_listen", "cp.host_listen"):
            return False
        if address_ip(exc.addr) == address_ip(c.terminal_listen):
            return True
        held = await asyncio.get_running_loop().run_in_executor(None, holds_address, c.terminal_listen, False)
        return not held

    async def _check_config_logged(self) -> None:
        try:
            await self._check_config()
        except Exception:  # a bug: said in the log, the CP waits on with what it has
            log.exception("config_check_error")

    async def _check_config(self) -> None:
        """SIGHUP while waiting: the file read and checked now, and said now, rather than at the
        takeover, in the middle of a failover. What it changes that a serving CP reloads applies
        once this CP serves (`reload_requested` stays set); the rest needs this waiting hsbcpd
        restarted, which costs nothing while it serves nobody."""
        from hsb.ops import reload

        planned = await asyncio.get_running_loop().run_in_executor(None, reload.plan, self.config_path, CPConfig, self.cfg, self.RELOADABLE)
        if planned is None:
            return  # (config_reload_failed named every error; the config it runs stays)
        new, applies, restart = planned
        if "cp.host_timeout" in applies:  # (as the serving CP's reload would take it)
            applies, restart = CPSection.reload_host_timeout(applies, restart, new.cp.host_timeout, self.cfg.cp.host_lease)
        # under a master: a worker forked again (this one exiting 1 at its takeover, say) takes what
        # it reloads from this one if the file is broken by then (only those keys: hsb.cp.main's reread)
        await self.keep_applied(new)
        log.info("config_checked", applies_when_serving=applies, needs_restart=restart, msg="waiting to take over: the config is valid")
        if restart:
            log.warning(
                "config_reload_incomplete",
                msg=f"these settings change only on restart: {', '.join(restart)} (restart this waiting hsbcpd now: it serves nobody)",
            )

    async def _unless_stopping(self, fn: Any, *args: Any) -> tuple[bool, Any]:
        """(True, `fn(*args)`) run on a thread, or (False, None) as soon as a stop is asked: a
        poll of a hung NFS mount never returns, and SIGTERM must not wait for it (the thread is
        left; the exit watchdog ends the process if it still holds the teardown)."""
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(None, fn, *args)
        stop = loop.create_task(self.should_exit.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not work.done():
            return False, None
        return True, work.result()

    def _journal_missing(self, said: bool = False) -> bool:
        """`takeover = "on_wake"` (two CP machines): whether the journal directory is missing. It is
        on the shared storage, made there once: missing, the storage is not mounted, and taking over
        an empty journal made under the mount point would lose everything the other CP acknowledged.
        Said once (`said`: already said)."""
        c = self.cfg.cp
        if c.takeover != "on_wake" or Path(c.journal).is_dir():
            return False
        if not said:
            log.error("cp_journal_missing", journal=c.journal, msg=MISSING.format(journal=c.journal))
        return True
