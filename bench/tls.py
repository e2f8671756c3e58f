"""What TLS costs: round-trip throughput through the CP, and the SIGKILL failover's worst pause,
with TLS on every link (terminals' too) beside plain links, interleaved in one run.

    .venv/bin/python bench/tls.py [--sizes 100,1000] [--reps 3] [--duration 5] [--failover-terminals 1000]
                                  [--failover-reps 3] [--json FILE] [--no-write] [--render FILE]

Throughput: per size and repetition, a plain sandbox then a `--tls` one (hsbcpd with the journal,
host-a active, host-b standby, echo service), each driven by a load child (bench/_load.py load,
its own process) in closed loop: every terminal keeps 8 messages outstanding for `--duration`
seconds; replies per second, strict verdict. Failover: per repetition, plain then TLS, N
terminals at `--rate`, SIGKILL of the active once hot standby is established and the load steady;
the worst pause over the messages in flight at the kill or sent in the second after it
(hsb.term.timeline). Raw results: bench/results/tls.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import (  # noqa: E402
    fmt_ms,
    host_by_role,
    machine,
    machine_line,
    median,
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

COMMAND = ".venv/bin/python bench/tls.py"
RESULTS = Path(__file__).resolve().parent / "results" / "tls.json"
SECTION = "TLS on every link (`bench/tls.py`)"


async def _report(child: Any, timeout: float) -> dict[str, Any]:
    while True:
        m = await child.read(timeout)
        if m.get("ev") == "report":
            return dict(m["report"])


async def throughput(n: int, tls: bool, a: argparse.Namespace, work: Path) -> dict[str, Any]:
    d = work / f"tp-{n}-{'tls' if tls else 'plain'}-{time.monotonic_ns()}"
    await sandbox.aup(d, terminals=n, service="echo", tls=tls, timeout=120)
    try:
        cp = sandbox.load_state(d)["cp"]["terminal"]
        child = await start_load(
            cp, n, 0, d / "load.log", duration=a.duration, closed_loop=True, window=8, settle=20, tls_ca=str(d / "tls" / "ca.pem") if tls else None
        )
        rep = await _report(child, a.duration + 180)
        await child.stop()
    finally:
        sandbox_down(d)
    return {"terminals": n, "tls": tls, "rate": rep["reply_rate"], "ok": rep["ok"], "failures": rep["failures"]}


async def failover(tls: bool, a: argparse.Namespace, work: Path, i: int) -> dict[str, Any]:
    n = a.failover_terminals
    d = work / f"fo-{i}-{'tls' if tls else 'plain'}"
    await sandbox.aup(d, terminals=n, service="echo", tls=tls, timeout=180)
    try:
        cp = sandbox.load_state(d)["cp"]["terminal"]
        child = await start_load(cp, n, a.rate, d / "load.log", settle=30, tls_ca=str(d / "tls" / "ca.pem") if tls else None)
        while (await child.read(180)).get("ev") != "sending":
            pass
        await until(lambda: status(d), lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] == n, 180, "hot standby", 0.2)
        await asyncio.sleep(a.steady)
        active = host_by_role(await status(d), "active")
        assert active is not None
        t = time.time()
        await child.send({"cmd": "mark", "label": "SIGKILL of the active", "t": t})
        os.kill(sandbox.load_state(d)["hosts"][active]["pid"], signal.SIGKILL)
        await until(lambda: status(d), lambda s: host_by_role(s, "active") not in (None, active), 30, "the standby active", 0.05)
        await asyncio.sleep(2.0)
        await child.send({"cmd": "stop"})
        rep = await _report(child, 180)
        await child.stop()
    finally:
        sandbox_down(d)
    op = (rep.get("operations") or [{}])[0]
    return {
        "tls": tls,
        "worst_ms": op.get("worst_ms"),
        "p99_ms": op.get("p99_ms"),
        "all_served_ms": op.get("all_served_ms"),
        "ok": rep["ok"],
        "failures": rep["failures"],
    }


async def amain(a: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="hsb-bench-tls-"))
    res: dict[str, Any] = {"throughput": [], "failover": []}
    for n in a.sizes:
        for rep in range(a.reps):
            for tls in (False, True):
                r = await throughput(n, tls, a, work)
                res["throughput"].append(r)
                say(f"[tls] {n} terminals #{rep + 1} {'tls' if tls else 'plain'}: {r['rate']:,.0f} replies/s {'OK' if r['ok'] else r['failures']}")
    for i in range(a.failover_reps):
        for tls in (False, True):
            r = await failover(tls, a, work, i)
            res["failover"].append(r)
            say(
                f"[tls] failover #{i + 1} {'tls' if tls else 'plain'}: worst pause {fmt_ms(r['worst_ms'], 1)} ms {'OK' if r['ok'] else r['failures']}"
            )
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps({"machine": a.machine, "command": a.command, "results": res, "rate": a.rate, "failover_terminals": a.failover_terminals}, indent=1)
        + "\n"
    )
    text = render({"results": res, "rate": a.rate, "failover_terminals": a.failover_terminals}, a)
    print(text)
    if a.write:
        write_section(SECTION, text)
    return 0 if all(r["ok"] for r in res["throughput"] + res["failover"]) else 1


def render(saved: dict[str, Any], a: argparse.Namespace) -> str:
    res = saved["results"]
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{Path(getattr(a, 'json', RESULTS)).name}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}. Plain and TLS sandboxes interleaved (TLS 1.3, EC P-256 certificates from"
        " `hsbctl tls init`, mutual TLS on the host, peer and admin links, TLS on the terminal listener); journal"
        " fsync; echo service; the load in a process of its own. Throughput: closed loop, 8 messages outstanding per"
        " terminal. Medians over the repetitions.",
        "",
    ]
    rows = []
    for n in sorted({r["terminals"] for r in res["throughput"]}):
        plain = [r["rate"] for r in res["throughput"] if r["terminals"] == n and not r["tls"]]
        tls = [r["rate"] for r in res["throughput"] if r["terminals"] == n and r["tls"]]
        ratios = [t / p for p, t in zip(plain, tls, strict=False) if p]
        ratio = median(ratios) or 0.0
        ok = all(r["ok"] for r in res["throughput"] if r["terminals"] == n)
        rows.append(
            [
                f"{n:,}",
                f"{median(plain) or 0:,.0f}",
                f"{median(tls) or 0:,.0f}",
                f"{100 * ratio:.0f} %",
                "met" if ratio >= 0.7 else "**missed**",
                "all OK" if ok else "**FAILED**",
            ]
        )
    out.append(table(["terminals", "plain replies/s", "TLS replies/s", "TLS / plain", "goal ≥ 70 %", "verdict"], rows))
    f = res["failover"]
    if f:
        plain = [r["worst_ms"] for r in f if not r["tls"] and r["worst_ms"] is not None]
        tls = [r["worst_ms"] for r in f if r["tls"] and r["worst_ms"] is not None]
        added = (median(tls) or 0) - (median(plain) or 0)
        out += [
            "",
            f"SIGKILL failover at {saved.get('failover_terminals', '?'):,} terminals, {saved.get('rate', '?'):,.0f} msg/s: worst pause"
            f" plain {fmt_ms(median(plain), 1)} ms (runs: {', '.join(fmt_ms(x, 0) for x in plain)}), TLS {fmt_ms(median(tls), 1)} ms"
            f" (runs: {', '.join(fmt_ms(x, 0) for x in tls)}): TLS adds {added:+.1f} ms (goal ≤ 10 ms:"
            f" {'met' if added <= 10 else '**missed**'}); verdict {'all OK' if all(r['ok'] for r in f) else '**FAILED**'}.",
        ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="bench/tls.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,1000")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--failover-terminals", type=int, default=1000)
    p.add_argument("--failover-reps", type=int, default=3)
    p.add_argument("--rate", type=float, default=2000.0)
    p.add_argument("--steady", type=float, default=2.0)
    result_args(p, RESULTS)
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.sizes = [int(x) for x in a.sizes.split(",") if x]
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved, a), amain)


if __name__ == "__main__":
    sys.exit(main())
