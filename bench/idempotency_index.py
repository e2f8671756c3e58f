"""What the idempotency record's age index costs: direct ledger transfers to PostgreSQL with the
record indexed by a btree on `at` (hsb.service.once's), by BRIN instead, with no index on `at`,
and with no record at all; side by side, interleaved, for BENCHMARKS.md.

    .venv/bin/python bench/idempotency_index.py [--clients 50] [--reps 5] [--duration 4]
                                                [--json FILE] [--no-write] [--render FILE [--write]]

A throwaway PostgreSQL server (tests/support/pg.py), a fresh database per run. Each run: the
ledger service in-process (hsb.service.ledger, a pool of 10 connections), `--clients` asyncio
clients sending transfers between 50 accounts, one at a time each, for `--duration` seconds;
the rate, and the CPU per transfer of PostgreSQL's processes and of the clients' process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, proc_cpu, save_results, section_head, table  # noqa: E402
from ledger import ACCOUNTS, postgres_pids  # noqa: E402

import hsb.service.once as once  # noqa: E402

COMMAND = ".venv/bin/python bench/idempotency_index.py"
RESULTS = Path(__file__).resolve().parent / "results" / "idempotency_index.json"
SECTION = "The idempotency record's age index (`bench/idempotency_index.py`)"

_TABLE = once.DDL[0]
VARIANTS: dict[str, list[str] | None] = {
    "btree": list(once.DDL),  # hsb.service.once's
    "brin": [_TABLE, "CREATE INDEX IF NOT EXISTS hsb_idempotency_at_brin ON hsb_idempotency USING brin (at) WITH (autosummarize = on)"],
    "no index": [_TABLE],
    "no record": None,
}


async def one(pg: Any, variant: str, a: argparse.Namespace, i: int) -> dict[str, Any]:
    from hsb.service.ledger import LedgerService
    from hsb.term.workload import LedgerWorkload

    ddl = VARIANTS[variant]
    saved = list(once.DDL)
    if ddl is not None:
        once.DDL[:] = ddl
    svc = LedgerService("direct", dsn=pg.createdb(f"ix{os.getpid()}_{i}_{variant.replace(' ', '_')}"), pool_size=10, idempotency=ddl is not None)
    w = LedgerWorkload(accounts=ACCOUNTS)
    try:
        for k in range(w.setup_count):
            await svc.handle("D0", k + 1, w.payload(0, k), False)
    finally:
        once.DDL[:] = saved
    done = [0] * a.clients
    pids = postgres_pids(pg)
    pg0, me0, t0 = proc_cpu(pids), proc_cpu([os.getpid()]), time.monotonic()
    stop = t0 + a.duration

    async def client(c: int) -> None:
        k = w.setup_count if c == 0 else 0
        while time.monotonic() < stop:
            await svc.handle(f"D{c}", 10_000 + k, w.payload(c, k), False)
            done[c] += 1
            k += 1

    await asyncio.gather(*(client(c) for c in range(a.clients)))
    took = time.monotonic() - t0
    pg_cpu = proc_cpu(sorted({*pids, *postgres_pids(pg)})) - pg0
    me_cpu = proc_cpu([os.getpid()]) - me0
    await svc.close()
    n = sum(done)
    return {"variant": variant, "rate": round(n / took, 1), "transfers": n, "pg_us": round(pg_cpu / n * 1e6), "clients_us": round(me_cpu / n * 1e6)}


async def amain(a: argparse.Namespace) -> int:
    from tests.support import pg as pgsupport

    why = pgsupport.missing()
    if why:
        print(f"bench/idempotency_index.py: {why}", file=sys.stderr)
        return 2
    pg = pgsupport.PgServer()
    runs: list[dict[str, Any]] = []
    try:
        for i in range(a.reps):
            for v in VARIANTS:
                runs.append(await one(pg, v, a, i))
                print(runs[-1], file=sys.stderr, flush=True)
    finally:
        pg.close()
    res = {"clients": a.clients, "duration_s": a.duration, "reps": a.reps, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    med = {v: statistics.median(r["rate"] for r in res["runs"] if r["variant"] == v) for v in VARIANTS}
    rows = []
    for v in VARIANTS:
        rs = [r for r in res["runs"] if r["variant"] == v]
        rows.append(
            [
                v,
                f"{med[v]:,.0f}",
                ", ".join(f"{r['rate']:,.0f}" for r in rs),
                f"{statistics.median(r['pg_us'] for r in rs):,.0f}",
                f"{statistics.median(r['clients_us'] for r in rs):,.0f}",
                f"{1 - med[v] / med['no record']:.0%}" if v != "no record" else "–",
            ]
        )
    return "\n".join(
        [
            *section_head(
                a,
                f"A throwaway PostgreSQL 15 (Debian's binaries, a Unix socket,"
                f" `fsync=on`), a fresh database per run; {res['clients']} clients in one process calling the ledger"
                f" code (pool of 10 connections), transfers between {ACCOUNTS} accounts, {res['duration_s']:g} s a run,"
                f" the four variants interleaved {res['reps']} times. CPU: µs per transfer, medians.",
            ),
            "",
            table(["age index", "transfers/s (median)", "runs", "PostgreSQL CPU µs", "clients CPU µs", "cost against no record"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/idempotency_index.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=float, default=4.0)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
