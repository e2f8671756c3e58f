"""A bench's processes: its children speaking JSON lines (`Child`, and the child's own side,
`emit` and `stdin_reader`), whether a process still runs (alive, wait_dead, reap), and the CPU
that processes use (given ones, a process tree, everything that is not this bench).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox

# --------------------------------------------------------------------------- processes


_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_by_pid() -> dict[int, float]:
    out: dict[int, float] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        f = raw[raw.rindex(b")") + 2 :].split()
        out[int(e)] = (int(f[11]) + int(f[12])) / _TCK
    return out


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes together (gone ones: 0)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
            f = raw[raw.rindex(b")") + 2 :].split()
            total += (int(f[11]) + int(f[12])) / _TCK
        except (OSError, ValueError, IndexError):
            pass
    return total


def _ancestry(pid: int) -> list[int]:
    chain: list[int] = []
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
            pid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError):
            break
    return chain


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every process below it, so far."""
    return sum(t for pid, t in _cpu_by_pid().items() if root in _ancestry(pid))


async def others_cpu(window: float = 1.0) -> float:
    """Cores used by processes that are not this benchmark or its descendants, over `window` s."""
    me = os.getpid()
    a = _cpu_by_pid()
    await asyncio.sleep(window)
    b = _cpu_by_pid()
    used = 0.0
    for pid, t in b.items():
        if pid == me or me in _ancestry(pid):
            continue
        used += max(0.0, t - a.get(pid, t))
    return used / window


async def wait_quiet(max_other: float, max_wait: float, window: float = 1.0) -> float:
    """Wait (up to `max_wait` s) until other processes use less than `max_other` cores; returns the last figure."""
    deadline = time.monotonic() + max_wait
    while True:
        o = await others_cpu(window)
        if o <= max_other or time.monotonic() > deadline:
            return o


def alive(pid: int) -> bool:
    return sandbox._alive(pid)


async def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def reap(pids: list[int]) -> None:
    """Collect these exited children (the sandbox spawns the daemons as our children);
    only these pids, so the exit status of other children (asyncio subprocesses) is not stolen."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


class Child:
    """A child process of this benchmark speaking JSON lines (commands on stdin, events on
    stdout), its stderr into `log`. `stop()` closes its stdin (the child exits on EOF) and kills
    it if it is still there `STOP_S` later. It dies with the bench, however the bench dies. The
    class settings are a subclass's to change (bench/_common.py's, for bench/cp.py's children)."""

    LIMIT = 1 << 26  # the longest line read from it
    OWN_SESSION = True  # in a session of its own (its whole group killed at the stop)
    READ_S = 120.0  # how long `read` waits for a line by default
    STOP_S = 30.0  # how long `stop` waits for it to exit by itself by default

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, fh: Any) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        self._fh = fh

    @classmethod
    async def start(cls, argv: list[str], log: Path) -> Child:
        fh = open(log, "ab")  # noqa: SIM115 - the child's log, closed by its owner
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=fh,
            limit=cls.LIMIT,
            start_new_session=cls.OWN_SESSION,
            preexec_fn=sandbox.dies_with(os.getpid()),  # (a killed bench's too)
        )
        return cls(proc, log, fh)

    async def read(self, timeout: float | None = None) -> dict[str, Any]:
        """The next JSON line from the child; RuntimeError if it died first."""
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), self.READ_S if timeout is None else timeout)
        if not line:
            await asyncio.wait_for(self.proc.wait(), 5)
            raise RuntimeError(f"child {self.pid} exited ({self.proc.returncode}); log {self.log}:\n{self.log.read_text()[-3000:]}")
        got: dict[str, Any] = json.loads(line)
        return got

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()

    async def ask(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """`send`, then the child's answer (`read`)."""
        await self.send(msg)
        return await self.read(timeout)

    async def stop(self, timeout: float | None = None) -> None:
        if self.proc.returncode is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()  # EOF: the child exits by itself
                await asyncio.wait_for(self.proc.wait(), self.STOP_S if timeout is None else timeout)
            except (TimeoutError, OSError):
                pass
        if self.proc.returncode is None:
            try:
                if self.OWN_SESSION:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    self.proc.kill()
            except ProcessLookupError:
                pass
            await self.proc.wait()
        self._fh.close()


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader
