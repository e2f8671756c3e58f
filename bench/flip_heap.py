"""The CP's flip at a grant on a fresh heap and on a fragmented one, for BENCHMARKS.md.

    .venv/bin/python bench/flip_heap.py [--terminals 100000] [--reps 5] [--json FILE] [--no-write] [--render FILE [--write]]

bench/scale_core.py measures the flip (every session flipped, one held message per terminal
re-delivered) several times in one process, and the first run is always the fastest. This
finds out why, each run in a process of its own, the modes alternated:

- **fresh**: the setup (N terminals, both sessions, a held message each), then the flip;
- **holes**: the same after the process has made ~6 million small objects and freed every
  other one, so that the setup's objects land in holes spread over the heap, as in a daemon
  that has served for a while;
- **second**: a first setup and flip (not counted), then a second setup and flip on the same
  heap: what scale_core's later repetitions measure.

The flip's code is the same in all three; only where its objects lie in memory differs.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_args, bench_main, child_main, run_modes, save_results, section_head, table  # noqa: E402

COMMAND = ".venv/bin/python bench/flip_heap.py"
RESULTS = Path(__file__).resolve().parent / "results" / "flip_heap.json"
SECTION = "The flip on a fresh heap and on a fragmented one (`bench/flip_heap.py`)"
MODES = ("fresh", "holes", "second")
HOLES = 1_500_000  # of each of four kinds of small object; every other one is freed


def _fragment() -> list[Any]:
    made: list[Any] = []
    for i in range(HOLES):
        made += [(i, i + 1), [i], {"k": i}, object()]
    kept = [x for k, x in enumerate(made) if (k // 4) % 2 == 0]  # every other one of each kind: holes in each size
    del made
    gc.collect()
    return kept


async def _child(mode: str, n: int) -> dict[str, Any]:
    import scale_core

    from hsb import gcpolicy, logs

    logs.setup("warning", cache=True)
    gcpolicy.apply()  # as the daemon
    kept = _fragment() if mode == "holes" else None
    if mode == "second":
        await scale_core.one_size(n, with_recovery=False)
    r = await scale_core.one_size(n, with_recovery=False)
    del kept
    return {"mode": mode, "flip_ms": r["flip_and_redeliver_ms"], "cp_switch_ms": r["cp_switch_ms"], "redelivered": r["redelivered"]}


async def amain(a: argparse.Namespace) -> int:
    def check(mode: str, r: dict[str, Any]) -> None:
        assert r["redelivered"] >= a.terminals, r  # every held message went to the new active

    runs = await run_modes(__file__, MODES, a.terminals, a.reps, check, alternate=False)
    res = {"terminals": a.terminals, "reps": a.reps, "holes": HOLES, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    what = {
        "fresh": "a new process: setup, flip",
        "holes": f"a new process with holes (4 × {res['holes']:,} small objects made, every other freed): setup, flip",
        "second": "a new process: setup, flip, then setup and flip again (the second counted)",
    }
    rows = []
    for mode in MODES:
        flips = [r["flip_ms"] for r in res["runs"][mode]]
        rows.append(
            [
                mode,
                what[mode],
                ", ".join(f"{x:.1f}" for x in flips),
                f"{statistics.median(flips):.1f}",
                f"{statistics.median(r['cp_switch_ms'] for r in res['runs'][mode]):.1f}",
            ]
        )
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process as bench/scale_core.py ({res['terminals']:,} terminals, both sessions and one held message"
                f" each; the flip measured from the switchover request until the new active has been sent every held"
                f" message), each run in a process of its own, the modes alternated, {res['reps']} runs each.",
            ),
            "",
            table(["mode", "process", "flip + re-delivery ms (runs)", "median", "CP's own switch_ms, median"], rows, align="llrrr"),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv, MODES, _child)
    ap = bench_args("bench/flip_heap.py", __doc__)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
