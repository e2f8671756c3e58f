"""A small real host-link client for driving hsbcpd from tests (docs/protocol.md §3), a fake
terminal, and hsbcpd's status polled."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hsb.wire.client import FrameStream, LinkClosed, request
from tests.support.procs import SECRET, Proc, addr

ATTRS = {"protocol": "hsb1"}  # a session's attributes, as the tests' hosts open it


class _Inbox:
    """Every frame a link read, in `inbox`, and waits for the ones a test wants."""

    name: str
    inbox: list[dict[str, Any]]
    closed: bool
    _new: asyncio.Event

    async def wait(self, pred: Any, timeout: float = 10.0, start: int = 0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        seen = start
        while True:
            for m in self.inbox[seen:]:
                if pred(m):
                    return m
            seen = len(self.inbox)
            if self.closed:
                raise LinkClosed(f"{self.name}: link closed; inbox tail {self.inbox[-3:]}")
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no matching frame; inbox tail {self.inbox[-5:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), left)
            except TimeoutError:
                pass

    async def wait_count(self, pred: Any, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            got = [m for m in self.inbox if pred(m)]
            if len(got) >= n:
                return got
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name}: {len(got)}/{n} frames; tail {self.inbox[-5:]}")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.2)
            except TimeoutError:
                pass


class FakeHost(_Inbox):
    """One host link. `inbox` collects every frame; helpers wait for specific ones."""

    def __init__(self, fs: FrameStream, name: str) -> None:
        self.fs = fs
        self.name = name
        self.inbox: list[dict[str, Any]] = []
        self.closed = False
        self.epoch = 0
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())
        self._hb: asyncio.Task[None] | None = None
        self.auto_open: dict[str, Any] | None = None  # attrs: answer session_request with open
        self.auto_reply = False
        self.replied: set[tuple[str, int]] = set()  # (terminal, id) this host answered

    @classmethod
    async def connect(
        cls, host_addr: str, name: str, role: str | None = None, secret: bytes = SECRET, heartbeat: float | None = 0.05, ssl: Any = None
    ) -> FakeHost:
        h, p = addr(host_addr)
        fs = await FrameStream.connect(h, p, ssl=ssl)
        await fs.authenticate(secret, "host", name)
        self = cls(fs, name)
        if heartbeat:
            self._hb = asyncio.create_task(self._beat(heartbeat))
        if role:
            await self.register(role)
        return self

    async def _beat(self, every: float) -> None:
        while not self.closed:
            self.fs.send({"t": "hb"})
            await asyncio.sleep(every)

    async def _read(self) -> None:
        try:
            while True:
                m = await self.fs.recv()
                if m["t"] == "hb" and "ack" not in m:
                    continue
                self.inbox.append(m)
                if m["t"] == "switch_granted" or (m["t"] == "registered" and m.get("role") == "active"):
                    self.epoch = m["epoch"]  # at once: frames right behind it answer under it
                if self.auto_open is not None and m["t"] == "session_request":
                    self.send({"t": "open", "terminal": m["terminal"], "kind": "active", "attrs": self.auto_open, "epoch": self.epoch})
                if self.auto_reply and m["t"] in ("deliver", "deliver_batch"):
                    batch = m["items"] if m["t"] == "deliver_batch" else [(m["terminal"], m["id"], m["data"], m.get("redelivered"))]
                    for terminal, mid, data, _ in batch:
                        self.send({"t": "reply", "terminal": terminal, "id": mid, "data": data, "epoch": self.epoch})
                        self.replied.add((terminal, mid))
                self._new.set()
        except (LinkClosed, ConnectionError, OSError):
            pass
        finally:
            self.closed = True
            self._new.set()

    def send(self, m: dict[str, Any]) -> None:
        if not self.closed:
            self.fs.send(m)

    async def register(
        self,
        role: str,
        startup_id: int = 1,
        instance: str | None = None,
        deliver_batch: int = 0,
        adopt: bool = False,
        keep_standby: bool = False,
        marks_repeats: bool = False,
    ) -> dict[str, Any]:
        extra: dict[str, Any] = {"instance": instance} if instance else {}
        if marks_repeats:
            extra["marks_repeats"] = True  # it marks an id handed to its service before as redelivered: early delivery
        if deliver_batch:
            extra["deliver_batch"] = deliver_batch  # this host reads deliver_batch frames of up to so many bytes
        if adopt:
            extra["adopt"] = True  # registered as the active, it names its open sessions (hsb.cp.adopt)
        if keep_standby:
            extra["keep_standby"] = True  # demoted, it takes the CP's standby_kept (hsb.cp.flip)
        self.send({"t": "register", "role": role, "startup_id": startup_id, **extra})
        m = await self.wait(lambda m: m["t"] in ("registered", "error"))
        if m["t"] == "registered":
            self.epoch = m["epoch"]
        return m

    async def close(self, drain: bool = False) -> None:
        """Close the link. `drain`: send nothing more and end only the sending side, then keep
        reading until the CP closes its side, so that the inbox holds every frame the CP wrote
        (a test comparing what the CP says it delivered with what arrived needs all of them)."""
        if self._hb:
            self._hb.cancel()
        if drain and not self.closed:
            self.auto_open, self.auto_reply = None, False
            try:
                self.fs.writer.write_eof()
                await asyncio.wait_for(asyncio.shield(self._reader), 5.0)
            except (OSError, TimeoutError):
                pass
        self.closed = True
        self._reader.cancel()
        await self.fs.aclose()


_LIVE: set[FakeTerminal] = set()  # a client nobody holds must not be collected (that would log it off)


class FakeTerminal(_Inbox):
    """A minimal terminal-link client (the full simulator is hsb.term)."""

    def __init__(self, fs: FrameStream, name: str) -> None:
        self.fs = fs
        self.name = name
        self.inbox: list[dict[str, Any]] = []
        self.closed = False
        self._new = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, term_addr: str, name: str, hello: bool = True, ssl: Any = None) -> FakeTerminal:
        h, p = addr(term_addr)
        fs = await FrameStream.connect(h, p, ssl=ssl)
        self = cls(fs, name)
        _LIVE.add(self)
        if hello:
            self.send({"t": "hello", "terminal": name})
        return self

    async def _read(self) -> None:
        try:
            while True:
                self.inbox.append(await self.fs.recv())
                self._new.set()
        except (LinkClosed, ConnectionError, OSError, Exception):
            pass
        finally:
            self.closed = True
            self._new.set()
            _LIVE.discard(self)

    def send(self, m: dict[str, Any]) -> None:
        self.fs.send(m)

    async def wait_closed(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.closed:
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{self.name}: still connected")
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), 0.2)
            except TimeoutError:
                pass

    async def close(self) -> None:
        self._reader.cancel()
        await self.fs.aclose()


async def cp_status(cp: Any) -> dict[str, Any]:
    """hsbcpd's status (a `tests.support.procs.Proc` started by start_cp)."""
    h, p = addr(cp.info["admin"])
    return (await request(h, p, SECRET, {"t": "status"}))["data"]  # type: ignore[no-any-return]


