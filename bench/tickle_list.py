"""What writing the tickle list costs the CP's event loop, for BENCHMARKS.md.

    .venv/bin/python bench/tickle_list.py [--sizes 19000,100000] [--reps 5] [--tree NAME=DIR ...] [--json FILE]

The serving CP writes the four addresses of every terminal connection to the journal directory
at most once a second when they changed (hsb.cp.tickle). The file is written on a thread, but
whatever holds the GIL there holds the event loop too. Each run, in a process of its own: N
connections opened and named, then one write, while a 1 ms timer on the loop records the
longest gap between its turns. `--tree` measures another checkout's code side by side (the
trees alternate, run by run): `--tree before=/tmp/old --tree after=.`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, machine_line  # noqa: E402

CHILD = textwrap.dedent(
    """
    import asyncio, json, sys, tempfile, time
    from pathlib import Path
    from hsb.cp.tickle import TickleList, list_name

    async def main(n):
        d = Path(tempfile.mkdtemp(prefix="hsb-tickle-"))
        tl = TickleList(d, 1)
        for i in range(n):
            tl.opened(i, ("10.0.0.1", 7000), (f"10.1.{i // 250}.{i % 250}", 1024 + i % 60000))
            tl.named(i, f"T{i:06d}")
        gaps, state = [], {"last": 0.0, "stop": False}

        async def beat():
            while not state["stop"]:
                await asyncio.sleep(0.001)
                now = time.perf_counter()
                gaps.append(now - state["last"])
                state["last"] = now

        t = asyncio.ensure_future(beat())
        await asyncio.sleep(0.05)
        gaps.clear()
        state["last"] = t0 = time.perf_counter()
        tl.tick(time.monotonic())
        while tl.written < 1:
            await asyncio.sleep(0.001)
        took = time.perf_counter() - t0
        state["stop"] = True
        await t
        size = (d / list_name(1)).stat().st_size
        tl.close()
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
        import hsb.cp.tickle as code
        print(json.dumps({"code": code.__file__, "write_ms": round(took * 1000, 2), "worst_gap_ms": round(max(gaps) * 1000, 2), "bytes": size}))

    asyncio.run(main(int(sys.argv[1])))
    """
)


def one(tree: Path, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    # cwd: the tree too (`python -c` puts the working directory ahead of PYTHONPATH)
    out = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, cwd=tree, capture_output=True, text=True, timeout=300, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="19000,100000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tree", action="append", default=[], help="NAME=DIR: measure that checkout's hsb (default: this one)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    trees = dict(t.split("=", 1) for t in a.tree) or {"this": str(REPO)}
    sizes = [int(s) for s in a.sizes.split(",")]
    res: dict[str, Any] = {
        "command": "bench/tickle_list.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_avg": os.getloadavg()[0],
        "trees": trees,
        "runs": {},
    }
    for n in sizes:
        for _ in range(a.reps):
            for name, tree in trees.items():  # alternated, run by run
                r = one(Path(tree), n)
                res["runs"].setdefault(f"{name}/{n}", []).append(r)
    print(machine_line(res["machine"]))
    print(f"{'code':<10} {'connections':>11} {'worst loop gap ms (median, runs)':<44} {'write ms (median)':>17} {'bytes':>9}")
    for key, runs in res["runs"].items():
        name, n = key.split("/")
        gaps = [r["worst_gap_ms"] for r in runs]
        print(
            f"{name:<10} {int(n):>11,} {statistics.median(gaps):>6.1f} ({', '.join(f'{g:.1f}' for g in gaps)})".ljust(68)
            + f" {statistics.median(r['write_ms'] for r in runs):>8.1f} {runs[0]['bytes']:>9}"
        )
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
