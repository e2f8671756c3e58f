"""Soak: `.venv/bin/python bench/soak.py [--minutes 30] [--terminals 1000] [--every 60] [--action kill|switchover]`.

A sandbox with the journal service, N terminals under steady load (hsbterm load
in its own process), every `--every` seconds a SIGKILL failover of the active
(the old active restarted as standby each time) or, with `--action switchover`,
a planned `hsbctl switchover` (both hosts then live through the whole soak, so
their own memory over time shows), and the resident memory of every daemon
sampled every 10 s. Prints a table and a JSON summary; with --plot,
writes docs/soak-memory.png. Exit 1 if anything acknowledged was lost or
duplicated.
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

from hsb.ctl import sandbox  # noqa: E402


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


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--terminals", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--every", type=float, default=60.0, help="seconds between failovers")
    ap.add_argument("--action", choices=("kill", "switchover"), default="kill",
                    help="kill: SIGKILL the active, restart it as standby; switchover: planned, no process restarts")
    ap.add_argument("--dir", default="")
    ap.add_argument("--plot", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    d = Path(a.dir or tempfile.mkdtemp(prefix="hsb-soak-")) / "sb"
    info = await sandbox.aup(d, terminals=a.terminals, service="journal", timeout=120)
    duration = a.minutes * 60
    load = subprocess.Popen(
        [sys.executable, "-m", "hsb.term", "load", "--cp", info["cp"]["terminal"], "--terminals", str(a.terminals), "--rate", str(a.rate), "--duration", str(duration), "--settle", "30", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
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
                    r = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
                        [sys.executable, "-m", "hsb.ctl", *info["ctl"], "switchover", "--yes", "--timeout", "120"], capture_output=True, text=True))
                    if r.returncode:
                        raise RuntimeError(f"switchover failed: {r.stderr.strip()}")
                    failovers.append({"t_s": round(tk - t0, 1), "from": victim, "to": other, "planned": True, "took_s": round(time.monotonic() - tk, 3)})
                    print(json.dumps({"switchover": failovers[-1]}), flush=True)
                elif victim is not None:
                    os.kill(sandbox.load_state(d)["hosts"][victim]["pid"], signal.SIGKILL)
                    await until(d, lambda s: [h["name"] for h in s["hosts"] if h.get("reachable") and h.get("role") == "active"] == [other], 30, "takeover")
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
        "failovers": len(failovers),
        "acked": report["acked"],
        "lost": report["lost"],
        "duplicates": report["duplicates"],
        "disconnects": report["disconnects"],
        "rss_kib_first": first,
        "rss_kib_last": last,
        "rss_kib_max": {k: max((s[k] or 0) for s in samples) for k in ("cp", "host-a", "host-b")},
        "samples": samples,
        "failover_detail": failovers,
    }
    print(json.dumps({k: v for k, v in summary.items() if k not in ("samples", "failover_detail")}, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    if a.plot:
        plot(samples, failovers, Path(__file__).resolve().parent.parent / "docs" / "soak-memory.png")
    return 1 if report["lost"] or report["duplicates"] else 0


def plot(samples: list[dict[str, Any]], failovers: list[dict[str, Any]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed; no plot", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for k in ("cp", "host-a", "host-b"):
        ax.plot([s["t_s"] / 60 for s in samples], [(s[k] or 0) / 1024 for s in samples], label=k)
    for f in failovers:
        ax.axvline(f["t_s"] / 60, color="grey", alpha=0.2)
    ax.set_xlabel("minutes (grey: a failover)")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title("hsb soak: RSS of every daemon (a restarted host starts low)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    from hsb import logs

    logs.setup("warning")
    sys.exit(asyncio.run(main()))
