"""The checks the failover tests, the netns lab and the fault campaign apply to the hosts'
journal files: each must fail when an id is processed again without the redelivered mark,
on the same host or on another, whatever order the hosts were active in."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.netns.harness import check_delivery
from tests.support.campaign import Campaign
from tests.support.hostjournal import Line, read_host_journal, unmarked_repeats


def write(d: Path, host: str, lines: list[tuple[Any, ...]], torn: str = "") -> Path:
    """A host's journal of (terminal, id, redelivered) lines, or with the epoch after them."""
    p = d / f"journal-{host}.log"
    p.write_text("".join(f"{host} {' '.join(map(str, line))}\n" for line in lines) + torn)
    return p


def marks(*m: int) -> list[Line]:
    return [Line(x) for x in m]


def report(acked: dict[str, list[list[int]]]) -> dict[str, Any]:
    n = sum(last - first + 1 for r in acked.values() for first, last in r)
    return {
        "acked": n,
        "replied": n,
        "ok": True,
        "failures": [],
        "lost": 0,
        "duplicates": 0,
        "unexpected": 0,
        "ids": {t: {"acked": r, "step": 1} for t, r in acked.items()},
    }


def test_unmarked_repeats_rule() -> None:
    assert unmarked_repeats({"host-a": {("T1", 1): marks(0, 1)}, "host-b": {("T1", 1): marks(1), ("T1", 2): marks(0)}}) == []
    assert unmarked_repeats({"host-a": {("T1", 1): marks(0, 0)}}) == [("T1", 1)]
    assert unmarked_repeats({"host-a": {("T1", 1): marks(1, 0)}}) == [("T1", 1)]
    assert unmarked_repeats({"host-a": {("T1", 1): marks(0)}, "host-b": {("T1", 1): marks(0)}}) == [("T1", 1)]


def test_an_unmarked_repeat_on_the_other_host_after_a_marked_first_is_caught() -> None:
    """A message processed first marked redelivered (the CP handed it over again; the host it had
    gone to never processed it) and later again without the mark, on the other host: each host's
    file had one line and there was one unmarked line in all, so the rule passed it, in either
    order. The epoch on each line orders them: the later one unmarked fails; the unmarked one
    first (the old active's, at the older epoch, then the new active's, marked) passes."""
    k = ("T1", 5)
    assert unmarked_repeats({"host-a": {k: [Line(1, 6)]}, "host-b": {k: [Line(0, 7)]}}) == [k]
    assert unmarked_repeats({"host-b": {k: [Line(0, 7)]}, "host-a": {k: [Line(1, 6)]}}) == [k]  # (whichever host is read first)
    assert unmarked_repeats({"host-a": {k: [Line(1, 8)]}, "host-b": {k: [Line(0, 7)]}}) == []
    # back on the first host at a newer epoch, unmarked: a third processing after two
    assert unmarked_repeats({"host-a": {k: [Line(1, 6), Line(0, 8)]}, "host-b": {k: [Line(1, 7)]}}) == [k]
    assert unmarked_repeats({"host-a": {k: [Line(0, 6), Line(1, 8)]}, "host-b": {k: [Line(1, 7)]}}) == []
    # the CP restarted under the same active (one epoch): that host's file order
    assert unmarked_repeats({"host-a": {k: [Line(0, 6), Line(1, 6)]}, "host-b": {k: [Line(1, 7)]}}) == []
    assert unmarked_repeats({"host-a": {k: [Line(1, 6), Line(0, 6)]}}) == [k]


def test_the_campaign_fails_on_an_unmarked_repeat_on_the_other_host_after_a_marked_first(tmp_path: Path) -> None:
    write(tmp_path, "host-a", [("T1", 4, 0, 6), ("T1", 5, 1, 6)])
    write(tmp_path, "host-b", [("T1", 5, 0, 7), ("T1", 6, 0, 7)])
    ids = SimpleNamespace(ids={"T1": {"acked": [[4, 6]], "replied": [[4, 6]], "step": 1}})
    assert campaign(tmp_path, 4).check_journals(ids)["unmarked_repeats"] == 1
    write(tmp_path, "host-a", [("T1", 4, 0, 6), ("T1", 5, 1, 8)])  # marked, at the newer epoch: the later one
    assert campaign(tmp_path, 4).check_journals(ids)["unmarked_repeats"] == 0


