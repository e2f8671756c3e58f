"""The delivery verdict (hsb/term/verdict.py), each test naming a behaviour that a mutation audit
of the module found no test for: `Verdict.ok` fails on each broken promise on its own, a total of
several terminals keeps their unacknowledged ids, and a terminal's reply count for one id goes up
to the 63 its marks byte holds. In-process: pure functions, or frames fed to a real TerminalClient."""

from __future__ import annotations

import pytest

from hsb.term.verdict import ACKED, REPLY_MAX, REPLY_ONE, SENT, Verdict, judge, judge_marks
from tests.support.termfeed import BASE, client, feed, verdict

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("sent", "acked", "replies", "broken"),
    [
        ([1, 2], [1, 2], {1: 1}, "lost"),
        ([1, 2], [1, 2], {1: 1, 2: 2}, "duplicates"),
        ([1, 2], [1, 2], {1: 1, 2: 1, 7: 1}, "unexpected"),
        ([1, 2], [1], {1: 1}, "unacked"),
    ],
)
def test_a_verdict_with_one_broken_promise_alone_is_not_ok(sent: list[int], acked: list[int], replies: dict[int, int], broken: str) -> None:
    """A verdict is not ok with only one of lost, duplicated, unexpected or unacknowledged: each
    is enough on its own (the test of the definitions had them all at once)."""
    v = judge(sent, acked, replies, name="T1")
    counts = {k: getattr(v, k) for k in ("lost", "duplicates", "unexpected", "unacked")}
    assert counts == {k: int(k == broken) for k in counts}, counts
    assert not v.ok


def test_a_total_keeps_the_unacknowledged_ids_of_each_terminal() -> None:
    """Folding terminals' verdicts into the run's total keeps a sample of their unacknowledged
    ids (the report names them), as it does for the lost and duplicated ones."""
    total = Verdict()
    total.add(judge([1, 2], [1], {1: 1}, name="T1"))
    total.add(judge([5], [], {}, name="T2"))
    assert total.unacked == 2 and total.unacked_ids == ["T1:2", "T2:5"]
    assert not total.ok


async def test_a_reply_count_goes_up_to_63_before_it_saturates() -> None:
    """One id answered 40 times is 39 duplicates: a marks byte counts up to 63 replies (six bits
    above SENT and ACKED), not fewer."""
    assert REPLY_MAX == 63
    c, stats = client()
    m = c.submit()
    feed(c, {"t": "ack", "id": m}, *({"t": "reply", "id": m, "data": c.payload(m)} for _ in range(40)))
    r = verdict(c, stats)
    assert not r.ok and r.duplicates == 39 and r.duplicate_ids == [f"T1:{m}"], r.failures


def test_each_sample_of_ids_holds_the_first_20_in_both_verdicts() -> None:
    """A verdict lists at most SAMPLE (20) lost, duplicated and unacknowledged ids, the lowest
    first, the reference `judge` as the marks' `judge_marks` (the report's lists are these)."""
    sent = range(90)
    acked = range(60)  # 0..29 lost, 30..59 duplicated, 60..89 unacknowledged
    replies = {i: 2 for i in range(30, 60)}
    ref = judge(sent, acked, replies, name="T1")
    marks = bytearray(SENT | (ACKED if i < 60 else 0) | (2 * REPLY_ONE if 30 <= i < 60 else 0) for i in sent)
    fast = judge_marks(marks, name="T1")
    for v in (ref, fast):
        assert (v.lost, v.duplicates, v.unacked) == (30, 30, 30)
        assert v.lost_ids == [f"T1:{i}" for i in range(20)]
        assert v.duplicate_ids == [f"T1:{i}" for i in range(30, 50)]
        assert v.unacked_ids == [f"T1:{i}" for i in range(60, 80)]


@pytest.mark.parametrize(("acked", "replies", "field"), [({0}, 0, "lost_ids"), ({0}, 2, "duplicate_ids"), (set(), 0, "unacked_ids")])
def test_the_marks_verdict_names_each_broken_id_alone(acked: set[int], replies: int, field: str) -> None:
    """A lost, duplicated or unacknowledged id is named with nothing else wrong beside it (the
    sample of one kind was taken only when another kind was there too)."""
    marks = bytearray([SENT | ACKED | REPLY_ONE, SENT | (ACKED if 0 in acked else 0) | replies * REPLY_ONE])
    v = judge_marks(marks, base=BASE, stride=2, name="T1")
    assert not v.ok and getattr(v, field) == [f"T1:{BASE + 2}"], v
