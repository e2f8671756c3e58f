"""A switch's record and the switch history (hsb.cp.switchrec) at their edges, driven directly:
the figures `hsbctl history`, `hsbctl status` and the metrics show after a failover or
switchover (all_served_ms, first_redelivered_reply_ms, worst_pause_ms, p99_pause_ms,
not_served), when the record ends (at the flip's end with nothing in flight, at the last reply
owed, at the documented 60 s deadline), and what the history keeps, counts and journals."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hsb.cp.switchrec import BUCKETS, HISTORY_KEEP, AfterSwitch, History

pytestmark = pytest.mark.timeout(30)

T0 = 1000.0


def record(epoch: int = 3) -> tuple[AfterSwitch, list[dict[str, Any]]]:
    done: list[dict[str, Any]] = []
    return AfterSwitch(T0, {"epoch": epoch}, done.append), done


def term(flight: int = 1, epoch: int = 3) -> Any:
    return SimpleNamespace(flight=flight, flight_epoch=epoch)


def test_a_switch_with_nothing_in_flight_ends_at_the_flips_end_served_at_once() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 0
    assert sw.counted(0)
    assert done == [sw.rec] and sw.rec["all_served_ms"] == 0.0
    assert sw.rec["worst_pause_ms"] is None and sw.rec["p99_pause_ms"] is None  # idle time is no pause


def test_terminals_all_served_during_the_flip_end_the_record_at_the_last_ones_reply() -> None:
    sw, done = record()
    t = term()
    assert not sw.reply(t, T0 - 0.5, True, T0 + 0.05)  # still counting: the record cannot end yet
    assert not done and t.flight == 0
    sw.rec["in_flight_terminals"] = 1
    assert sw.counted(1)
    assert done == [sw.rec] and sw.rec["all_served_ms"] == 50.0  # grant → that reply, not the flip's end


def test_the_figures_of_a_switch_count_the_served_replies_only() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 2
    a, b = term(), term()
    assert not sw.counted(2)
    # the CP's own error reply (not served): no pause, no first reply, but it ends a wait
    assert not sw.reply(a, T0 - 5.0, True, T0 + 0.01, served=False)
    assert sw.rec["first_redelivered_reply_ms"] is None and a.flight == 0
    # a message that arrived after the grant, answered: a pause, but nobody's flight
    assert not sw.reply(b, T0 + 0.1, False, T0 + 0.3)
    assert b.flight == 1 and sw.rec["first_redelivered_reply_ms"] is None  # (not re-delivered)
    assert sw.reply(b, T0 - 0.2, True, T0 + 0.4)  # the last owed: the record ends
    rec = sw.rec
    assert done == [rec]
    assert rec["first_redelivered_reply_ms"] == 400.0  # grant → that reply
    assert rec["all_served_ms"] == 400.0
    assert rec["worst_pause_ms"] == 600.0  # its ack → its reply, the error's 5 s not counted
    assert rec["p99_pause_ms"] == 600.0


def test_a_message_acknowledged_at_the_grant_itself_is_in_flight() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 1
    t = term()
    assert not sw.counted(1)
    assert sw.reply(t, T0, True, T0 + 0.1)
    assert done and t.flight == 0


def test_a_terminal_with_several_messages_in_flight_is_served_at_its_last_reply() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 2
    a, b = term(2), term(1)
    assert not sw.counted(2)
    assert not sw.reply(a, T0 - 1, True, T0 + 0.1)
    assert not sw.reply(b, T0 - 1, True, T0 + 0.2)
    assert not done, "ended with a terminal still owed a reply"
    assert sw.reply(a, T0 - 1, True, T0 + 0.3)
    assert sw.rec["all_served_ms"] == 300.0


def test_the_p99_pause_is_the_99th_percentile_not_the_worst() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 1
    assert not sw.counted(1)
    other = term(0)
    for k in range(199):  # waits of 1..199 ms after the grant
        assert not sw.reply(other, T0, False, T0 + (k + 1) / 1000)
    assert sw.reply(term(), T0 - 1.0, True, T0 + 0.5)  # and one of 1.5 s
    assert sw.rec["worst_pause_ms"] == 1500.0
    assert sw.rec["p99_pause_ms"] == 198.0  # the 198th of the 200 sorted waits


def test_a_record_follows_the_replies_for_60_seconds_then_ends_without_the_unserved() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 2
    a = term()
    assert not sw.expired(T0 + 120.0), "ended while the flip was still counting"
    assert not sw.counted(2)
    assert not sw.reply(a, T0 - 1, True, T0 + 59.0)
    assert not sw.expired(T0 + 59.5) and not done
    assert not sw.expired(T0 + 60.0)
    assert sw.expired(T0 + 60.5)
    assert done == [sw.rec] and sw.rec["not_served"] == 1 and sw.rec["all_served_ms"] is None
    assert sw.rec["worst_pause_ms"] == 60000.0


def test_a_reply_past_the_deadline_ends_the_record_too() -> None:
    sw, done = record()
    sw.rec["in_flight_terminals"] = 2
    assert not sw.counted(2)
    assert sw.reply(term(0), T0 + 61.0, False, T0 + 61.0)
    assert done and sw.rec["not_served"] == 2


def _entry(epoch: int, kind: str = "failover", **kw: Any) -> dict[str, Any]:
    return {"kind": kind, "at": 100.0 + epoch, "epoch": epoch, "duration_ms": 20.0, **kw}


def test_the_history_keeps_its_last_entries_counts_and_journals_each() -> None:
    out: list[Any] = []
    h = History(out.append)
    for e in range(HISTORY_KEEP + 5):
        h.add(_entry(e + 1, "switchover" if e % 2 else "failover"))
    h.add({"kind": "fence", "at": 5000.0, "epoch": 9999, "host": "host-a"})
    assert len(h.entries) == HISTORY_KEEP and h.entries[-1]["kind"] == "fence"
    assert h.entries[0]["epoch"] == 7
    assert len(out) == HISTORY_KEEP + 6 and out[0] == ["h", _entry(1)]
    assert h.counts["failover"] == 503 and h.counts["switchover"] == 502
    assert h.last_at == {"failover": 100.0 + HISTORY_KEEP + 5, "switchover": 100.0 + HISTORY_KEEP + 4}
    assert h.duration.counts["failover"][BUCKETS.index(0.025)] == 503  # 20 ms, in seconds
    assert h.duration.sums["failover"] == pytest.approx(503 * 0.02)


def test_a_restored_history_keeps_its_last_entries_and_when_each_kind_last_happened() -> None:
    h = History(lambda rec: None)
    h.restore([_entry(e + 1) for e in range(HISTORY_KEEP + 3)] + [_entry(5000, "promote")])
    assert len(h.entries) == HISTORY_KEEP and h.entries[0]["epoch"] == 5
    assert h.last_at == {"failover": 100.0 + HISTORY_KEEP + 3, "promote": 5100.0}


def test_a_bucket_bound_is_inclusive() -> None:
    h = History(lambda rec: None)
    h.duration.observe("failover", 0.05)
    assert h.duration.counts["failover"][BUCKETS.index(0.05)] == 1 and sum(h.duration.counts["failover"]) == 1


def test_a_refused_standby_entry_keeps_every_terminals_name_and_the_first_reason() -> None:
    ref = {"count": 2, "terminals": [{"terminal": "T1", "reason": "a"}, {"terminal": "T2", "reason": "b"}]}
    assert History.refused(ref) == {"count": 2, "terminals": [{"terminal": "T1", "reason": "a"}, {"terminal": "T2"}]}
    assert History.refused({"count": 0, "terminals": []}) is None
    assert History.refused(None) is None


def test_a_switchs_pause_goes_to_its_own_entry_only_and_to_the_journal() -> None:
    out: list[Any] = []
    h = History(out.append)
    h.add(_entry(3, "failover"))
    h.add(_entry(3, "switchover"))  # (the same epoch twice: only the newest gets it)
    h.add({"kind": "fence", "at": 1.0, "epoch": 4, "host": "host-a"})
    out.clear()
    h.switch_done({"epoch": 3, "worst_pause_ms": 40.0, "p99_pause_ms": 30.0, "all_served_ms": 50.0, "in_flight_terminals": 2})
    assert h.entries[1]["worst_pause_ms"] == 40.0 and "worst_pause_ms" not in h.entries[0]
    upd = {"worst_pause_ms": 40.0, "p99_pause_ms": 30.0, "all_served_ms": 50.0, "in_flight_terminals": 2}
    assert out == [["h", {"epoch": 3, "update": upd}]]
    assert h.pause.counts["switchover"][BUCKETS.index(0.05)] == 1 and sum(h.pause.counts["failover"]) == 0
    h.switch_done({"epoch": 4, "worst_pause_ms": 10.0})  # a fence's epoch: no switch entry to update
    assert "worst_pause_ms" not in h.entries[2] and len(out) == 1
