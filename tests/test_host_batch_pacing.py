"""Batch writes asked for while the standby cannot read them are paced: a standby whose takeover
storage hangs asks for no new batch until it answers, and the active writes a batch the standby
did not read at most once every batch_hold_max (each is the whole link: 26 MiB and two syncs at
100,000 terminals, likely aimed at the storage that is struggling). hsbcpd and both hsbd in this
process (tests/support/inproc.py), the storage faults injected into one host's store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(90)


async def test_a_standby_whose_storage_hangs_does_not_make_the_active_write_batch_after_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every operation of the standby's store stuck (a hung mount): its ring reads fail, it leaves
    established; each batch read then failed at once (an operation still stuck), and it asked
    again every 2 s at most, each ask a full batch write on the active. It now asks once the
    storage answers, and is established again then."""
    from hsb.host import ha_standby as ha_standby_mod
    from hsb.takeover.faults import Faults
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        asks: list[dict[str, Any]] = []
        send = b.peer.send

        def counted(msg: dict[str, Any]) -> bool:
            if msg.get("t") == "resync_request":
                asks.append(msg)
            return bool(send(msg))

        monkeypatch.setattr(b.peer, "send", counted)
        hook = Faults()
        b.takeover.store.timeout = 0.3  # (each stuck operation said sooner)
        b.takeover.store.faults = hook
        hook.hold()
        try:
            await until(lambda: b.ha.state != "established", "the standby out of established", timeout=15)
            # what the standby does over the next few seconds of the hang (a measurement window)
            start = len(rec.events("batch_write_complete"))
            await asyncio.sleep(6.0)
            written = len(rec.events("batch_write_complete")) - start
            assert written <= 1, f"{written} batch writes while the standby's storage hung"
            assert asks == [], f"{len(asks)} resync requests sent while the standby's storage hung"
            assert rec.events("resync_waits_for_storage"), "the held request not said"
        finally:
            hook.release()
        await until(lambda: hot_standby(a, b) and b.takeover.following, "hot standby again once the storage answers", timeout=20)


async def test_the_active_writes_a_batch_the_standby_did_not_read_at_most_once_in_a_while(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby's batch reads fail (EIO) on storage that answers: it asks again after each,
    backing off; the active writes the first ask at once (the batch before was read) and holds
    the asks that follow until BATCH_GAP_FIRST_S after the unread one (doubling with each unread
    one), then writes once."""
    from hsb.host import ha_standby as ha_standby_mod
    from hsb.takeover.faults import Faults
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    monkeypatch.setattr(ha_standby_mod, "BATCH_GAP_FIRST_S", 4.0, raising=False)  # (0.5 s, doubling: seen sooner this way)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        hook = Faults(ops=frozenset({"batch read"}))
        b.takeover.store.faults = hook
        hook.eio()
        before = len(rec.events("batch_write_complete"))  # (the one that made the pair hot)
        b.peer.send({"t": "resync_request", "startup_id": b.ha.own_startup_id, "reason": "test"})
        await until(lambda: rec.events("batch_read_failed"), "the standby's batch read failing", timeout=10)
        await asyncio.sleep(2.5)  # what the pair does over the next seconds (a measurement window)
        assert len(rec.events("batch_write_complete")) - before == 1, rec.events("batch_write_complete")
        assert rec.events("batch_write_held"), "no ask held"
        assert "waits" in a.ha.describe(), a.ha.describe()
        hook.error = None
        await until(lambda: hot_standby(a, b) and b.takeover.following, "hot standby again", timeout=20)
        assert len(rec.events("batch_write_complete")) - before == 2, rec.events("batch_write_complete")


@pytest.mark.parametrize(
    ("ask", "unread", "took"),
    [("standby_startup", 6, 0.01), ("standby_startup", 6, 5.0), ("resync_request", 6, 5.0)],
    ids=["restart-after-6-unread", "restart-after-a-long-batch", "resync-after-a-long-batch"],
)
async def test_a_held_batch_write_never_outlasts_the_standby_s_wait_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ask: str, unread: int, took: float
) -> None:
    """The active held a batch asked for after `unread` unread ones for up to 10 s, and for 4
    times the last one's duration without a bound: longer than the standby waits for BATCH WRITE
    COMPLETE (about 6 s with the default storage_timeout), which then asked again with a new
    startup id, and the held write was for an id nobody waited for. The standby starting again
    (a new startup id) or asking for a resync with the default config is now established within
    its wait, having sent one ask, and every batch written is for the id it waits for."""
    import time

    from hsb.host import ha_standby as ha_standby_mod
    from hsb.host.states import WAITING
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        wait = b.ha.batch_wait_s
        written_for: list[tuple[int, int | None]] = []  # (the batch's startup id, the one the standby waits for)
        send = a.peer.send

        def noted(msg: dict[str, Any]) -> bool:
            if msg.get("t") == "batch_write_complete":
                written_for.append((int(msg["startup_id"]), b.ha.own_startup_id))
            return bool(send(msg))

        monkeypatch.setattr(a.peer, "send", noted)
        # the active's last batch: unread by the standby, `unread` in a row, `took` long
        a.ha.batches_unread, a.ha.batch_ended = unread, (time.monotonic(), took)
        started = len(rec.events("standby_startup_sent"))
        t0 = time.monotonic()
        if ask == "standby_startup":
            b.ha.set_state(WAITING, "test: starting again")
            b.ha.maybe_standby_startup()  # a new startup id, as a restarted standby's
        else:
            b.peer.send({"t": "resync_request", "startup_id": b.ha.own_startup_id, "reason": "test"})
            b.ha.set_state("awaiting_batch", "test: asked for a new batch")
        await until(lambda: rec.events("batch_write_held"), "the ask held", timeout=5)
        await until(lambda: hot_standby(a, b) and b.takeover.following, "hot standby again", timeout=3 * wait)
        assert time.monotonic() - t0 < 2 * wait, f"established after {time.monotonic() - t0:.1f} s (the standby waits {wait:.1f} s)"
        assert len(rec.events("standby_startup_sent")) - started == (1 if ask == "standby_startup" else 0), rec.events("standby_startup_sent")
        assert written_for and all(sid == own for sid, own in written_for), written_for
