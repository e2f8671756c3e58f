"""What the kernel says about the mount a path is on: whether a journal shared by two CP
machines over NFS is mounted so that its fencing holds.

Fencing by generation (docs/cp-journal.md, "Generations") asks the server about names and
modification times: the serving CP's check for `gen-(own+1)`, a file that does not exist until
a newer CP takes over, and the waiting CP's look at the serving one's heartbeat (its file's
mtime). An NFS client that caches negative lookups answers "no such file" from its cache for up
to a minute after the newer CP made it, and one that caches attributes shows a heartbeat that
stands still: a superseded CP would go on acknowledging what the new CP never reads. So the
journal's mount needs `lookupcache=positive` (or `none`) and `noac` (or `actimeo=0`), as
docs/operations.md asks. `/proc/self/mountinfo` shows them as `lookupcache=pos|none` and
`noac` (or `acregmax=0`, `acdirmax=0`).
"""

from __future__ import annotations

import os
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (a space is \\040)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mountinfo: str | None = None) -> tuple[str, str, set[str]] | None:
    """(mount point, filesystem type, mount and super options) of the mount `path` is on, or
    None when mountinfo cannot be read. The path need not exist: its nearest existing parent."""
    try:
        text = Path(MOUNTINFO).read_text() if mountinfo is None else mountinfo
    except OSError:
        return None
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    best: tuple[str, str, set[str]] | None = None
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if not sep or len(f) < 6 or len(r) < 3:
            continue
        point = _unescape(f[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):  # the last of equals: mounted over
            best = (point, r[0], set(f[5].split(",")) | set(r[2].split(",")))
    return best


def nfs_fencing_problem(path: str, mountinfo: str | None = None) -> str | None:
    """Why the CP journal at `path` is on an NFS mount its fencing cannot rely on, naming the
    fix; None when it is not on NFS, or mounted as it must be."""
    m = mount_of(path, mountinfo)
    if m is None or not m[1].startswith("nfs"):
        return None
    point, fstype, opts = m
    wrong = []
    if not ({"lookupcache=pos", "lookupcache=positive", "lookupcache=none"} & opts):
        wrong.append("it caches negative lookups (no lookupcache=positive)")
    if "noac" not in opts and not {"acregmax=0", "acdirmax=0"} <= opts:
        wrong.append("it caches attributes (no noac or actimeo=0)")
    if not wrong:
        return None
    return (
        f"the CP journal {path} is on an {fstype} mount ({point}) where {' and '.join(wrong)}: a CP superseded by the"
        " other machine could miss the newer generation and acknowledge what the new CP never reads; mount it with"
        " noac,lookupcache=positive (docs/operations.md, two CP machines)"
    )
