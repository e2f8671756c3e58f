"""Connecting simulated terminals to the CP: a bounded pool of connects, and one probe for the
whole group while the CP cannot be reached.

One load process stands for many terminals behind one machine, like a cluster controller in
front of its terminals. When the CP goes away (a restart, a CP machine's loss) every terminal
would otherwise try again on its own backoff, and 10,000 terminals trying two to four times a
second spend the load process's CPU on connects that cannot succeed, so that when the CP is back
the terminals get through only as fast as that backlog drains. Instead, after a failed connect
the group is *down*: terminals due to reconnect are parked and one of them tries every PROBE_S.
The first connect that succeeds brings the group up: every parked terminal, and every terminal
still waiting out its backoff, is connected at once (at most `concurrency` connects in flight,
so the CP's listen backlog does not overflow). Each terminal still keeps its own backoff for
the connects it makes itself, and counts the CP's absence (`cp_reconnects`) only from those: a
terminal parked found nothing itself.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections import deque
from typing import Any

from hsb.term.client import CONNECTING, DOWN, TerminalClient

PROBE_S = 0.05  # while the CP cannot be reached: one connect attempt per this interval for the group
MAX_PROBES = 8  # probes in flight at once (one may hang for a SYN retransmission)


class Connector:
    """Connects terminals to the CP with at most `concurrency` TCP connects in flight.

    Terminals are queued (`schedule`) and a fixed pool of workers connects them in turn, so
    10,000 terminals starting at once, or reconnecting after a mass disconnect, do not overflow
    the CP's listen backlog. A failed connect goes back to the terminal, which re-schedules
    itself after its backoff, and makes the group *down* (the module docstring).
    """

    def __init__(
        self, host: str, port: int, *, concurrency: int = 256, connect_timeout: float = 5.0, ssl: Any = None, source: str | None = None
    ) -> None:
        self.ssl = ssl  # a client SSLContext for a CP whose terminal listener has TLS
        # a local address to connect from (127.0.0.x): one address has ~28,000 ephemeral ports
        self.local_addr = (source, 0) if source else None
        self.host = host
        self.port = port
        self.concurrency = max(1, concurrency)
        self.connect_timeout = connect_timeout
        self._queue: deque[TerminalClient] = deque()
        self._wake: asyncio.Event | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._timers: dict[asyncio.TimerHandle, TerminalClient] = {}
        self._closed = False
        self.down = False  # the last connect failed: terminals are parked, one probe at a time
        self._parked: deque[TerminalClient] = deque()
        self._probe: asyncio.Task[None] | None = None
        self._probe_tasks: set[asyncio.Task[None]] = set()  # probes in flight
        self.probes = 0  # connect attempts made by the probe (for tests and reports)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._workers = [loop.create_task(self._worker()) for _ in range(self.concurrency)]

    def attach(self, c: TerminalClient) -> None:
        c.connector = self

    def schedule(self, c: TerminalClient, delay: float = 0.0) -> None:
        """Connect `c` after `delay` seconds (queued behind other pending connects)."""
        if self._closed:
            return
        if delay <= 0:
            self._enqueue(c)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._timers.pop(handle, None)
            self._enqueue(c)

        handle = loop.call_later(delay, fire)
        self._timers[handle] = c

    def _enqueue(self, c: TerminalClient) -> None:
        if self._closed or c.stopping:
            return
        self._queue.append(c)
        if self._wake is not None:
            self._wake.set()

    async def _connect(self, c: TerminalClient) -> BaseException | None:
        """One TCP (and TLS) connect of `c`; the error, or None once connected."""
        loop = asyncio.get_running_loop()
        c.state = CONNECTING
        try:
            async with asyncio.timeout(self.connect_timeout):  # not wait_for: a cycle per failure
                if self.ssl is None:
                    await loop.create_connection(functools.partial(_same, c), self.host, self.port, local_addr=self.local_addr)
                else:
                    await loop.create_connection(
                        functools.partial(_same, c),
                        self.host,
                        self.port,
                        ssl=self.ssl,
                        server_hostname=getattr(self.ssl, "server_name", ""),
                        local_addr=self.local_addr,
                    )
        except asyncio.CancelledError:
            if c.state != CONNECTING:
                # connected just before the cancel (close()): the connect closes that connection,
                # and uvloop does it without a connection_lost; the terminal must not keep it
                c.abandoned()
            raise
        except (TimeoutError, OSError) as exc:
            if c.state != CONNECTING:
                # connected after all (the timeout fell due in the same turn as connection_made):
                # the CP answered, the cancelled connect closes the connection (this side: no
                # drop of the CP's, `told_why`), and its connection_lost reschedules the terminal
                # (uvloop closes it without one: `abandoned` runs it then)
                c.told_why = True
                c.abandoned()
                return None
            return exc
        return None

    async def _worker(self) -> None:
        assert self._wake is not None
        while not self._closed:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            c = self._queue.popleft()
            if c.stopping or c.state != DOWN:
                continue
            if self.down:
                c.cp_away(found=False)  # (parked: it tried nothing, and counts no change of CP)
                self._parked.append(c)
                continue
            exc = await self._connect(c)
            if exc is not None:
                self._go_down()
                c.connect_failed(exc)
            elif self.down:  # begun before the group went down, and it got through
                self._up()

    # ------------------------------------------------------------------ the group's probe
    def _go_down(self) -> None:
        if self.down or self._closed:
            return
        self.down = True
        self._probe = asyncio.get_running_loop().create_task(self._probing())

    async def _probing(self) -> None:
        """Every PROBE_S, one parked terminal tries; a try may hang (SYNs into a moved address
        wait for their retransmission), so up to MAX_PROBES are in flight and the next one does
        not wait for the last. Runs until `_up()` cancels it."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROBE_S)
            while self._parked and (self._parked[0].stopping or self._parked[0].state != DOWN):
                self._parked.popleft()
            if len(self._probe_tasks) >= MAX_PROBES:
                continue
            if self._parked:
                c = self._parked.popleft()
            elif self._timers:  # everyone is waiting out a backoff: one of them tries now
                handle, c = next(iter(self._timers.items()))
                handle.cancel()
                del self._timers[handle]
            else:
                continue
            if c.stopping or c.state != DOWN:
                continue
            self.probes += 1
            task = loop.create_task(self._probe_one(c))
            self._probe_tasks.add(task)
            task.add_done_callback(self._probe_tasks.discard)

    async def _probe_one(self, c: TerminalClient) -> None:
        exc = await self._connect(c)
        if exc is None:
            if self.down:
                self._up()
        else:
            c.connect_failed(exc)  # its own backoff; parked again when it is due

    def _up(self) -> None:
        """The CP answered: every parked terminal, and every one waiting out a backoff, now."""
        self.down = False
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        for handle, c in list(self._timers.items()):
            handle.cancel()
            self._parked.append(c)
        self._timers.clear()
        parked, self._parked = self._parked, deque()
        for c in parked:
            self._enqueue(c)

    async def close(self) -> None:
        """Stop connecting (terminals already connected are not touched)."""
        self._closed = True
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        self._queue.clear()
        self._parked.clear()
        tasks = [*self._workers, *self._probe_tasks, *([self._probe] if self._probe is not None else [])]
        for w in tasks:
            w.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._workers = []
        self._probe = None


def _same(c: TerminalClient) -> TerminalClient:
    """The protocol factory for a client that reconnects: the same object every time."""
    return c


class TerminalTLS(ssl.SSLContext):
    """A terminal's client context, with the name the CP's certificate must give ('' for none)."""

    server_name = ""


def tls_context(ca: str, cert: str | None = None, key: str | None = None, cp_name: str | None = None) -> Any:
    """A terminal's TLS context: the CP's certificate must chain to `ca`, and with `cp_name` also
    name it (the CP's `[cp] name`: a certificate of the same CA for another daemon, a host's,
    is refused); with `cert` and `key` the terminal presents its own (the CP then checks it
    names the terminal)."""
    ctx = TerminalTLS(ssl.PROTOCOL_TLS_CLIENT)
    ctx.server_name = cp_name or ""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = bool(cp_name)  # (without a name: the chain only, the CA is the cluster's own, docs/tls.md)
    ctx.load_verify_locations(ca)
    if cert:
        from hsb.wire.tls import load_chain

        load_chain(ctx, cert, key)
    return ctx
