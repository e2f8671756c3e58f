"""What the daemons logged around an operation, in ms from it: the timeline behind a pause.

    .venv/bin/python bench/log_timeline.py DIR T_OP [--before MS] [--after MS] [--json FILE]

DIR is a sandbox directory kept by a bench (`bench/scale.py --dir`, one `nNNNN` folder per
size); T_OP is the operation's wall-clock time (a phase's `t_op` in that bench's raw JSON).
Every event of cp.log, host-a.log and host-b.log in the window is listed (per-terminal logon
and logoff events left out), oldest first, `at_ms` after the operation.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

SKIP = {"terminal_connected", "terminal_disconnected", "terminal_logoff"}


def _t(e: dict[str, Any]) -> float | None:
    ts = e.get("timestamp")
    if isinstance(ts, str):
        return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    t = e.get("_t")
    return t if isinstance(t, (int, float)) else None


def timeline(d: Path, t_op: float, before_ms: float, after_ms: float) -> list[dict[str, Any]]:
    out = []
    for name in ("cp.log", "host-a.log", "host-b.log"):
        p = d / name
        if not p.exists():
            continue
        for line in p.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            t = _t(e)
            if t is None or e.get("event") in SKIP:
                continue
            ms = (t - t_op) * 1000
            if -before_ms <= ms <= after_ms:
                fields = {k: v for k, v in e.items() if k not in ("event", "timestamp", "level", "_t", "proc")}
                out.append({**fields, "log": name, "at_ms": round(ms, 1), "event": e.get("event")})
    return sorted(out, key=lambda x: x["at_ms"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/log_timeline.py", description=__doc__.split("\n\n")[0])
    p.add_argument("dir")
    p.add_argument("t_op", type=float)
    p.add_argument("--before", type=float, default=50.0)
    p.add_argument("--after", type=float, default=2000.0)
    p.add_argument("--json", help="write the events here too")
    a = p.parse_args(argv)
    evs = timeline(Path(a.dir), a.t_op, a.before, a.after)
    for e in evs:
        rest = {k: v for k, v in e.items() if k not in ("log", "at_ms", "event")}
        print(f"{e['log']:11} {e['at_ms']:8.1f} {e['event']} {json.dumps(rest)[:160]}")
    if a.json:
        cmd = "bench/log_timeline.py " + " ".join(sys.argv[1:] if argv is None else argv)
        Path(a.json).write_text(json.dumps({"command": f".venv/bin/python {cmd}", "t_op": a.t_op, "events": evs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
