"""Benchmark of a CP restart's journal replay against the history it holds, for BENCHMARKS.md.

    .venv/bin/python bench/journal_replay.py [--mib 1,4,8] [--terminals 10000] [--reps 3]
                                             [--dir /var/tmp] [--json FILE] [--no-write] [--render FILE [--write]]

A restarted hsbcpd reads every live segment of its journal whole before it listens, and a live
segment holds the history since it began, settled or not (docs/cp-journal.md). Per size, this
writes a journal of one segment holding that much settled traffic (each message's `a`, `r` and
`c` records, 40-byte messages over `--terminals` terminals, `--group` records per group commit as
hsbcpd writes them: 5 under 2,000 msg/s from 10,000 terminals, 1 at a trickle), then times
`hsb.cp.journal.recover()` on it in a fresh read, the garbage collector paused as in hsbcpd: what
the restart spends before it restores anything. How large a live segment grows is
`[cp] journal_segment_kib` (and four times its checkpoint).
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

from hsb import gcpolicy  # noqa: E402
from hsb.cp.journal import recover  # noqa: E402
from hsb.cp.journal.format import group as framed_group  # noqa: E402
from hsb.cp.journal.format import packer  # noqa: E402
from hsb.cp.journal.generation import Generations  # noqa: E402
from hsb.cp.journal.recovery import segment_name  # noqa: E402

COMMAND = ".venv/bin/python bench/journal_replay.py"
RESULTS = Path(__file__).resolve().parent / "results" / "journal_replay.json"
SECTION = "A CP restart's journal replay (`bench/journal_replay.py`)"


async def write_history(d: Path, mib: float, terminals: int, group: int) -> dict[str, Any]:
    """One segment of a new generation, as a serving hsbcpd leaves it (its checkpoint and empty
    snapshot, then the traffic), `group` records per group commit, `mib` MiB of it on disk."""
    gen = Generations(d).take()
    pack = packer()
    parts = [framed_group([pack(["ck", 1, "host-a", gen, {f"T{i:05d}": i for i in range(terminals)}, {"first": 1}]), pack(["se"])])]
    size = len(parts[0])
    n = 0
    data = "x" * 40
    bodies: list[bytes] = []
    while size < mib * 1024 * 1024:
        t = f"T{n % terminals:05d}"
        mid = n // terminals + 1
        bodies += [pack(["a", t, mid, data]), pack(["r", t, mid, data]), pack(["c", t, mid])]
        n += 1
        while len(bodies) >= group:
            parts.append(framed_group(bodies[:group]))
            size += len(parts[-1])
            del bodies[:group]
    if bodies:
        parts.append(framed_group(bodies))
    (d / segment_name(1, gen)).write_bytes(b"".join(parts))
    return {"messages": n, "bytes": sum(len(p) for p in parts), "records_per_group": group}


async def amain(a: argparse.Namespace) -> int:
    gcpolicy.apply()  # as hsbcpd at its start
    base = Path(tempfile.mkdtemp(prefix="hsb-bench-jr-", dir=a.dir))
    rows = []
    try:
        for mib in [float(x) for x in a.mib.split(",")]:
            d = base / f"j{mib:g}"
            d.mkdir()
            w = await write_history(d, mib, a.terminals, a.group)
            runs = []
            for _ in range(a.reps):
                with gcpolicy.paused():  # as hsbcpd recovers (hsb.cp.taking_over)
                    t0 = time.perf_counter()
                    r = recover(d, truncate=False)
                    runs.append(round((time.perf_counter() - t0) * 1000, 1))
                assert r.outstanding == 0 and r.records >= 3 * w["messages"], (r.outstanding, r.records)
            rows.append({"mib": mib, **w, "records": r.records, "recover_ms": runs})
            shutil.rmtree(d, ignore_errors=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res = {"terminals": a.terminals, "reps": a.reps, "dir": a.dir, "group": a.group, "sizes": rows}
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
            f"{statistics.median(r['recover_ms']) * 1000 / r['messages']:,.1f}",
        ]
        for r in res["sizes"]
    ]
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process; a journal of one segment under `{res['dir']}` holding"
                f" settled traffic of {res['terminals']:,} terminals (its checkpoint names them all), {res.get('group', 1)} records per"
                " group commit; the replay"
                f" (`hsb.cp.journal.recover()`) timed {res['reps']} times per size.",
            ),
            "",
            table(["history MiB", "messages", "records", "replay ms (median)", "runs", "ms per MiB", "µs per message"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/journal_replay.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", default="1,4,8", help="history sizes in MiB, comma-separated")
    ap.add_argument("--terminals", type=int, default=10000)
    ap.add_argument("--group", type=int, default=5, help="records per group commit (5: hsbcpd under 2,000 msg/s; 1: each alone)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to use (default /var/tmp)")
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
