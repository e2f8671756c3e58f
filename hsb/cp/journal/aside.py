"""Setting a damaged CP journal aside (`hsbcpd --set-journal-aside`, docs/operations.md §11).

A journal that recovery refuses as damaged stops every start of hsbcpd (exit 65): the operator
moves its records aside, keeps them for inspection, and starts empty. Started on an empty
directory, a CP would take generation 1, and every hsbd that saw a higher one refuses it as an
older CP (SPEC §5.8) until it is restarted. So the records (segments, snapshot marks, anything
else) go to a sibling directory and the generation files stay: the next CP takes the generation
above the highest one, as after any restart.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from hsb.cp.journal.generation import GEN, Generations, gen_name
from hsb.fsutil import fsync_dir

WATCH_S = 1.0  # a serving CP touches its generation file every 0.1 s (its heartbeat)


class AsideRefused(Exception):
    """The journal cannot be set aside (one line: what and what to do)."""


def set_aside(d: Path, watch: float = WATCH_S) -> tuple[Path, int, int]:
    """Move everything of journal directory `d` but its generation files into `d.damaged-STAMP`:
    (that directory, files moved, the highest generation kept). Refused while a CP serves it:
    the newest generation file's time changes while it is watched for `watch` seconds (the
    serving CP's heartbeat)."""
    if not d.is_dir():
        raise AsideRefused(f"{d} is not a directory: nothing to set aside (check [cp] journal)")
    names = os.listdir(d)
    newest = Generations(d).current(names)
    if newest:
        path = d / gen_name(newest)
        t0 = os.stat(path).st_mtime_ns
        time.sleep(watch)
        if os.stat(path).st_mtime_ns != t0 or Generations(d).current() != newest:
            raise AsideRefused(
                f"a CP is serving {d} (its generation file {path.name} changed within {watch:g} s): stop every hsbcpd"
                " that uses this journal (on both CP machines) and try again"
            )
    now = time.time()
    rest = [n for n in names if not GEN.match(n)]
    if not rest:
        raise AsideRefused(f"{d} holds no records (only its generation files): start hsbcpd on it as it is")
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    to = d.with_name(f"{d.name}.damaged-{stamp}")
    k = 1
    while to.exists():
        k += 1
        to = d.with_name(f"{d.name}.damaged-{stamp}-{k}")
    to.mkdir(mode=0o700)
    for n in rest:
        os.rename(d / n, to / n)
    fsync_dir(to)
    fsync_dir(d)
    fsync_dir(d.parent)
    return to, len(rest), newest
