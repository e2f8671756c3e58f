"""Benchmark of one CP journal group commit at a low message rate, figures for BENCHMARKS.md.

    .venv/bin/python bench/journal_groups.py [--groups 3000] [--reps 5] [--dir /var/tmp]
                                             [--json FILE] [--no-write] [--render FILE [--write]]

At a low message rate nearly every message is a group commit of its own, so what a group costs
beyond its `fdatasync` is paid per message. In-process, on the daemons' event loop (uvloop), on a
real disk path, interleaved in every repetition:

- `journal`: hsb.cp.journal.store.Journal, one record appended and awaited until durable, N times
  in a row (what hsbcpd runs: `journal_io = "auto"`, io_uring where the kernel runs it);
- `journal-thread`: the same with `journal_io = "thread"` (the writer thread);
- `worker`: the hand-off alone, hsb.worker.Worker.call with a no-op (the journal's writer thread);
- `executor`: the hand-off the journal used before, loop.run_in_executor with a no-op;
- `inline`: one 100-byte pwrite + fdatasync on the loop's own thread (the disk, no hand-off);
- `aio`: the same pwrite on the loop's thread, the fdatasync through Linux native AIO
  (`IOCB_CMD_FDSYNC`, done by the kernel's worker, its completion an eventfd the loop polls): a
  probe of a group commit with no thread and no GIL hand-off. Not what hsbcpd runs: the write
  itself stays on the loop (buffered AIO writes run inside io_submit, and this kernel refuses
  RWF_NOWAIT for buffered ext4 writes), which the journal must not do (a hung mount would stop
  the loop).

CPU is this process's user + system time (every thread), per call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, save_results, section_head, table  # noqa: E402

from hsb.cp.journal.generation import Generations  # noqa: E402
from hsb.cp.journal.store import Journal  # noqa: E402

try:
    from hsb.worker import Worker  # noqa: E402
except ImportError:  # the code before the writer thread (a side-by-side run of the old journal)
    Worker = None  # type: ignore[assignment,misc]

COMMAND = ".venv/bin/python bench/journal_groups.py"
RESULTS = Path(__file__).resolve().parent / "results" / "journal_groups.json"
SECTION = "One CP journal group commit (`bench/journal_groups.py`)"
KINDS = ("journal", "journal-thread", "worker", "executor", "inline", "aio")


class LinuxAIO:
    """io_setup/io_submit/io_getevents by system call (x86-64 numbers), one fdatasync at a time,
    its completion signalled on an eventfd that the loop watches. For this benchmark only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        import ctypes
        import platform

        if sys.platform != "linux" or platform.machine() != "x86_64":
            raise OSError("Linux AIO probe: x86-64 Linux only")
        c = ctypes

        class IOCB(c.Structure):
            _fields_ = [
                ("data", c.c_uint64), ("key", c.c_uint32), ("rw_flags", c.c_int32), ("opcode", c.c_uint16), ("reqprio", c.c_int16),
                ("fildes", c.c_uint32), ("buf", c.c_uint64), ("nbytes", c.c_uint64), ("offset", c.c_int64), ("reserved2", c.c_uint64),
                ("flags", c.c_uint32), ("resfd", c.c_uint32),
            ]  # fmt: skip

        class Event(c.Structure):
            _fields_ = [("data", c.c_uint64), ("obj", c.c_uint64), ("res", c.c_int64), ("res2", c.c_int64)]

        self.c = c
        self.libc = c.CDLL(None, use_errno=True)
        self.ctx = c.c_ulong(0)
        if self.libc.syscall(206, 8, c.byref(self.ctx)) != 0:  # io_setup
            raise OSError(c.get_errno(), "io_setup")
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.cb = IOCB()
        self.cbs = (c.POINTER(IOCB) * 1)(c.pointer(self.cb))
        self.events = (Event * 4)()
        self.nowait = (c.c_long * 2)(0, 0)
        self.waiter: asyncio.Future[None] | None = None
        self.loop = loop
        loop.add_reader(self.efd, self._completed)

    async def fdatasync(self, fd: int) -> None:
        c, cb = self.c, self.cb
        c.memset(c.byref(cb), 0, c.sizeof(cb))
        cb.opcode, cb.fildes, cb.flags, cb.resfd = 3, fd, 1, self.efd  # IOCB_CMD_FDSYNC, IOCB_FLAG_RESFD
        self.waiter = self.loop.create_future()
        if self.libc.syscall(209, self.ctx, 1, self.cbs) != 1:  # io_submit
            raise OSError(c.get_errno(), "io_submit")
        await self.waiter

    def _completed(self) -> None:
        os.eventfd_read(self.efd)
        n = self.libc.syscall(208, self.ctx, 0, 4, self.events, self.nowait)  # io_getevents, no wait
        for i in range(max(n, 0)):
            w, self.waiter = self.waiter, None
            if w is not None and not w.done():
                res = self.events[i].res
                w.set_exception(OSError(-res, "aio fdatasync")) if res < 0 else w.set_result(None)

    def close(self) -> None:  # nothing is in flight here (each call was awaited)
        self.loop.remove_reader(self.efd)
        os.close(self.efd)
        self.libc.syscall(207, self.ctx)  # io_destroy


