"""BATCH WRITE COMPLETE's generation against the header the standby reads: a header older than
announced is a stale read (the O_DIRECT fallback reads through the page cache), read again until
it is current, not taken for another file's (the standby exited 1 saying the hosts name
different takeover files). hsbcpd and both hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.host.states import WAITING
from hsb.service.builtin import EchoService
from tests.support.inproc import hot_standby, pair_in_hot_standby, until

pytestmark = pytest.mark.timeout(60)


async def test_a_header_older_than_batch_write_complete_is_read_again_not_a_file_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby starts again (a new startup id) and hears BATCH WRITE COMPLETE for generation
    g+1 while the header it reads still says g, with its old startup id: it reads again, and is
    established on g+1 once the header says so; it never exits."""
    from hsb.host import ha_standby as ha_standby_mod
    from hsb.takeover.faults import Faults
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        g = a.ha.generation
        assert g is not None and b.ha.generation == g
        # the active's own notice is not sent: only the standby's read of the header can end this
        send = a.peer.send

        def without_notice(msg: dict[str, Any]) -> bool:
            return True if msg.get("t") == "batch_write_complete" else bool(send(msg))

        monkeypatch.setattr(a.peer, "send", without_notice)
        hook = Faults(ops=frozenset({"batch write"}))
        a.takeover.store.timeout = 20.0  # (the held batch write is not given up meanwhile)
        a.takeover.store.faults = hook
        hook.hold()  # the header stays at generation g with the old startup id
        try:
            b.ha.set_state(WAITING, "test: starting again")
            b.ha.maybe_standby_startup()  # a new startup id: the active's batch write for it is held
            await until(lambda: hook.holding.is_set(), "the active's batch write held", timeout=10)
            b.ha.post("peer_frame", msg={"t": "batch_write_complete", "startup_id": b.ha.own_startup_id, "generation": g + 1})
            await until(lambda: rec.events("batch_read_stale") or b.ha.exit is not None, "the standby reading the header", timeout=10)
            assert b.ha.exit is None, b.ha.exit.msg
        finally:
            hook.release()  # the batch lands: the header says g+1 and the new startup id
        await until(lambda: hot_standby(a, b) and b.takeover.following, "hot standby on the new batch", timeout=15)
        assert b.ha.generation == g + 1 and b.ha.exit is None
        assert not rec.events("takeover_file_mismatch"), rec.events("takeover_file_mismatch")


async def test_a_header_of_the_announced_generation_with_another_startup_id_is_still_a_file_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not older than announced, the header with another standby's id is what it always meant:
    the hosts name different takeover files; the standby says so and exits 1."""
    from hsb.host import ha_standby as ha_standby_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        g = a.ha.generation
        assert g is not None
        monkeypatch.setattr(b.peer, "send", lambda msg: True)  # (the active hears nothing of this)
        b.ha.set_state(WAITING, "test: starting again")
        b.ha.maybe_standby_startup()
        b.ha.post("peer_frame", msg={"t": "batch_write_complete", "startup_id": b.ha.own_startup_id, "generation": g})
        await until(lambda: b.ha.exit is not None, "the standby exiting", timeout=10)
        assert b.ha.exit is not None and b.ha.exit.code == 1 and "different takeover files" in b.ha.exit.msg
        assert not rec.events("batch_read_stale")


async def test_a_header_still_older_past_the_rereads_fails_the_batch_read_and_is_never_applied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BATCH WRITE COMPLETE announces g+1 for this standby's id while the header stays at g with
    that id (a resync's stale read that never clears): past max(5 s, 3 x storage_timeout) the
    batch read fails and the active is asked again; generation g is never applied as the new
    batch. The re-reads are not batch read failures: the first real one backs off from 50 ms."""
    from hsb.host import ha_standby as ha_standby_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        g = a.ha.generation
        assert g is not None and b.ha.generation == g
        sent: list[dict[str, Any]] = []
        send = b.peer.send

        def recording(msg: dict[str, Any]) -> bool:
            sent.append(msg)
            return bool(send(msg))

        monkeypatch.setattr(b.peer, "send", recording)
        seen = len(rec.entries)
        b.ha.post("peer_frame", msg={"t": "batch_write_complete", "startup_id": b.ha.own_startup_id, "generation": g + 1})
        await until(lambda: rec.events("batch_read_failed") or b.ha.exit is not None, "the stale batch read to end", timeout=20)
        completed = [e for e in rec.entries[seen:] if e["event"] == "batch_read_complete"]
        assert all(e["generation"] >= g + 1 for e in completed), completed
        assert rec.events("batch_read_stale") and b.ha.exit is None
        failed = rec.events("batch_read_failed")[0]
        assert failed["failures"] == 1 and failed["retry_in_s"] == 0.05, failed
        await until(lambda: any(m.get("t") == "resync_request" for m in sent), "a resync request", timeout=10)
        # the active writes g+1 for that ask: the standby is established on it
        await until(lambda: hot_standby(a, b) and b.ha.generation == g + 1, "hot standby on the new batch", timeout=15)
        completed = [e for e in rec.entries[seen:] if e["event"] == "batch_read_complete"]
        assert completed and all(e["generation"] >= g + 1 for e in completed), completed


async def test_a_batch_write_complete_for_an_earlier_startup_id_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standby started again (a new startup id) and then hears BATCH WRITE COMPLETE for its
    earlier one (sent before the active heard of the new one): not read as the answer to the new
    one, whose id the header does not hold (taken for another pair's file, the standby exited 1)."""
    from hsb.host import ha_standby as ha_standby_mod
    from tests.support.logrec import RecordingLog

    rec = RecordingLog()
    monkeypatch.setattr(ha_standby_mod, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        g = a.ha.generation
        assert g is not None
        earlier = b.ha.own_startup_id
        monkeypatch.setattr(b.peer, "send", lambda msg: True)  # (the active hears nothing of this)
        b.ha.set_state(WAITING, "test: starting again")
        b.ha.maybe_standby_startup()
        assert b.ha.own_startup_id != earlier
        handled: list[bool] = []

        async def mark() -> None:  # (events are handled in order: this one runs after the notice's)
            handled.append(True)

        b.ha.ev_test_mark = mark  # type: ignore[attr-defined]
        b.ha.post("peer_frame", msg={"t": "batch_write_complete", "startup_id": earlier, "generation": g})
        b.ha.post("test_mark")
        await until(lambda: handled or b.ha.exit is not None, "the notice handled", timeout=10)
        assert b.ha.exit is None, b.ha.exit.msg
        assert not rec.events("batch_read_stale") and not rec.events("batch_read_failed")
