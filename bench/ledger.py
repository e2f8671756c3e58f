"""The ledger on PostgreSQL: transfers per second through hsb beside the same transfers sent
straight to PostgreSQL, what the idempotency record costs, and a SIGKILL failover's worst pause.

    .venv/bin/python bench/ledger.py [--quick] [--sizes 50,200] [--reps 3] [--duration 8]
                                     [--failover-terminals 1000] [--failover-reps 3] [--json FILE] [--no-write] [--render FILE]

A throwaway PostgreSQL server (Debian's binaries, tests/support/pg.py; a fresh database per run).
For each size N and repetition, three runs interleaved, each in processes of its own:

- **hsb**: a sandbox (hsbcpd, host-a active, host-b standby, `service = "ledger"`, `dsn` the
  database), N terminals from a load child (`bench/_load.py load --workload ledger
  --closed-loop --window 2`): transfers between 50 accounts as fast as the replies come, then the
  books checked (balanced, each transfer applied once, every reply the stored one);
- **hsb, no record**: the same with `idempotency = false` (the effect alone: not exactly once;
  only to measure what the record costs);
- **direct**: N asyncio clients in one process calling the same ledger code against the same
  database (the same pool of 10 connections), one transfer at a time each, no hsb in between.

Then `--failover-reps` times: a sandbox with the ledger on PostgreSQL, `--failover-terminals`
terminals sending transfers at `--failover-rate`, the active SIGKILLed under load; the worst pause
the terminals saw (hsb.term.timeline) and the books. Raw results: bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import (  # noqa: E402
    fmt_ms,
    host_by_role,
    machine,
    machine_line,
    median,
    proc_cpu,
    raw_name,
    result_args,
    run_or_render,
    sandbox,
    sandbox_down,
    say,
    start_load,
    status,
    table,
    until,
    write_section,
)

from bench._common import finished, scratch  # noqa: E402

COMMAND = ".venv/bin/python bench/ledger.py"
RESULTS = Path(__file__).resolve().parent / "results" / "ledger.json"
SECTION = "The ledger on PostgreSQL (`bench/ledger.py`)"
ACCOUNTS = 50


# --------------------------------------------------------------------------- direct (child)


async def direct_main(a: argparse.Namespace) -> None:
    """N clients calling the ledger code straight against the database; one JSON line out."""
    from hsb.service.ledger import LedgerService
    from hsb.term.workload import LedgerWorkload

    svc = LedgerService("direct", dsn=a.dsn, pool_size=10, idempotency=not a.no_idempotency)
    w = LedgerWorkload(accounts=ACCOUNTS)
    for k in range(w.setup_count):
        await svc.handle("D0", k + 1, w.payload(0, k), False)
    done = [0] * a.clients
    stop = time.monotonic() + a.duration
    t0 = time.monotonic()

    async def client(i: int) -> None:
        k = w.setup_count if i == 0 else 0
        while time.monotonic() < stop:
            reply = json.loads(await svc.handle(f"D{i}", 10_000 + k, w.payload(i, k), False))
            assert reply.get("ok") is True or reply.get("error") == "insufficient_funds", reply
            done[i] += 1
            k += 1

    await asyncio.gather(*(client(i) for i in range(a.clients)))
    took = time.monotonic() - t0
    await svc.close()
    print(json.dumps({"rate": sum(done) / took, "transfers": sum(done), "seconds": took}), flush=True)


# --------------------------------------------------------------------------- runs


async def hsb_run(pg: Any, n: int, a: argparse.Namespace, work: Path, record: bool) -> dict[str, Any]:
    dsn = pg.createdb(f"b{os.getpid()}_{int(time.time() * 1000) % 10**9}")
    d = work / f"hsb-{n}-{'rec' if record else 'norec'}-{time.monotonic_ns()}"
    opts = {} if record else {"idempotency": False}
    await sandbox.aup(d, terminals=n, service="ledger", dsn=dsn, service_options=opts, timeout=60)
    try:
        st = sandbox.load_state(d)
        child = await start_load(
            st["cp"]["terminal"],
            n,
            0,
            d / "load.log",
            duration=a.duration,
            closed_loop=True,
            window=2,
            workload="ledger",
            accounts=ACCOUNTS,
            books_dsn=dsn,
            no_idempotency=not record,
            settle=30,
        )
        rep = None
        cpu: dict[str, float] | None = None
        while rep is None:
            m = await child.read(a.duration + 120)
            if m.get("ev") == "sending":
                st = sandbox.load_state(d)
                pids = {"hsbcpd": [st["cp"]["pid"]], "active": [st["hosts"]["host-a"]["pid"]], "standby": [st["hosts"]["host-b"]["pid"]]}
                pids["terminals"] = [child.pid]
                cpu = await cpu_over(pids, pg, a.duration, lambda: journal_counts(d))
            if m.get("ev") == "report":
                rep = m["report"]
        await child.stop()
    finally:
        sandbox_down(d)
    return {"rate": rep["reply_rate"], "ok": rep["ok"], "failures": rep["failures"], "books": rep.get("books"), "cpu_s": cpu}


def postgres_pids(pg: Any) -> list[int]:
    """The PostgreSQL server's processes: the postmaster and its children (backends, writers)."""
    try:
        master = int((pg.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    out = [master]
    for e in Path("/proc").iterdir():
        if e.name.isdigit():
            try:
                if int((e / "stat").read_text().rsplit(")", 1)[1].split()[1]) == master:
                    out.append(int(e.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


async def cpu_over(pids: dict[str, list[int]], pg: Any, duration: float, journal: Any = None) -> dict[str, float]:
    """CPU seconds of each group and of PostgreSQL over the middle of the sending window (from
    10 % to 90 % of `duration`, away from the start and the books check), and that window; with
    `journal` (an async call giving the CP journal's counters) its group commits and records
    written over the same window (`syncs`, `records`)."""
    await asyncio.sleep(duration * 0.1)
    groups = {**pids, "postgres": postgres_pids(pg)}
    j0 = await journal() if journal is not None else None
    c0 = {k: proc_cpu(v) for k, v in groups.items()}
    t0 = time.monotonic()
    await asyncio.sleep(duration * 0.8)
    groups["postgres"] = sorted({*groups["postgres"], *postgres_pids(pg)})  # backends that came meanwhile count from 0
    out = {k: round(proc_cpu(v) - c0.get(k, 0.0), 3) for k, v in groups.items()}
    out["window"] = round(time.monotonic() - t0, 3)
    if j0 is not None:
        j1 = await journal()
        out.update({k: j1[k] - j0[k] for k in ("syncs", "records")})
    return out


async def journal_counts(d: Path) -> dict[str, int]:
    """The sandbox CP's journal counters: group commits (syncs) and records written so far."""
    j = (await status(d))["cp"]["journal"]
    return {"syncs": int(j["syncs"]), "records": int(j["records_written"])}


async def direct_run(pg: Any, n: int, a: argparse.Namespace, record: bool = True) -> dict[str, Any]:
    dsn = pg.createdb(f"d{os.getpid()}_{int(time.time() * 1000) % 10**9}")
    argv = [sys.executable, __file__, "direct", "--dsn", dsn, "--clients", str(n), "--duration", str(a.duration)]
    if not record:
        argv.append("--no-idempotency")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    talk = asyncio.ensure_future(proc.communicate())
    cpu = await cpu_over({"clients": [proc.pid]}, pg, a.duration)
    out, err = await asyncio.wait_for(talk, a.duration + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"direct run failed: {err.decode()[-2000:]}")
    return {**json.loads(out.decode().strip().splitlines()[-1]), "cpu_s": cpu}


async def failover_run(pg: Any, a: argparse.Namespace, work: Path, i: int) -> dict[str, Any]:
    n = a.failover_terminals
    dsn = pg.createdb(f"f{os.getpid()}_{i}")
    d = work / f"failover-{i}"
    await sandbox.aup(d, terminals=n, service="ledger", dsn=dsn, timeout=120)
    try:
        st = sandbox.load_state(d)
        child = await start_load(
            st["cp"]["terminal"], n, a.failover_rate, d / "load.log", workload="ledger", accounts=ACCOUNTS, books_dsn=dsn, settle=60
        )
        while (await child.read(180)).get("ev") != "sending":
            pass
        await until(lambda: status(d), lambda s: s["cp"]["terminals"]["standby_sessions"] == n, 60, "standby sessions")
        await asyncio.sleep(3.0)
        active = host_by_role(await status(d), "active")
        assert active is not None
        t = time.time()
        await child.send({"cmd": "mark", "label": "SIGKILL of the active", "t": t})
        os.kill(sandbox.load_state(d)["hosts"][active]["pid"], signal.SIGKILL)
        await until(lambda: status(d), lambda s: host_by_role(s, "active") not in (None, active), 30, "the standby active")
        await asyncio.sleep(2.0)
        await child.send({"cmd": "stop"})
        rep = None
        while rep is None:
            m = await child.read(180)
            if m.get("ev") == "report":
                rep = m["report"]
        await child.stop()
    finally:
        sandbox_down(d)
    op = (rep.get("operations") or [{}])[0]
    return {
        "worst_ms": op.get("worst_ms"),
        "p99_ms": op.get("p99_ms"),
        "all_served_ms": op.get("all_served_ms"),
        "in_flight": op.get("in_flight"),
        "ok": rep["ok"],
        "failures": rep["failures"],
        "books": rep.get("books"),
        "sent": rep["sent"],
        "replied": rep["replied"],
    }


async def amain(a: argparse.Namespace) -> int:
    from tests.support import pg as pgsupport

    why = pgsupport.missing()
    if why:
        say(f"bench/ledger.py: {why}")
        return 2
    pg = pgsupport.PgServer()
    work = scratch("hsb-bench-ledger-")
    res: dict[str, Any] = {"throughput": [], "failover": []}
    try:
        for n in a.sizes:
            runs: dict[str, list[dict[str, Any]]] = {"hsb": [], "hsb_norecord": [], "direct": []}
            for rep in range(a.reps):
                say(f"[ledger] {n} terminals, repetition {rep + 1}/{a.reps}")
                runs["hsb"].append(await hsb_run(pg, n, a, work, True))
                runs["hsb_norecord"].append(await hsb_run(pg, n, a, work, False))
                runs["direct"].append(await direct_run(pg, n, a))
                say("   " + ", ".join(f"{k} {v[-1]['rate']:.0f}/s" for k, v in runs.items()))
            res["throughput"].append({"terminals": n, "runs": runs})
        for i in range(a.failover_reps):
            say(f"[ledger] failover {i + 1}/{a.failover_reps} at {a.failover_terminals} terminals")
            r = await failover_run(pg, a, work, i)
            say(f"   worst pause {r['worst_ms']} ms, ok {r['ok']}")
            res["failover"].append(r)
    finally:
        pg.close()
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": a.machine, "command": a.command, "results": res}, indent=1) + "\n")
    text = render(res, a)
    print(text)
    if a.write:
        write_section(SECTION, text)
    ok = all(r["ok"] for t in res["throughput"] for k in ("hsb", "hsb_norecord") for r in t["runs"][k]) and all(r["ok"] for r in res["failover"])
    finished(work, ok, a.keep)
    return 0 if ok else 1


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}. A throwaway PostgreSQL 15 (Debian's binaries, a Unix socket, `fsync=on`), a"
        " fresh database per run; hsbcpd (journal fsync), host-a and host-b on the same machine, the load in a process of"
        " its own. Transfers between 50 accounts; closed loop (each terminal keeps 2 transfers outstanding; hsb hands a"
        " terminal's messages to the service one at a time, in order). **Direct**: the same number of asyncio clients"
        " calling the same ledger code against the same database (pool of 10 connections), one transfer at a time each."
        " Medians over the repetitions, the three runs interleaved in each.",
        "",
    ]
    rows = []
    for t in res["throughput"]:
        r = t["runs"]
        hsb, norec, direct = (median([x["rate"] for x in r[k]]) or 0.0 for k in ("hsb", "hsb_norecord", "direct"))
        ratios = [x["rate"] / y["rate"] for x, y in zip(r["hsb"], r["direct"], strict=False) if y["rate"]]
        costs = [1 - x["rate"] / y["rate"] for x, y in zip(r["hsb"], r["hsb_norecord"], strict=False) if y["rate"]]
        ratio, cost = median(ratios) or 0.0, median(costs) or 0.0
        books = all(x["ok"] for x in r["hsb"] + r["hsb_norecord"])
        rows.append(
            [
                f"{t['terminals']:,}",
                f"{hsb:,.0f}",
                f"{norec:,.0f}",
                f"{direct:,.0f}",
                f"{100 * ratio:.0f} %",
                f"{100 * cost:.0f} %",
                ("met" if ratio >= 0.7 and cost <= 0.2 and books else "**missed**"),  # (a failed run meets nothing)
                "all OK" if books else "**FAILED**",
            ]
        )
    out.append(
        table(
            [
                "terminals",
                "hsb transfers/s",
                "hsb, no record",
                "direct to PostgreSQL",
                "hsb / direct",
                "record's cost",
                "goals (≥ 70 %, ≤ 20 %)",
                "verdict and books",
            ],
            rows,
        )
    )
    cpu_rows = []
    for t in res["throughput"]:
        r = t["runs"]
        for kind, groups in (("hsb", ["hsbcpd", "active", "standby", "terminals", "postgres"]), ("direct", ["clients", "postgres"])):
            per: dict[str, list[float]] = {g: [] for g in [*groups, "total"]}
            for x in r[kind]:
                c = x.get("cpu_s")
                if not c or not x["rate"] or not c.get("window"):
                    continue
                n = x["rate"] * c["window"]  # transfers in the window
                for g in groups:
                    per[g].append(c.get(g, 0.0) / n * 1e6)
                per["total"].append(sum(c.get(g, 0.0) for g in groups) / n * 1e6)
            if per["total"]:
                cpu_rows.append(
                    [
                        f"{t['terminals']:,}",
                        kind,
                        *[
                            f"{median(per[g]):,.0f}" if per.get(g) else "–"
                            for g in ["hsbcpd", "active", "standby", "terminals", "clients", "postgres", "total"]
                        ],
                    ]
                )
    if cpu_rows:
        out += [
            "",
            "Where the CPU goes: µs of CPU per transfer, each process (group) over the middle 80 % of the sending window,"
            " median of the runs. On the hsb side the ledger code and asyncpg run in the active host; on the direct side"
            " in the clients' process.",
            "",
            table(
                ["terminals", "run", "hsbcpd", "active host", "standby host", "terminals' process", "direct clients", "PostgreSQL", "total"], cpu_rows
            ),
        ]
    gc = []
    for t in res["throughput"]:
        per = [
            (c["syncs"] / (x["rate"] * c["window"]), c["records"] / (x["rate"] * c["window"]))
            for x in t["runs"]["hsb"]
            if (c := x.get("cpu_s")) and x["rate"] and c.get("window") and "syncs" in c
        ]
        if per:
            gc.append(
                f"{t['terminals']:,} terminals: {median([g for g, _ in per]):.2f} group commits and"
                f" {median([r for _, r in per]):.2f} records written per transfer"
            )
    if gc:
        out += ["", "The CP journal over the same window (hsb runs, median): " + "; ".join(gc) + "."]
    if res["failover"]:
        f = res["failover"]
        out += [
            "",
            f"SIGKILL of the active under transfers: {a.failover_terminals if hasattr(a, 'failover_terminals') else ''} terminals"
            f" at {getattr(a, 'failover_rate', '')} transfers/s, the ledger on PostgreSQL; the worst pause over the messages in flight"
            " at the kill or sent in the second after it (hsb.term.timeline), and the books afterwards.",
            "",
            table(
                ["run", "worst pause ms", "p99 ms", "all served ms", "in flight", "verdict and books"],
                [
                    [
                        str(i + 1),
                        fmt_ms(r["worst_ms"], 1),
                        fmt_ms(r["p99_ms"], 1),
                        fmt_ms(r["all_served_ms"], 1),
                        f"{r['in_flight'] or 0:,}",
                        "OK" if r["ok"] else "**FAILED**: " + "; ".join(r["failures"])[:200],
                    ]
                    for i, r in enumerate(f)
                ],
            ),
            "",
            # (a run with a message never answered has no worst pause: infinite, not left out)
            f"Median worst pause {fmt_ms(median([float('inf') if r['worst_ms'] is None else r['worst_ms'] for r in f]), 1)} ms.",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "direct":
        p = argparse.ArgumentParser(prog="ledger.py direct")
        p.add_argument("--dsn", required=True)
        p.add_argument("--clients", type=int, required=True)
        p.add_argument("--duration", type=float, required=True)
        p.add_argument("--no-idempotency", action="store_true")
        from hsb import loop

        loop.run(direct_main(p.parse_args(argv[1:])))
        return 0
    p = argparse.ArgumentParser(prog="bench/ledger.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one repetition, short runs, one failover (a smoke test)")
    p.add_argument("--sizes", default="50,200")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--failover-terminals", type=int, default=1000)
    p.add_argument("--failover-rate", type=float, default=500.0)
    p.add_argument("--failover-reps", type=int, default=None)
    result_args(p, RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the working directory (logs, journals) even when every run passed")
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.sizes = [int(x) for x in a.sizes.split(",") if x]
    a.reps = a.reps or (1 if a.quick else 3)
    a.duration = a.duration or (4.0 if a.quick else 8.0)
    a.failover_reps = a.failover_reps if a.failover_reps is not None else (1 if a.quick else 3)
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved["results"], a), amain)


if __name__ == "__main__":
    sys.exit(main())
