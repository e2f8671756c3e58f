"""Benchmark of one CP journal group commit at a low message rate, figures for BENCHMARKS.md.

    .venv/bin/python bench/journal_groups.py [--groups 3000] [--reps 5] [--dir /var/tmp]
                                             [--json FILE] [--no-write] [--render FILE [--write]]

At a low message rate nearly every message is a group commit of its own, so what a group costs
beyond its `fdatasync` is paid per message. In-process, on the daemons' event loop (uvloop), on a
real disk path, interleaved in every repetition:

- `journal`: hsb.cp.journal.store.Journal, one record appended and awaited until durable, N times
  in a row (what hsbcpd runs);
- `worker`: the hand-off alone, hsb.worker.Worker.call with a no-op (the journal's writer thread);
- `executor`: the hand-off the journal used before, loop.run_in_executor with a no-op;
- `inline`: one 100-byte pwrite + fdatasync on the loop's own thread (the disk, no hand-off).

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
KINDS = ("journal", "worker", "executor", "inline")


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
    worker = Worker("bench-worker") if Worker is not None else None
    fd = os.open(d / "inline", os.O_WRONLY | os.O_CREAT, 0o600)
    payload = b"x" * 100

    async def journal(i: int) -> None:
        f = loop.create_future()
        j.append(["a", "T00001", i + 1, payload], lambda: f.set_result(None))
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
        out = {}
        for kind, fn in (("journal", journal), ("worker", handoff), ("executor", executor), ("inline", inline)):
            if kind != "worker" or worker is not None:
                out[kind] = await timed(n, fn)
        out["journal"]["syncs"] = j.syncs
        return out
    finally:
        j.close()
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
            " commit of its own, as at a low message rate); `worker`: the writer thread's hand-off alone"
            " (hsb.worker.Worker.call, no work); `executor`: `loop.run_in_executor` with no work, the hand-off the"
            " journal used before; `inline`: one 100-byte `pwrite` + `fdatasync` on the loop's thread."
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
