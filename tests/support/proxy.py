"""A TCP proxy a test can cut and heal: the "network" between two hosts."""

from __future__ import annotations

import asyncio


class Proxy:
    def __init__(self, target: str) -> None:
        h, _, p = target.rpartition(":")
        self.target = (h, int(p))
        self.server: asyncio.base_events.Server | None = None
        self.addr = ""
        self.cut = False
        self.conns: set[asyncio.StreamWriter] = set()
        self.upstream: list[asyncio.StreamWriter] = []  # toward the target, one per connection

    async def start(self, port: int = 0) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        s = self.server.sockets[0].getsockname()
        self.addr = f"{s[0]}:{s[1]}"
        return self.addr

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.cut:
            w.transport.abort()
            return
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.transport.abort()
            return
        self.conns |= {w, uw}
        self.upstream.append(uw)

        async def pipe(a: asyncio.StreamReader, b: asyncio.StreamWriter) -> None:
            try:
                while not self.cut:
                    data = await a.read(65536)
                    if not data or self.cut:
                        break
                    b.write(data)
                    await b.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                b.transport.abort()

        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        self.conns -= {w, uw}

    def inject(self, data: bytes) -> None:
        """A man in the middle: write our own bytes into every stream toward the target."""
        for uw in self.upstream:
            if not uw.is_closing():
                uw.write(data)

    def set_cut(self, cut: bool) -> None:
        """Cut: every connection through the proxy dies and new ones are refused."""
        self.cut = cut
        if cut:
            for w in list(self.conns):
                w.transport.abort()
            self.conns.clear()

    async def close(self) -> None:
        self.set_cut(True)
        if self.server is not None:
            self.server.close()
