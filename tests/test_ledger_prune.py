"""How long exactly-once records are kept (`ExactlyOnce`'s prune; docs/ledger.md), on SQLite and
on a real, throwaway PostgreSQL server (tests/support/pg.py): records past `keep` pruned in
batches, each terminal's newest `keep_last` kept, never fewer than the CP's held_bound (said
when keep_last is below it), and two hosts pruning at once counting each record once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.service.db import SqliteDatabase, open_database
from hsb.service.once import ExactlyOnce
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg, run_on

pytestmark = pytest.mark.timeout(120)


async def nothing(tx: Any) -> str:
    """An effect that changes nothing (the record is what these tests look at)."""
    return "done"


async def _prunes_by_age(db: Any) -> None:
    """Records older than `keep` are pruned by the host that handles messages; newer ones stay,
    and so do each terminal's newest `keep_last` however old (T2 went away with a message the
    CP still holds: it is re-delivered when T2 is back, days later perhaps)."""
    once = ExactlyOnce(db, keep=3600.0, prune_every=0.0, keep_last=2)
    await once.setup()

    for mid in (1, 2, 3):
        await once.run("T1", mid, False, nothing)
    await once.run("T2", 1, False, nothing)
    first = once.pruning
    assert first is not None  # every message applied starts one (prune_every 0) unless one runs
    await asyncio.wait_for(first, 10)
    async with db.transaction() as tx:  # T1's first two and T2's one from two hours ago
        await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 2")
    await once.run("T1", 4, False, nothing)  # the next message applied starts a prune
    assert once.pruning is not None and once.pruning is not first
    await asyncio.wait_for(once.pruning, 10)
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT terminal, msg_id FROM hsb_idempotency ORDER BY terminal, msg_id") == [("T1", 3), ("T1", 4), ("T2", 1)]
    assert once.counters["pruned"] == 2
    assert await once.run("T2", 1, True, nothing) == "done" and once.counters["replayed"] == 1  # its record answered


async def test_old_records_are_pruned_on_sqlite(tmp_path: Path) -> None:
    await run_on(SqliteDatabase(str(tmp_path / "prune.sqlite")), _prunes_by_age)


@needs_pg
async def test_old_records_are_pruned_on_postgresql(pg: pgsupport.PgServer) -> None:
    await run_on(open_database(fresh(pg)), _prunes_by_age)


async def test_a_prune_keeps_the_cps_held_bound_when_keep_last_is_below_it(tmp_path: Path) -> None:
    """keep_last set below the CP's held_bound (said as an error at registration): until it is
    fixed, prunes keep each terminal's newest held_bound records, not keep_last: a message the
    CP still holds must find its record."""
    db = SqliteDatabase(str(tmp_path / "held.sqlite"))
    try:
        once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, keep_last=1)
        await once.setup()
        for mid in range(1, 6):
            await once.run("T1", mid, False, nothing)
        assert not once.check_keep_last(3)  # the CP holds up to 3 of a terminal's messages
        async with db.transaction() as tx:
            await tx.execute("UPDATE hsb_idempotency SET at = at - 7200")  # all of them due
        await once._prune()
        async with db.transaction() as tx:
            assert [r[0] for r in await tx.fetch("SELECT msg_id FROM hsb_idempotency ORDER BY msg_id")] == [3, 4, 5]
    finally:
        await db.close()


class _CountingDeletes:
    """A database whose transactions note what each DELETE removed."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.deleted: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)

    def _counting(self, tx: Any) -> Any:
        outer = self

        class Tx:
            def __getattr__(self, name: str) -> Any:
                return getattr(tx, name)

            async def execute(self, sql: str, *args: Any) -> int:
                n: int = await tx.execute(sql, *args)
                if sql.startswith("DELETE"):
                    outer.deleted.append(n)
                return n

        return Tx()

    @contextlib.asynccontextmanager
    async def transaction(self) -> Any:
        async with self.db.transaction() as tx:
            yield self._counting(tx)

    async def run(self, body: Any) -> Any:
        return await self.db.run(lambda tx: body(self._counting(tx)))


