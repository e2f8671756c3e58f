"""Benchmark of the session takeover file (SPEC §4), figures for BENCHMARKS.md.

    .venv/bin/python bench/takeover.py [--dir /var/tmp] [--repeat 5] [--json FILE]
                                       [--no-write] [--render FILE [--write]]

Measures, on a real disk path (default: a temp dir under /var/tmp; not tmpfs):
- batch write + batch read of 10,000 and 100,000 terminals, syncs included
  (goal: 100,000 in under 1 s);
- ring throughput with group commit, in durable session changes per second
  (goal: >= 20,000/s), beside the same workload with one sync per change, and
  the ratio of the two from the same run;
- a standby reader draining the ring, and the asyncio facade's group commit
  with many concurrent callers.

The raw results go to `bench/results/takeover.json` (`--json FILE` elsewhere); the section
"Takeover file (`bench/takeover.py`)" of BENCHMARKS.md is written from them (not with
`--no-write`), and `--render FILE` rebuilds it from such a file alone, without measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import structlog  # noqa: E402
from _sandbox import machine, machine_line, result_args, run_or_render, table, write_section  # noqa: E402

from hsb.takeover import (  # noqa: E402
    PollStatus,
    RingReader,
    SessionEntry,
    TakeoverStore,
    TakeoverWriter,
    batch_read,
    batch_records_for,
    create_file,
)

COMMAND = ".venv/bin/python bench/takeover.py"
RESULTS = Path(__file__).resolve().parent / "results" / "takeover.json"
SECTION = "Takeover file (`bench/takeover.py`)"
GOAL_BATCH_S = 1.0  # 100,000 terminals written and read back
GOAL_RING_PER_S = 20_000.0  # durable session changes per second with group commit


def entries(n: int) -> list[SessionEntry]:
    return [SessionEntry(f"T{i:06d}", {"protocol": "lu6.2", "code_page": 932, "max_msg": 4096, "profile": "till"}, True) for i in range(n)]


def fs_of(path: str) -> str:
    best, fstype, dev = "", "?", "?"
    with open("/proc/mounts") as f:
        for line in f:
            d, mnt, typ = line.split()[:3]
            if path.startswith(mnt) and len(mnt) > len(best):
                best, fstype, dev = mnt, typ, d
    return f"{fstype} on {dev} (mounted at {best})"


def bench_batch(d: str, n: int, repeat: int) -> dict[str, Any]:
    b = batch_records_for(n)
    path = os.path.join(d, f"batch-{n}.dat")
    create_file(path, 3 * b + 1, 4096, host="bench")
    data = entries(n)
    writes, reads, totals = [], [], []
    with TakeoverWriter(path, terminals=n) as w:
        for _ in range(repeat):
            t0 = time.perf_counter()
            w.batch_write(1, data)
            t1 = time.perf_counter()
            snap = batch_read(path)
            t2 = time.perf_counter()
            assert len(snap.entries) == n
            writes.append(t1 - t0)
            reads.append(t2 - t1)
            totals.append(t2 - t0)
    os.unlink(path)
    return {
        "terminals": n,
        "batch_records": b,
        "bytes": b * 4096,
        "write_s": statistics.median(writes),
        "read_s": statistics.median(reads),
        "total_s": statistics.median(totals),
        "total_best_s": min(totals),
    }


def bench_ring(d: str, changes: int, group: int, per_change: int) -> dict[str, Any]:
    terminals = 100_000
    b = batch_records_for(terminals)
    path = os.path.join(d, "ring.dat")
    create_file(path, 3 * b + 1, 4096, host="bench")
    data = entries(terminals)
    out: dict[str, Any] = {"records": 3 * b + 1, "ring_slots": 2 * b}
    with TakeoverWriter(path, terminals=terminals) as w:
        w.batch_write(1, [])
        # group commit: `size` changes per append, one sync each
        out["groups"] = []
        for size in (15, 100, group):
            total = min(changes, 1000 * size)
            t0 = time.perf_counter()
            done = 0
            while done < total:
                chunk = data[done % terminals : done % terminals + size]
                w.append_group(chunk)
                done += len(chunk)
            t = time.perf_counter() - t0
            out["groups"].append({"changes": done, "group_size": size, "syncs": -(-done // size), "s": t, "per_s": done / t})
        out["group"] = out["groups"][-1]
        # the same workload with one sync per change
        t0 = time.perf_counter()
        for i in range(per_change):
            w.append_group(data[i : i + 1])
        t_one = time.perf_counter() - t0
        out["one_sync_per_change"] = {"changes": per_change, "s": t_one, "per_s": per_change / t_one}
        out["ratio"] = out["group"]["per_s"] / out["one_sync_per_change"]["per_s"]
        # a standby draining what the writer just wrote (the newest K records)
        w.batch_write(2, [])
        w.append_group(data[:changes] if changes <= terminals else data)
        snap = batch_read(path)
        r = RingReader(path, snap.header, max_records=256)
        t0 = time.perf_counter()
        got = 0
        while True:
            res = r.poll()
            if res.status is not PollStatus.NEW:
                break
            got += len(res.entries)
        t_read = time.perf_counter() - t0
        out["reader"] = {"changes": got, "s": t_read, "per_s": got / t_read if t_read else 0.0}
    os.unlink(path)
    return out


async def bench_store(d: str, callers: int) -> dict[str, Any]:
    path = os.path.join(d, "store.dat")
    create_file(path, 3 * batch_records_for(callers) + 1, 4096, host="bench")
    store = TakeoverStore(path, terminals=callers, timeout=10)
    data = entries(callers)
    await store.batch_write(1, [])
    t0 = time.perf_counter()
    await asyncio.gather(*(store.append([e]) for e in data))
    t = time.perf_counter() - t0
    await store.close()
    os.unlink(path)
    return {"callers": callers, "s": t, "per_s": callers / t}


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone."""
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{RESULTS.name}` (`--render` rebuilds these tables).",
        "",
        f"Machine: {machine_line(a.machine)}. Disk: {res['filesystem']} (a temporary directory, `{res['dir']}`); syncs are `fdatasync`.",
        "",
        f"Batch write + batch read, R = 4096 (E = 15), syncs included, median of {res['repeat']} run{'s' if res['repeat'] != 1 else ''}"
        " (write = encode, pwrite records 1..B, sync, header, sync; read = fresh open, header, B records with"
        " checksum/generation checks, decode):",
        "",
    ]
    rows = []
    for x in res["batch"]:
        big = x["terminals"] >= 100_000
        tot = f"{x['total_s'] * 1000:,.0f} ms"
        rows.append(
            [
                f"{x['terminals']:,}",
                f"{x['batch_records']:,}",
                f"{x['bytes'] / 2**20:.1f} MiB",
                f"{x['write_s'] * 1000:,.0f} ms",
                f"{x['read_s'] * 1000:,.0f} ms",
                f"**{tot}**" if big else tot,
                f"{x['total_best_s'] * 1000:,.0f} ms",
            ]
        )
    out.append(table(["terminals", "B", "data", "write", "read", "write + read (median)", "best"], rows, "rrrrrrr"))
    big = [x for x in res["batch"] if x["terminals"] >= 100_000]
    if big:
        x = max(big, key=lambda x: x["terminals"])
        met = x["total_s"] <= GOAL_BATCH_S
        out += [
            "",
            f"Goal ({x['terminals']:,} in under {GOAL_BATCH_S:g} s): {x['total_s'] * 1000:,.0f} ms median (**{'met' if met else 'missed'}**).",
        ]
    ring = res["ring"]
    o, rd, s = ring["one_sync_per_change"], ring["reader"], res["store"]
    out += ["", "Ring (sequential area), durable session changes per second, same run:", ""]
    rows = []
    for g in sorted(ring["groups"], key=lambda g: -g["group_size"]):
        rows.append(
            [
                f"group commit, {g['group_size']:,} changes per group",
                f"{g['per_s']:,.0f}",
                f"{g['changes']:,} changes, {g['syncs']:,} syncs, {g['s']:.2f} s",
            ]
        )
    rows.append(["one sync per change", f"{o['per_s']:,.0f}", f"{o['changes']:,} changes, {o['s']:.2f} s"])
    rows.append([f"**ratio, group of {ring['group']['group_size']:,} / one sync per change**", f"**{ring['ratio']:.0f}×**", ""])
    rows.append(
        ["standby `RingReader` draining the ring (256 records per poll)", f"{rd['per_s']:,.0f}", f"{rd['changes']:,} changes, {rd['s']:.2f} s"]
    )
    rows.append(
        [
            f"asyncio facade, {s['callers']:,} concurrent `await store.append([change])`",
            f"{s['per_s']:,.0f}",
            f"{s['s']:.2f} s, gathered into groups automatically",
        ]
    )
    out.append(table(["workload", "changes/s", ""], rows, "lrl"))
    worst = min(g["per_s"] for g in ring["groups"])
    met = worst >= GOAL_RING_PER_S
    out += [
        "",
        f"Goal (≥ {GOAL_RING_PER_S:,.0f} durable changes/s with group commit): **{'met' if met else 'missed'}**"
        f" ({'with every group size measured' if met else 'not with every group size'}; the smallest group"
        f" gave {worst:,.0f}/s).",
    ]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    d = tempfile.mkdtemp(prefix="hsb-bench-", dir=a.dir)
    try:
        res: dict[str, Any] = {
            "dir": d,
            "filesystem": fs_of(os.path.realpath(d)),
            "repeat": a.repeat,
            "batch": [bench_batch(d, n, a.repeat) for n in (10_000, 100_000)],
            "ring": bench_ring(d, changes=200_000, group=1_000, per_change=5_000),
            "store": await bench_store(d, 20_000),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": a.machine, "command": a.command, "results": res}, indent=1) + "\n")
    print(f"takeover file benchmark: {res['dir']} ({res['filesystem']}), {a.machine['cores']} CPUs, Python {a.machine['python']}")
    print("\nbatch write + read (record size 4096, E=15, fdatasync included; median of", a.repeat, "runs)")
    print(f"  {'terminals':>9}  {'B':>5}  {'MiB':>5}  {'write':>8}  {'read':>8}  {'total':>8}  {'best':>8}")
    for x in res["batch"]:
        print(
            f"  {x['terminals']:>9,}  {x['batch_records']:>5}  {x['bytes'] / 2**20:>5.1f}  {x['write_s'] * 1000:>6.0f}ms  "
            f"{x['read_s'] * 1000:>6.0f}ms  {x['total_s'] * 1000:>6.0f}ms  {x['total_best_s'] * 1000:>6.0f}ms"
        )
    o, rd = res["ring"]["one_sync_per_change"], res["ring"]["reader"]
    print("\nring (sequential area), durable session changes per second")
    for x in res["ring"]["groups"]:
        label = f"group commit, {x['group_size']:,} changes/group:"
        print(f"  {label:<35}{x['per_s']:>10,.0f}/s  ({x['changes']:,} changes, {x['syncs']:,} syncs, {x['s']:.2f}s)")
    print(f"  one sync per change:               {o['per_s']:>10,.0f}/s  ({o['changes']:,} changes, {o['s']:.2f}s)")
    print(f"  ratio group / per-change:          {res['ring']['ratio']:>10.1f}x")
    print(f"  standby reader draining the ring:  {rd['per_s']:>10,.0f}/s  ({rd['changes']:,} changes, {rd['s']:.2f}s)")
    s = res["store"]
    print(f"  asyncio facade, {s['callers']:,} concurrent append() callers: {s['per_s']:,.0f}/s ({s['s']:.2f}s)")
    text = render(res, a)
    print()
    print(text)
    print(f"raw results: {a.json}", file=sys.stderr)
    if a.write:
        write_section(SECTION, text)
        print("written to BENCHMARKS.md", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/takeover.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to measure (default /var/tmp)")
    ap.add_argument("--repeat", type=int, default=5)
    result_args(ap, RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved["results"], a), amain)


if __name__ == "__main__":
    sys.exit(main())
