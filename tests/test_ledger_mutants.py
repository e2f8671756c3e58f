"""Tests from a mutation audit of hsb/service/ledger.py (the ledger service, docs/ledger.md):
each pins a behaviour that a single-point change of the module broke while every other test
still passed (or only the end-to-end books check did, minutes later): the entry each applied
effect leaves with its accounts, a yes/no option that must be true or false, keep_last of at
least 1, and a message cancelled while the shared setup runs leaving it to the others.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from hsb.service.ledger import LedgerService, option_problems

pytestmark = pytest.mark.timeout(60)


class Ledger:
    """A ledger on SQLite in process, its messages numbered for one terminal."""

    def __init__(self, path: Path, **opts: Any) -> None:
        self.s = LedgerService("host-a", sqlite=str(path), **opts)
        self.next_id = 0

    async def call(self, req: dict[str, Any]) -> dict[str, Any]:
        self.next_id += 1
        return json.loads(await self.s.handle("T1", self.next_id, json.dumps(req), False))  # type: ignore[no-any-return]

    async def entries(self) -> list[tuple[Any, ...]]:
        async with self.s.db.transaction() as tx:
            rows = await tx.fetch("SELECT msg_id, op, account, other, amount FROM ledger_entries ORDER BY rowid")
        return [tuple(r) for r in rows]


async def test_every_applied_effect_leaves_its_entry_with_its_accounts(tmp_path: Path) -> None:
    """Each applied open, deposit, withdrawal and transfer leaves one entry naming its message,
    its account (a transfer's: the one debited, and the one credited as `other`) and its amount:
    the books replay them to check each balance, so one missing or turned round is money made
    or lost in the check's eyes."""
    led = Ledger(tmp_path / "l.sqlite")
    try:
        await led.call({"op": "open", "account": "a"})
        await led.call({"op": "open", "account": "b"})
        assert await led.call({"op": "deposit", "account": "a", "amount": 50}) == {"ok": True, "balance": 50}
        assert await led.call({"op": "withdraw", "account": "a", "amount": 20}) == {"ok": True, "balance": 30}
        assert await led.call({"op": "transfer", "from": "a", "to": "b", "amount": 7}) == {"ok": True}
        assert await led.call({"op": "balance", "account": "b"}) == {"ok": True, "balance": 7}
        assert await led.entries() == [
            (1, "open", "a", None, 0),
            (2, "open", "b", None, 0),
            (3, "deposit", "a", None, 50),
            (4, "withdraw", "a", None, 20),
            (5, "transfer", "a", "b", 7),
        ]
    finally:
        await led.s.close()


@pytest.mark.parametrize("value", [1, 0, "true", None])
def test_a_yes_no_option_must_be_true_or_false(value: Any) -> None:
    """`idempotency = 1` (or 0, or a string) is not a yes/no: said with its key, not taken as
    whatever Python's truth makes of it (0 would turn the records off)."""
    assert [p.split(" ")[0] for p in option_problems({"idempotency": value})] == ["idempotency"]


def test_keep_last_below_one_is_refused_at_start(tmp_path: Path) -> None:
    """`keep_last = 0` would let a prune take a terminal's last record, one a redelivery of its
    last message still needs: refused at start, naming the option."""
    with pytest.raises(TypeError, match="keep_last must be at least 1"):
        LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"), keep_last=0)
    assert LedgerService("host-a", sqlite=str(tmp_path / "l.sqlite"), keep_last=1).once.keep_last == 1


async def test_a_message_cancelled_while_the_setup_runs_leaves_it_to_the_others(tmp_path: Path) -> None:
    """The first message's work cancelled (the CP link lost) while the shared setup runs: the
    setup goes on, and the other message waiting for it is answered, not cancelled with it."""
    svc = LedgerService("host-b", sqlite=str(tmp_path / "books.sqlite"))
    real = svc.db.setup
    started, go = asyncio.Event(), asyncio.Event()

    async def slow(ddl: list[str]) -> None:
        started.set()
        await go.wait()
        await real(ddl)

    svc.db.setup = slow  # type: ignore[method-assign]
    try:
        first = asyncio.ensure_future(svc.handle("T1", 1, '{"op":"open","account":"a"}', False))
        second = asyncio.ensure_future(svc.handle("T2", 1, '{"op":"open","account":"b"}', False))
        await asyncio.wait_for(started.wait(), 10)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        go.set()
        assert json.loads(await asyncio.wait_for(second, 10)) == {"ok": True, "balance": 0}
        assert svc.ready
    finally:
        go.set()
        await svc.close()
