"""ExactlyOnce's edges, in process on SQLite (hsb.service.once): the settings that would prune a
record a redelivery still needs are refused, a keep_last below the CP's held_bound is said once
per bound, and an effect whose transaction collides is run again and answered, applied once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from hsb.service.db import RetryTransaction, SqliteDatabase
from hsb.service.once import ExactlyOnce
from tests.support.logrec import RecordingLog

pytestmark = pytest.mark.timeout(30)


def test_settings_that_would_prune_every_record_at_once_are_refused(tmp_path: Path) -> None:
    db = SqliteDatabase(str(tmp_path / "k.sqlite"))
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        ExactlyOnce(db, keep_last=0)
    with pytest.raises(ValueError, match="keep must be a positive number"):
        ExactlyOnce(db, keep=0)
    with pytest.raises(ValueError, match="keep must be a positive number"):
        ExactlyOnce(db, keep=float("nan"))
    assert ExactlyOnce(db, keep=0.5, keep_last=1).keep_last == 1


def test_a_keep_last_below_the_held_bound_is_said_once_per_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both the service's own cp_bounds and hsbd's tell_cp_bounds call it at each registration:
    the same shortfall is one error, a new bound is said again."""
    from hsb.service import once as once_mod

    logs = RecordingLog()
    monkeypatch.setattr(once_mod, "log", logs)
    once = ExactlyOnce(SqliteDatabase(str(tmp_path / "k.sqlite")), keep_last=8)
    for _ in range(3):
        assert not once.check_keep_last(256)
    assert [e["held_bound"] for e in logs.events("idempotency_keep_last_below_held_bound")] == [256]
    assert not once.check_keep_last(300)
    assert [e["held_bound"] for e in logs.events("idempotency_keep_last_below_held_bound")] == [256, 300]


async def test_an_effect_whose_transaction_collides_is_run_again_and_applied_once(tmp_path: Path) -> None:
    """A deadlock or serialization failure inside the effect (RetryTransaction: rolled back) is
    ExactlyOnce.run's to retry, not the host's: the message is answered, its effect applied once."""
    db = SqliteDatabase(str(tmp_path / "c.sqlite"))
    try:
        once = ExactlyOnce(db)
        await once.setup()
        await db.setup(["CREATE TABLE t_counter (k TEXT PRIMARY KEY, n BIGINT NOT NULL)", "INSERT INTO t_counter VALUES ('x', 0)"])
        tries = 0

        async def bump(tx: Any) -> str:
            nonlocal tries
            tries += 1
            n = await tx.fetchval("UPDATE t_counter SET n = n + 1 WHERE k = 'x' RETURNING n")
            if tries <= 2:
                raise RetryTransaction("deadlock detected")  # (its update rolled back with it)
            return f"n={n}"

        assert await once.run("T1", 1, False, bump) == "n=1"
        assert tries == 3 and once.counters["collisions"] == 2 and once.counters["applied"] == 1
        assert await once.run("T1", 1, True, bump) == "n=1" and tries == 3
        async with db.transaction() as tx:
            assert await tx.fetchval("SELECT n FROM t_counter WHERE k = 'x'") == 1
    finally:
        await db.close()


async def test_an_unmarked_repeat_whose_effect_fails_is_answered_and_counted_as_a_replay(tmp_path: Path) -> None:
    """A terminal's resend after a CP crash reaches a host unmarked; its effect fails on the first
    run's work (a unique key): the first reply, and the status counts it replayed, not applied."""
    db = SqliteDatabase(str(tmp_path / "r.sqlite"))
    try:
        once = ExactlyOnce(db)
        await once.setup()
        await db.setup(["CREATE TABLE t_orders (no TEXT PRIMARY KEY)"])

        async def place(tx: Any) -> str:
            await tx.execute("INSERT INTO t_orders (no) VALUES ('o-1')")
            return "placed o-1"

        assert await once.run("T1", 1, False, place) == "placed o-1"
        assert await once.run("T1", 1, False, place) == "placed o-1"
        assert (once.counters["applied"], once.counters["replayed"]) == (1, 1)

        # the same id for another request (ids used again) whose effect fails: its own error, not
        # the recorded request's reply
        async def place_2(tx: Any) -> str:
            await tx.execute("INSERT INTO t_orders (no) VALUES ('o-2')")
            return "placed o-2"

        assert await once.run("T1", 2, False, place_2, request="first") == "placed o-2"
        with pytest.raises(sqlite3.IntegrityError):
            await once.run("T1", 2, False, place_2, request="second")
        assert once.counters["mismatched"] == 1
    finally:
        await db.close()


async def test_prunes_run_one_at_a_time_and_at_most_every_prune_every(tmp_path: Path) -> None:
    """A prune starts with an applied message once `prune_every` has passed since the last one
    started, and never while one still runs (two would delete the same rows, count them twice)."""
    db = SqliteDatabase(str(tmp_path / "p.sqlite"))
    try:
        for every in (3600.0, 0.0):
            once = ExactlyOnce(db, prune_every=every)
            await once.setup()
            started = 0
            release = asyncio.Event()

            async def prune() -> None:
                nonlocal started
                started += 1
                await release.wait()

            once._prune = prune  # type: ignore[method-assign]

            async def nothing(tx: Any) -> str:
                return "done"

            await once.run(f"E{every}", 1, False, nothing)  # the first applied message starts one
            await until_started(lambda: started == 1)
            await once.run(f"E{every}", 2, False, nothing)  # the first still runs: none more
            release.set()
            assert once.pruning is not None
            await asyncio.wait_for(once.pruning, 5)
            await once.run(f"E{every}", 3, False, nothing)  # done: another only if prune_every passed
            if once.pruning is not None:
                await asyncio.wait_for(once.pruning, 5)
            assert started == (1 if every else 2), (every, started)
    finally:
        await db.close()


async def until_started(cond: Any) -> None:
    async with asyncio.timeout(5):
        while not cond():
            await asyncio.sleep(0.01)


async def test_a_prune_transaction_deletes_at_most_a_batch_when_ages_and_ids_disagree(tmp_path: Path) -> None:
    """A prune dates the records it keeps now, so a terminal's lower ids can be younger than its
    higher ones; a batch that saw one record of a terminal still deletes at most one of its."""
    db = SqliteDatabase(str(tmp_path / "x.sqlite"))
    once = ExactlyOnce(db, keep=3600.0, prune_every=3600.0, prune_batch=3, keep_last=1)
    now = "((julianday('now') - 2440587.5) * 86400.0)"
    try:
        await once.setup()
        async with db.transaction() as tx:
            for t in ("T1", "T2", "T3"):
                for mid in range(1, 11):  # all due; id 9 the oldest (the one the batch sees)
                    age = 9000.0 if mid == 9 else 7200.0
                    await tx.execute(f"INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ($1, $2, 'r', {now} - $3)", t, mid, age)
        seen, deleted = await db.run(once._prune_batch)
        async with db.transaction() as tx:
            left = await tx.fetchval("SELECT count(*) FROM hsb_idempotency")
        assert seen == 3 and deleted == 30 - left, (seen, deleted, left)
        assert 1 <= deleted <= 3, deleted
    finally:
        await db.close()