def test_torn_last_line_is_not_counted(tmp_path: Path) -> None:
    p = write(tmp_path, "host-a", [("T1", 1, 0)], torn="host-a T1 2")
    assert read_host_journal(p, "host-a") == {("T1", 1): [Line(0)]}
    p = write(tmp_path, "host-a", [("T1", 1, 0, 6), ("T1", 1, 1, 7)], torn="host-a T1 2 0")
    assert read_host_journal(p, "host-a") == {("T1", 1): [Line(0, 6), Line(1, 7)]}


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([("T1", 5, 0), ("T1", 5, 0)], []),  # the same host twice, unmarked
        ([("T1", 5, 0), ("T1", 5, 1), ("T1", 5, 0)], []),  # marked once, then unmarked again
        ([("T1", 5, 0)], [("T1", 5, 1), ("T1", 5, 0)]),  # the next host: marked, then unmarked
    ],
)
def test_netns_check_delivery_fails_on_an_unmarked_repeat(tmp_path: Path, a: list[Any], b: list[Any]) -> None:
    write(tmp_path, "host-a", a)
    write(tmp_path, "host-b", b)
    lab = SimpleNamespace(journal=lambda node: tmp_path / f"journal-host-{node}.log")
    with pytest.raises(AssertionError, match="without the redelivered mark"):
        check_delivery(lab, report({"T1": [[5, 5]]}), ["host-a"] if not b else ["host-a", "host-b"])  # type: ignore[arg-type]


def test_netns_check_delivery_passes_marked_repeats(tmp_path: Path) -> None:
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 5, 1)])
    write(tmp_path, "host-b", [("T1", 5, 1), ("T1", 6, 0)])
    lab = SimpleNamespace(journal=lambda node: tmp_path / f"journal-host-{node}.log")
    out = check_delivery(lab, report({"T1": [[5, 6]]}), ["host-a", "host-b"])  # type: ignore[arg-type]
    assert out["processed_twice"] == 1


def campaign(d: Path, base: int) -> Campaign:
    c = Campaign(d, seed=1, terminals=1, churners=1)  # the load's T00001, the churner T00002
    c.id_base = base
    return c


def test_campaign_counts_an_unmarked_repeat_after_a_marked_line(tmp_path: Path) -> None:
    write(tmp_path, "host-a", [("T1", 4, 0)])
    write(tmp_path, "host-b", [("T1", 5, 1), ("T1", 5, 0), ("T1", 6, 0)])
    got = campaign(tmp_path, 4).check_journals(SimpleNamespace(ids={"T1": {"acked": [[4, 7]], "replied": [[4, 7]], "step": 1}}))
    assert got == {"missing": 1, "unmarked_repeats": 1, "processed_more_than_once": 1, "never_sent": 0}


def test_campaign_counts_what_a_host_processed_that_no_terminal_sent(tmp_path: Path) -> None:
    """check_journals compared only the acknowledged ids with the journals: a host that processed
    an id no terminal sent (a stale takeover entry, a message delivered to another terminal; the
    CP drops such a reply, so the load never sees it) passed."""
    ids = {"T1": {"acked": [[5, 7]], "replied": [[5, 8]], "step": 1}, "T3": {"acked": [[6, 6]], "replied": [], "step": 1}}
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 6, 0), ("T1", 999, 0)])  # 999: never sent by T1
    write(tmp_path, "host-b", [("T1", 7, 1), ("T1", 8, 1), ("T3", 6, 0)])  # (8: answered, its ack lost: sent)
    assert campaign(tmp_path, 5).check_journals(SimpleNamespace(ids=ids))["never_sent"] == 1
    # a terminal the run did not have, another terminal's id; not an earlier run's id (below the
    # base) nor the churner's id 1
    write(tmp_path, "host-b", [("T1", 7, 1), ("T9", 7, 0), ("T3", 7, 0), ("T1", 2, 0), ("T00002", 1, 0), ("T00002", 1, 0)])
    assert campaign(tmp_path, 5).check_journals(SimpleNamespace(ids=ids))["never_sent"] == 3


