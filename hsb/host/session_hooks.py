"""The service's session hooks on hsbd (`open_session`, `close_session`): run on a pool of
workers, not one task each, since 10,000 tasks at once (a batch read, a demotion) kept the loop
busy for ~150 ms. The hooks of one terminal run one after the other in the order they were asked
for (a close queued before an open never runs after it); different terminals run concurrently,
up to HOOK_WORKERS at a time (hooks that wait, such as a slow logon, overlap that much). A hook
that fails is logged, or raised to the caller that waits for it (`run_hook`). A mixin of
`hsb.host.sessions_ctl.SessionsCtl`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.delivery import being_cancelled

if TYPE_CHECKING:
    from hsb.host.sessions_ctl import SessionsCtl

log = structlog.get_logger("hsb.host")


class SessionHooks:
    """The hook workers of `SessionsCtl` (see the module docstring)."""

    HOOK_WORKERS = 256
    HOOKS_PER_TURN = 256

    # set in SessionsCtl.__init__: the hooks queued per terminal (the first one running), the
    # terminals with hooks and no worker on them, the workers running
    hooks: dict[str, deque[tuple[Callable[..., Awaitable[None]], tuple[Any, ...], asyncio.Future[None] | None]]]
    hooks_ready: deque[str]
    hook_workers: int

    def _hook(self: SessionsCtl, fn: Callable[..., Awaitable[None]], name: str, *args: Any, done: asyncio.Future[None] | None = None) -> None:
        q = self.hooks.get(name)
        if q is None:
            q = self.hooks[name] = deque()
            self._ready(name)
        q.append((fn, (name, *args), done))

    def _ready(self: SessionsCtl, name: str) -> None:
        """`name` has hooks waiting and nobody on them: queue it, with a worker if one is free."""
        self.hooks_ready.append(name)
        if self.hook_workers < self.HOOK_WORKERS and not self.closing:  # every worker is busy with some terminal
            self.hook_workers += 1
            self._spawn(self._hook_worker())

    async def _hook_worker(self: SessionsCtl) -> None:
        n = 0
        name: str | None = None
        try:
            while self.hooks_ready:
                name = self.hooks_ready.popleft()
                q = self.hooks[name]
                while q:
                    fn, args, done = q[0]  # stays queued while it runs: new hooks of `name` line up behind it
                    try:
                        await _call_hook(fn, *args)
                    except Exception as exc:  # the application's hook failed
                        if done is not None:
                            if not done.done():
                                done.set_exception(exc.with_traceback(None))
                        else:
                            log.error(
                                "session_hook_failed", hook=getattr(fn, "__name__", "?"), terminal=name, error=f"{type(exc).__name__}: {exc}"[:200]
                            )
                    else:
                        if done is not None and not done.done():
                            done.set_result(None)
                    q.popleft()
                    n += 1
                    if n % self.HOOKS_PER_TURN == 0:
                        await asyncio.sleep(0)
                del self.hooks[name]
                name = None
        except asyncio.CancelledError:
            if name is not None and self.hooks.get(name):
                self.hooks_ready.appendleft(name)  # another worker (or none, at shutdown) goes on
            raise
        finally:
            self.hook_workers -= 1

    async def run_hook(self: SessionsCtl, fn: Callable[..., Awaitable[None]], name: str, *args: Any) -> None:
        """Run a hook of `name` in its turn and wait for it; its exception is raised here."""
        if name not in self.hooks:  # nothing of this terminal queued or running: run it in this task
            q = self.hooks[name] = deque([(fn, (name, *args), None)])  # holds the terminal's turn
            try:
                await _call_hook(fn, name, *args)
            finally:
                q.popleft()
                if q:  # hooks of the terminal asked for meanwhile go on in a worker
                    self._ready(name)
                else:
                    del self.hooks[name]
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hook(fn, name, *args, done=done)
        await done


class _HookCancelled(Exception):
    """A session hook raised CancelledError though nobody cancelled it: its failure, as any other."""


async def _call_hook(fn: Callable[..., Awaitable[None]], *args: Any) -> None:
    """Run a session hook. A CancelledError of its own (it awaited something another task
    cancelled) is its failure, or the terminal's hooks would stop there; ours (a stop) goes on up."""
    try:
        await fn(*args)
    except asyncio.CancelledError:
        if being_cancelled():
            raise
        raise _HookCancelled("CancelledError (raised by the hook, not a cancel of ours)") from None
