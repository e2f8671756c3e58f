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
