"""The ledger's books check (hsb.term.books), each breach on its own, checked against the code
broken on purpose (a mutation audit): money made, a balance its entries do not explain, a
transfer told ok and never applied or told refused and applied once, one applied twice that no
terminal was told of (mid-run), a transfer entry at an id the terminal never used, a reply that
differs from its record, and the balance_limit bound. On SQLite files, in-process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.service.db import open_database
from hsb.service.ledger import MAX_BALANCE
from hsb.term.books import Books, _contradicted, check_books
from hsb.term.workload import LedgerWorkload
from tests.support.booksdb import Entry, fill, named

BASE = 1000
OK = '{"ok":true}'
pytestmark = pytest.mark.timeout(30)


async def _books(
    path: Path,
    w: LedgerWorkload,
    term: Any,
    transfers: list[tuple[int, str, str, int]],
    *,
    other: Sequence[tuple[int, str, str, str | None, int]] = (),
    moved: Sequence[tuple[str, int]] = (),
    records: dict[int, str] | None = None,
    final: bool = True,
    clients: Sequence[Any] | None = None,
) -> list[str]:
    """The books' failures for a database of the run's accounts at `w.initial` each, with their
    deposits; then `transfers` (msg_id, from, to, amount) applied with their entries, `other`
    entries (msg_id, op, account, other, amount) written as given, balances changed by `moved`
    (account, amount) with no entry, and the idempotency records `records` (msg_id -> reply;
    default: what the terminal was told); the run's terminals are `clients` (default: `term`)."""
    told = {term.base + k * term.stride: text for k, text in w.replies.get(term.idx, {}).items()}
    entries: list[Entry] = [(term.name, mid, op, acct, to, n) for mid, op, acct, to, n in other]
    entries += [(term.name, mid, "transfer", src, dst, n) for mid, src, dst, n in transfers]
    balances: dict[str, int] = {}
    for acct, n in moved:
        balances[acct] = balances.get(acct, 0) + n
    db = open_database(None, str(path))
    try:
        recs = [(term.name, mid, reply) for mid, reply in (told if records is None else records).items()]
        await fill(db, w, entries, balances=balances, records=recs)
    finally:
        await db.close()
    return (await check_books({"sqlite": str(path)}, w, [term] if clients is None else clients, final=final)).failures


async def test_each_breach_of_the_books_fails_on_its_own(tmp_path: Path) -> None:
    w = LedgerWorkload(accounts=4, initial=1000, tag="m")
    term = SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)
    src, dst, amount = w.transfer(1, 0)
    a0, a1 = w.accounts[:2]
    w.replies = {1: {0: OK}}
    assert await _books(tmp_path / "good.db", w, term, [(BASE, src, dst, amount)]) == []
    # money made, with entries that explain every balance: only the total says it
    made = await _books(tmp_path / "made.db", w, term, [(BASE, src, dst, amount)], other=[(7, "deposit", a0, None, 5)], moved=[(a0, 5)])
    assert named(made) == ["balance"], made
    # a deposit and a withdrawal of the same amount, each with its entry: nothing to say
    both = [(7, "deposit", a0, None, 5), (8, "withdraw", a0, None, 5)]
    assert await _books(tmp_path / "both.db", w, term, [(BASE, src, dst, amount)], other=both) == []
    # money moved between two accounts with no entry: the total holds, the replay does not
    assert named(await _books(tmp_path / "moved.db", w, term, [(BASE, src, dst, amount)], moved=[(a0, -5), (a1, 5)])) == ["replay_mismatch"]
    # told ok, never applied
    assert named(await _books(tmp_path / "notapplied.db", w, term, [])) == ["told_ok_not_applied"]
    # a reply that differs from the one its record holds
    differs = await _books(tmp_path / "differs.db", w, term, [(BASE, src, dst, amount)], records={BASE: '{"ok":false,"error":"insufficient_funds"}'})
    assert named(differs) == ["reply_differs"], differs
    # told it was not applied (no ledger answer: a host's error), applied once all the same
    w.replies = {1: {0: "error: RuntimeError"}}
    refused = await _books(tmp_path / "refused.db", w, term, [(BASE, src, dst, amount)])
    assert named(refused) == ["told_refused_applied"], refused
    # applied twice, and no terminal told yet: mid-run (`final=False`) that is a breach already
    w.replies = {}
    twice = await _books(tmp_path / "twice.db", w, term, [(BASE, src, dst, amount)] * 2, final=False)
    assert named(twice) == ["applied_twice"], twice


async def test_a_transfer_entry_at_an_id_the_terminal_never_used_is_wrong(tmp_path: Path) -> None:
    """A terminal's ids are base + k * stride, k from 0: an entry between two of them, or below
    its first, is no message of its, whatever it moved (mid-run, where nobody being told yet is
    no breach, it is still one)."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="s")
    term = SimpleNamespace(name="T1", idx=1, base=BASE, stride=2)
    w.replies = {}
    for name, mid, k in (("between", BASE + 1, 0), ("below", BASE - 2, -1)):
        src, dst, amount = w.transfer(1, k)  # what message k would move (k = -1: none)
        failures = await _books(tmp_path / f"{name}.db", w, term, [(mid, src, dst, amount)], final=False)
        assert named(failures) == ["wrong_transfer"], (name, failures)


def test_balance_limit_is_contradicted_up_to_exactly_the_limit() -> None:
    """The ledger refuses balance_limit only when the destination would pass MAX_BALANCE: with the
    run's money plus the amount at the limit exactly, the refusal is contradicted."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="l")
    _, _, amount = w.transfer(1, 0)
    at = Books(total=MAX_BALANCE - amount, expected_total=MAX_BALANCE - amount)
    assert _contradicted("balance_limit", w, 1, 0, {}, at)
    above = Books(total=MAX_BALANCE - amount + 1, expected_total=MAX_BALANCE - amount + 1)
    assert _contradicted("balance_limit", w, 1, 0, {}, above) == ""


async def test_a_transfer_entry_of_a_terminal_not_in_the_run_is_wrong(tmp_path: Path) -> None:
    """A transfer on the run's accounts written for a terminal name that is none of the run's:
    the final check said it was applied unanswered, but mid-run (`final=False`, the fault
    campaign's check after each round) nothing flagged it."""
    w = LedgerWorkload(accounts=4, initial=1000, tag="o")
    ours = SimpleNamespace(name="T1", idx=1, base=BASE, stride=1)
    stranger = SimpleNamespace(name="T9", idx=9, base=BASE, stride=1)
    w.replies = {}
    src, dst, amount = w.transfer(1, 0)  # exactly what T1's first message would move
    failures = await _books(tmp_path / "o.db", w, stranger, [(BASE, src, dst, amount)], final=False, clients=[ours])
    assert named(failures) == ["wrong_transfer"], failures
