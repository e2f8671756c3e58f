"""hsbterm against a small in-process fake CP: counts, reconnect-and-resend, loss, duplicates,
the service gap, latency, the connect phase, and the CLI (load and interactive) in a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from hsb.term.load import run_load, terminal_names
from hsb.wire.framing import Decoder, ProtocolError, encode

pytestmark = pytest.mark.timeout(30)

# --------------------------------------------------------------------------- fake CP


@dataclass
class FakeTerm:
    name: str
    conn: FakeConn | None = None
    last_acked: int = 0
    held: dict[int, Any] = field(default_factory=dict)  # acked, reply not yet sent
    first_id: int | None = None
    outbox: list[dict[str, Any]] = field(default_factory=list)  # replies for a disconnected terminal
    byes: int = 0


class FakeConn(asyncio.Protocol):
    def __init__(self, cp: FakeCP) -> None:
        self.cp = cp
        self.dec = Decoder(known_types={"hello", "msg", "bye"})
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
        self.drop_before_ack: Callable[[str, int], bool] = lambda name, seq: False  # hold, then drop unacked
        self.paused = False
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

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        parked, self._parked = self._parked, []
        for term, mid in parked:
            self._reply(term, mid)

    # -- protocol ---------------------------------------------------------
    def seq(self, term: FakeTerm, mid: int) -> int:
        return mid - (term.first_id or mid)

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
            if term.conn is not None:
                conn.send({"t": "error", "code": "already_connected", "msg": name})
                conn.tr.close()  # type: ignore[union-attr]
                return
            term.conn = conn
            conn.term = term
            conn.send({"t": "welcome", "terminal": name})
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
            if term.first_id is None:
                term.first_id = mid
            term.last_acked = mid
            term.held[mid] = m["data"]
            self.deliveries[(term.name, mid)] += 1
            key = (term.name, mid)
            if key not in self._dropped_ids and self.drop_before_ack(term.name, self.seq(term, mid)):
                self._dropped_ids.add(key)
                conn.tr.abort()  # type: ignore[union-attr]
                self._schedule_reply(term, mid)
                return
            conn.send({"t": "ack", "id": mid})
            self._schedule_reply(term, mid)
        elif t == "bye":
            term.byes += 1
            conn.tr.close()  # type: ignore[union-attr]

    def _schedule_reply(self, term: FakeTerm, mid: int) -> None:
        if self.lose(term.name, self.seq(term, mid)):
            return
        if self.reply_delay > 0:
            asyncio.get_running_loop().call_later(self.reply_delay, self._reply, term, mid)
        else:
            self._reply(term, mid)

    def _reply(self, term: FakeTerm, mid: int) -> None:
        if self.paused:
            self._parked.append((term, mid))
            return
        data = term.held.pop(mid, None)
        r = {"t": "reply", "id": mid, "data": data}
        copies = 2 if self.duplicate(term.name, self.seq(term, mid)) else 1
        for _ in range(copies):
            if term.conn is None or not term.conn.send(r):
                term.outbox.append(r)  # sent when the terminal is back


# --------------------------------------------------------------------------- helpers


async def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `cond` on the loop until true or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> Any:
    cp = FakeCP()
    await cp.start()
    yield cp
    await cp.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- library (in process)


async def test_counts_clean_run(fake: FakeCP) -> None:
    r = await run_load(("127.0.0.1", fake.port), terminals=20, rate=400, duration=1.0, settle=5)
    assert r.ok and r.exit_status == 0
    assert 250 <= r.sent <= 450, r.sent
    assert r.acked == r.sent == r.replied
    assert (r.lost, r.duplicates, r.unexpected, r.unacked) == (0, 0, 0, 0)
    assert r.disconnects == 0 and r.session_closed == 0 and r.switched == 0
    assert r.welcomed == r.sessions_opened == 20
    assert r.connect_s is not None and r.session_open_s is not None and r.session_open_s >= r.connect_s
    # Spread over every terminal, each message delivered once; every terminal logged off.
    per_term = Counter(name for name, _ in fake.deliveries)
    assert set(per_term) == set(terminal_names(20))
    assert max(per_term.values()) - min(per_term.values()) <= 2
    assert set(fake.deliveries.values()) == {1}
    await wait_until(lambda: all(t.byes == 1 for t in fake.terms.values()), 5, "bye from every terminal")
    d = r.to_dict()
    for key in ("sent", "acked", "replied", "lost", "duplicates", "unexpected", "disconnects", "session_closed",
                "switched", "latency_ms", "service_gap", "connect_s", "session_open_s"):
        assert key in d
    assert set(d["latency_ms"]) >= {"p50", "p99", "max"} and set(d["service_gap"]) >= {"ms", "start", "end"}
    json.dumps(d)


async def test_reconnect_resends_unacked_and_loses_nothing(fake: FakeCP) -> None:
    fake.reply_delay = 0.05  # acked messages stay outstanding across the drops
    fake.drop_before_ack = lambda name, seq: seq in (3, 11)  # held by the CP, ack never sent
    sending = asyncio.Event()
    task = asyncio.ensure_future(
        run_load(("127.0.0.1", fake.port), terminals=10, rate=300, duration=1.5, settle=5, sending=sending)
    )
    await asyncio.wait_for(sending.wait(), 10)
    await wait_until(lambda: len(fake.deliveries) >= 150, 10, "150 messages")
    assert fake.drop_all() > 0  # everyone drops with acked-but-unreplied messages outstanding
    r = await asyncio.wait_for(task, 20)
    assert r.ok, r.to_dict()
    assert r.lost == 0 and r.duplicates == 0 and r.unacked == 0
    assert r.replied == r.sent == r.acked
    assert r.disconnects >= 20  # 2 drops-before-ack per terminal + the mass drop
    assert r.resent >= 20  # each drop-before-ack left at least that message unacked
    assert set(fake.deliveries.values()) == {1}  # resent ids were re-acked, never delivered twice
    assert r.per_terminal_disconnects and all(v >= 2 for v in r.per_terminal_disconnects.values())


async def test_lost_message_is_detected(fake: FakeCP) -> None:
    fake.lose = lambda name, seq: name == "T00002" and seq in (1, 4)
    r = await run_load(("127.0.0.1", fake.port), terminals=4, rate=200, duration=0.5, settle=0.5)
    assert r.lost == 2 and not r.ok and r.exit_status == 1
    assert r.duplicates == 0
    assert r.acked == r.sent and r.replied == r.sent - 2
    assert all(x.startswith("T00002:") for x in r.lost_ids) and len(r.lost_ids) == 2
    # The unanswered messages keep the service gap open until the end of the settle period.
    assert r.service_gap["ms"] >= 400


async def test_duplicate_replies_are_detected(fake: FakeCP) -> None:
    fake.duplicate = lambda name, seq: seq % 10 == 0
    r = await run_load(("127.0.0.1", fake.port), terminals=3, rate=150, duration=0.6, settle=3)
    assert r.lost == 0 and r.duplicates > 0 and not r.ok and r.exit_status == 1
    per_term = Counter(name for name, _ in fake.deliveries)
    assert r.duplicates == sum((n + 9) // 10 for n in per_term.values())
    assert r.replied == r.sent and r.unexpected == 0
    assert r.duplicate_ids


async def test_unexpected_reply_is_counted(fake: FakeCP) -> None:
    sending = asyncio.Event()
    task = asyncio.ensure_future(
        run_load(("127.0.0.1", fake.port), terminals=2, rate=50, duration=0.5, settle=2, sending=sending)
    )
    await asyncio.wait_for(sending.wait(), 10)
    fake.send_all({"t": "reply", "id": 12345, "data": "?"})  # an id far below the clock-based base
    r = await asyncio.wait_for(task, 10)
    assert r.unexpected == 2 and r.ok


async def test_service_gap_measures_a_pause(fake: FakeCP) -> None:
    sending = asyncio.Event()
    task = asyncio.ensure_future(
        run_load(("127.0.0.1", fake.port), terminals=10, rate=200, duration=2.0, settle=5, sending=sending)
    )
    await asyncio.wait_for(sending.wait(), 10)
    await wait_until(lambda: len(fake.deliveries) >= 40, 10, "some traffic")
    t_pause = time.time()
    fake.pause()
    await asyncio.sleep(0.6)  # the stimulus being measured, not synchronisation
    fake.resume()
    t_resume = time.time()
    r = await asyncio.wait_for(task, 20)
    assert r.ok
    gap = r.service_gap
    assert 500 <= gap["ms"] <= 1000, gap
    assert t_pause - 0.2 <= gap["start"] <= t_pause + 0.1
    assert t_resume - 0.1 <= gap["end"] <= t_resume + 0.2
    assert gap["start_iso"].endswith("Z")


async def test_latency_percentiles_follow_the_reply_delay(fake: FakeCP) -> None:
    fake.reply_delay = 0.05
    r = await run_load(("127.0.0.1", fake.port), terminals=5, rate=100, duration=1.0, settle=3)
    lat = r.latency_ms
    assert r.ok
    assert 45 <= lat["p50"] <= 150, lat
    assert lat["p50"] <= lat["p99"] <= lat["max"] <= 500, lat


async def test_switched_and_session_closed_are_counted(fake: FakeCP) -> None:
    sending = asyncio.Event()
    task = asyncio.ensure_future(
        run_load(("127.0.0.1", fake.port), terminals=6, rate=60, duration=0.8, settle=2, sending=sending)
    )
    await asyncio.wait_for(sending.wait(), 10)
    fake.send_all({"t": "switched", "epoch": 2})
    fake.send_all({"t": "session", "state": "closed", "epoch": 2, "reason": "test"})
    fake.send_all({"t": "session", "state": "open", "epoch": 2})
    r = await asyncio.wait_for(task, 10)
    assert r.switched == 6 and r.session_closed == 6 and r.ok


async def test_connect_phase_retries_refused_connects() -> None:
    port = free_port()  # nothing listens yet: connects are refused
    snaps: list[dict[str, Any]] = []
    task = asyncio.ensure_future(
        run_load(("127.0.0.1", port), terminals=50, rate=100, duration=0.3, settle=3,
                 connect_concurrency=8, progress=snaps.append, progress_interval=0.05)
    )
    cp = FakeCP()
    try:
        await wait_until(lambda: snaps and snaps[-1]["connect_failures"] > 0, 10, "refused connects")
        await cp.start(port)
        r = await asyncio.wait_for(task, 20)
    finally:
        await cp.stop()
    assert r.connect_failures > 0 and r.disconnects == 0
    assert r.welcomed == r.sessions_opened == 50
    assert r.connect_s is not None and r.session_open_s is not None
    assert r.ok and r.sent > 0 and r.replied == r.sent


async def test_sends_without_a_session_and_unknown_terminals() -> None:
    cp = FakeCP(known=set(terminal_names(3)), open_session=False)
    await cp.start()
    try:
        # No session ever opens: --no-wait-session starts once welcomed; the CP still acks and replies.
        r = await run_load(("127.0.0.1", cp.port), terminals=3, rate=60, duration=0.3, settle=2, wait_session=False)
        assert r.ok and r.sent > 0 and r.replied == r.sent and r.session_open_s is None and r.connect_s is not None
        # A terminal the CP does not know: refused, counted, and the run still ends.
        r = await run_load(("127.0.0.1", cp.port), terminals=4, rate=40, duration=0.3, settle=1,
                           connect_timeout=1.0, wait_session=False)
        assert r.errors.get("unknown_terminal", 0) >= 1 and r.welcomed == 3 and r.connect_s is None
    finally:
        await cp.stop()


# --------------------------------------------------------------------------- CLI (subprocess)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _spawn(*args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hsb.term", *args,
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def test_cli_load_json_exit_status_on_loss(fake: FakeCP) -> None:
    fake.lose = lambda name, seq: name == "T00001" and seq == 2
    proc = await _spawn("load", "--cp", f"127.0.0.1:{fake.port}", "--terminals", "3", "--rate", "60",
                        "--duration", "0.5", "--settle", "0.5", "--json")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await _reap(proc)
    assert proc.returncode == 1, err.decode()
    d = json.loads(out)
    assert d["lost"] == 1 and d["duplicates"] == 0 and d["acked"] == d["sent"] > 0
    assert d["lost_ids"][0].startswith("T00001:")
    assert err == b""  # off a TTY: no progress output


async def test_cli_load_table_ok(fake: FakeCP) -> None:
    proc = await _spawn("load", "--cp", f"127.0.0.1:{fake.port}", "-n", "2", "--rate", "40",
                        "--duration", "0.4", "--prefix", "K", "--start", "7", "--width", "3")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await _reap(proc)
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "lost" in text and "service gap" in text and "verdict" in text and "OK" in text
    assert set(fake.terms) == {"K007", "K008"}


async def _read_until(proc: asyncio.subprocess.Process, pred: Callable[[str], bool], lines: list[str],
                      timeout: float = 10.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no matching line; got {lines}")
        raw = await asyncio.wait_for(proc.stdout.readline(), left)
        if not raw:
            raise AssertionError(f"EOF before a matching line; got {lines}")
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if pred(line):
            return line


async def test_cli_connect_interactive(fake: FakeCP) -> None:
    fake.reply_delay = 0.05
    proc = await _spawn("connect", "T00042", "--cp", f"127.0.0.1:{fake.port}", stdin=True)
    lines: list[str] = []
    try:
        assert proc.stdin is not None
        await _read_until(proc, lambda s: s.startswith("welcome T00042"), lines)
        await _read_until(proc, lambda s: s.startswith("session open epoch=1"), lines)
        proc.stdin.write(b"balance?\n")
        await proc.stdin.drain()
        await _read_until(proc, lambda s: s.startswith("ack id="), lines)
        await _read_until(proc, lambda s: s.startswith("reply id=") and ": balance?" in s, lines)
        # The connection drops: the terminal logs on again by itself.
        fake.drop_all()
        await _read_until(proc, lambda s: s.startswith("disconnected"), lines)
        await _read_until(proc, lambda s: "logged on again" in s, lines)
        fake.send_all({"t": "switched", "epoch": 2})
        await _read_until(proc, lambda s: s.startswith("switched epoch=2"), lines)
        proc.stdin.write(b"withdraw 20\n")
        await proc.stdin.drain()
        await _read_until(proc, lambda s: s.startswith("reply id=") and ": withdraw 20" in s, lines)
        # Ctrl-D: bye and exit 0.
        proc.stdin.close()
        await _read_until(proc, lambda s: s == "bye", lines)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        await _reap(proc)
    await wait_until(lambda: fake.terms["T00042"].byes == 1, 5, "bye at the CP")
    ids = sorted(mid for (_, mid) in fake.deliveries)
    assert len(ids) == 2 and ids[0] < ids[1]


async def test_cli_connect_unknown_terminal_exits_1() -> None:
    cp = FakeCP(known={"T00001"})
    await cp.start()
    proc = await _spawn("connect", "NOPE", "--cp", f"127.0.0.1:{cp.port}", stdin=True)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        await _reap(proc)
        await cp.stop()
    assert proc.returncode == 1
    assert "error unknown_terminal" in out.decode()


async def test_cli_rejects_bad_cp_address() -> None:
    proc = await _spawn("load", "--cp", "nonsense", "-n", "1", "--rate", "1", "--duration", "1")
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 15)
    finally:
        await _reap(proc)
    assert proc.returncode == 2 and b"HOST:PORT" in err


def test_reconnect_on_uvloop() -> None:
    """The same reconnect scenario with everything on uvloop, as `hsbterm load` runs."""
    from hsb import loop as hsb_loop

    async def scenario() -> Any:
        cp = FakeCP(reply_delay=0.02)
        await cp.start()
        try:
            sending = asyncio.Event()
            task = asyncio.ensure_future(
                run_load(("127.0.0.1", cp.port), terminals=8, rate=200, duration=0.8, settle=5, sending=sending)
            )
            await asyncio.wait_for(sending.wait(), 10)
            await wait_until(lambda: len(cp.deliveries) >= 40, 10, "some traffic")
            cp.drop_all()
            return await asyncio.wait_for(task, 20), cp
        finally:
            await cp.stop()

    r, cp = hsb_loop.run(scenario())
    assert r.ok and r.lost == 0 and r.replied == r.sent > 0 and r.disconnects >= 8
    assert set(cp.deliveries.values()) == {1}
