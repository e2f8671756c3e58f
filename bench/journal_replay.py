"""Benchmark of a CP restart's journal replay against the history it holds, for BENCHMARKS.md.

    .venv/bin/python bench/journal_replay.py [--mib 1,4,8] [--terminals 10000] [--reps 3]
                                             [--dir /var/tmp] [--json FILE] [--no-write] [--render FILE [--write]]

A restarted hsbcpd reads every live segment of its journal whole before it listens, and a live
segment holds the history since it began, settled or not (docs/cp-journal.md). Per size, this
writes a journal of one segment holding that much settled traffic (each message's `a`, `r` and
`c` records, 40-byte messages over `--terminals` terminals, group commits through
hsb.cp.journal.store.Journal as hsbcpd writes them), then times `hsb.cp.journal.recover()` on it
in a fresh read: what the restart spends before it restores anything. How large a live segment
grows is `[cp] journal_segment_kib` (and four times its checkpoint).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, save_results, section_head, table  # noqa: E402

from hsb.cp.journal import recover  # noqa: E402
from hsb.cp.journal.generation import Generations  # noqa: E402
from hsb.cp.journal.store import Journal  # noqa: E402

COMMAND = ".venv/bin/python bench/journal_replay.py"
RESULTS = Path(__file__).resolve().parent / "results" / "journal_replay.json"
SECTION = "A CP restart's journal replay (`bench/journal_replay.py`)"


async def write_history(d: Path, mib: float, terminals: int) -> dict[str, Any]:
    gen = Generations(d).take()
    j = Journal(d, generation=gen, segment_bytes=1024 * 1024 * 1024)  # one segment, whatever its size
    j.checkpoint = lambda: ["ck", 1, "host-a", gen, {f"T{i:05d}": i for i in range(terminals)}, {}]
    j.open(1, [], [])
    n = 0
    data = "x" * 40
    try:
        while j.size() < mib * 1024 * 1024:
            t = f"T{n % terminals:05d}"
            mid = n // terminals + 1
            j.append(["a", t, mid, data])
            j.append(["r", t, mid, data], lazy=True)
            j.append(["c", t, mid], lazy=True)
            n += 1
            if n % 2000 == 0:
                await j.drain()
        await j.drain()
        return {"messages": n, "bytes": j.size()}
    finally:
        j.close()


async def amain(a: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="hsb-bench-jr-", dir=a.dir))
    rows = []
    try:
        for mib in [float(x) for x in a.mib.split(",")]:
            d = base / f"j{mib:g}"
            d.mkdir()
            w = await write_history(d, mib, a.terminals)
            runs = []
            for _ in range(a.reps):
                t0 = time.perf_counter()
                r = recover(d, truncate=False)
                runs.append(round((time.perf_counter() - t0) * 1000, 1))
                assert r.outstanding == 0 and r.records >= 3 * w["messages"], (r.outstanding, r.records)
            rows.append({"mib": mib, **w, "records": r.records, "recover_ms": runs})
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res = {"terminals": a.terminals, "reps": a.reps, "dir": a.dir, "sizes": rows}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    rows = [
        [
            f"{r['mib']:g}",
            f"{r['messages']:,}",
            f"{r['records']:,}",
            f"{statistics.median(r['recover_ms']):,.0f}",
            ", ".join(f"{x:,.0f}" for x in r["recover_ms"]),
            f"{statistics.median(r['recover_ms']) / (r['bytes'] / 1048576):,.0f}",
        ]
        for r in res["sizes"]
    ]
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process; a journal of one segment under `{res['dir']}` holding"
                f" settled traffic of {res['terminals']:,} terminals (its checkpoint names them all); the replay"
                f" (`hsb.cp.journal.recover()`) timed {res['reps']} times per size.",
            ),
            "",
            table(["history MiB", "messages", "records", "replay ms (median)", "runs", "ms per MiB"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/journal_replay.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", default="1,4,8", help="history sizes in MiB, comma-separated")
    ap.add_argument("--terminals", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to use (default /var/tmp)")
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
