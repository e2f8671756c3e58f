"""The sandbox a bench measures: its daemons' logs read as they grow (LogTail, Logs), their
status and the admin connection (Admin), waiting for a condition (until), and stopping it with
nothing left behind (sandbox_down).

It is also the benches' one import: what they use of bench/_report.py (the machine, numbers,
tables, results, BENCHMARKS.md), bench/_procs.py (child processes, CPU), bench/_entry.py (a
bench's entry), bench/_load.py (the load child) and bench/_interrupt.py is named here too.

Everything here talks to 127.0.0.1 only (the sandbox binds loopback ports). Timestamps are
wall-clock seconds (`time.time()`): the daemons' JSON logs carry ISO UTC timestamps with
microseconds from the same clock, so times taken in different processes can be compared.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._entry import bench_args, bench_main, byte_compile, child_main, run_child, run_modes, run_or_render  # noqa: E402
from bench._interrupt import exit_status, stop_on_signals  # noqa: E402
from bench._load import fault_window_failures, run_ok, run_verdict, start_load  # noqa: E402
from bench._procs import Child, alive, emit, others_cpu, proc_cpu, reap, stdin_reader, tree_cpu, wait_dead, wait_quiet  # noqa: E402
from bench._report import (  # noqa: E402
    BENCHMARKS,
    fmt_ms,
    latencies,
    machine,
    machine_line,
    median,
    pctl,
    raw_name,
    report,
    result_args,
    save_results,
    say,
    section_head,
    table,
    write_json,
    write_section,
)
from hsb.ctl import sandbox  # noqa: E402
from hsb.ctl.gather import status_all  # noqa: E402
from hsb.wire.auth import load_secret  # noqa: E402
from hsb.wire.client import FrameStream  # noqa: E402

__all__ = [
    "BENCHMARKS",
    "REPO",
    "Admin",
    "Child",
    "LogTail",
    "Logs",
    "alive",
    "bench_args",
    "bench_main",
    "byte_compile",
    "child_main",
    "emit",
    "exit_status",
    "fault_window_failures",
    "fmt_ms",
    "host_by_role",
    "latencies",
    "machine",
    "machine_line",
    "median",
    "others_cpu",
    "pctl",
    "proc_cpu",
    "raw_name",
    "reap",
    "report",
    "result_args",
    "run_child",
    "run_modes",
    "run_ok",
    "run_or_render",
    "run_verdict",
    "sandbox",
    "sandbox_down",
    "save_results",
    "say",
    "section_head",
    "start_load",
    "status",
    "stdin_reader",
    "stop_on_signals",
    "table",
    "tree_cpu",
    "ts",
    "until",
    "wait_dead",
    "wait_quiet",
    "write_json",
    "write_section",
]


# --------------------------------------------------------------------------- logs


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class LogTail:
    """The JSON-lines log of one daemon, read incrementally (the sandbox appends across restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def mark(self) -> int:
        """Forget what was read; later `read()`s return only lines written from now on."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.events = []
        return self.offset

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return self.events
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return self.events
        chunk, self.offset = data[: end + 1], self.offset + end + 1
        for line in chunk.splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if "timestamp" in e:
                e["_t"] = ts(e["timestamp"])
            self.events.append(e)
        return self.events

    def find(self, name: str, after: float = 0.0, last: bool = False, **match: Any) -> dict[str, Any] | None:
        hits = [e for e in self.read() if e.get("event") == name and e.get("_t", 0) >= after and all(e.get(k) == v for k, v in match.items())]
        if not hits:
            return None
        return hits[-1] if last else hits[0]


class Logs:
    def __init__(self, d: Path) -> None:
        self.cp = LogTail(d / "cp.log")
        self.hosts = {n: LogTail(d / f"{n}.log") for n in sandbox.HOSTS}

    def __getitem__(self, name: str) -> LogTail:
        return self.cp if name == "cp" else self.hosts[name]

    def mark(self) -> None:
        self.cp.mark()
        for h in self.hosts.values():
            h.mark()


# --------------------------------------------------------------------------- status


async def status(d: Path, timeout: float = 2.0) -> dict[str, Any]:
    st = sandbox.load_state(d)
    return await status_all(
        st["cp"]["admin"], [h["admin"] for h in st["hosts"].values()], str(d / "secret"), timeout=timeout, ssl=sandbox.client_ssl(d)
    )


async def until(probe: Callable[[], Any], pred: Callable[[Any], bool], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call the async `probe()` until `pred(result)`; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if pred(last):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def host_by_role(st: dict[str, Any], role: str) -> str | None:
    for h in st["hosts"]:
        if h.get("reachable") and h.get("role") == role and h.get("state") not in ("fenced", "stopping"):
            return str(h["name"])
    return None


class Admin:
    """One authenticated admin connection kept open for many requests (cheap to poll)."""

    def __init__(self, addr: str, secret_file: str) -> None:
        h, _, p = addr.rpartition(":")
        self.host, self.port = h, int(p)
        self.secret = load_secret(secret_file)
        self.fs: FrameStream | None = None

    async def open(self) -> None:
        self.fs = await FrameStream.connect(self.host, self.port, timeout=5.0, max_frame=64 << 20)
        await self.fs.authenticate(self.secret, "admin", "bench", timeout=5.0)

    async def ask(self, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        if self.fs is None:
            await self.open()
        assert self.fs is not None
        self.fs.send(msg)
        await self.fs.drain()
        return await self.fs.recv(timeout)

    async def close(self) -> None:
        if self.fs is not None:
            await self.fs.aclose()
            self.fs = None


def sandbox_down(d: Path) -> None:
    """`sandbox.down`, then make sure that nothing it ever started is left (SIGKILL stragglers)."""
    try:
        st = sandbox.load_state(d)
    except Exception:
        return
    pids = [p for proc in [st["cp"], *st["hosts"].values()] for p in proc.get("pids", [proc.get("pid")]) if p]
    try:
        for pid in pids:  # a SIGSTOPped daemon must be able to act on SIGTERM
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        sandbox.down(d)
    finally:
        for pid in pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        reap(pids)


if __name__ == "__main__":  # (the load child's command line before it had a module of its own)
    from bench._load import main

    main()
