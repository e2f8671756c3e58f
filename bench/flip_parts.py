"""Where the flip's time goes: the sessions' switch alone beside the switch plus the
re-delivery of one held message per terminal, for BENCHMARKS.md.

    .venv/bin/python bench/flip_parts.py [--terminals 100000] [--reps 5] [--json FILE] [--no-write] [--render FILE [--write]]

bench/scale_core.py measures issue 19's figure: at a grant, every terminal's standby session
made its active one and every terminal's held message re-delivered to the new active. This runs
the same setup and flip (scale_core.one_size, in-process, stand-in transports) in two modes,
each run in a process of its own, the modes alternated:

- **held**: one message held per terminal (the goal's measure);
- **none**: no message held: the flip is the sessions' switch alone, nothing re-delivered.

The difference is what the re-delivery costs: reaching each terminal's held messages, marking
them redelivered, and the `deliver_batch` frames built from their kept items (hsb.cp.flip).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_args, bench_main, child_main, run_modes, save_results, section_head, table  # noqa: E402

COMMAND = ".venv/bin/python bench/flip_parts.py"
RESULTS = Path(__file__).resolve().parent / "results" / "flip_parts.json"
SECTION = "Where the flip's time goes (`bench/flip_parts.py`)"
MODES = ("held", "none")


async def _child(mode: str, n: int) -> dict[str, Any]:
    import scale_core

    from hsb import gcpolicy, logs

    logs.setup("warning", cache=True)
    gcpolicy.apply()  # as the daemon
    r = await scale_core.one_size(n, with_recovery=False, held=mode == "held")
    return {"mode": mode, "flip_ms": r["flip_and_redeliver_ms"], "cp_switch_ms": r["cp_switch_ms"], "redelivered": r["redelivered"]}


async def amain(a: argparse.Namespace) -> int:
    def check(mode: str, r: dict[str, Any]) -> None:
        assert r["redelivered"] == (a.terminals if mode == "held" else 0), r  # each held message went to the new active once

    runs = await run_modes(__file__, MODES, a.terminals, a.reps, check)
    res = {"terminals": a.terminals, "reps": a.reps, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    what = {"held": "one held message per terminal, re-delivered", "none": "no message held: the sessions' switch alone"}
    med = {m: statistics.median(r["flip_ms"] for r in res["runs"][m]) for m in MODES}
    rows = [[m, what[m], ", ".join(f"{r['flip_ms']:.1f}" for r in res["runs"][m]), f"{med[m]:.1f}", f"{med[m] / med['held']:.2f}"] for m in MODES]
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process as bench/scale_core.py ({res['terminals']:,} terminals, both sessions each; the flip measured from the"
                f" switchover request until every terminal is flipped and the new active has been sent every held message), each"
                f" run in a process of its own, the modes alternated, {res['reps']} runs each.",
            ),
            "",
            table(["mode", "at the flip", "flip ms (runs)", "median", "share of held's median"], rows, align="llrrr"),
            "",
            f"The re-delivery is {med['held'] - med['none']:.1f} ms of the {med['held']:.1f} ms median"
            f" ({100 * (1 - med['none'] / med['held']):.0f} %); the sessions' switch is the rest.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child_main(argv, MODES, _child)
    ap = bench_args("bench/flip_parts.py", __doc__)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
