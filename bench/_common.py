"""Shared pieces for the benchmarks in bench/: machine facts, /proc sampling, child processes,
and lean link endpoints that cost the benchmark as little as possible.

- `BenchHost`: a real host-link client (docs/protocol.md §2-§3) as one asyncio.Protocol: it
  authenticates, registers, opens the active session on each `session_request` and answers each
  `deliver` at once with a `reply` (reply + discard in one frame). It keeps counters, not an inbox.
- `EchoProtocol`: an equally small terminal-link server with no CP behind it: welcome, session
  open, and `ack` + `reply` for each `msg` (the "direct" baseline of bench/cp.py).
- `Fleet`: many idle terminals in one process that log on, can send one message each, and
  record when each `switched` notice arrives (on the system-wide monotonic clock, so the time
  can be compared with another process's).
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _procs  # noqa: E402
from hsb import LINK_PROTOCOL, __version__  # noqa: E402
from hsb.ctl import sandbox  # noqa: E402
from hsb.wire import auth  # noqa: E402
from hsb.wire.framing import Decoder, encode  # noqa: E402
from tests.support import procs  # noqa: E402

_CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- machine and /proc


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import uvloop

        uv = str(getattr(uvloop, "__version__", "?"))
    except Exception:  # pragma: no cover
        uv = "?"
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "mem_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "uvloop": uv,
        # the accept queue's cap in this network namespace: below the terminal count, a storm of
        # reconnects overflows it and those terminals wait a second for TCP's SYN retry
        "somaxconn": somaxconn(),
    }


def somaxconn() -> int:
    """net.core.somaxconn of this network namespace (-1: unknown)."""
    try:
        return int(Path("/proc/sys/net/core/somaxconn").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return -1


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_counters(text: str | None = None) -> dict[str, int]:
    """This network namespace's accept-queue overflows and SYN retransmissions so far (the
    `TcpExt` lines of /proc/net/netstat, as `nstat` shows them); {} if unreadable. `text`: the
    file as read elsewhere (another namespace's, through `ip netns exec`)."""
    try:
        lines = (text if text is not None else Path("/proc/net/netstat").read_text()).splitlines()
    except OSError:
        return {}
    for head, vals in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:") and vals.startswith("TcpExt:"):
            row = dict(zip(head.split()[1:], vals.split()[1:], strict=False))
            return {k: int(row[k]) for k in TCP_COUNTERS if k in row}
    return {}


def counters_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if k in before}


def machine_line(m: dict[str, Any]) -> str:
    return f"{m['cores']} cores ({m['cpu']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, Python {m['python']}, uvloop {m['uvloop']}"


