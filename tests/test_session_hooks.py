"""The service's session hooks on hsbd (SessionsCtl): in order per terminal, concurrent across
terminals, failures reported to a caller that waits and logged otherwise."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from hsb.host.sessions_ctl import SessionsCtl


def ctl() -> SessionsCtl:
    return SessionsCtl(SimpleNamespace(sessions=None))  # type: ignore[arg-type]


@pytest.mark.timeout(10)
async def test_hooks_of_one_terminal_run_in_order_and_terminals_overlap() -> None:
    c = ctl()
    log: list[str] = []
    gate = asyncio.Event()

    async def slow_open(name: str) -> None:
        log.append(f"open {name} start")
        await gate.wait()
        log.append(f"open {name} end")

    async def close(name: str) -> None:
        log.append(f"close {name}")

    c._hook(slow_open, "X")
    c._hook(close, "X")  # queued behind the open of the same terminal
    c._hook(close, "Y")  # another terminal: not held up by X
    for _ in range(50):
        if "close Y" in log:
            break
        await asyncio.sleep(0.01)
    assert log == ["open X start", "close Y"]
    gate.set()
    for _ in range(50):
        if not c.hooks:
            break
        await asyncio.sleep(0.01)
    assert log == ["open X start", "close Y", "open X end", "close X"]
    assert c.hook_workers == 0 and not c.hooks_ready


@pytest.mark.timeout(10)
async def test_run_hook_waits_for_earlier_hooks_and_raises_the_hooks_error() -> None:
    c = ctl()
    log: list[str] = []

    async def close(name: str) -> None:
        await asyncio.sleep(0.02)
        log.append("close")

    async def failing_open(name: str) -> None:
        log.append("open")
        raise RuntimeError("logon refused by the application")

    c._hook(close, "X")
    with pytest.raises(RuntimeError, match="logon refused"):
        await c.run_hook(failing_open, "X")
    assert log == ["close", "open"]


@pytest.mark.timeout(20)
async def test_ten_thousand_hooks_use_a_bounded_pool() -> None:
    c = ctl()
    seen: list[str] = []

    async def hook(name: str) -> None:
        seen.append(name)

    for i in range(10_000):
        c._hook(hook, f"T{i:05d}")
    assert c.hook_workers == SessionsCtl.HOOK_WORKERS
    for _ in range(500):
        if len(seen) == 10_000:
            break
        await asyncio.sleep(0.01)
    assert sorted(seen) == [f"T{i:05d}" for i in range(10_000)]
    for _ in range(100):
        if c.hook_workers == 0:
            break
        await asyncio.sleep(0.01)
    assert c.hook_workers == 0 and not c.hooks
