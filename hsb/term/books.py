"""The books check after a ledger load: the database against what the terminals were told.

Read straight from the database the `ledger` service writes (PostgreSQL or SQLite):

- **balanced**: the run's accounts hold, together, exactly what the setup deposited
  (transfers move money, never make or lose it), and each account's balance is its deposit
  plus what its entries moved in, less what they moved out;
- **exactly once**: every transfer a terminal was told succeeded has exactly one entry, every
  one refused has none, no message has more than one entry of any kind (a transfer's or a
  refusal's), and no entry exists for a message no terminal got an answer to;
- **the right effect**: each transfer entry moved the accounts and the amount its message
  asked for (a message delivered with another's data, or applied wrongly, shows here);
- **refusals right**: each `insufficient_funds` refusal is an entry too (op `refused`), and
  replayed in the order the entries were written, the account then held less than the amount
  asked for; a terminal told `insufficient_funds` has its refusal's entry; no transfer is refused
  for a reason the books contradict (`no_such_account` while both accounts exist: the setup
  opened them before any transfer and none is ever removed; `balance_limit` while the run's money
  cannot reach it; `bad_request` for the well-formed request the workload made; an error the
  ledger never gives a transfer). (`id_reused` is left to **same answer**: its reply is not the
  stored one);
- **same answer**: the reply a terminal got is the reply stored with the message's
  idempotency record (a redelivered message answered differently would show here), and every
  answered message has its record.

Any breach is a failure of the run (`hsbterm load` exits 1).

The idempotency records read are this run's only (each terminal's from its id base on): a
database kept across runs holds every earlier run's records of the same terminal names, and
reading them all made the check time out. It reads on a connection of its own settings
(`READ_TIMEOUTS`: the ledger's own, 10 s a statement and 1 s idle in a transaction, are for a
service's short transactions, not one long snapshot), and leaves its Python work on the rows
until the snapshot is read.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hsb.service.db import open_database
from hsb.service.ledger import ENTRY_ORDER, MAX_BALANCE, REFUSED, BadRequest, parse
from hsb.term.workload import LedgerWorkload

# PostgreSQL: a statement of the check may scan the whole entries table, and the snapshot is
# held across its statements; the server must not end it as a stalled service's transaction
READ_TIMEOUTS = {"command_timeout": 600.0, "tx_idle_timeout": 60.0}
# (terminal, id base) pairs per statement: two placeholders each, within both databases' limits
RECORDS_CHUNK = 250


@dataclass
class Books:
    accounts: int = 0
    total: int = 0
    expected_total: int = 0
    transfers_ok: int = 0
    transfers_refused: int = 0
    entries: int = 0
    applied_twice: list[str] = field(default_factory=list)
    applied_unanswered: list[str] = field(default_factory=list)
    told_ok_not_applied: list[str] = field(default_factory=list)
    told_refused_applied: list[str] = field(default_factory=list)
    replay_mismatch: list[str] = field(default_factory=list)
    reply_differs: list[str] = field(default_factory=list)
    record_missing: list[str] = field(default_factory=list)
    wrong_transfer: list[str] = field(default_factory=list)
    refused_wrongly: list[str] = field(default_factory=list)
    refusal_unrecorded: list[str] = field(default_factory=list)
    refusal_contradicted: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        out = []
        if self.total != self.expected_total:
            out.append(f"books do not balance: the accounts hold {self.total}, the setup deposited {self.expected_total}")
        for name, ids, what in (
            ("applied_twice", self.applied_twice, "applied more than once"),
            ("applied_unanswered", self.applied_unanswered, "applied but no terminal was answered"),
            ("told_ok_not_applied", self.told_ok_not_applied, "answered ok but not applied"),
            ("told_refused_applied", self.told_refused_applied, "answered refused but applied"),
            ("replay_mismatch", self.replay_mismatch, "balance differs from its entries"),
            ("reply_differs", self.reply_differs, "reply differs from the one stored first"),
            ("record_missing", self.record_missing, "answered without an idempotency record"),
            ("wrong_transfer", self.wrong_transfer, "applied with other accounts or another amount than the message asked for"),
            ("refused_wrongly", self.refused_wrongly, "refused for insufficient funds while the account held enough"),
            ("refusal_unrecorded", self.refusal_unrecorded, "told insufficient_funds without the refusal's entry"),
            ("refusal_contradicted", self.refusal_contradicted, "refused for a reason the books contradict"),
        ):
            if ids:
                out.append(f"{len(ids)} {what} ({name}): {', '.join(ids[:5])}")
        return out

    def as_dict(self) -> dict[str, Any]:
        d = {k: (v if not isinstance(v, list) else len(v)) for k, v in self.__dict__.items()}
        d["failures"] = self.failures
        return d


async def check_books(
    db_opts: dict[str, Any],
    w: LedgerWorkload,
    clients: Sequence[Any],
    idempotency: bool = True,
    final: bool = True,
) -> Books:
    """`clients`: the run's TerminalClients (name, idx, base, stride); `db_opts`: dsn= or sqlite=.

    `final=False` checks a run still under way: everything above holds at every commit, except
    that a transfer in flight may be applied before its terminal is answered."""
    b = Books(expected_total=w.initial * w.n)
    # what the terminals were told, taken before the database is read: each of these replies
    # went out after its commit, so the snapshot below must hold its effect
    replies = {idx: dict(r) for idx, r in w.replies.items()}
    db = open_database(db_opts.get("dsn") or None, db_opts.get("sqlite") or None, **READ_TIMEOUTS)
    rows: list[tuple[Any, ...]] = []
    try:
        async with db.transaction() as tx:
            if db.kind == "postgresql":  # one snapshot for every statement below
                await tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            balances = dict(await tx.fetch("SELECT account, balance FROM ledger_accounts WHERE account LIKE $1", w.prefix + "%"))
            entries = await tx.fetch(
                f"SELECT terminal, msg_id, op, account, other, amount FROM ledger_entries WHERE account LIKE $1 ORDER BY {ENTRY_ORDER[db.kind]}",
                w.prefix + "%",
            )
            # each terminal's records from its id base on: every id of this run (base + k * stride),
            # none of an earlier run's (the bases grow with the clock)
            own = sorted({(c.name, int(c.base)) for c in clients}) if idempotency else []
            for i in range(0, len(own), RECORDS_CHUNK):
                chunk = own[i : i + RECORDS_CHUNK]
                where = " OR ".join(f"(terminal = ${2 * j + 1} AND msg_id >= ${2 * j + 2})" for j in range(len(chunk)))
                rows += await tx.fetch(f"SELECT terminal, msg_id, reply FROM hsb_idempotency WHERE {where}", *(v for pair in chunk for v in pair))
    finally:
        await db.close()
    records: dict[tuple[str, int], str] = {(t, int(mid)): reply for t, mid, reply in rows}
    b.accounts = len(balances)
    b.total = sum(int(v) for v in balances.values())
    b.entries = len(entries)
    # replay, in the order the entries were written: each balance from its entries, and each
    # refusal against the balance its account had at that point
    moved: Counter[str] = Counter()
    per_msg: Counter[tuple[str, int]] = Counter()
    refusals: Counter[tuple[str, int]] = Counter()
    by_name = {c.name: c for c in clients}
    for t, mid, op, acct, other, amount in entries:
        if op == REFUSED:
            refusals[(t, int(mid))] += 1
            if moved[acct] >= int(amount):
                b.refused_wrongly.append(f"{t}:{mid} ({acct} held {moved[acct]}, asked {amount})")
        elif op == "transfer":
            per_msg[(t, int(mid))] += 1
            c = by_name.get(t)
            k, rem = divmod(int(mid) - c.base, c.stride) if c is not None else (-1, 1)
            if c is None or rem or k < 0 or (acct, other, int(amount)) != w.transfer(c.idx, k):
                # not what that terminal's message asked for, never sent, or no terminal of the run's
                b.wrong_transfer.append(f"{t}:{mid}")
            moved[acct] -= int(amount)
            moved[other] += int(amount)
        elif op == "deposit":
            moved[acct] += int(amount)
        elif op == "withdraw":
            moved[acct] -= int(amount)
    for acct, bal in balances.items():
        if int(bal) != moved[acct]:
            b.replay_mismatch.append(f"{acct}: {bal} != {moved[acct]}")
    # what each terminal was told against what was applied
    told: set[tuple[str, int]] = set()
    for c in clients:
        for k, text in replies.get(c.idx, {}).items():
            mid = c.base + k * c.stride
            key = (c.name, mid)
            told.add(key)
            tag = f"{c.name}:{mid}"
            if idempotency:
                stored = records.get(key)
                if stored is None:
                    b.record_missing.append(tag)
                elif stored != text:
                    b.reply_differs.append(tag)
            if w.is_setup(c.idx, k):
                continue
            n = per_msg.get(key, 0)
            if n + refusals.get(key, 0) > 1:  # (before the reply is read: whatever it says, once is the most, a refusal's entry included)
                b.applied_twice.append(tag)
            r = _reply(text)  # (None: not the ledger's answer, a host's `error: …`: the verdict's bad_data; told nothing was applied)
            if r is not None and r.get("ok") is True:
                b.transfers_ok += 1
                if n == 0:
                    b.told_ok_not_applied.append(tag)
            else:
                b.transfers_refused += 1
                if n:
                    b.told_refused_applied.append(tag)
                error = None if r is None else str(r.get("error", ""))  # (the error a refusal names, "" if none)
                if error == "insufficient_funds":
                    if not refusals.get(key):
                        b.refusal_unrecorded.append(tag)
                elif error is not None and (why := _contradicted(error, w, c.idx, k, balances, b)):
                    b.refusal_contradicted.append(f"{tag} ({error}: {why})")
    # entries of messages nobody was told about: a transfer's or a refusal's (the message was
    # processed: its answer was committed with it), once at most either way
    for key in sorted(per_msg.keys() | refusals.keys()):
        n = per_msg.get(key, 0) + refusals.get(key, 0)
        if n > 1 and key not in told:
            b.applied_twice.append(f"{key[0]}:{key[1]}")
        if final and key not in told:
            b.applied_unanswered.append(f"{key[0]}:{key[1]}" + (f" x{n}" if n > 1 else ""))
    return b


def _reply(text: str) -> dict[str, Any] | None:
    """A ledger reply, parsed once; None for one that is no answer of the ledger's (not a JSON
    object, or nested past the reader's depth)."""
    try:
        r = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return r if isinstance(r, dict) else None


# what the ledger may answer a transfer with besides insufficient_funds (hsb.service.ledger)
_TRANSFER_REFUSALS = {"no_such_account", "balance_limit", "bad_request", "id_reused"}


def _contradicted(error: str, w: LedgerWorkload, idx: int, k: int, balances: dict[str, Any], b: Books) -> str:
    """Why the books contradict a refusal of terminal `idx`'s transfer `k` for `error`; "" if not."""
    src, dst, amount = w.transfer(idx, k)
    if error not in _TRANSFER_REFUSALS:
        return "the ledger gives a transfer no such refusal"
    if error == "no_such_account" and src in balances and dst in balances:
        return f"{src} and {dst} exist"
    if error == "balance_limit" and max(b.total, b.expected_total) + amount <= MAX_BALANCE:
        return f"the run's accounts hold {max(b.total, b.expected_total)} in all"
    if error == "bad_request":
        try:
            parse(w.payload(idx, k))
        except BadRequest:
            return ""
        return "the request was well formed"
    return ""
