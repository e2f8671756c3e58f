"""A ledger database made by hand for the books check's tests (hsb.term.books): the run's
accounts with their deposits, entries written as given with their effect on the balances,
balances moved with no entry, idempotency records; and the name each of the check's failures
gives."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from hsb.service import ledger, once
from hsb.term.workload import LedgerWorkload

Entry = tuple[str, int, str, str, "str | None", int]  # terminal, msg_id, op, account, other, amount


async def fill(
    db: Any,
    w: LedgerWorkload,
    entries: Sequence[Entry] = (),
    *,
    balances: dict[str, int] | None = None,
    records: Sequence[tuple[str, int, str]] = (),
) -> None:
    """The run's accounts at `w.initial` each with their deposits (T0, id 0), then `entries`
    written as given with each transfer's effect on the balances, the balances changed further
    by `balances` (account -> amount, no entry), and the idempotency `records`."""
    await db.setup(ledger.DDL)
    await db.setup(once.DDL)
    async with db.transaction() as tx:
        if db.kind == "postgresql":  # the entries' order, as the ledger's setup adds it
            await tx.execute(ledger._ADD_SEQ)
        for acct in w.accounts:
            await tx.execute("INSERT INTO ledger_accounts (account, balance) VALUES ($1, $2)", acct, w.initial)
            await tx.execute(
                "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ('T0', 0, 'deposit', $1, NULL, $2)",
                acct,
                w.initial,
            )
        for t, mid, op, acct, other, n in entries:
            await tx.execute(
                "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ($1, $2, $3, $4, $5, $6)",
                t,
                mid,
                op,
                acct,
                other,
                n,
            )
            if op == "transfer":
                await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", acct, n)
                await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", other, n)
        for acct, n in (balances or {}).items():
            await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", acct, n)
        for t, mid, reply in records:
            await tx.execute("INSERT INTO hsb_idempotency (terminal, msg_id, reply, at) VALUES ($1, $2, $3, 0)", t, mid, reply)


def named(failures: list[str]) -> list[str]:
    """The name each of `failures` gives (`balance` for the total's), in order."""
    return [m.group(1) if (m := re.search(r"\((\w+)\): ", f)) else "balance" for f in failures]
