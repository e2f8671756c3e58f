"""What hsbterm's tests share (test_term, test_term_ids, test_term_hopeless, test_term_interactive):
a small in-process fake CP speaking the terminal link (FakeCP, with its connections and terminals),
hsbterm run as a subprocess (spawn, reap), a wait for a condition on the loop and a free port."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hsb.ports import free_port as free_port  # re-exported: a port of this worker's range (hsb.ports)
from hsb.wire.framing import Decoder, ProtocolError, encode
from tests.support.procs import until

# --------------------------------------------------------------------------- fake CP


@dataclass
class FakeTerm:
    name: str
    conn: FakeConn | None = None
    last_acked: int = 0
    held: dict[int, Any] = field(default_factory=dict)  # acked, reply not yet sent
    seqs: dict[int, int] = field(default_factory=dict)  # id -> its number among this terminal's messages
    outbox: list[dict[str, Any]] = field(default_factory=list)  # replies for a disconnected terminal
    byes: int = 0
    confirmed: int = 0  # the highest id the terminal confirmed holding every reply up to
    hellos: list[dict[str, Any]] = field(default_factory=list)


class FakeConn(asyncio.Protocol):
    def __init__(self, cp: FakeCP) -> None:
        self.cp = cp
        self.dec = Decoder(known_types={"hello", "msg", "confirm", "bye"})
        self.tr: asyncio.Transport | None = None
        self.term: FakeTerm | None = None

    def connection_made(self, tr: asyncio.BaseTransport) -> None:
        self.tr = tr  # type: ignore[assignment]
        self.cp.conns.add(self)

    def send(self, m: dict[str, Any]) -> bool:
        if self.tr is not None and not self.tr.is_closing():
            self.tr.write(encode(m))
            return True
        return False

    def data_received(self, data: bytes) -> None:
        try:
            msgs = self.dec.feed(data)
        except ProtocolError as exc:
            self.send(exc.frame())
            self.tr.close()  # type: ignore[union-attr]
            return
        for m in msgs:
            if self.tr is None or self.tr.is_closing():
                return
            self.cp.handle(self, m)

    def connection_lost(self, exc: Exception | None) -> None:
        self.cp.conns.discard(self)
        if self.term is not None and self.term.conn is self:
            self.term.conn = None
        self.tr = None


class FakeCP:
    """Speaks the terminal link (docs/protocol.md §1) and plays the host itself: it replies to
    each message with its own data. Knobs make it misbehave in controlled ways."""

    def __init__(self, *, known: set[str] | None = None, reply_delay: float = 0.0, open_session: bool = True) -> None:
        self.known = known
        self.reply_delay = reply_delay
        self.open_session = open_session
        self.epoch = 1
        self.terms: dict[str, FakeTerm] = {}
        self.conns: set[FakeConn] = set()
        self.deliveries: Counter[tuple[str, int]] = Counter()
        self.lose: Callable[[str, int], bool] = lambda name, seq: False  # ack, never reply
        self.duplicate: Callable[[str, int], bool] = lambda name, seq: False  # reply twice
        self.duplicate_after = 0.0  # ... the second copy this many seconds after the first
        self.drop_before_ack: Callable[[str, int], bool] = lambda name, seq: False  # hold, then drop unacked
        self.drop_in_transit: Callable[[str, int], bool] = lambda name, seq: False  # drop, never held
        self.ignore: Callable[[str, int], bool] = lambda name, seq: False  # neither ack nor reply
        self.reply_before_ack: Callable[[str, int], bool] = lambda name, seq: False
        self.corrupt: Callable[[str, int], bool] = lambda name, seq: False  # reply with other data
        self.misdeliver: Callable[[str, int], str | None] = lambda name, seq: None  # reply to another terminal
        self.withhold: Callable[[str], bool] = lambda name: False  # while paused: only these terminals wait
        self.arrivals: list[float] = []  # monotonic time of each new message
        self.first_arrival: dict[str, float] = {}  # monotonic time of each terminal's first new message
        self.paused = False
        self.release_at_bye = False  # withheld replies go out when a terminal says bye
        self.error_at_bye: str | None = None  # a bye answered with an error frame of this code
        self.error_after: Callable[[str, int], str | None] = lambda name, seq: None  # an error frame of this code after the ack
        self.cp_id: str | None = None  # the welcome's `cp` (the CP process), when set
        self._parked: list[tuple[FakeTerm, int]] = []
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self._dropped_ids: set[tuple[str, int]] = set()

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: FakeConn(self), "127.0.0.1", port, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for c in list(self.conns):
            if c.tr is not None:
                c.tr.abort()
        if self.server is not None:
            await self.server.wait_closed()

    # -- knobs ------------------------------------------------------------
    def drop_all(self) -> int:
        n = 0
        for c in list(self.conns):
            if c.tr is not None:
                c.tr.abort()
                n += 1
        return n

    def send_all(self, m: dict[str, Any]) -> None:
        for t in self.terms.values():
            if t.conn is not None:
                t.conn.send(m)

    def pause(self, only: Callable[[str], bool] = lambda name: True) -> None:
        """Withhold replies (to the terminals `only` picks) until resume()."""
        self.withhold = only
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        parked, self._parked = self._parked, []
        for term, mid in parked:
            self._reply(term, mid)

    # -- protocol ---------------------------------------------------------
    def seq(self, term: FakeTerm, mid: int) -> int:
        return term.seqs.setdefault(mid, len(term.seqs))

    def handle(self, conn: FakeConn, m: dict[str, Any]) -> None:
        t = m["t"]
        if conn.term is None:
            name = m.get("terminal")
            if t != "hello" or not isinstance(name, str):
                conn.send({"t": "error", "code": "bad_hello", "msg": "first frame must be hello"})
                conn.tr.close()  # type: ignore[union-attr]
                return
            if self.known is not None and name not in self.known:
                conn.send({"t": "error", "code": "unknown_terminal", "msg": f"no terminal {name}"})
                conn.tr.close()  # type: ignore[union-attr]
                return
            term = self.terms.setdefault(name, FakeTerm(name))
            term.hellos.append(m)
            if term.conn is not None:
                conn.send({"t": "error", "code": "already_connected", "msg": name})
                conn.tr.close()  # type: ignore[union-attr]
                return
            term.conn = conn
            conn.term = term
            conn.send({"t": "welcome", "terminal": name, "last_acked": term.last_acked, **({"cp": self.cp_id} if self.cp_id else {})})
            if self.open_session:
                conn.send({"t": "session", "state": "open", "epoch": self.epoch})
            outbox, term.outbox = term.outbox, []
            for r in outbox:
                conn.send(r)
            return
        term = conn.term
        if t == "msg":
            mid = m["id"]
            if mid <= term.last_acked:
                conn.send({"t": "ack", "id": mid})
                return
            seq = self.seq(term, mid)
            self.arrivals.append(time.monotonic())
            self.first_arrival.setdefault(term.name, self.arrivals[-1])
            if (term.name, -mid) not in self._dropped_ids and self.drop_in_transit(term.name, seq):
                self._dropped_ids.add((term.name, -mid))
                del term.seqs[mid]  # never arrived: it is numbered again when it comes
                conn.tr.abort()  # type: ignore[union-attr]
                return
            if self.ignore(term.name, seq):
                return
            term.last_acked = mid
            term.held[mid] = m["data"]
            self.deliveries[(term.name, mid)] += 1
            key = (term.name, mid)
            if self.reply_before_ack(term.name, seq):
                self._reply(term, mid)
                conn.send({"t": "ack", "id": mid})
                return
            if key not in self._dropped_ids and self.drop_before_ack(term.name, self.seq(term, mid)):
                self._dropped_ids.add(key)
                conn.tr.abort()  # type: ignore[union-attr]
                self._schedule_reply(term, mid)
                return
            conn.send({"t": "ack", "id": mid})
            self._schedule_reply(term, mid)
            code = self.error_after(term.name, self.seq(term, mid))
            if code is not None:
                conn.send({"t": "error", "code": code, "msg": f"made up by the fake CP after id {mid}"})
        elif t == "confirm":
            term.confirmed = max(term.confirmed, m["id"])
        elif t == "bye":
            term.byes += 1
            if self.release_at_bye:  # as a CP hands over what it still held when a terminal logs off
                self.resume()
            if self.error_at_bye is not None:
                conn.send({"t": "error", "code": self.error_at_bye, "msg": "refused at the logoff"})
            conn.tr.close()  # type: ignore[union-attr]

    def _schedule_reply(self, term: FakeTerm, mid: int) -> None:
        if self.lose(term.name, self.seq(term, mid)):
            return
        if self.reply_delay > 0:
            asyncio.get_running_loop().call_later(self.reply_delay, self._reply, term, mid)
        else:
            self._reply(term, mid)

    def _reply(self, term: FakeTerm, mid: int) -> None:
        if self.paused and self.withhold(term.name):
            self._parked.append((term, mid))
            return
        data = term.held.pop(mid, None)
        seq = self.seq(term, mid)
        if self.corrupt(term.name, seq):
            data = f"{data}!"
        other = self.misdeliver(term.name, seq)
        if other is not None:
            term = self.terms[other]
        r = {"t": "reply", "id": mid, "data": data}
        copies = 2 if self.duplicate(term.name, self.seq(term, mid)) else 1
        for k in range(copies):
            if k and self.duplicate_after:
                conn = term.conn  # (its connection then: a terminal that logged off gets nothing)
                asyncio.get_running_loop().call_later(self.duplicate_after, lambda: conn is not None and conn.send(r))
                continue
            if term.conn is None or not term.conn.send(r):
                term.outbox.append(r)  # sent when the terminal is back


# --------------------------------------------------------------------------- helpers


async def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """tests.support.procs.until every 10 ms, its timeout an AssertionError (a failed test, as
    hsbterm's tests have it)."""
    try:
        return await until(cond, timeout, 0.01, what)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


# --------------------------------------------------------------------------- CLI (subprocess)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def spawn(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hsb.term",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )


async def reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()