async def until_cp_status(cp: Any, ok: Any, timeout: float = 10.0) -> dict[str, Any]:
    """hsbcpd's status once `ok(status)` holds (polled), else AssertionError with the last one."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await cp_status(cp)
        if ok(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout} s: {st}")
        await asyncio.sleep(0.05)


async def until_journal_status(cp: Proc, pred: Any, timeout: float = 10.0, what: str = "status") -> dict[str, Any]:
    """hsbcpd's status once `pred(status)` holds (polled), else TimeoutError with its journal's."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await cp_status(cp)
        if pred(st):
            return st
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"{what}: {json.dumps(st.get('journal'))}")
        await asyncio.sleep(0.05)


async def logged_on(cp: Proc, name: str, last_reply: int | None = 0) -> FakeTerminal:
    """Terminal `name` logged on to hsbcpd `cp`, its hello saying `last_reply` (none if None)."""
    t = await FakeTerminal.connect(cp.info["terminal"], name, hello=False)
    m: dict[str, Any] = {"t": "hello", "terminal": name}
    if last_reply is not None:
        m["last_reply"] = last_reply
    t.send(m)
    await t.wait(lambda m: m["t"] == "welcome")
    return t


async def host_came(cp: Any) -> None:
    """A host registers with hsbcpd `cp` (a `tests.support.procs.Proc`) as the standby, and
    goes: a CP on a durable journal acknowledges nothing before a host has registered with it
    since it started (hsb.cp.first_host), and it has no host (nor an active) afterwards."""
    h = await FakeHost.connect(cp.info["host"], "host-b", heartbeat=None)
    try:
        m = await h.register("standby")
        assert m["t"] == "registered", m
    finally:
        await h.close()
    await until_cp_status(cp, lambda st: st["standby"] is None and st["journal"].get("acks_waiting_for_host") is None)


async def holding_terminal(cp: Any, sent: int, acked: int, resume: bool = False) -> FakeTerminal:
    """Terminal T00001 logged on to a CP without an active (`resume`: its hello says last_reply
    0), `sent` messages sent ("m1", …), `acked` of them acknowledged (a host came and went
    first: `host_came`)."""
    await host_came(cp)
    t = await FakeTerminal.connect(cp.info["terminal"], "T00001", hello=not resume)
    if resume:
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
    await t.wait(lambda m: m["t"] == "welcome")
    for i in range(1, sent + 1):
        t.send({"t": "msg", "id": i, "data": f"m{i}"})
    await t.wait_count(lambda m: m["t"] == "ack", acked)
    return t


async def logged_off_holding(cp: Any, n: int = 3, resume: bool = False) -> None:
    """`holding_terminal` with `n` messages acknowledged, then its bye, and its connection
    closed once the CP has read the bye (status says so)."""
    t = await holding_terminal(cp, sent=n, acked=n, resume=resume)
    t.send({"t": "bye"})
    await t.fs.drain()
    await until_cp_status(cp, lambda st: st["terminals"]["connected"] == 1)
    t.fs.writer.close()
    await t.wait_closed()
    await until_cp_status(cp, lambda st: st["terminals"]["connected"] == 0)
