"""bench/hsbd.py's sequential lag: active session open → standby session open at the CP, at a
steady rate of logons and logoffs from a churn child (the hidden mode `hsbd.py _churn`: _Churn
and its terminals, _ChurnTerm), while this process polls the CP's admin `sessions` (seq_lag).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._procs import Child, emit, stdin_reader, wait_dead, wait_quiet  # noqa: E402
from bench._report import fmt_ms, median, pctl, say  # noqa: E402
from bench._sandbox import Admin, status, until  # noqa: E402
from hsb.ctl import sandbox  # noqa: E402

HSBD = str(Path(__file__).resolve().parent / "hsbd.py")  # the churn child is hsbd.py's hidden mode _churn


class _ChurnTerm(asyncio.Protocol):
    """One logon: connect, hello, session open (recorded), hold, bye; the CP then closes."""

    def __init__(self, churn: _Churn, name: str) -> None:
        from hsb.wire.framing import Decoder

        self.churn = churn
        self.name = name
        self.decoder = Decoder()
        self.transport: asyncio.Transport | None = None
        self.rec = [name, time.time(), None, None]  # name, connect start, session open, bye
        self.bye_sent = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        from hsb.wire.framing import encode

        self.transport = transport  # type: ignore[assignment]
        transport.write(encode({"t": "hello", "terminal": self.name}))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        for m in self.decoder.feed(data):
            t = m.get("t")
            if t == "session" and m.get("state") == "open" and self.rec[2] is None:
                self.rec[2] = time.time()
                asyncio.get_running_loop().call_later(self.churn.hold, self.bye)
            elif t == "session" and m.get("state") == "closed" and not self.bye_sent:
                self.churn.errors[f"session closed: {m.get('reason')}"] = self.churn.errors.get(f"session closed: {m.get('reason')}", 0) + 1
            elif t == "error":
                self.churn.errors[str(m.get("code"))] = self.churn.errors.get(str(m.get("code")), 0) + 1

    def bye(self) -> None:
        from hsb.wire.framing import encode

        if self.transport is not None and not self.transport.is_closing():
            self.bye_sent = True
            self.rec[3] = time.time()
            self.transport.write(encode({"t": "bye"}))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.bye_sent:
            self.churn.errors["disconnected before bye"] = self.churn.errors.get("disconnected before bye", 0) + 1
        self.churn.done(self)


class _Churn:
    def __init__(self, addr: tuple[str, int], names: list[str], rate: float, hold: float) -> None:
        self.addr = addr
        self.idle: deque[str] = deque(names)
        self.rate = rate
        self.hold = hold
        self.records: list[list[Any]] = []
        self.errors: dict[str, int] = {}
        self.live = 0
        self.starved = 0

    def done(self, t: _ChurnTerm) -> None:
        self.live -= 1
        self.records.append(t.rec)
        self.idle.append(t.name)

    async def _one(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: _ChurnTerm(self, name), *self.addr)
        except OSError as exc:
            self.live -= 1
            self.errors[f"connect: {type(exc).__name__}"] = self.errors.get(f"connect: {type(exc).__name__}", 0) + 1
            self.idle.append(name)

    async def run(self, duration: float) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()
        t0 = last = time.monotonic()
        credit = 0.0
        started = 0
        while True:
            await asyncio.sleep(0.002)
            now = time.monotonic()
            if now - t0 >= duration:
                break
            credit = min(credit + self.rate * (now - last), self.rate * 0.2)
            last = now
            while credit >= 1.0:
                if not self.idle:
                    self.starved += 1
                    break
                name = self.idle.popleft()
                credit -= 1.0
                self.live += 1
                started += 1
                tk = loop.create_task(self._one(name))
                tasks.add(tk)
                tk.add_done_callback(tasks.discard)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + self.hold + 10
        while self.live > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {"started": started, "elapsed": elapsed, "records": self.records, "errors": self.errors, "starved": self.starved, "left": self.live}


async def _churn_child(a: argparse.Namespace) -> None:
    from hsb.term.load import _raise_nofile

    _raise_nofile(a.pool + 256)
    host, _, port = a.cp.rpartition(":")
    names = [f"T{i:05d}" for i in range(1, a.pool + 1)]
    ch = _Churn((host, int(port)), names, a.rate, a.hold)
    reader = await stdin_reader()
    line = await reader.readline()  # {"cmd": "go"}
    if not line:
        return
    emit({"ev": "started", "t": time.time()})
    res = await ch.run(a.duration)
    emit({"ev": "done", **res})


def churn_mode(argv: list[str]) -> int:
    """The hidden mode `_churn` (argv[0]) with its arguments: the churn child."""
    p = argparse.ArgumentParser(prog="bench/hsbd.py _churn")
    p.add_argument("--cp", required=True)
    p.add_argument("--pool", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--hold", type=float, required=True)
    p.add_argument("--duration", type=float, required=True)
    from hsb import loop

    loop.run(_churn_child(p.parse_args(argv[1:])))
    return 0


async def seq_lag(base: Path, ring_poll: float, a: argparse.Namespace, d: Path | None = None) -> dict[str, Any]:
    pool = a.pool
    d = d or base / "seq-lag"
    say(
        f"== sequential lag: {a.rate:.0f} logons/s + as many logoffs, hold {a.hold} s, pool {pool}, ring_poll_interval {ring_poll * 1000:.0f} ms ({d})"
    )
    churn: Child | None = None
    adm: Admin | None = None
    try:
        if not (d / "sandbox.json").exists() or not any(sandbox._alive(h["pid"]) for h in sandbox.load_state(d)["hosts"].values()):
            await sandbox.aup(d, terminals=pool, service="echo", timeout=120)
        # host-b's ring poll interval (its config in the sandbox folder; restart it as standby)
        cfg = Path(sandbox.load_state(d)["hosts"]["host-b"]["config"])
        text = cfg.read_text()
        text = re.sub(r"^ring_poll_interval = .*\n", "", text, flags=re.M)
        text = text.replace("[host]\n", f"[host]\nring_poll_interval = {ring_poll!r}\n", 1)
        cfg.write_text(text)
        pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
        os.kill(pid, signal.SIGTERM)
        if not await wait_dead(pid, 10):
            os.kill(pid, signal.SIGKILL)
            await wait_dead(pid, 5)
        sandbox.start_host(d, "host-b", "standby")
        await until(lambda: status(d), lambda s: s["established"], 60, "established", 0.1)
        info = sandbox.describe(d)
        churn = await Child.start(
            [
                sys.executable,
                HSBD,
                "_churn",
                "--cp",
                info["cp"]["terminal"],
                "--pool",
                str(pool),
                "--rate",
                str(a.rate),
                "--hold",
                str(a.hold),
                "--duration",
                str(a.duration),
            ],
            d / f"churn-{int(ring_poll * 1000)}ms.log",
        )
        adm = Admin(info["cp"]["admin"], info["secret_file"])
        await adm.open()
        other = await wait_quiet(a.max_other, a.quiet_wait) if a.quiet_wait > 0 else None
        await churn.send({"cmd": "go"})
        ev = await churn.read(timeout=30)
        assert ev["ev"] == "started", ev
        # poll the CP's sessions until the churn child reports
        present: dict[str, bool] = {}
        appear: dict[str, list[tuple[float, float, float]]] = {}  # name -> [(prev snapshot mid, this mid, bound)]
        a_present: dict[str, bool] = {}
        a_appear: dict[str, list[tuple[float, float, float]]] = {}  # the same for the active session
        spacing: list[float] = []
        rtts: list[float] = []
        prev_mid: float | None = None
        prev_q: float | None = None
        done_task = asyncio.ensure_future(churn.read(timeout=a.duration + a.hold + 60))
        deadline = time.monotonic() + a.duration + a.hold + 60
        while not done_task.done() and time.monotonic() < deadline:
            q = time.time()
            data: dict[str, Any] = {}
            offset: int | None = 0
            while offset is not None:  # (page by page: 4,000 terminals an answer)
                ans = await adm.ask({"t": "sessions", "offset": offset}, timeout=10)
                data.update(ans.get("data") or {})
                offset = ans.get("next")
            r = time.time()
            mid = (q + r) / 2
            rtts.append(r - q)
            now_present = {name for name, v in data.items() if v.get("standby")}
            now_active = {name for name, v in data.items() if v.get("active")}
            if prev_mid is not None:
                spacing.append(mid - prev_mid)
                for cur, was, book in ((now_present, present, appear), (now_active, a_present, a_appear)):
                    for name in cur:
                        if not was.get(name):
                            # absent at the previous poll (state taken in [prev_q, ...]), present now (by r)
                            book.setdefault(name, []).append((prev_mid, mid, (r - prev_q) / 2))
            for cur, was in ((now_present, present), (now_active, a_present)):
                for name in list(was):
                    was[name] = name in cur
                for name in cur:
                    was[name] = True
            prev_mid, prev_q = mid, q
            if a.poll > 0:
                await asyncio.sleep(a.poll)
        done = await done_task
    finally:
        if adm is not None:
            await adm.close()
        if churn is not None:
            await churn.stop()
    recs = done["records"]
    lags: list[float] = []
    lags2: list[float] = []  # both ends seen by the poller
    bounds: list[float] = []
    unmatched = 0
    for name, t_conn, t_open, t_bye in recs:
        if t_open is None:
            continue
        # this logon's standby session: the first appearance after it connected, before its logoff (+1 s)
        cands = [x for x in appear.get(name, []) if x[1] >= t_conn and (t_bye is None or x[0] <= t_bye + 1.0)]
        if not cands:
            unmatched += 1
            continue
        lo, hi, bound = cands[0]
        lags.append(((lo + hi) / 2 - t_open) * 1000)
        bounds.append(bound * 1000)
        acands = [x for x in a_appear.get(name, []) if x[1] >= t_conn and x[0] <= hi]
        if acands:
            lags2.append(((lo + hi) / 2 - (acands[0][0] + acands[0][1]) / 2) * 1000)
    opened = sum(1 for r in recs if r[2] is not None)
    res = {
        "ring_poll_ms": ring_poll * 1000,
        "others_cpu": None if other is None else round(other, 2),
        "rate": a.rate,
        "hold": a.hold,
        "pool": pool,
        "logons": opened,
        "achieved_logons_per_s": round(done["started"] / done["elapsed"], 1) if done["elapsed"] else None,
        "matched": len(lags),
        "unmatched": unmatched,
        "errors": done["errors"],
        "starved": done["starved"],
        "lag_ms": {
            "p50": pctl(lags, 50),
            "p90": pctl(lags, 90),
            "p99": pctl(lags, 99),
            "max": max(lags) if lags else None,
            "min": min(lags) if lags else None,
            "mean": sum(lags) / len(lags) if lags else None,
        },
        "lag_polled_both_ms": {"p50": pctl(lags2, 50), "p99": pctl(lags2, 99), "count": len(lags2)},
        "negative": sum(1 for x in lags if x < 0),
        "poll_spacing_ms": {"median": (median(spacing) or 0) * 1000, "p99": (pctl(spacing, 99) or 0) * 1000},
        "poll_rtt_ms": {"median": (median(rtts) or 0) * 1000, "p99": (pctl(rtts, 99) or 0) * 1000},
        "error_bound_ms": {"median": median(bounds), "p99": pctl(bounds, 99)},
    }
    lg = res["lag_ms"]
    say(
        f"   {opened} logons ({res['achieved_logons_per_s']}/s), matched {len(lags)}, unmatched {unmatched}; lag p50 {fmt_ms(lg['p50'], 1)}"
        f" p99 {fmt_ms(lg['p99'], 1)} max {fmt_ms(lg['max'], 1)} ms; poll every {res['poll_spacing_ms']['median']:.1f} ms"
        f" (rtt {res['poll_rtt_ms']['median']:.1f} ms), error ±{fmt_ms(res['error_bound_ms']['median'], 1)} ms; errors {done['errors']}"
    )
    return res
