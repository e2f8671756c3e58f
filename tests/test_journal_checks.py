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