def test_an_id_at_the_runs_first_that_its_terminal_never_sent_is_counted(tmp_path: Path) -> None:
    """The run's first id (`base`) is the run's, not an earlier one's: processed for a terminal
    that never sent it, it is counted like any other."""
    ids = {"T1": {"acked": [[6, 7]], "replied": [[6, 7]], "step": 1}}
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 6, 0), ("T1", 7, 0)])
    assert campaign(tmp_path, 5).check_journals(SimpleNamespace(ids=ids))["never_sent"] == 1
    assert campaign(tmp_path, 6).check_journals(SimpleNamespace(ids=ids))["never_sent"] == 0  # (an earlier run's)


def test_the_end_to_end_tests_journal_check_fails_on_a_missing_or_unmarked_id(tmp_path: Path) -> None:
    """tests/support/sandboxed.py's check_journals: an acknowledged id in no journal, and an id
    the later host processed again unmarked (lines without their epoch: only the hosts' order
    tells), each fail it."""
    from tests.support.sandboxed import check_journals

    info = {"journals": [str(tmp_path / "journal-host-a.log"), str(tmp_path / "journal-host-b.log")]}
    rep = SimpleNamespace(ids={"T1": {"acked": [[5, 6]], "step": 1}})
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 6, 1)])
    write(tmp_path, "host-b", [("T1", 6, 1)])
    check_journals(info, rep, ["host-a", "host-b"])
    write(tmp_path, "host-b", [])
    write(tmp_path, "host-a", [("T1", 5, 0)])
    with pytest.raises(AssertionError, match="1 acknowledged ids are in no journal"):
        check_journals(info, rep, ["host-a", "host-b"])
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 6, 1)])
    write(tmp_path, "host-b", [("T1", 6, 0)])
    with pytest.raises(AssertionError, match="processed by host-a and again by host-b without the redelivered mark"):
        check_journals(info, rep, ["host-a", "host-b"])
    write(tmp_path, "host-a", [("T1", 5, 0), ("T1", 6, 0), ("T1", 6, 0)])  # the same host, twice unmarked
    write(tmp_path, "host-b", [])
    with pytest.raises(AssertionError, match="1 ids processed again without the redelivered mark"):
        check_journals(info, rep, ["host-a", "host-b"])


class Report:
    """A load report as assert_clean reads it: ok, failures, to_dict."""

    def __init__(self, ok: bool = True, **kw: int) -> None:
        self.ok, self.failures = ok, [] if ok else ["x"]
        self.d = {"acked": 10, "replied": 10, "sent": 10, "lost": 0, "duplicates": 0, "unexpected": 0, "unacked": 0, "bad_data": 0}
        self.d |= {"disconnects": 0, "session_closed": 0} | kw

    def to_dict(self) -> dict[str, int]:
        return self.d


def test_assert_clean_fails_on_each_count_and_on_the_verdict() -> None:
    from tests.support.sandboxed import assert_clean

    assert_clean(Report())
    assert_clean(Report(disconnects=3, session_closed=1), disconnects_allowed=True)
    with pytest.raises(AssertionError):
        assert_clean(Report(ok=False))
    for key in ("lost", "duplicates", "unexpected", "unacked", "bad_data", "disconnects", "session_closed"):
        with pytest.raises(AssertionError):
            bad: dict[str, Any] = {key: 1}
            assert_clean(Report(**bad))
    with pytest.raises(AssertionError):
        assert_clean(Report(acked=0, replied=0, sent=0))
    with pytest.raises(AssertionError):
        assert_clean(Report(replied=9))
