"""A bench's entry: measure, or render a saved run again (run_or_render, bench_main), with
SIGTERM and SIGINT stopping what it started (bench/_interrupt.py) and hsb byte-compiled first;
and, for in-process benches, each mode measured in a child process of its own (run_modes,
run_child, child_main).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench._interrupt import default_signals, exit_status, stop_children, stop_on_signals
from bench._report import machine, result_args, say, write_section
from hsb.ctl import sandbox


def bench_main(
    ap: Any, argv: list[str] | None, *, command: str, results: Path, section: str, render: Callable[[Any, Any], str], amain: Callable[[Any], Any]
) -> int:
    """The entry of an in-process bench whose --json holds {"machine", "command", "results"}
    (save_results): parse, note the command and the machine, measure or re-render."""
    result_args(ap, results)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = command + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, section, lambda saved: render(saved["results"], a), amain, daemon_loop=True)


# ---------------------------------------------------------------- benches run in child processes


def run_child(script: str, mode: str, n: int) -> dict[str, Any]:
    """`script --child MODE --terminals N` in a process of its own (a fresh heap each run): what it printed last, as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", mode, "--terminals", str(n)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
        # killed with the bench (its thread waits here until the child ends: the signal, tied
        # to the forking thread, cannot come early)
        preexec_fn=sandbox.dies_with(os.getpid()),
    ).stdout
    r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return r


async def run_modes(
    script: str, modes: tuple[str, ...], n: int, reps: int, check: Callable[[str, dict[str, Any]], None], alternate: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Each mode's `run_child` run `reps` times, the modes in turn (their order reversed every
    other repetition with `alternate`), each result passed to `check(mode, result)` (it asserts)."""
    tag = Path(script).stem
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(reps):
        for mode in modes if rep % 2 == 0 or not alternate else modes[::-1]:
            r = await asyncio.to_thread(run_child, script, mode, n)
            check(mode, r)
            runs[mode].append(r)
            print(f"[{tag}] rep {rep + 1} {mode}: {r['flip_ms']} ms", file=sys.stderr, flush=True)
    return runs


def child_main(argv: list[str], modes: tuple[str, ...], child: Callable[[str, int], Coroutine[Any, Any, dict[str, Any]]]) -> int:
    """The child's side of `run_child`: `child(mode, terminals)` on the daemons' event loop."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=modes)
    ap.add_argument("--terminals", type=int)
    c = ap.parse_args(argv)
    from hsb.loop import run

    print(json.dumps(run(child(c.child, c.terminals))))
    return 0


def bench_args(prog: str, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=5)
    return ap


def run_or_render(a: Any, section: str, rerender: Callable[[dict[str, Any]], str], amain: Callable[[Any], Any], daemon_loop: bool = False) -> int:
    """A bench's entry: with `--render FILE`, print the report of a saved run (and with
    `--write` put it into BENCHMARKS.md as `## section`) instead of measuring; else measure.
    `daemon_loop`: measure on the daemons' own event loop (uvloop, hsb.loop), for a bench that
    runs daemon code in-process. A SIGTERM or SIGINT while measuring stops every sandbox and
    child the bench started (bench/_interrupt.py) and returns 128 + the signal's number; the
    daemons it starts die with it if it is killed (sandbox.die_with_this_process)."""
    if a.render:
        saved = json.loads(Path(a.render).read_text())
        a.machine = saved["machine"]
        a.command = saved.get("command", a.command)
        text = rerender(saved)
        print(f"{a.command}\n\n{text}")
        if a.write:
            write_section(section, text)
        return 0
    print(a.command, flush=True)
    stop_on_signals()  # SIGTERM, SIGINT: unwind through every `finally`, which stop the sandboxes
    sandbox.die_with_this_process()  # SIGKILL, which unwinds nothing: the daemons get it too
    try:
        byte_compile()
        from hsb import logs

        logs.setup("warning")
        if daemon_loop:
            from hsb.loop import run

            return int(run(amain(a)))
        return int(asyncio.run(amain(a)))
    except KeyboardInterrupt as exc:
        code = exit_status(exc)
        left = stop_children()  # (the net under the `finally` blocks: none should be left)
        say(f"{sys.argv[0]}: stopped by {signal.Signals(code - 128).name}; its sandboxes stopped" + (f", and children {left}" if left else ""))
        return code
    finally:
        default_signals()  # (a signal after the measuring, while results are written, ends it as before)


def byte_compile() -> None:
    """Byte-compile the hsb package the daemons will import (the tree on PYTHONPATH in a side by
    side run), as pip does at install: with PYTHONDONTWRITEBYTECODE set, as on the machines these
    figures come from, an editable checkout would otherwise compile every module at every daemon
    start, about 70 ms that a deployed daemon does not spend (a CP restart's figures include its start)."""
    import compileall

    import hsb

    compileall.compile_dir(str(Path(hsb.__file__).parent), quiet=1)
