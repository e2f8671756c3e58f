"""`on_role_change`: an operator's command run when this host's role changes, as keepalived's
`notify_master` and Patroni's `on_role_change` are (to move a virtual address, page someone,
warm a cache). Run in a task of its own with a timeout: it never holds up the HA loop, and a
failing or hanging hook is logged, not fatal.

The command gets four arguments: the new role, the state, the epoch, the reason.
"""

from __future__ import annotations

import asyncio
import shlex

import structlog

log = structlog.get_logger("hsb.host")


class RoleHook:
    def __init__(self, command: str, timeout: float) -> None:
        self.argv = shlex.split(command) if command else []
        self.timeout = timeout
        self.tasks: set[asyncio.Task[None]] = set()
        self._last: asyncio.Task[None] | None = None

    def fire(self, role: str, state: str, epoch: int, reason: str) -> None:
        """Run the hook for this change once the one before it has ended: in the order of the
        changes (active, standby, active in quick succession must not leave the standby's script,
        moving an address say, as the last one to finish)."""
        if not self.argv:
            return
        t = asyncio.get_running_loop().create_task(self._after(self._last, [*self.argv, role, state, str(epoch), reason]))
        self._last = t
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)

    async def _after(self, prev: asyncio.Task[None] | None, argv: list[str]) -> None:
        if prev is not None:
            await asyncio.wait([prev])  # (its own outcome is its own: logged there)
        await self._run(argv)

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
        for t in list(self.tasks):
            try:
                async with asyncio.timeout(self.timeout):
                    await t
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
