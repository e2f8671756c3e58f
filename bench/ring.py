"""One group commit through io_uring: the chain hsbcpd submits (a write made durable by its own
RWF_DSYNC flag, then two statx) beside the chain of before (a write, a linked fdatasync, then
two statx), side by side on one file system in one run.

    .venv/bin/python bench/ring.py [--chains 2000] [--rounds 3] [--size 2200] [--dir DIR] [--json FILE]

Each round times `--chains` chains of each kind, one after the other, alternating which goes
first: from the submission to the completion of the last entry as the event loop (uvloop) sees
it, how many times the loop was woken for one chain, and the loop's own time in the submission
(packing the entries and io_uring_enter). Both write `--size` bytes at the next
offset of a file allocated whole beforehand (as a journal segment is) in `--dir` (default: a
temporary directory under bench/results/.., on the repository's file system). The old chain is
built here, from hsb.uring's pieces: hsbcpd no longer has it. Raw results:
bench/results/ring-dsync.json (or `--json`).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench._common import machine  # noqa: E402
from hsb import uring  # noqa: E402

COMMAND = ".venv/bin/python bench/ring.py"
RESULTS = REPO / "bench" / "results" / "ring-dsync.json"
OP_FSYNC, FSYNC_DATASYNC = 3, 1


class LinkedFsyncRing(uring.Ring):
    """The chain of before: write, fdatasync (an entry of its own), statx of each path."""

    def write_sync_check(self, fd: int, data: bytes, offset: int, paths: Sequence[bytes], done: uring.Done) -> None:
        assert self._done is None
        n = 2 + len(paths)
        if tuple(paths) != self._paths:
            self._paths = tuple(paths)
            self._path_addrs = [ctypes.cast(ctypes.c_char_p(p), ctypes.c_void_p).value or 0 for p in self._paths]
        self._serial += 1
        base = self._serial << 8
        tail = self.sq_tail.value
        mask, mem, size, link = self.sq_mask, self.sqe_mem, uring._SQE.size, uring.SQE_IO_LINK
        addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        uring._SQE.pack_into(mem, (tail & mask) * size, uring.OP_WRITE, link, 0, fd, offset, addr, len(data), 0, base, 0, 0, 0, 0, 0)
        uring._SQE.pack_into(mem, ((tail + 1) & mask) * size, OP_FSYNC, link, 0, fd, 0, 0, 0, FSYNC_DATASYNC, base | 1, 0, 0, 0, 0, 0)
        for k in range(len(paths)):
            uring._SQE.pack_into(
                mem,
                ((tail + 2 + k) & mask) * size,
                uring.OP_STATX,
                link if 2 + k < n - 1 else 0,
                0,
                uring.AT_FDCWD,
                ctypes.addressof(self._statx[k]),
                self._path_addrs[k],
                uring.STATX_TYPE,
                0,
                base | (2 + k),
                0,
                0,
                0,
                0,
                0,
            )
        self._keep = (data, self._paths)
        self.out = {}
        self._want = n
        self._done = done
        self.sq_tail.value = (tail + n) & 0xFFFFFFFF
        op, rfd, z1, z2, z3 = self._enter
        r = uring._syscall(op, rfd, ctypes.c_long(n), z1, z2, None, z3)
        assert r == n, r

    def reap(self) -> None:  # (Ring's adds the sync's result: here it has an entry of its own)
        if self._collect():
            done = self._done
            assert done is not None
            self._done = None
            self._keep = None
            done([self.out[k] for k in range(self._want)])


async def chains(kind: str, d: Path, n: int, size: int) -> dict[str, Any]:
    ring = uring.Ring() if kind == "dsync" else LinkedFsyncRing(16)
    path = d / f"seg-{kind}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, n * size + 65536)
    os.fsync(fd)
    paths = (os.fsencode(d / "gen-next"), os.fsencode(path))
    loop = asyncio.get_running_loop()
    wakes = [0]

    def on_ready() -> None:
        wakes[0] += 1
        ring.reap()

    loop.add_reader(ring.efd, on_ready)
    took: list[float] = []
    submit: list[float] = []  # the event loop's own time in write_sync_check (packing + io_uring_enter)
    data = b"j" * size
    try:
        for i in range(n):
            fut: asyncio.Future[list[int]] = loop.create_future()
            t0 = time.perf_counter()
            ring.write_sync_check(fd, data, i * size, paths, fut.set_result)
            submit.append(time.perf_counter() - t0)
            res = await fut
            took.append(time.perf_counter() - t0)
            assert res[0] == size and res[-2:] == [-2, 0], res
    finally:
        loop.remove_reader(ring.efd)
        ring.close()
        os.close(fd)
        path.unlink()
    took.sort()
    submit.sort()
    return {
        "submit_p50_us": round(submit[n // 2] * 1e6, 1),
        "kind": kind,
        "chains": n,
        "p50_ms": round(took[n // 2] * 1000, 4),
        "p90_ms": round(took[int(n * 0.9)] * 1000, 4),
        "p99_ms": round(took[int(n * 0.99)] * 1000, 4),
        "mean_ms": round(statistics.fmean(took) * 1000, 4),
        "wakes_per_chain": round(wakes[0] / n, 3),
    }


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    rounds = []
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for r in range(a.rounds):
            order = ["dsync", "fdatasync"] if r % 2 == 0 else ["fdatasync", "dsync"]
            got = {k: await chains(k, Path(tmp), a.chains, a.size) for k in order}
            rounds.append(got)
            print(
                f"round {r + 1}: "
                + "; ".join(f"{k} p50 {v['p50_ms']:.3f} p99 {v['p99_ms']:.3f} ms, {v['wakes_per_chain']} wakes" for k, v in got.items()),
                flush=True,
            )
    med = {
        k: {m: statistics.median(r[k][m] for r in rounds) for m in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "wakes_per_chain", "submit_p50_us")}
        for k in ("dsync", "fdatasync")
    }
    return {"rounds": rounds, "median": med, "ratio_p50": round(med["dsync"]["p50_ms"] / med["fdatasync"]["p50_ms"], 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chains", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=2200, help="bytes a group writes")
    p.add_argument("--dir", type=Path, default=REPO / "bench" / "results" / "..")
    p.add_argument("--json", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    why = uring.available()
    if why is not None:
        print(f"bench/ring.py: {why}", file=sys.stderr)
        return 2
    import uvloop

    res = uvloop.run(amain(a))
    out = {"machine": machine(), "command": COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(), **res}
    a.json.parent.mkdir(parents=True, exist_ok=True)
    a.json.write_text(json.dumps(out, indent=1) + "\n")
    m = res["median"]
    print(
        f"median p50: RWF_DSYNC {m['dsync']['p50_ms']:.3f} ms, linked fdatasync {m['fdatasync']['p50_ms']:.3f} ms"
        f" (ratio {res['ratio_p50']:.2f}); wakes per chain {m['dsync']['wakes_per_chain']} / {m['fdatasync']['wakes_per_chain']};"
        f" submission p50 {m['dsync']['submit_p50_us']:.1f} / {m['fdatasync']['submit_p50_us']:.1f} µs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
