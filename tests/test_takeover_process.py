"""A reader in another process follows a writer in real time on a real file."""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from pathlib import Path
from typing import Any

from hsb.takeover import PollStatus, RingReader, SessionEntry, TakeoverWriter, batch_read, create_file


def follow(path: str, total: int, progress: Any, ready: Any, out: Any, budget_s: float) -> None:
    """The standby's loop (S228), in a child process: read the ring until `total` entries arrived."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    snap = batch_read(path)
    reader = RingReader(path, snap.header, max_records=64)
    got: list[tuple[str, bool, int]] = []
    statuses: dict[str, int] = {}
    ready.set()
    end = time.monotonic() + budget_s
    while len(got) < total and time.monotonic() < end:
        res = reader.poll()
        statuses[res.status.value] = statuses.get(res.status.value, 0) + 1
        if res.status is PollStatus.NEW:
            got += [(e.terminal, e.open, e.attrs["n"]) for e in res.entries]
            progress.value = reader.next_seq - 1
        elif res.needs_resync:
            break
        else:
            time.sleep(0.0002)  # the ring timer of the standby
    out.put({"got": got, "statuses": statuses, "batch": len(snap.entries)})


def test_reader_process_follows_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "takeover.dat")
    create_file(path, 24, 4096, host="test")  # 15 terminals: B=1, K=22 ring slots
    ctx = mp.get_context("spawn")
    progress, ready, out = ctx.Value("q", 0), ctx.Event(), ctx.Queue()
    rng = random.Random(3)
    sizes = [rng.randint(1, 45) for _ in range(300)]  # 1..3 records per group
    total = sum(sizes)
    with TakeoverWriter(path, terminals=15) as w:
        w.batch_write(1, [SessionEntry(f"B{i}", {"n": -1}, True) for i in range(15)])
        assert w.layout is not None
        k = w.layout.ring_slots
        proc = ctx.Process(target=follow, args=(path, total, progress, ready, out, 40.0), daemon=True)
        proc.start()
        try:
            assert ready.wait(30), "reader process did not start"
            written: list[tuple[str, bool, int]] = []
            n = 0
            for size in sizes:
                group = [SessionEntry(f"T{(n + i) % 97:03d}", {"n": n + i}, (n + i) % 2 == 0) for i in range(size)]
                n += size
                need = -(-size // 15)
                deadline = time.monotonic() + 20
                while w.last_seq + need - progress.value > k:  # never lap the reader: that is another test
                    assert time.monotonic() < deadline, "reader stopped following"
                    time.sleep(0.0002)
                w.append_group(group)
                written += [(e.terminal, e.open, e.attrs["n"]) for e in group]
            assert w.last_seq > 10 * k  # wrapped many times
            result = out.get(timeout=30)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
    assert result["batch"] == 15
    assert result["got"] == written
    assert result["statuses"].get("lapped", 0) == 0
    assert result["statuses"]["new"] >= 10  # followed as it went, not in one read at the end
