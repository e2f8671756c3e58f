"""`durability = "none"`: a journal that writes nothing (memory-only, for benchmark comparison;
the config check warns about it)."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

from hsb.cp.journal.completion import SYNC_BUCKETS
from hsb.cp.journal.store import Journal
from hsb.cp.journal.writer import Done


class NullJournal(Journal):
    """`durability = "none"`: nothing is written; every record is "durable" at once (memory-only,
    for comparison in benchmarks)."""

    durable = False

    def __init__(self) -> None:  # noqa: D107 - no files
        self.gen = 0  # no generation: nothing on disk to fence
        self.journal_id = None  # nor an identity: the hosts judge it by its generation
        self.takeover: str | None = None  # (nor a takeover's id)
        self.fresh_s = 0.0  # (no check to wait for: no other CP can take it over)
        self.first_seg = 0
        self.seg = 1
        self.live = {}
        self.segments = deque([1])
        self.state = "ok"
        self.superseded = None
        self.error = None
        self.sync_counts = [0] * len(SYNC_BUCKETS)
        self.sync_sum = 0.0
        self.stalls = 0
        self.syncs = 0

    def open(self, first: int, snapshot: list[list[Any]], garbage: list[Path]) -> int:
        return 1

    def heartbeat(self) -> None:
        pass

    def vouches(self, now: float) -> bool:
        return True  # nothing on disk: no other CP can take it over

    async def drain(self, timeout: float = 2.0) -> bool:
        return True

    def append(self, payload: list[Any], done: Done | None = None, lazy: bool = False) -> int:
        if done is not None:
            done()
        return 1

    def pin(self, seg: int) -> None:
        pass

    def unpin(self, seg: int) -> None:
        pass

    def maybe_rotate_idle(self) -> None:
        pass

    def to_clean(self, most: int = 0) -> set[int]:
        return set()

    @property
    def pending(self) -> int:
        return 0

    def size(self) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {
            "dir": None,
            "durability": "none",
            "io": None,
            "generation": 0,
            "state": "ok",
            "error": None,
            "segments": 0,
            "size_bytes": 0,
            "records_live": 0,
            "pending_records": 0,
            "last_sync_at": None,
            "last_sync_ms": None,
            "syncs": 0,
            "records_written": 0,
            "stalls": 0,
            "generation_checked_ms_ago": None,
            "lease_answers_withheld": 0,
        }

    def close(self) -> None:
        pass

    async def stop(self, timeout: float | None = None) -> None:
        pass
