"""Soak: `.venv/bin/python bench/soak.py [--minutes 30] [--terminals 1000] [--every 60] [--action kill|switchover]`.

A sandbox with the journal service, N terminals under steady load (hsbterm load
in its own process, with its strict verdict), every `--every` seconds a SIGKILL
failover of the active (the old active restarted as standby each time) or, with
`--action switchover`, a planned `hsbctl switchover` (both hosts then live through
the whole soak, so their own memory over time shows), and the resident memory of
every daemon sampled every 10 s. Prints a table and a JSON summary; with --plot,
writes docs/soak-memory.png. Exit 1 if the load's verdict failed (anything
acknowledged lost or duplicated, an unexpected, wrong or unacknowledged reply, a
terminal disconnected).

The raw results (the summary with the 10 s memory samples) go to
`bench/results/soak.json` (`--json FILE` elsewhere); the section "Soak
(`bench/soak.py`)" of BENCHMARKS.md is written from them (not with `--no-write`),
and `--render FILE` rebuilds it from such a file alone, without measuring.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import machine, machine_line, median, raw_name, result_args, run_or_render, table, write_json  # noqa: E402

from hsb.ctl import sandbox  # noqa: E402

COMMAND = ".venv/bin/python bench/soak.py"
RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
SECTION = "Soak (`bench/soak.py`)"
DAEMONS = ("cp", "host-a", "host-b")


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


status = sandbox.status
until = sandbox.until


async def amain(a: argparse.Namespace) -> int:
    d = Path(a.dir or tempfile.mkdtemp(prefix="hsb-soak-")) / "sb"
    info = await sandbox.aup(d, terminals=a.terminals, service="journal", timeout=120)
    duration = a.minutes * 60
    load = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hsb.term",
            "load",
            "--cp",
            info["cp"]["terminal"],
            "--terminals",
            str(a.terminals),
            "--rate",
            str(a.rate),
            "--duration",
            str(duration),
            "--settle",
            "30",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        preexec_fn=sandbox.dies_with(os.getpid()),  # (killed with the bench, however it dies)
    )
    samples: list[dict[str, Any]] = []
    failovers: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_fail = t0 + a.every
    next_sample = t0
    try:
        while load.poll() is None:
            now = time.monotonic()
            if now >= next_sample:
                st = sandbox.load_state(d)
                row = {"t_s": round(now - t0, 1), "cp": rss_kib(st["cp"]["pid"])}
                for name, h in st["hosts"].items():
                    row[name] = rss_kib(h["pid"])
                samples.append(row)
                print(json.dumps(row), flush=True)
                next_sample = now + 10
            if now >= next_fail and now - t0 < duration - 20:
                s = await status(d)
                active = [h["name"] for h in s["hosts"] if h.get("reachable") and h.get("role") == "active"]
                victim = active[0] if s["established"] and active else None
                other = "host-b" if victim == "host-a" else "host-a"
                tk = time.monotonic()
                if victim is not None and a.action == "switchover":
                    r = await asyncio.get_running_loop().run_in_executor(
                        None,
                        lambda: subprocess.run(
                            [sys.executable, "-m", "hsb.ctl", *info["ctl"], "switchover", "--yes", "--timeout", "120"], capture_output=True, text=True
                        ),
                    )
                    if r.returncode:
                        raise RuntimeError(f"switchover failed: {r.stderr.strip()}")
                    failovers.append(
                        {"t_s": round(tk - t0, 1), "from": victim, "to": other, "planned": True, "took_s": round(time.monotonic() - tk, 3)}
                    )
                    print(json.dumps({"switchover": failovers[-1]}), flush=True)
                elif victim is not None:
                    os.kill(sandbox.load_state(d)["hosts"][victim]["pid"], signal.SIGKILL)
                    await until(
                        d, lambda s: [h["name"] for h in s["hosts"] if h.get("reachable") and h.get("role") == "active"] == [other], 30, "takeover"
                    )
                    took = time.monotonic() - tk
                    while sandbox._alive(sandbox.load_state(d)["hosts"][victim]["pid"]):
                        await asyncio.sleep(0.05)
                    sandbox.start_host(d, victim, "standby")
                    await until(d, lambda s: s["established"], 120, "established again")
                    failovers.append({"t_s": round(tk - t0, 1), "from": victim, "to": other, "takeover_s": round(took, 3)})
                    print(json.dumps({"failover": failovers[-1]}), flush=True)
                next_fail = time.monotonic() + a.every
            await asyncio.sleep(0.5)
        out, _ = load.communicate(timeout=120)
        report = json.loads(out)
    finally:
        if load.poll() is None:
            load.kill()
        sandbox.down(d, timeout=3.0)
    first, last = samples[0], samples[-1]
    summary = {
        "minutes": a.minutes,
        "action": a.action,
        "terminals": a.terminals,
        "rate": a.rate,
        "every": a.every,
        "failovers": len(failovers),
        "acked": report["acked"],
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        "unexpected": report["unexpected"],
        "unacked": report["unacked"],
        "bad_data": report["bad_data"],
        "disconnects": report["disconnects"],
        "latency_ms": report["latency_ms"],
        "ok": report["ok"],
        "failures": report["failures"],
        "rss_kib_first": first,
        "rss_kib_last": last,
        "rss_kib_max": {k: max((s.get(k) or 0) for s in samples) for k in DAEMONS},
        "samples": samples,
        "failover_detail": failovers,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("samples", "failover_detail")}, indent=2))
    if not report["ok"]:
        print(f"load FAILED: {'; '.join(report['failures'])}", file=sys.stderr)
    saved = {"machine": a.machine, "command": a.command, "results": summary}
    write_json(a, saved)
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    if a.plot:
        plot(samples, failovers, Path(__file__).resolve().parent.parent / "docs" / "soak-memory.png")
    text = render(saved, a)
    report(a, SECTION, text)
    return 0 if report["ok"] else 1


def render(saved: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (the whole saved JSON)."""
    s = saved["results"]
    samples = s.get("samples") or []
    fo = s.get("failover_detail") or []
    planned = s.get("action") == "switchover"
    what = (
        "a planned `hsbctl switchover` (both hosts live through the whole run)"
        if planned
        else "a SIGKILL failover of the active (the old active restarted as standby each time)"
    )
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this table).",
        "",
        f"Machine: {machine_line(a.machine)}.",
        "",
        f"{s['terminals']:,} terminals at {s['rate']:,.0f} msg/s for {s['minutes']:g} minutes with the `journal` service"
        f" (hsbterm load, strict verdict), every {s.get('every', 0):g} s {what}, resident memory (VmRSS) of every daemon"
        " sampled every 10 s.",
        "",
    ]
    times = [f["took_s" if planned else "takeover_s"] * 1000 for f in fo if f.get("took_s" if planned else "takeover_s") is not None]
    span = (
        f" ({'each `hsbctl switchover`' if planned else 'takeover, kill to the other host serving'}: {min(times):,.0f}–{max(times):,.0f} ms, median {median(times):,.0f})"
        if times
        else ""
    )
    bad = s.get("failures") or []
    rows = [
        ["switchovers" if planned else "failovers", f"{s['failovers']:,}{span}"],
        ["acknowledged", f"{s['acked']:,}"],
        ["lost / duplicated / disconnects", f"**{s['lost']:,} / {s['duplicates']:,} / {s['disconnects']:,}**"],
        ["unexpected / unacknowledged / wrong data", f"{s.get('unexpected', 0):,} / {s.get('unacked', 0):,} / {s.get('bad_data', 0):,}"],
    ]
    lat = s.get("latency_ms") or {}
    if lat.get("p50") is not None:
        rows.append(["reply latency p50 / p99 / max", f"{lat['p50']:.1f} / {lat['p99']:.1f} / {lat['max']:.1f} ms"])
    rows.append(["verdict", "all OK" if s.get("ok", not bad) else f"**FAILED**: {'; '.join(bad)}"])
    out.append(table(["", "value"], rows, "ll"))

    def mib(v: int | None) -> str:
        return "–" if not v else f"{v / 1024:,.1f}"

    def at(t: float) -> dict[str, Any] | None:
        return next((x for x in samples if x["t_s"] >= t), None)

    if samples:
        marks = [("first sample", samples[0]), ("after 1 min", at(60.0)), ("half way", at(samples[-1]["t_s"] / 2)), ("last sample", samples[-1])]
        marks = [(label, x) for label, x in marks if x is not None]
        rows = []
        for k in DAEMONS:
            rows.append([f"{'hsbcpd' if k == 'cp' else k}", *[mib(x.get(k)) for _, x in marks], mib(max((x.get(k) or 0) for x in samples))])
        out += ["", f"Resident memory, MiB ({len(samples)} samples" + ("" if planned else "; a restarted host starts low") + "):", ""]
        out.append(table(["daemon", *[f"{label} ({x['t_s'] / 60:.1f} min)" for label, x in marks], "max"], rows))
    return "\n".join(out)


def plot(samples: list[dict[str, Any]], failovers: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed; no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for k in DAEMONS:
        ax.plot([s["t_s"] / 60 for s in samples], [(s[k] or 0) / 1024 for s in samples], label=k)
    for f in failovers:
        ax.axvline(f["t_s"] / 60, color="grey", alpha=0.2)
    ax.set_xlabel("minutes (grey: a failover)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("hsb soak: RSS of every daemon (a restarted host starts low)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/soak.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between failovers")
    ap.add_argument(
        "--action",
        choices=("kill", "switchover"),
        default="kill",
        help="kill: SIGKILL the active, restart it as standby; switchover: planned, no process restarts",
    )
    ap.add_argument("--dir", default="")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--out", default="", help="also write the summary JSON here")
    result_args(ap, RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved, a), amain)


if __name__ == "__main__":
    sys.exit(main())
