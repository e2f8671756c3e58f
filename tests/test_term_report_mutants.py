"""Tests from a mutation audit of hsb/term/report.py (`LoadReport.failures`, the strict verdict
every failover test and benchmark trusts): each pins a broken promise that a single-point change
of the module let pass while every other test still did. A count of exactly one of each fails
the run (a single disconnect of a standby-capable terminal, a single books finding, a sender
that stopped), not only larger ones."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.term.report import LoadReport, format_table

pytestmark = pytest.mark.timeout(30)

_DONE: dict[str, Any] = {"terminals": 2, "welcomed": 2, "sent": 10, "acked": 10, "replied": 10}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"disconnects": 1, "disconnects_standby_capable": 1}, "disconnects: 1 of terminals that should have kept"),
        ({"logon_drops": 1}, "dropped while logging on: 1 "),
        ({"books_failures": ["transfer 7 applied twice"]}, "books: transfer 7 applied twice"),
        ({"sender_failed": "boom"}, "the load's sender stopped on an error (boom)"),
    ],
    ids=["one-disconnect", "one-logon-drop", "one-books-finding", "sender-failed"],
)
def test_a_single_broken_promise_of_each_kind_fails_the_run(fields: dict[str, Any], reason: str) -> None:
    """One disconnect of a standby-capable terminal (a fast-switch failover must keep every
    connection), one drop during a logon, one finding of the books check, or a sender that
    stopped on an error: each alone fails the run with its reason, in the table's verdict too.
    Kills: the disconnect check needing more than one; the books' findings losing their first;
    the sender's failure left out of the verdict."""
    r = LoadReport(**{**_DONE, **fields})
    assert not r.ok and r.exit_status == 1
    assert len(r.failures) == 1 and r.failures[0].startswith(reason), r.failures
    assert "FAILED: " + r.failures[0] in format_table(r)
    assert r.to_dict()["ok"] is False and r.to_dict()["failures"] == r.failures


def test_every_books_finding_is_in_the_verdict() -> None:
    """The books check's findings are each one failure, in order: none is dropped."""
    found = ["transfer 7 applied twice", "account 3 holds 5 more than its entries", "reply to 9 not the stored one"]
    r = LoadReport(**_DONE, workload="ledger", books_failures=found)
    assert r.failures == [f"books: {f}" for f in found]


def test_a_single_disconnect_is_allowed_only_where_disconnects_are_expected() -> None:
    """The same single disconnect passes in conventional mode (`expect_disconnects=True`)."""
    r = LoadReport(**_DONE, disconnects=1, disconnects_standby_capable=1, expect_disconnects=True)
    assert r.ok and r.failures == []
