"""Pure parts of hsbterm: the loss/duplicate verdict, latency percentiles, the service gap, names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.term.load import terminal_names
from hsb.term.net import parse_hostport
from hsb.term.report import LoadReport, format_table
from hsb.term.stats import GapTracker, LatencyHistogram
from hsb.term.verdict import ACKED, REPLY_MAX, REPLY_ONE, SENT, Verdict, judge, judge_marks


def test_judge_definitions() -> None:
    v = judge(
        sent=[1, 2, 3, 4, 5, 6],
        acked=[1, 2, 3, 4, 99],  # 99 was never sent: ignored
        replies={1: 1, 2: 3, 5: 1, 42: 2},  # 2 answered thrice, 5 answered without an ack, 42 never sent
        name="T1",
    )
    assert (v.sent, v.acked, v.replied) == (6, 4, 3)
    assert v.lost == 2 and v.lost_ids == ["T1:3", "T1:4"]
    assert v.duplicates == 2 and v.duplicate_ids == ["T1:2"]
    assert v.unexpected == 2
    assert v.unacked == 1  # 6: sent, never acked, never answered
    assert not v.ok


def test_judge_clean() -> None:
    v = judge(range(1, 101), range(1, 101), {i: 1 for i in range(1, 101)})
    assert v.ok and v.replied == 100 and v.lost == v.duplicates == v.unexpected == v.unacked == 0


def _marks(sent: int, acked: set[int], replies: dict[int, int]) -> bytearray:
    out = bytearray()
    for k in range(sent):
        b = SENT | (ACKED if k in acked else 0)
        b += min(replies.get(k, 0), REPLY_MAX) * REPLY_ONE
        out.append(b)
    return out


@settings(max_examples=200, deadline=None)
@given(
    sent=st.integers(0, 60),
    acked=st.sets(st.integers(0, 59)),
    replies=st.dictionaries(st.integers(0, 59), st.integers(0, 5)),
    base=st.integers(0, 10**15),
    stride=st.integers(1, 10_000),
)
def test_marks_agree_with_reference(sent: int, acked: set[int], replies: dict[int, int], base: int, stride: int) -> None:
    acked = {k for k in acked if k < sent}
    in_range = {k: n for k, n in replies.items() if k < sent}
    outside = sum(n for k, n in replies.items() if k >= sent)
    fast = judge_marks(_marks(sent, acked, in_range), base=base, stride=stride, unexpected=outside, name="X")
    ref = judge(
        [base + k * stride for k in range(sent)],
        [base + k * stride for k in acked],
        {base + k * stride: n for k, n in replies.items()},
        name="X",
    )
    assert fast == ref


def test_verdict_add_caps_samples() -> None:
    total = Verdict()
    for t in range(30):
        total.add(judge([1], [1], {}, name=f"T{t}"))
    assert total.lost == 30 and len(total.lost_ids) == 20 and total.lost_ids[0] == "T0:1"


def test_latency_percentiles() -> None:
    h = LatencyHistogram()
    assert h.percentile(50) is None and h.summary_ms()["p50"] is None
    for ms in range(1, 1001):  # 1..1000 ms, uniform
        h.add(ms / 1000.0)
    s = h.summary_ms()
    assert s["p50"] == pytest.approx(500, rel=0.02)
    assert s["p99"] == pytest.approx(990, rel=0.02)
    assert s["max"] == 1000.0
    assert s["mean"] == pytest.approx(500.5, rel=1e-6)
    h2 = LatencyHistogram()
    h2.add(5.0)
    h.merge(h2)
    assert h.count == 1001 and h.summary_ms()["max"] == 5000.0
    tiny = LatencyHistogram()
    tiny.add(0.0)
    assert tiny.percentile(50) == 0.0


def test_gap_tracker() -> None:
    g = GapTracker()
    g.sent(10.0)
    g.sent(10.1)
    g.replied(10.2)  # stretch 10.0 → 10.2
    g.replied(11.2)  # stretch 10.2 → 11.2: the longest
    assert g.outstanding == 0
    g.sent(20.0)  # nothing outstanding in between: 11.2 → 20.0 is no gap
    g.replied(20.5)
    assert (g.longest.seconds, g.longest.start, g.longest.end) == pytest.approx((1.0, 10.2, 11.2))
    g.sent(30.0)
    g.finish(32.5)  # never answered: counts up to the end
    assert (g.longest.seconds, g.longest.start, g.longest.end) == pytest.approx((2.5, 30.0, 32.5))
    assert [round(x.seconds, 3) for x in g.top] == [2.5, 1.0, 0.5, 0.2]  # longest first


def test_gap_tracker_keeps_the_longest_stretches() -> None:
    g = GapTracker()
    t = 0.0
    for i in range(100):  # stretches of 1..100 ms, in a shuffled order
        d = ((i * 37) % 100 + 1) / 1000
        g.sent(t)
        t += d
        g.replied(t)
        t += 1.0
    assert len(g.top) == GapTracker.TOP
    assert [round(x.seconds * 1000) for x in g.top] == list(range(100, 100 - GapTracker.TOP, -1))
    assert g.longest is g.top[0]


def test_names_and_addresses() -> None:
    assert terminal_names(3) == ["T00001", "T00002", "T00003"]
    assert terminal_names(2, "K", 9, 2) == ["K09", "K10"]
    assert parse_hostport("127.0.0.1:7000") == ("127.0.0.1", 7000)
    assert parse_hostport("[::1]:7000") == ("::1", 7000)
    for bad in ("nonsense", ":7000", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_hostport(bad)


def test_report_forms() -> None:
    r = LoadReport(
        terminals=2,
        welcomed=2,
        sent=10,
        acked=10,
        replied=9,
        lost=1,
        lost_ids=["T1:5"],
        latency_ms={"p50": 1.0, "p99": 2.0, "max": 3.0},
        service_gap={"ms": 0.0, "start": None, "end": None},
    )
    assert not r.ok and r.exit_status == 1
    assert r.to_dict()["ok"] is False and r.to_dict()["failures"] == r.failures
    text = format_table(r)
    assert "FAILED" in text and "T1:5" in text


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lost": 1}, "lost: 1 "),
        ({"duplicates": 1}, "duplicates: 1 "),
        ({"unexpected": 1}, "unexpected: 1 "),
        ({"bad_data": 1}, "bad data: 1 "),
        ({"unacked": 1}, "unacknowledged: 1 "),
        ({"welcomed": 1}, "not logged on: 1 of 2"),
        ({"disconnects": 2, "disconnects_standby_capable": 2}, "disconnects: 2 "),
        ({"session_closed": 1, "session_closed_standby_capable": 1}, "session closed: 1 "),
        ({"session_closed": 1, "session_closed_standby_capable": 1, "expect_disconnects": "cp"}, "session closed: 1 "),
        (
            {"disconnects": 3, "disconnects_standby_capable": 3, "disconnects_cp_present": 1, "expect_disconnects": "cp"},
            "disconnects with the CP present: 1 ",
        ),
        ({"errors": {"already_connected": 1}}, "CP errors: already_connected x1"),
        ({"protocol_errors": 1}, "protocol errors: 1 "),
        # waiting for every session (the default), one terminal never got one: not served at all
        ({"sessions_expected": True, "sessions_opened": 1}, "no session: 1 of the 2 terminals welcomed"),
    ],
)
def test_every_broken_promise_fails_the_report(fields: dict[str, object], reason: str) -> None:
    r = LoadReport(**{"terminals": 2, "welcomed": 2, "sent": 10, "acked": 10, "replied": 10, **fields})  # type: ignore[arg-type]
    assert not r.ok and r.exit_status == 1
    assert len(r.failures) == 1 and r.failures[0].startswith(reason), r.failures
    assert "FAILED: " + r.failures[0] in format_table(r)


def test_expected_disconnects_pass() -> None:
    r = LoadReport(terminals=2, welcomed=2, sent=10, acked=10, replied=10, disconnects=5, disconnects_standby_capable=5, expect_disconnects=True)
    assert r.ok and r.exit_status == 0 and r.failures == []


def _verdict_line(r: LoadReport) -> str:
    (line,) = [ln.strip() for ln in format_table(r).splitlines() if ln.strip().startswith("verdict")]
    return line


def test_the_ok_verdict_claims_only_the_data_checks_made() -> None:
    """The OK line said "with the right data" whatever was checked: with the check off, or for
    the ledger workload (its replies' shape only, unless the books were checked too)."""
    done = {"terminals": 1, "welcomed": 1, "sent": 1, "acked": 1, "replied": 1}
    assert _verdict_line(LoadReport(**done)).endswith("exactly once, with the right data")  # type: ignore[arg-type]
    for r in (LoadReport(**done, check_data=False), LoadReport(**done, workload="ledger"), LoadReport(**done, workload="ledger", check_data=False)):  # type: ignore[arg-type]
        line = _verdict_line(r)
        assert r.ok and line.startswith("verdict") and "OK: " in line and "right data" not in line, line
    assert "not checked: --no-check-data" in _verdict_line(LoadReport(**done, check_data=False))  # type: ignore[arg-type]
    assert "its shape only: no --books-* check" in _verdict_line(LoadReport(**done, workload="ledger"))  # type: ignore[arg-type]
    books = {"accounts": 4, "total": 40, "expected_total": 40, "transfers_ok": 1, "transfers_refused": 0, "entries": 5}
    line = _verdict_line(LoadReport(**done, workload="ledger", books=books))  # type: ignore[arg-type]
    assert "the books agree with every reply" in line and "shape only" not in line, line


def test_no_session_is_a_failure_only_where_the_run_waits_for_sessions() -> None:
    """--no-wait-session runs against a CP that opens none (tests/test_term.py): those pass."""
    r = LoadReport(terminals=2, welcomed=2, sent=10, acked=10, replied=10, sessions_opened=0, sessions_expected=False)
    assert r.ok, r.failures


def test_an_ids_file_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    """--ids-out to a folder that does not exist passed the option's check (click checks only
    paths that exist), and the run ended in a traceback that lost its report."""
    from click.testing import CliRunner

    from hsb.term.main import main

    r = CliRunner().invoke(
        main, ["load", "--cp", "127.0.0.1:1", "-n", "1", "--rate", "1", "--duration", "0.1", "--ids-out", str(tmp_path / "no" / "ids.json")]
    )
    assert r.exit_code == 2 and "cannot write" in r.output and "--ids-out" in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize(
    ("flags", "expected"),
    [([], False), (["--expect-disconnects"], True), (["--expect-cp-restart"], "cp")],
    ids=["none", "disconnects", "cp_restart"],
)
def test_the_expect_flags_reach_the_run_from_the_command_line(monkeypatch: pytest.MonkeyPatch, flags: list[str], expected: object) -> None:
    """--expect-cp-restart and --expect-disconnects were two flags on one parameter, and click
    took the first's type for both: `hsbterm load --expect-cp-restart` stopped with "'cp' is not
    a valid boolean", so the procedures of a CP restart in the docs could not be run."""
    from click.testing import CliRunner

    from hsb.term import main as term_main

    seen: dict[str, Any] = {}

    async def fake_load_main(cp: tuple[str, int], **kw: Any) -> LoadReport:
        seen.update(kw)
        return LoadReport(terminals=1, welcomed=1, sent=1, acked=1, replied=1)

    monkeypatch.setattr(term_main, "_load_main", fake_load_main)
    r = CliRunner().invoke(term_main.main, ["load", "--cp", "127.0.0.1:1", "-n", "1", "--rate", "1", "--duration", "0.1", *flags])
    assert "not a valid boolean" not in r.output and seen.get("expect_disconnects") == expected, (r.output, seen)


def test_both_expect_flags_at_once_are_a_usage_error() -> None:
    from click.testing import CliRunner

    from hsb.term.main import main

    r = CliRunner().invoke(
        main, ["load", "--cp", "127.0.0.1:1", "-n", "1", "--rate", "1", "--duration", "0.1", "--expect-disconnects", "--expect-cp-restart"]
    )
    assert r.exit_code == 2 and "give one" in r.output, r.output
