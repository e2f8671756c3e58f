"""The ledger on its embedded SQLite (the sandbox's and the demo's database): how many transfers
a second one machine's sandbox answers, side by side with another checkout of the code.

    .venv/bin/python bench/sqlite_ledger.py [--code DIR] [--reps 3] [--terminals 200]
                                            [--windows 1,2] [--duration 8] [--rate 400] [--json FILE]

Per repetition, for each checkout (this one, and `--code DIR` if given, alternated): a sandbox
(`hsbctl sandbox up --service ledger`: hsbcpd with its journal, host-a active, host-b standby,
the ledger on SQLite in the sandbox's folder), then `hsbterm load --workload ledger
--closed-loop` from N terminals for each window (each terminal keeps that many transfers
outstanding and sends the next on each reply: the capacity), the books checked afterwards
(balanced, each transfer applied once, every reply the stored one), and the strict verdict.
Then, in the same sandbox, `--rate` transfers a second (the demo's act four sends 400) for
`--duration` seconds: the CPU each daemon spends per transfer (the active host, where the ledger
and SQLite run, and hsbcpd), over the middle half of the sending window.
Everything runs as subprocesses of the checkout measured (`python -m hsb.ctl`, `python -m
hsb.term`, with PYTHONPATH set to it), so an older commit is measured by its own code.
Raw results: bench/results/sqlite-ledger.json; nothing is written to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import exit_status, machine, proc_cpu, say, stop_on_signals  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sqlite-ledger.json"


def head(code: Path) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(code), "describe", "--always", "--dirty", "--abbrev=7"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def run_py(code: Path, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.run([sys.executable, *args], cwd=code, env=env, capture_output=True, text=True, timeout=timeout)


def load_args(cp: str, d: Path, a: argparse.Namespace, how: list[str]) -> list[str]:
    return [
        "-m",
        "hsb.term",
        "load",
        "--cp",
        cp,
        "-n",
        str(a.terminals),
        *how,
        "--duration",
        str(a.duration),
        "--workload",
        "ledger",
        "--books-sqlite",
        str(d / "ledger.sqlite"),
        "--json",
    ]


def at_rate(code: Path, cp: str, d: Path, a: argparse.Namespace) -> dict[str, Any]:
    """`--rate` transfers a second: each daemon's CPU per transfer over the middle of the window."""
    st = json.loads((d / "sandbox.json").read_text())
    pids = {"active": st["hosts"]["host-a"]["pid"], "hsbcpd": st["cp"]["pid"]}
    env = {**os.environ, "PYTHONPATH": str(code)}
    argv = [sys.executable, *load_args(cp, d, a, ["--rate", str(a.rate)])]
    proc = subprocess.Popen(argv, cwd=code, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2.0 + a.duration / 4)  # logon (200 terminals: well under 2 s), then a quarter of the window
        c0 = {k: proc_cpu([p]) for k, p in pids.items()}
        t0 = time.monotonic()
        time.sleep(a.duration / 2)
        c1 = {k: proc_cpu([p]) for k, p in pids.items()}
        took = time.monotonic() - t0
        out, _ = proc.communicate(timeout=a.duration + 180)
    except BaseException:
        proc.send_signal(signal.SIGKILL)
        raise
    rep = json.loads(out.strip().splitlines()[-1])
    return {
        "rate": a.rate,
        "achieved": rep.get("reply_rate"),
        "ok": rep.get("ok") and proc.returncode == 0,
        "failures": rep.get("failures"),
        "us_per_transfer": {k: round((c1[k] - c0[k]) / (a.rate * took) * 1e6, 1) for k in pids},
    }


def one(code: Path, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    """One sandbox of checkout `code`, a closed-loop load per window; the rates and verdicts."""
    d = work / f"box-{time.monotonic_ns()}"
    out: dict[str, Any] = {"code": head(code), "windows": {}}
    try:  # (an `up` cut short by SIGTERM leaves the daemons it started: `down` stops them)
        up = run_py(code, ["-m", "hsb.ctl", "sandbox", "up", "--dir", str(d), "--service", "ledger", "--terminals", str(a.terminals)], 120)
        if up.returncode != 0:
            raise RuntimeError(f"sandbox up failed ({code}): {up.stderr[-2000:]}")
        cp = json.loads(up.stdout)["cp"]["terminal"]
        for w in a.windows:
            load = run_py(code, load_args(cp, d, a, ["--closed-loop", "--window", str(w)]), a.duration + 180)
            rep = json.loads(load.stdout.strip().splitlines()[-1])
            lat = rep.get("latency_ms") or {}
            out["windows"][str(w)] = {
                "rate": rep.get("reply_rate"),
                "ok": rep.get("ok") and load.returncode == 0,
                "failures": rep.get("failures"),
                "books_failures": rep.get("books_failures"),
                "latency_p50_ms": lat.get("p50"),
                "latency_p99_ms": lat.get("p99"),
                "replied": rep.get("replied"),
            }
        if a.rate:
            out["at_rate"] = at_rate(code, cp, d, a)
    finally:
        run_py(code, ["-m", "hsb.ctl", "sandbox", "down", "--dir", str(d)], 60)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/sqlite_ledger.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--code", help="another checkout of this repository, measured side by side (alternated)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--terminals", type=int, default=200)
    p.add_argument("--windows", default="1,2")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--rate", type=float, default=400.0, help="then this many transfers a second: CPU per transfer (0: skip)")
    p.add_argument("--json", default=str(RESULTS))
    a = p.parse_args(argv)
    a.windows = [int(x) for x in a.windows.split(",") if x]
    codes = [REPO] + ([Path(a.code).resolve()] if a.code else [])
    work = Path(tempfile.mkdtemp(prefix="hsb-bench-sqlite-"))
    cmd = ".venv/bin/python bench/sqlite_ledger.py" + (" " + " ".join(sys.argv[1:] if argv is None else argv))
    res: dict[str, Any] = {"command": cmd, "machine": machine(), "terminals": a.terminals, "duration_s": a.duration, "runs": []}
    ok = True
    stop_on_signals()  # SIGTERM, SIGINT: unwind through `one`'s `finally`, which stops its sandbox
    try:
        for rep in range(a.reps):
            for code in codes if rep % 2 == 0 else codes[::-1]:
                r = one(code, work, a)
                r["rep"] = rep + 1
                res["runs"].append(r)
                say(
                    f"[sqlite-ledger] code {r['code']} rep {rep + 1}: "
                    + ", ".join(f"window {w}: {v['rate']} /s {'OK' if v['ok'] else 'FAILED'}" for w, v in r["windows"].items())
                )
                if "at_rate" in r:
                    say(f"   at {a.rate:g}/s: {r['at_rate']['us_per_transfer']} µs of CPU per transfer, {'OK' if r['at_rate']['ok'] else 'FAILED'}")
                ok = ok and all(v["ok"] for v in r["windows"].values()) and r.get("at_rate", {}).get("ok", True)
                Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    except KeyboardInterrupt as exc:
        say(f"[sqlite-ledger] stopped by {exc or 'SIGINT'}; its sandbox stopped; partial results in {a.json}")
        return exit_status(exc)
    say(f"raw results: {a.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
