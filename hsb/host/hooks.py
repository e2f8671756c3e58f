"""`on_role_change`: an operator's command run when this host first holds the role it started in
and whenever its role changes, as keepalived's
`notify_master` and Patroni's `on_role_change` are (to move a virtual address, page someone,
warm a cache). Run in a task of its own with a timeout: it never holds up the HA loop, and a
failing or hanging hook is logged, not fatal.

The command gets four arguments: the new role, the state, the epoch, the reason.
"""

from __future__ import annotations

import asyncio
import math
import shlex

import structlog

from hsb.host.states import FENCED, STOPPING

log = structlog.get_logger("hsb.host")

# The state the hook is told when the active stops acting as the active without a role change
# and is not stopping (hsb.host.ha.hook_acting): no state of the machine, the hook's word only.
NOT_SERVING = "not_serving"
# The active's states the hook is told when it no longer acts as the active (hsb.host.ha.hook_acting,
# a fence); with a change to another role, what a command holding a virtual address must hear.
NOT_ACTING = frozenset({NOT_SERVING, STOPPING, FENCED})

# A stop of the active: its handover, then the normal stop, about 34 s at most before the role
# hook's last runs (HostServer.hand_over), each of which may take hook_timeout
# (docs/operations.md §2); hsbd@.service's TimeoutStopSec and hsbctl stop's default --timeout
STOP_BEFORE_HOOKS_S = 40.0
UNIT_STOP_S = 60.0


def stop_time_warning(command: str, hook_timeout: float) -> str | None:
    """The warning of a role hook whose hook_timeout lets a clean stop take longer than the
    unit's TimeoutStopSec, after which systemd kills hsbd (a failover, not a stop), and than
    hsbctl stop waits by default (it says the host did not stop): --check-config's line and the
    start's `hook_timeout_outlasts_stop`, or None."""
    need = STOP_BEFORE_HOOKS_S + 2 * hook_timeout
    if not command or need <= UNIT_STOP_S:
        return None
    fix = math.ceil(need)
    return (
        f"host.hook_timeout = {hook_timeout:g} s: a stop may take up to {need:g} s (40 s + 2 x hook_timeout), longer than"
        f" hsbd@.service's TimeoutStopSec={UNIT_STOP_S:g} (systemd then kills hsbd: a failover, not a stop) and hsbctl stop's"
        f" default --timeout {UNIT_STOP_S:g}; set TimeoutStopSec={fix} in a drop-in (systemctl edit hsbd@.service) and use"
        f" hsbctl stop --timeout {fix}, or set hook_timeout to {(UNIT_STOP_S - STOP_BEFORE_HOOKS_S) / 2:g} or less"
    )


class RoleHook:
    """One command run at a time, in the order of the changes; while one runs, only the newest
    change waits (what it replaces is said in the log): a hook that hangs or changes that flap
    cannot pile up runs, and the last change's run is always the last to end."""

    def __init__(self, command: str, timeout: float) -> None:
        self.argv = shlex.split(command) if command else []
        self.timeout = timeout
        self.running: asyncio.Task[None] | None = None
        self.pending: list[str] | None = None
        self.pending_final = False  # the waiting change takes the role away: it runs even at the stop (close)

    def fire(self, role: str, state: str, epoch: int, reason: str) -> None:
        if not self.argv:
            return
        argv = [*self.argv, role, state, str(epoch), reason]
        if self.pending is not None:  # (also one whose turn has come, its predecessor's end not yet handled)
            log.info("role_hook_skipped", argv=self.pending, msg="a newer role change came before it could run")
            self.pending = None
        if self.running is not None and not self.running.done():
            self.pending, self.pending_final = argv, role != "active" or state in NOT_ACTING
            return
        self._start(argv)

    def _start(self, argv: list[str]) -> None:
        self.running = asyncio.get_running_loop().create_task(self._run(argv))
        self.running.add_done_callback(self._next)

    def _next(self, done: asyncio.Task[None]) -> None:
        if done is self.running and self.pending is not None:
            argv, self.pending = self.pending, None
            self._start(argv)

    async def _run(self, argv: list[str]) -> None:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
        except OSError as exc:
            log.error("role_hook_failed", argv=argv, error=f"cannot run it: {exc.strerror or exc}")
            return
        try:
            async with asyncio.timeout(self.timeout):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            log.error("role_hook_timeout", argv=argv, timeout_s=self.timeout)
            return
        except asyncio.CancelledError:  # the host stopping: the command is not left running behind it
            if proc.returncode is None:
                proc.kill()
            raise
        text = out.decode(errors="replace").strip()[-500:]
        if proc.returncode:
            log.error("role_hook_failed", argv=argv, code=proc.returncode, output=text)
        else:
            log.info("role_hook_ran", argv=argv, output=text)

    async def close(self) -> None:
        """The host stops: the one running gets the hook's timeout once, then is killed; a change
        still waiting does not run, unless it takes the role away (the stop's `stopping`, a
        handover's `not_serving` or `standby`, a fence: the command must hear that this host no
        longer acts as the active, or it would keep a virtual address), which runs after it with a
        timeout of its own (one shared with a run that hung left it none). A waiting change to
        act as the active does not run: the host is going."""
        final = self.pending if self.pending_final else None
        self.pending = None
        if self.running is not None and not self.running.done():
            await self._finish(self.running)
        if final is not None:
            self.running = asyncio.get_running_loop().create_task(self._run(final))
            await self._finish(self.running)

    async def _finish(self, t: asyncio.Task[None]) -> None:
        """`t` gets the hook's timeout, then is cancelled (its command killed)."""
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.shield(t)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            me = asyncio.current_task()
            if me is not None and me.cancelling():  # the close itself is cancelled: the hook with it
                t.cancel()
                await asyncio.wait([t])
                raise
        except Exception as exc:  # noqa: BLE001 - the hook's own failure: said, the stop goes on
            log.error("role_hook_failed", error=f"{type(exc).__name__}: {exc}")
        if not t.done():
            t.cancel()
            await asyncio.wait([t])
