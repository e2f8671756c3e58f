"""The terminals' side of a netns test: `hsb.term.load.run_load` in its own process,
started inside the terminals' network namespace (`ip netns exec NS python -m tests.netns.loadrun`).

stdio protocol with the test process:
- prints `sending <wall time>` once every terminal has an open session and sending starts;
- reads `stop` (or EOF: the test process went away) and ends the sending phase; the run
  then waits up to `--settle` seconds for outstanding replies and logs every terminal off;
- writes the report, with every terminal's acknowledged and answered id ranges, as one
  JSON object to `--out` and prints `done`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from hsb import loop as hsb_loop
from hsb.term.load import run_load


async def main(a: argparse.Namespace) -> int:
    sending, stop = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()

    marks: list[tuple[str, float]] = []

    def on_stdin() -> None:
        line = sys.stdin.readline()
        if not line:  # EOF: stop for good
            loop.remove_reader(fd)
        elif line.startswith("mark "):  # "mark LABEL WALL": an operation to measure the pause of
            _, label, at = line.split()
            marks.append((label, float(at)))
            return
        stop.set()

    loop.add_reader(fd, on_stdin)

    async def announce() -> None:
        await sending.wait()
        print(f"sending {time.time():.6f}", flush=True)

    ann = asyncio.ensure_future(announce())
    report = await run_load(
        a.cp,
        terminals=a.terminals,
        rate=a.rate,
        duration=a.duration,
        settle=a.settle,
        connect_timeout=a.connect_timeout,
        record_ids=True,
        sending=sending,
        stop=stop,
        marks=marks,
        expect_disconnects="cp" if a.expect_cp_restart else a.expect_disconnects,
        keepalive=a.keepalive,
    )
    ann.cancel()
    with open(a.out, "w") as fh:
        json.dump(report.to_dict(include_ids=True), fh, separators=(",", ":"))
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cp", required=True)
    p.add_argument("--terminals", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--duration", type=float, default=3600.0)
    p.add_argument("--settle", type=float, default=20.0)
    p.add_argument("--connect-timeout", type=float, default=60.0)
    p.add_argument("--out", required=True)
    p.add_argument("--keepalive", type=int, default=1, help="the terminals' TCP keepalive idle seconds (0: none)")
    p.add_argument("--expect-disconnects", action="store_true", help="any disconnect may happen: terminals reconnect and resume")
    p.add_argument(
        "--expect-cp-restart",
        action="store_true",
        help="a CP failover: only the CP's absence may disconnect a terminal, and no session may close (hsbterm load --expect-cp-restart)",
    )
    sys.exit(hsb_loop.run(main(p.parse_args())))