def scratch(prefix: str) -> Path:
    """A fresh working directory for one benchmark's daemons and logs (under the system's temp
    directory); `finished` removes it again."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix=prefix))


def finished(d: Path, ok: bool, keep: bool = False) -> None:
    """The benchmark is over: its directory goes if every run passed (a lab of 10,000 terminals
    leaves tens of MB of logs and journals behind each time), and stays, said on stderr, if one
    failed or `keep` was asked for: its logs are how a failure is read."""
    import shutil

    if ok and not keep:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"{sys.argv[0]}: logs and journals kept in {d}", file=sys.stderr)


def rss_kib(pid: int) -> int:
    """Resident set size of `pid` in KiB (VmRSS of /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _stat_cpu(path: str) -> float:
    """User + system CPU seconds of a /proc stat file (a process's or one thread's)."""
    stat = Path(path).read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds `pid` has used so far (/proc/PID/stat)."""
    return _stat_cpu(f"/proc/{pid}/stat")


def loop_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid`'s first thread (an asyncio daemon's event loop) so far;
    NaN once it is gone. The rest of the process's (cpu_seconds) is its other threads': for
    hsbcpd, the kernel's io_uring workers that run the journal's durable writes, and its own."""
    try:
        return _stat_cpu(f"/proc/{pid}/task/{pid}/stat")
    except OSError:
        return float("nan")


def machine_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, all cores (/proc/stat; busy excludes steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq) / _CLK_TCK, steal / _CLK_TCK


async def background_cpu(seconds: float = 0.5) -> float:
    """Cores' worth of CPU the machine used over `seconds` while this benchmark sat idle."""
    b0, _ = machine_cpu()
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    b1, _ = machine_cpu()
    return round((b1 - b0) / (time.monotonic() - t0), 3)


def cpu_sample(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each named process, plus "_busy" and "_steal" for the machine."""
    busy, steal = machine_cpu()
    out = {"_busy": busy, "_steal": steal}
    for name, pid in pids.items():
        try:
            out[name] = cpu_seconds(pid)
        except (OSError, ValueError):
            out[name] = float("nan")
    return out


def pct(a: float, b: float) -> str:
    return "-" if not b else f"{100.0 * a / b:.0f} %"


# --------------------------------------------------------------------------- child processes


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child is killed when the benchmark dies, however it dies (PR_SET_PDEATHSIG),
    and at once if the benchmark died between the fork and the prctl (hsb.ctl.sandbox.dies_with)."""
    return sandbox.dies_with(os.getpid())


def start_hsbcpd(d: Path, **kw: Any) -> procs.Proc:
    """hsbcpd as tests.support.procs.start_cp starts it (config with free ports, log in `d`), but
    tied to this process's life so an interrupted benchmark leaves no daemon behind."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = procs.cp_config(d, **kw)
    log = d / "cp.log"
    with open(log, "ab") as fh:
        p = subprocess.Popen(
            [sys.executable, "-m", "hsb.cp", "--config", str(cfg)],
            stdout=fh,
            stderr=fh,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )
    proc = procs.Proc("hsbcpd", list(map(str, p.args)), log, p)  # type: ignore[arg-type]
    try:
        ev = proc.wait_event("cp_started", timeout=30)
    except BaseException:
        proc.stop()
        raise
    proc.info = {k[: -len("_listen")]: v for k, v in ev.items() if k.endswith("_listen")}
    return proc


class Child(_procs.Child):
    """A child process that speaks JSON lines on stdin/stdout (bench/cp.py's hidden modes):
    bench/_procs.py's, in this process's session, with shorter lines, a longer read and a
    shorter stop."""

    LIMIT = 1 << 24
    OWN_SESSION = False
    READ_S = 180.0
    STOP_S = 5.0


emit = _procs.emit  # a child's answer to its parent: one JSON line on stdout


async def stdin_lines() -> asyncio.StreamReader:
    """stdin as an asyncio stream (a child's command channel)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --------------------------------------------------------------------------- the host side


class BenchHost(asyncio.Protocol):
    """One host link to hsbcpd, lean enough to answer at full speed (see module doc)."""

    def __init__(
        self,
        name: str,
        secret: bytes,
        role: str,
        *,
        attrs: dict[str, Any] | None = None,
        auto_open: bool = True,
        auto_reply: bool = True,
        heartbeat: float = 0.1,
    ) -> None:
        self.name = name
        self.secret = secret
        self.role = role
        self.attrs = attrs if attrs is not None else {"protocol": "hsb1"}
        self.auto_open = auto_open
        self.auto_reply = auto_reply
        self.heartbeat = heartbeat
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.epoch = 0
        self.counts: Counter[str] = Counter()
        self.handed: dict[str, int] = {}  # each terminal's highest id delivered (marks_repeats)
        self.events: dict[str, float] = {}  # frame type -> monotonic time it last arrived
        self.last: dict[str, dict[str, Any]] = {}  # frame type -> last such frame (not deliver/reply)
        self.closed = False
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._hb: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        self.registered: asyncio.Future[dict[str, Any]] = loop.create_future()

    @classmethod
    async def connect(cls, addr: tuple[str, int], name: str, secret: bytes, role: str, **kw: Any) -> BenchHost:
        loop = asyncio.get_running_loop()
        _, h = await loop.create_connection(lambda: cls(name, secret, role, **kw), *addr)
        m = await asyncio.wait_for(h.registered, 10)
        if m.get("t") != "registered":
            raise RuntimeError(f"{name}: registration refused: {m}")
        return h

    # -- asyncio.Protocol --------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out: list[bytes] = []
        for m in self.decoder.feed(data):
            t = m["t"]
            if t == "deliver":
                self.counts["deliver"] += 1
                # as hsbd does (marks_repeats): an id handed over before is counted, and answered again
                if m["id"] <= self.handed.get(m["terminal"], 0):
                    self.counts["repeats"] += 1
                else:
                    self.handed[m["terminal"]] = m["id"]
                if self.auto_reply:
                    out.append(encode({"t": "reply", "terminal": m["terminal"], "id": m["id"], "data": m["data"], "epoch": self.epoch}))
                continue
            if t == "hb":
                continue
            now = time.monotonic()
            self.events[t] = now
            self.last[t] = m
            if t == "session_request":
                self.counts[t] += 1
                if self.auto_open:
                    out.append(encode({"t": "open", "terminal": m["terminal"], "kind": "active", "attrs": self.attrs, "epoch": self.epoch}))
            elif t == "opened":
                self.counts[f"opened:{m.get('kind')}"] += 1
            elif t == "challenge":
                mac = auth.answer(self.secret, m["nonce"], "host", self.name)
                out.append(encode({"t": "auth", "name": self.name, "link": "host", "mac": mac, "proto": LINK_PROTOCOL, "version": __version__}))
            elif t == "auth_ok":
                out.append(encode({"t": "register", "role": self.role, "startup_id": int(time.time()), "marks_repeats": True, "adopt": True}))
                self._beat()
            elif t == "registered":
                self.epoch = m["epoch"]
                if m.get("adopt") is True:  # it keeps no sessions across a CP restart: names none, and what it handed
                    out.append(encode({"t": "adopt", "items": [], "handed": self.handed, "epoch": self.epoch, "last": True}))
                if not self.registered.done():
                    self.registered.set_result(m)
            elif t == "switch_granted":
                self.epoch = m["epoch"]
                self.role = "active"
                self.counts[t] += 1
            elif t == "error":
                self.counts[t] += 1
                if not self.registered.done():
                    self.registered.set_result(m)
            else:
                self.counts[t] += 1
        if out and self.transport is not None:
            self.transport.write(b"".join(out))
        if self._waiters:
            self._check()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._hb is not None:
            self._hb.cancel()
        if not self.registered.done():
            self.registered.set_result({"t": "error", "code": "closed", "msg": str(exc)})
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError(f"{self.name}: host link closed"))
        self._waiters.clear()

    # -- helpers -----------------------------------------------------------
    def _beat(self) -> None:
        if self.closed or self.transport is None:
            return
        self.transport.write(_HB)
        self._hb = asyncio.get_running_loop().call_later(self.heartbeat, self._beat)

    def _check(self) -> None:
        keep = []
        for cond, fut in self._waiters:
            if fut.done():
                continue
            if cond():
                fut.set_result(None)
            else:
                keep.append((cond, fut))
        self._waiters = keep

    async def until(self, cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """Wait until `cond()` holds (checked after each read)."""
        if cond():
            return
        if self.closed:
            raise ConnectionError(f"{self.name}: host link closed")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((cond, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise TimeoutError(f"{self.name}: timed out waiting for {what}; counts {dict(self.counts)}") from None

    def send(self, m: dict[str, Any]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(encode(m))

    def send_many(self, msgs: list[dict[str, Any]]) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(b"".join(encode(m) for m in msgs))

    def close(self) -> None:
        self.closed = True
        if self._hb is not None:
            self._hb.cancel()
        if self.transport is not None:
            self.transport.close()


_HB = encode({"t": "hb"})


# --------------------------------------------------------------------------- the direct baseline


_WELCOME_TYPES = frozenset({"hello", "msg", "confirm", "bye"})


class EchoProtocol(asyncio.Protocol):
    """The terminal link with nothing behind it: the server a terminal could talk to directly."""

    __slots__ = ("decoder", "transport", "name")

    def __init__(self) -> None:
        self.decoder = Decoder(known_types=_WELCOME_TYPES)
        self.transport: asyncio.Transport | None = None
        self.name: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        tr = self.transport
        assert tr is not None
        try:
            msgs = self.decoder.feed(data)
        except Exception as exc:  # ProtocolError: answer and close, like the CP
            tr.write(encode({"t": "error", "code": getattr(exc, "code", "bad_frame"), "msg": str(exc)}))
            tr.close()
            return
        for m in msgs:
            t = m["t"]
            if t == "msg":
                tr.write(encode({"t": "ack", "id": m["id"]}))
                tr.write(encode({"t": "reply", "id": m["id"], "data": m["data"]}))
            elif t == "hello":
                self.name = m.get("terminal")
                tr.write(encode({"t": "welcome", "terminal": self.name, "last_acked": 0}))
                tr.write(encode({"t": "session", "state": "open", "epoch": 1}))
            elif t == "bye":
                tr.close()
                return
            # "confirm" (a resuming terminal's): nothing is kept here, nothing to forget


# --------------------------------------------------------------------------- idle terminals


class _FleetTerm(asyncio.Protocol):
    __slots__ = ("fleet", "name", "decoder", "transport", "session", "replied", "lost")

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet = fleet
        self.name = name
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.session = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(encode({"t": "hello", "terminal": self.name}))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        f = self.fleet
        for m in self.decoder.feed(data):
            t = m["t"]
            if t == "switched":
                now = time.monotonic()
                f.switched += 1
                if f.first_switched is None:
                    f.first_switched = now
                f.last_switched = now
            elif t == "reply":
                f.replies += 1
            elif t == "session":
                if m["state"] == "open" and not self.session:
                    self.session = True
                    f.sessions += 1
                elif m["state"] != "open" and self.session:
                    self.session = False
                    f.sessions -= 1
            elif t == "error":
                f.errors[str(m.get("code"))] += 1
        f.poke()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.transport = None
        if self.session:
            self.session = False
            self.fleet.sessions -= 1
        self.fleet.disconnects += 1
        self.fleet.poke()


class Fleet:
    """`n` idle terminals named like hsbcpd's `[[terminal_groups]]` (prefix + 5 digits)."""

    def __init__(self, addr: tuple[str, int], names: list[str]) -> None:
        self.addr = addr
        self.names = names
        self.terms: list[_FleetTerm] = []
        self.sessions = 0
        self.replies = 0
        self.disconnects = 0
        self.switched = 0
        self.first_switched: float | None = None
        self.last_switched: float | None = None
        self.errors: Counter[str] = Counter()
        self._cond: Callable[[], bool] | None = None
        self._fut: asyncio.Future[None] | None = None
        self._next_id = time.time_ns() // 1000

    def poke(self) -> None:
        if self._fut is not None and not self._fut.done() and self._cond is not None and self._cond():
            self._fut.set_result(None)

    async def until(self, cond: Callable[[], bool], timeout: float) -> bool:
        if cond():
            return True
        self._cond = cond
        self._fut = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._cond = self._fut = None

    async def connect(self, concurrency: int = 256, timeout: float = 120.0) -> float:
        """Connect every terminal and wait until each has an open session; seconds taken."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        sem = asyncio.Semaphore(concurrency)

        async def one(name: str) -> None:
            async with sem:
                for attempt in range(50):
                    try:
                        _, p = await loop.create_connection(lambda: _FleetTerm(self, name), *self.addr)
                        self.terms.append(p)
                        return
                    except OSError:
                        await asyncio.sleep(0.02 * (attempt + 1))  # backoff on a full listen backlog
                raise RuntimeError(f"{name}: cannot connect")

        await asyncio.gather(*(one(n) for n in self.names))
        n = len(self.names)
        if not await self.until(lambda: self.sessions >= n, timeout):
            raise TimeoutError(f"only {self.sessions}/{n} sessions opened; errors {dict(self.errors)}")
        return time.monotonic() - t0

    def arm(self) -> None:
        self.switched = 0
        self.first_switched = self.last_switched = None

    async def ping(self, timeout: float = 60.0) -> float:
        """Every terminal sends one message; wait for every reply. Seconds taken."""
        t0 = time.monotonic()
        want = self.replies + len(self.terms)
        self._next_id += 1
        frame_id = self._next_id
        for p in self.terms:
            if p.transport is not None:
                p.transport.write(encode({"t": "msg", "id": frame_id, "data": p.name}))
        if not await self.until(lambda: self.replies >= want, timeout):
            raise TimeoutError(f"{self.replies - (want - len(self.terms))}/{len(self.terms)} replies")
        return time.monotonic() - t0

    def close(self) -> None:
        for p in self.terms:
            if p.transport is not None:
                p.transport.abort()
