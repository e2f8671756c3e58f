"""An established standby whose reads of the takeover ring keep failing: said once, not at
every poll, and it leaves `established` and asks for a new batch. hsbcpd and both hsbd in this
process (tests/support/inproc.py), the storage fault injected into the standby's store."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


async def test_a_standby_whose_ring_reads_keep_failing_says_so_once_and_asks_for_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO on every read of the ring (a dead disk, a soft NFS mount) at an established standby:
    logged once with a count every 10 s (not at every poll, 20 lines a second), and after a while the standby leaves
    `established` (its view of the active's sessions is frozen) and asks for a new batch; once the
    storage answers again it is established again."""
    from hsb.host import ha_standby as ha_standby_mod
    from hsb.takeover.faults import Faults
    from tests.support.inproc import hot_standby
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        hook = Faults(ops=frozenset({"ring read"}))
        b.takeover.store.faults = hook  # (the standby's store: only its ring reads fail)
        hook.eio()
        # (the batch read that follows works, so `established` comes back within milliseconds)
        await until(lambda: rec.events("ring_resync_needed"), "the standby out of established, a batch asked for", timeout=10)
        assert rec.events("ring_resync_needed")[0]["status"] == "unreadable", rec.entries
        assert 1 <= len(rec.events("ring_read_failed")) <= 2, len(rec.events("ring_read_failed"))
        hook.error = None
        await until(lambda: hot_standby(a, b) and b.takeover.following, "hot standby again", timeout=15)


async def test_a_ring_record_torn_for_good_is_named_in_the_resync_and_cleared_by_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ring record an established standby waits at, torn for good (a crash mid ring write):
    after a few polls it counts as damage, the standby asks for a new batch naming it, and the
    active's batch write clears it. Else it stays torn, and the standby waiting there after the
    resync asks again at every pass (or, never counting it as damage, waits there for ever)."""
    from hsb.host import ha_standby as ha_standby_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        pos = b.takeover.store.read_position
        reader = b.takeover.store._reader
        assert pos is not None and reader is not None
        gen, lay = pos[0], reader.layout
        recno, r = lay.ring_record(pos[1]), lay.record_size
        with open(b.cfg.takeover.path, "r+b") as f:  # a byte of a write that never completed
            f.seek(recno * r + 100)
            f.write(b"\x01")
        await until(lambda: rec.events("ring_resync_needed"), "the torn record counted as damage", timeout=10)
        ev = rec.events("ring_resync_needed")[0]
        assert ev["status"] == "corrupt" and f"record {recno}:" in ev["detail"], ev
        await until(lambda: hot_standby(a, b) and b.takeover.following and (b.ha.generation or 0) > gen, "hot standby on a new batch", timeout=15)
        with open(b.cfg.takeover.path, "rb") as f:
            f.seek(recno * r)
            assert f.read(r) == bytes(r), f"record {recno} still damaged after the batch write"
        assert len(rec.events("ring_resync_needed")) == 1
