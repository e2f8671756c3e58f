"""Benchmark of the CP journal's group commit into a segment allocated whole against one that
grows, side by side, for BENCHMARKS.md.

    .venv/bin/python bench/segment_room.py [--commits 2000] [--reps 3] [--dir /var/tmp]
                                           [--no-ext4] [--json FILE] [--no-write] [--render FILE [--write]]

hsbcpd allocates a new journal segment's file whole when it creates it (hsb.fsutil.preallocate),
so that a group commit's `fdatasync` flushes its data alone; into a file that grows, each one
also writes the file's size (the inode) and, on a journalled file system, waits for a commit of
the file system's own journal. This times the real `hsb.cp.journal.Journal` in a closed loop
(one 200-byte record appended, wait until durable, the next: the path of one terminal's ack)
with the segment allocated (as hsbcpd does) and not (preallocation switched off, as before),
alternated `--reps` times, in `--dir` and, when run as root with mkfs.ext4 at hand, on an ext4
file system with its journal (the default of mkfs.ext4, as most servers have) made for the run
in an image file on a loop device under `--dir`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, save_results, section_head, table  # noqa: E402

from hsb.cp.journal import writer  # noqa: E402
from hsb.cp.journal.generation import Generations  # noqa: E402
from hsb.cp.journal.store import Journal  # noqa: E402
from hsb.fsutil import preallocate  # noqa: E402

COMMAND = ".venv/bin/python bench/segment_room.py"
RESULTS = Path(__file__).resolve().parent / "results" / "segment_room.json"
SECTION = "The journal's group commit into a segment allocated whole, side by side (`bench/segment_room.py`)"
MODES = ("grows", "allocated")


def _no_room(fd: int, size: int) -> bool:
    return False


async def closed_loop(d: Path, mode: str, commits: int) -> dict[str, Any]:
    """`commits` group commits of one record each, in turn; per-commit latency in µs."""
    writer.preallocate = preallocate if mode == "allocated" else _no_room  # type: ignore[assignment]
    gen = Generations(d).take()
    j = Journal(d, generation=gen)
    j.open(1, [], [])
    lat: list[float] = []
    try:
        loop = asyncio.get_running_loop()
        t_all = time.perf_counter()
        for i in range(commits):
            fut: asyncio.Future[None] = loop.create_future()
            t0 = time.perf_counter()
            j.append(["a", "T00001", i + 1, "x" * 200], lambda f=fut: f.set_result(None))  # type: ignore[misc]
            await fut
            lat.append((time.perf_counter() - t0) * 1e6)
        took = time.perf_counter() - t_all
        io = j.io_used
    finally:
        j.close()
        writer.preallocate = preallocate  # type: ignore[assignment]
    lat.sort()
    return {
        "mode": mode,
        "io": io,
        "commits_per_s": round(commits / took),
        "p50_us": round(lat[len(lat) // 2]),
        "p99_us": round(lat[int(len(lat) * 0.99)]),
        "size_bytes": sum(p.stat().st_size for p in d.glob("seg-*")),
    }


@contextlib.contextmanager
def ext4_with_journal(base: Path) -> Iterator[Path | None]:
    """An ext4 file system (with its journal) in a 256 MiB image on a loop device, mounted for
    the run; None (and why, printed) where that cannot be done here."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None or shutil.which("losetup") is None:
        print("   no ext4 image: needs root and mkfs.ext4 (e2fsprogs)", flush=True)
        yield None
        return
    img, mnt = base / "ext4.img", base / "ext4"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(256 * 1024 * 1024)
    mounted = False
    try:
        subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        mounted = True
        yield mnt
    except subprocess.CalledProcessError as exc:
        print(f"   no ext4 image: {exc}", flush=True)
        yield None
    finally:
        if mounted:
            subprocess.run(["umount", str(mnt)], check=False)


async def amain(a: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="hsb-bench-room-", dir=a.dir))
    places: list[dict[str, Any]] = []
    try:
        with ext4_with_journal(base) if a.ext4 else contextlib.nullcontext(None) as ext4:
            targets = [("dir", f"{a.dir} ({_fstype(Path(a.dir))})", base)]
            if ext4 is not None:
                targets.append(("ext4", "ext4 with its journal, an image on a loop device", ext4))
            for key, label, where in targets:
                runs: list[dict[str, Any]] = []
                for rep in range(a.reps):
                    for mode in MODES:
                        d = where / f"{mode}-{rep}"
                        d.mkdir()
                        r = await closed_loop(d, mode, a.commits)
                        shutil.rmtree(d, ignore_errors=True)
                        print(f"   {key} rep {rep + 1} {mode:<9}: {r}", flush=True)
                        runs.append({"rep": rep + 1, **r})
                places.append({"place": key, "label": label, "runs": runs})
    finally:
        shutil.rmtree(base, ignore_errors=True)
    res = {"commits": a.commits, "reps": a.reps, "dir": a.dir, "places": places}
    save_results(a, SECTION, res, render(res, a))
    return 0


def _fstype(p: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(p)], capture_output=True, text=True, check=False).stdout.strip()
    return out or "?"


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    rows = []
    for p in res["places"]:
        by = {m: [r for r in p["runs"] if r["mode"] == m] for m in MODES}
        med = {m: {k: statistics.median(r[k] for r in by[m]) for k in ("commits_per_s", "p50_us", "p99_us")} for m in MODES}
        for m in MODES:
            rows.append(
                [
                    p["label"],
                    "allocated whole (now)" if m == "allocated" else "grows (before)",
                    ", ".join(f"{r['commits_per_s']:,}" for r in by[m]),
                    ", ".join(f"{r['p50_us']:,}" for r in by[m]),
                    ", ".join(f"{r['p99_us']:,}" for r in by[m]),
                    f"{med[m]['p50_us'] / med['allocated']['p50_us']:.2f}" if m == "grows" else "1",
                ]
            )
    return "\n".join(
        [
            *section_head(
                a,
                f"In-process: the CP journal (`hsb.cp.journal.Journal`, its default group-commit path) in a closed loop of"
                f" {res['commits']:,} group commits of one 200-byte record each, the segment allocated whole or growing,"
                f" alternated {res['reps']} times.",
            ),
            "",
            table(["file system", "segment", "commits/s (runs)", "p50 µs (runs)", "p99 µs (runs)", "p50 against allocated"], rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/segment_room.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default="/var/tmp", help="directory on the disk to use (default /var/tmp)")
    ap.add_argument("--no-ext4", dest="ext4", action="store_false", help="not the ext4 image on a loop device")
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