async def timed(n: int, one: Callable[[int], Awaitable[None]]) -> dict[str, float]:
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        await one(i)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    us = 1e6 / n
    return {
        "wall_us": round((t1 - t0) * us, 1),
        "user_us": round((r1.ru_utime - r0.ru_utime) * us, 1),
        "sys_us": round((r1.ru_stime - r0.ru_stime) * us, 1),
        "cpu_us": round((r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) * us, 1),
    }


async def one_rep(d: Path, n: int) -> dict[str, dict[str, float]]:
    loop = asyncio.get_running_loop()
    jd = d / f"journal-{time.monotonic_ns()}"
    j = Journal(jd, generation=Generations(jd).take())
    j.open(1, [], [])
    try:
        jtd = d / f"journal-thread-{time.monotonic_ns()}"
        jt: Journal | None = Journal(jtd, generation=Generations(jtd).take(), io="thread")
    except TypeError:  # the code before journal_io: its journal is the thread's
        jt = None
    if jt is not None:
        jt.open(1, [], [])
    worker = Worker("bench-worker") if Worker is not None else None
    fd = os.open(d / "inline", os.O_WRONLY | os.O_CREAT, 0o600)
    payload = b"x" * 100

    async def journal(i: int) -> None:
        f = loop.create_future()
        j.append(["a", "T00001", i + 1, payload], lambda: f.set_result(None))
        await f

    async def journal_thread(i: int) -> None:
        assert jt is not None
        f = loop.create_future()
        jt.append(["a", "T00001", i + 1, payload], lambda: f.set_result(None))
        await f

    async def handoff(i: int) -> None:
        assert worker is not None
        f = loop.create_future()
        worker.call(int, lambda res, exc: f.set_result(None))
        await f

    async def executor(i: int) -> None:
        await loop.run_in_executor(None, int)

    async def inline(i: int) -> None:
        os.pwrite(fd, payload, 0)
        os.fdatasync(fd)

    try:
        aio: LinuxAIO | None = LinuxAIO(loop)
    except OSError as exc:
        print(f"aio: not measured ({exc})", file=sys.stderr)
        aio = None

    async def aio_sync(i: int) -> None:
        assert aio is not None
        os.pwrite(fd, payload, 0)
        await aio.fdatasync(fd)

    try:
        out = {}
        kinds = (
            ("journal", journal),
            ("journal-thread", journal_thread),
            ("worker", handoff),
            ("executor", executor),
            ("inline", inline),
            ("aio", aio_sync),
        )
        for kind, fn in kinds:
            if (kind != "worker" or worker is not None) and (kind != "aio" or aio is not None) and (kind != "journal-thread" or jt is not None):
                out[kind] = await timed(n, fn)
        out["journal"]["syncs"] = j.syncs
        out["journal"]["io"] = getattr(j, "io_used", "thread")  # type: ignore[assignment]
        return out
    finally:
        if aio is not None:
            aio.close()
        j.close()
        if jt is not None:
            jt.close()
            shutil.rmtree(jtd, ignore_errors=True)
        if worker is not None:
            worker.shutdown(wait=True)
        os.close(fd)
        shutil.rmtree(jd, ignore_errors=True)


async def amain(a: argparse.Namespace) -> int:
    d = Path(tempfile.mkdtemp(prefix="hsb-bench-jg-", dir=a.dir))
    try:
        reps = [await one_rep(d, a.groups) for _ in range(a.reps)]
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res = {"groups": a.groups, "reps": reps, "dir": a.dir}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    def med(kind: str, key: str) -> float:
        return statistics.median(r[kind][key] for r in res["reps"])

    kinds = [k for k in KINDS if all(k in r for r in res["reps"])]
    rows = [[k, f"{med(k, 'wall_us'):,.0f}", f"{med(k, 'user_us'):,.0f}", f"{med(k, 'sys_us'):,.0f}", f"{med(k, 'cpu_us'):,.0f}"] for k in kinds]
    ratios = [r["executor"]["cpu_us"] / r["worker"]["cpu_us"] for r in res["reps"] if r.get("worker", {}).get("cpu_us")] or [float("nan")]
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process on uvloop, a temporary directory under `{res['dir']}`;"
                f" {res['groups']:,} calls in a row per kind, the kinds interleaved in each of {len(res['reps'])} repetitions;"
                " µs per call, median of the repetitions (CPU: this process, every thread).",
            ),
            "",
            table(["kind", "wall µs", "user µs", "system µs", "CPU µs"], rows),
            "",
            "`journal`: one record appended to hsb.cp.journal.store.Journal and awaited until durable (a group"
            " commit of its own, as at a low message rate), through"
            f" {'io_uring' if all(r['journal'].get('io') == 'io_uring' for r in res['reps']) else 'the writer thread'};"
            ' `journal-thread` (where measured): the same with `journal_io = "thread"`; `worker`: the writer thread\'s hand-off alone'
            " (hsb.worker.Worker.call, no work); `executor`: `loop.run_in_executor` with no work, the hand-off the"
            " journal used before; `inline`: one 100-byte `pwrite` + `fdatasync` on the loop's thread;"
            " `aio` (where measured): the same `pwrite` on the loop's thread and the `fdatasync` through Linux"
            " native AIO, its completion polled by the loop (a probe: no thread, no GIL hand-off; the CPU of the"
            " kernel worker that runs the sync is not this process's)."
            f" The executor's hand-off costs {statistics.median(ratios):.1f}x the worker's CPU (median of the"
            " repetitions' ratios).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/journal_groups.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to measure (default /var/tmp)")
    ap.add_argument("--groups", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=5)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