async def _prunes_in_batches(db: Any) -> None:
    """Many records due: pruned `prune_batch` rows per transaction, every one of them, none newer."""
    counting = _CountingDeletes(db)
    once = ExactlyOnce(counting, keep=3600.0, prune_every=3600.0, prune_batch=2, keep_last=1)
    await once.setup()
    for mid in range(1, 8):
        await once.run("T1", mid, False, nothing)
    assert once.pruning is not None
    await asyncio.wait_for(once.pruning, 10)
    async with db.transaction() as tx:
        assert await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 5") == 5
    counting.deleted.clear()
    await asyncio.wait_for(once._prune(), 10)
    assert counting.deleted == [2, 2, 1] and once.counters["pruned"] == 5
    async with db.transaction() as tx:
        assert await tx.fetch("SELECT msg_id FROM hsb_idempotency ORDER BY msg_id") == [(6,), (7,)]


async def test_old_records_are_pruned_in_batches_on_sqlite(tmp_path: Path) -> None:
    await run_on(SqliteDatabase(str(tmp_path / "prune.sqlite")), _prunes_in_batches)


@needs_pg
async def test_old_records_are_pruned_in_batches_on_postgresql(pg: pgsupport.PgServer) -> None:
    await run_on(open_database(fresh(pg)), _prunes_in_batches)


@needs_pg
async def test_two_hosts_pruning_at_once_count_each_record_once(pg: pgsupport.PgServer) -> None:
    """Both hosts' prunes at once, each in its own snapshot: the records removed are counted by
    the DELETE that removed them, so the two counts add up to what was pruned (a count read
    before the DELETE counted them twice)."""
    dsn = fresh(pg)
    a_db, b_db, lock_db, watch_db = (open_database(dsn, tx_idle_timeout=30.0) for _ in range(4))
    try:
        a, b = (ExactlyOnce(x, keep=3600.0, prune_every=3600.0, keep_last=1) for x in (a_db, b_db))
        await a.setup()
        await b.setup()  # b's pool connected too

        for mid in range(1, 11):
            await a.run("T1", mid, False, nothing)
        assert a.pruning is not None
        await asyncio.wait_for(a.pruning, 10)
        async with a_db.transaction() as tx:
            assert await tx.execute("UPDATE hsb_idempotency SET at = at - 7200 WHERE msg_id <= 6") == 6
        # the old rows locked, so that both prunes have begun (and read) before either deletes
        async with lock_db.transaction() as hold:
            await hold.execute("SELECT 1 FROM hsb_idempotency WHERE msg_id <= 6 FOR UPDATE")
            both = asyncio.gather(a._prune(), b._prune())
            deadline = time.monotonic() + 10
            while True:
                async with watch_db.transaction() as tx:
                    waiting = await tx.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'")
                if waiting >= 2:
                    break
                assert time.monotonic() < deadline, "the two prunes never both waited for the lock"
                await asyncio.sleep(0.01)
        await asyncio.wait_for(both, 10)
        assert a.counters["pruned"] + b.counters["pruned"] == 6, (a.counters, b.counters)
        async with a_db.transaction() as tx:
            assert await tx.fetchval("SELECT count(*) FROM hsb_idempotency") == 4
    finally:
        for db in (a_db, b_db, lock_db, watch_db):
            await db.close()


def test_every_exactly_once_helper_learns_the_cps_held_bound(tmp_path: Path) -> None:
    """A user's own service that never forwards `cp_bounds`: hsbd tells every ExactlyOnce of its
    process the CP's held_bound at registration all the same, so a prune keeps that many."""
    from hsb.service import once as once_mod

    db = SqliteDatabase(str(tmp_path / "u.sqlite"))
    mine = ExactlyOnce(db, keep_last=4)
    once_mod.tell_cp_bounds(1000)
    assert mine.held_bound == 1000


def test_keep_last_below_the_cps_held_bound_is_said(tmp_path: Path) -> None:
    """A record pruned while the CP still holds its message would let a redelivery apply it
    again: keep_last must cover the CP's held_bound, which the host learns at registration."""
    db = SqliteDatabase(str(tmp_path / "k.sqlite"))
    assert ExactlyOnce(db, keep_last=256).check_keep_last(256)
    assert ExactlyOnce(db, keep_last=8, record=False).check_keep_last(256)  # no records: nothing to prune
    once = ExactlyOnce(db, keep_last=8)
    assert not once.check_keep_last(256)
    assert once.held_bound == 256  # what a prune keeps meanwhile (see _prunes_keep_the_held_bound)
    once.check_keep_last(16)  # a lower bound said later (a reload): the larger stays
    assert once.held_bound == 256
