"""Many lean terminal-link clients in one process (asyncio.Protocol, no per-terminal task)."""

from __future__ import annotations

import asyncio
from typing import Any

from hsb.wire.framing import Decoder, encode
from tests.support.procs import addr


class _T(asyncio.Protocol):
    __slots__ = ("name", "dec", "tr", "state", "on_event")

    def __init__(self, name: str, state: dict[str, Any]) -> None:
        self.name = name
        self.dec = Decoder()
        self.state = state
        self.tr: asyncio.Transport | None = None

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        self.tr = tr  # type: ignore[assignment]
        tr.write(encode({"t": "hello", "terminal": self.name}))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for m in self.dec.feed(data):
            t = m["t"]
            if t == "session" and m["state"] == "open":
                self.state["sessions"] += 1
                self.tr.write(encode({"t": "msg", "id": 1, "data": self.name}))  # type: ignore[union-attr]
            elif t == "reply":
                if m["data"] == self.name:
                    self.state["replies"] += 1
            elif t == "error":
                self.state["errors"].append(m)
        if self.state["replies"] >= self.state["want"]:
            self.state["done"].set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state["lost"] += 1


async def run_terminals(term_addr: str, names: list[str], timeout: float = 60.0, concurrency: int = 500) -> dict[str, Any]:
    """Connect all `names`, send one message each once its session opens, wait for every reply."""
    loop = asyncio.get_running_loop()
    h, p = addr(term_addr)
    state: dict[str, Any] = {"sessions": 0, "replies": 0, "lost": 0, "errors": [], "want": len(names), "done": asyncio.Event()}
    protos: list[_T] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(n: str) -> None:
        async with sem:
            for attempt in range(20):
                try:
                    _, pr = await loop.create_connection(lambda: _T(n, state), h, p)
                    protos.append(pr)
                    return
                except OSError:
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise RuntimeError(f"{n}: could not connect")

    await asyncio.gather(*(one(n) for n in names))
    try:
        await asyncio.wait_for(state["done"].wait(), timeout)
    except TimeoutError:
        pass

    async def close() -> None:
        for pr in protos:
            if pr.tr is not None:
                pr.tr.close()

    state["close"] = close
    return state


class _F(asyncio.Protocol):
    __slots__ = ("name", "dec", "tr", "opened", "closed", "inbox")

    def __init__(self, name: str) -> None:
        self.name = name
        self.dec = Decoder()
        self.tr: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        self.tr = tr  # type: ignore[assignment]
        tr.write(encode({"t": "hello", "terminal": self.name}))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for m in self.dec.feed(data):
            if m["t"] == "session" and m["state"] == "open" and not self.opened.done():
                self.opened.set_result(None)
            elif m["t"] == "error" and not self.opened.done():
                self.opened.set_exception(RuntimeError(f"{self.name}: {m}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class Fleet:
    """Terminals that log on and off on command (for session-following tests)."""

    def __init__(self, term_addr: str) -> None:
        self.h, self.p = addr(term_addr)
        self.on: dict[str, _F] = {}

    async def logon(self, names: list[str], timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()

        async def one(n: str) -> None:
            _, pr = await loop.create_connection(lambda: _F(n), self.h, self.p)
            self.on[n] = pr
            await pr.opened

        await asyncio.wait_for(asyncio.gather(*(one(n) for n in names)), timeout)

    async def logoff(self, names: list[str], timeout: float = 30.0) -> None:
        prs = [self.on.pop(n) for n in names]
        for pr in prs:
            pr.tr.write(encode({"t": "bye"}))  # type: ignore[union-attr]
        await asyncio.wait_for(asyncio.gather(*(pr.closed for pr in prs)), timeout)

    async def close(self) -> None:
        for pr in self.on.values():
            if pr.tr is not None:
                pr.tr.close()
        self.on.clear()
