"""Tests from a mutation audit of hsb/service/once.py (ExactlyOnce, docs/ledger.md): each pins a
behaviour that a single-point change of the module broke while every other test still passed:
a request's hash for any text the service may be given, `record=False` running the effect
alone, the collision waits, the prune's log, and two hosts upgrading an old record table at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hsb.service import once as once_mod
from hsb.service.api import COLLISION_WAIT
from hsb.service.db import RetryTransaction, SqliteDatabase, open_database
from hsb.service.once import ExactlyOnce, RequestMismatch, request_hash
from tests.support import pg as pgsupport
from tests.support.logrec import RecordingLog
from tests.support.pg import fresh, needs_pg

pytestmark = pytest.mark.timeout(60)


async def test_a_request_with_a_lone_surrogate_is_hashed_and_compared(tmp_path: Path) -> None:
    """A message's data decoded from JSON may hold a lone surrogate ("\\ud800" escaped): its
    hash is that of its surrogatepass bytes, so it is applied, replayed, and told apart from
    another request, not failed with a UnicodeEncodeError."""
    odd = "pay \ud800 1"
    assert request_hash(odd) == request_hash(odd.encode("utf-8", "surrogatepass"))
    assert -(2**63) <= request_hash(odd) < 2**63
    db = SqliteDatabase(str(tmp_path / "s.sqlite"))
    try:
        once = ExactlyOnce(db)
        await once.setup()

        async def effect(tx: Any) -> str:
            return "paid"

        assert await once.run("T1", 1, False, effect, request=odd) == "paid"
        assert await once.run("T1", 1, True, effect, request=odd) == "paid"
        with pytest.raises(RequestMismatch):
            await once.run("T1", 1, True, effect, request="pay \udc00 1")
    finally:
        await db.close()


async def test_without_records_a_redelivered_message_runs_its_effect(tmp_path: Path) -> None:
    """record=False (the ledger's `idempotency = false`, for measuring what the record costs)
    runs the effect alone: a redelivered message is not answered from a record the table holds
    from a run with records, and `stored` reads none."""
    db = SqliteDatabase(str(tmp_path / "n.sqlite"))
    try:
        with_records = ExactlyOnce(db)
        await with_records.setup()

        async def old(tx: Any) -> str:
            return "old"

        assert await with_records.run("T1", 1, False, old) == "old"
        bare = ExactlyOnce(db, record=False)
        await bare.setup()

        async def new(tx: Any) -> str:
            return "new"

        assert await bare.run("T1", 1, True, new) == "new"
        assert await bare.stored("T1", 1) is None
        assert await with_records.stored("T1", 1) == "old"
        assert bare.counters["applied"] == 1 and bare.counters["replayed"] == 0
    finally:
        await db.close()


async def test_each_collision_waits_a_random_while_that_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a collision the next try waits a random time up to COLLISION_WAIT times the
    attempt's number: never a bound of nought (two hosts colliding would retry in step)."""
    bounds: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        bounds.append((a, b))
        return 0.0

    monkeypatch.setattr(random, "uniform", uniform)
    db = SqliteDatabase(str(tmp_path / "c.sqlite"))
    try:
        once = ExactlyOnce(db)
        await once.setup()
        tries = 0

        async def collides_twice(tx: Any) -> str:
            nonlocal tries
            tries += 1
            if tries <= 2:
                raise RetryTransaction("serialization failure")
            return "done"

        assert await once.run("T1", 1, False, collides_twice) == "done"
        assert bounds == [(0, COLLISION_WAIT), (0, 2 * COLLISION_WAIT)]
    finally:
        await db.close()


async def test_a_prune_logs_every_record_it_deleted_in_all_its_batches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prune of several transactions says once how many records it deleted in all of them."""
    logs = RecordingLog()
    monkeypatch.setattr(once_mod, "log", logs)
    db = SqliteDatabase(str(tmp_path / "p.sqlite"))
    try:
        once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, prune_batch=2, keep_last=1)
        await once.setup()

        async def nothing(tx: Any) -> str:
            return "done"

        for mid in range(1, 8):
            await once.run("T1", mid, False, nothing)
        assert once.pruning is not None
        await asyncio.wait_for(once.pruning, 10)
        logs.entries.clear()
        async with db.transaction() as tx:
            assert await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 5") == 5
        await asyncio.wait_for(once._prune(), 10)
        assert [e["count"] for e in logs.events("idempotency_records_pruned")] == [5]
    finally:
        await db.close()


class _MeetingAfterTheCheck:
    """A PostgreSQL database whose ExactlyOnce.setup, once it has read whether the table has the
    request's hash, waits for the other host's setup to read it too, or to wait for a lock."""

    def __init__(self, db: Any, arrived: set[str], name: str, watch: Any) -> None:
        self.db, self.arrived, self.name, self.watch = db, arrived, name, watch

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.db, attr)

    async def _meet(self) -> None:
        self.arrived.add(self.name)
        deadline = time.monotonic() + 10
        while len(self.arrived) < 2:
            async with self.watch.transaction() as tx:
                if await tx.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"):
                    return  # the other host waits for our transaction's lock
            assert time.monotonic() < deadline, "the other host's setup neither checked the table nor waited"
            await asyncio.sleep(0.01)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        outer = self

        async with self.db.transaction() as tx:

            class Tx:
                def __getattr__(self, attr: str) -> Any:
                    return getattr(tx, attr)

                async def fetchval(self, sql: str, *args: Any) -> Any:
                    v = await tx.fetchval(sql, *args)
                    if "information_schema.columns" in sql:
                        await outer._meet()
                    return v

            yield Tx()


@needs_pg
async def test_two_hosts_upgrading_an_old_table_at_once_both_start(pg: pgsupport.PgServer) -> None:
    """Both hosts start on a table made before the request's hash was kept: each checks for the
    column and adds it if missing, one at a time (an advisory lock), so the second finds it
    there rather than failing its start on a column that already exists."""
    dsn = fresh(pg)
    a_db, b_db, watch = (open_database(dsn) for _ in range(3))
    try:
        await a_db.setup(
            [
                "CREATE TABLE hsb_idempotency (terminal TEXT NOT NULL, msg_id BIGINT NOT NULL, reply TEXT NOT NULL,"
                " at DOUBLE PRECISION NOT NULL, PRIMARY KEY (terminal, msg_id))",
                "CREATE INDEX hsb_idempotency_at ON hsb_idempotency (at)",
            ]
        )
        arrived: set[str] = set()
        a = ExactlyOnce(_MeetingAfterTheCheck(a_db, arrived, "a", watch))
        b = ExactlyOnce(_MeetingAfterTheCheck(b_db, arrived, "b", watch))
        await asyncio.wait_for(asyncio.gather(a.setup(), b.setup()), 30)
        async with watch.transaction() as tx:
            cols = await tx.fetchval(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'hsb_idempotency' AND column_name = 'request_hash'"
            )
        assert cols == 1
    finally:
        for db in (a_db, b_db, watch):
            await db.close()
