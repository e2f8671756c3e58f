"""The reference service `ledger`: accounts and money, exactly once (docs/ledger.md).

Each message is a JSON object as text, so a person can type one into `hsbterm connect`:

    {"op":"open","account":"alice"}                         {"ok":true,"balance":0}
    {"op":"deposit","account":"alice","amount":100}         {"ok":true,"balance":100}
    {"op":"withdraw","account":"alice","amount":30}         {"ok":true,"balance":70}
    {"op":"transfer","from":"alice","to":"bob","amount":5}  {"ok":true}
    {"op":"balance","account":"alice"}                      {"ok":true,"balance":65}

Refusals: `exists`, `no_such_account`, `insufficient_funds`, `id_reused` (a message id recorded
for another request: hsb.service.once, RequestMismatch); anything malformed gets
`{"ok":false,"error":"bad_request","msg":…}`. Every effect and its reply are committed in one
transaction with the idempotency record (hsb.service.once), and every applied effect leaves a
row in `ledger_entries`, as does every `insufficient_funds` refusal (op `refused`), so the books
can be checked from outside, refusals too (hsb.term.books).

`[service_options]`: `dsn = "postgresql://…"` (both hosts on the same server), or
`sqlite = "PATH"` (one machine only: the sandbox and the demo); `pool_size`,
`command_timeout`, `tx_idle_timeout`, `keep_hours` (idempotency records),
`idempotency = false` (measurement only: effects without records, not exactly once).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import dataclass
from typing import Any

import structlog

from hsb.service.api import ServiceUnavailable
from hsb.service.builtin import logon_seconds
from hsb.service.db import DEPLOYMENT_STATES, Database, RetryTransaction, Tx, open_database
from hsb.service.once import ExactlyOnce, RequestMismatch

log = structlog.get_logger("hsb.service")

MAX_ACCOUNT = 64
MAX_AMOUNT = 10**12
ONE_OF_OPS = "one of open, deposit, withdraw, transfer, balance"  # (what a refusal of its op says)
# the fields each request takes (SPEC §8), and no others
FIELDS: dict[str, frozenset[str]] = {
    "open": frozenset({"op", "account"}),
    "balance": frozenset({"op", "account"}),
    "deposit": frozenset({"op", "account", "amount"}),
    "withdraw": frozenset({"op", "account", "amount"}),
    "transfer": frozenset({"op", "from", "to", "amount"}),
}
# a balance is a 64-bit integer in both databases: SQLite would turn one past it into a float
# (money made and lost silently), PostgreSQL would fail the statement; refused well before
MAX_BALANCE = 2**62

DDL = [
    "CREATE TABLE IF NOT EXISTS ledger_accounts (account TEXT PRIMARY KEY, balance BIGINT NOT NULL CHECK (balance >= 0))",
    # one row per applied effect; deliberately no unique key on (terminal, msg_id): a message
    # applied twice would show as two rows, which is what the books check looks for
    "CREATE TABLE IF NOT EXISTS ledger_entries ("
    " terminal TEXT NOT NULL, msg_id BIGINT NOT NULL, op TEXT NOT NULL,"
    " account TEXT NOT NULL, other TEXT, amount BIGINT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS ledger_entries_msg ON ledger_entries (terminal, msg_id)",
]
# the order in which entries were written, for the books' replay (an insufficient_funds refusal
# is an entry too, checked against the balance its account had then). Written under the rows'
# locks, so one account's entries are numbered in the order they happened. SQLite has its rowid
# (one transaction at a time, and the newest rows are never deleted: it only grows).
_HAS_SEQ = (
    "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = 'ledger_entries' AND column_name = 'seq'"
)
_ADD_SEQ = "ALTER TABLE ledger_entries ADD COLUMN seq BIGSERIAL"
ENTRY_ORDER = {"postgresql": "seq", "sqlite": "rowid"}
REFUSED = "refused"  # an entry's op: insufficient funds (account: the one debited; amount: asked for)


def dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


class BadRequest(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    op: str
    account: str = ""
    other: str = ""  # transfer: the account credited
    amount: int = 0


def _account(obj: dict[str, Any], key: str) -> str:
    v = obj.get(key)
    if not isinstance(v, str) or not v:
        raise BadRequest(f"{key!r} must be a non-empty string")
    if len(v) > MAX_ACCOUNT:
        raise BadRequest(f"{key!r} is longer than {MAX_ACCOUNT} characters")
    if "\x00" in v or any("\ud800" <= ch <= "\udfff" for ch in v):
        # a NUL or a lone surrogate: no database stores it as text (PostgreSQL refuses both)
        raise BadRequest(f"{key!r} holds a character that is not text (NUL or a lone surrogate)")
    return v


def _amount(obj: dict[str, Any]) -> int:
    v = obj.get("amount")
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise BadRequest("'amount' must be a positive integer")
    if v > MAX_AMOUNT:
        raise BadRequest(f"'amount' must be at most {MAX_AMOUNT}")
    return v


def parse(data: Any) -> Request:
    """The request in a message's data (sans-IO: raises BadRequest with a readable reason)."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError:
            raise BadRequest("data is not UTF-8 text") from None
    if not isinstance(data, str):
        raise BadRequest("data must be a JSON object as text")
    try:
        obj = json.loads(data, object_pairs_hook=_no_repeats)
    except BadRequest:
        raise
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("not JSON this service takes: nested too deep") from None
    if not isinstance(obj, dict):
        raise BadRequest('a JSON object is expected, like {"op":"balance","account":"alice"}')
    op = obj.get("op")
    takes = FIELDS.get(op) if isinstance(op, str) else None
    if takes is not None and not obj.keys() <= takes:
        # (a money request says exactly what it means: a field it does not take, a typo beside the
        # right name or another op's, is refused, never silently ignored)
        extra = sorted(k for k in obj if k not in takes)[0]
        raise BadRequest(f"{_shown(extra)} is not a field of {op!r}: it takes {', '.join(sorted(takes - {'op'}))}")
    if op in ("open", "balance"):
        return Request(op, _account(obj, "account"))
    if op in ("deposit", "withdraw"):
        return Request(op, _account(obj, "account"), amount=_amount(obj))
    if op == "transfer":
        src, dst = _account(obj, "from"), _account(obj, "to")
        if src == dst:
            raise BadRequest("'from' and 'to' are the same account")
        return Request(op, src, dst, _amount(obj))
    if "op" not in obj:  # (not "unknown op None": the key is missing)
        raise BadRequest(f"'op' is missing: {ONE_OF_OPS}")
    if op is None:
        raise BadRequest(f"'op' is null: {ONE_OF_OPS}")
    raise BadRequest(f"unknown op {_shown(op)}: {ONE_OF_OPS}")


def _shown(v: Any) -> str:
    """`v` as echoed in a refusal (a huge one cut: it must not make the refusal too large to send)."""
    shown = repr(v)
    return shown[:57] + "..." if len(shown) > 60 else shown


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are each given once: `{"account":"a","account":"b"}` is refused,
    not read as its last value (which of two accounts a money request means is not a guess)."""
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise BadRequest(f"{_shown(k)} is given twice: give each field once")
        obj[k] = v
    return obj


async def apply(tx: Tx, terminal: str, mid: int, r: Request) -> str:
    """Run request `r` in transaction `tx`; the reply (JSON text)."""

    async def entry(account: str, other: str | None, amount: int, op: str = r.op) -> None:
        await tx.execute(
            "INSERT INTO ledger_entries (terminal, msg_id, op, account, other, amount) VALUES ($1, $2, $3, $4, $5, $6)",
            terminal,
            mid,
            op,
            account,
            other,
            amount,
        )

    if r.op == "open":
        made = await tx.fetchval("INSERT INTO ledger_accounts (account, balance) VALUES ($1, 0) ON CONFLICT DO NOTHING RETURNING balance", r.account)
        if made is None:
            return dumps({"ok": False, "error": "exists"})
        await entry(r.account, None, 0)
        return dumps({"ok": True, "balance": 0})
    if r.op == "balance":
        bal = await tx.fetchval("SELECT balance FROM ledger_accounts WHERE account = $1", r.account)
        return dumps({"ok": True, "balance": int(bal)}) if bal is not None else dumps({"ok": False, "error": "no_such_account"})
    if r.op == "deposit":
        bal = await tx.fetchval(
            "UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1 AND balance <= $3 RETURNING balance",
            r.account,
            r.amount,
            MAX_BALANCE - r.amount,
        )
        if bal is None:
            if await tx.fetchval("SELECT balance FROM ledger_accounts WHERE account = $1", r.account) is not None:
                return dumps({"ok": False, "error": "balance_limit", "max": MAX_BALANCE})
            return dumps({"ok": False, "error": "no_such_account"})
        await entry(r.account, None, r.amount)
        return dumps({"ok": True, "balance": int(bal)})
    if r.op == "withdraw":
        bal = await tx.fetchval("SELECT balance FROM ledger_accounts WHERE account = $1" + tx.for_update, r.account)
        if bal is None:
            return dumps({"ok": False, "error": "no_such_account"})
        if bal < r.amount:
            await entry(r.account, None, r.amount, REFUSED)
            return dumps({"ok": False, "error": "insufficient_funds", "balance": int(bal)})
        await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", r.account, r.amount)
        await entry(r.account, None, r.amount)
        return dumps({"ok": True, "balance": int(bal) - r.amount})
    # transfer: lock both rows in one order (by name), so two opposite transfers cannot deadlock
    rows = dict(
        await tx.fetch(
            "SELECT account, balance FROM ledger_accounts WHERE account IN ($1, $2) ORDER BY account" + tx.for_update,
            r.account,
            r.other,
        )
    )
    if r.account not in rows or r.other not in rows:
        return dumps({"ok": False, "error": "no_such_account"})
    if rows[r.account] < r.amount:
        await entry(r.account, r.other, r.amount, REFUSED)
        return dumps({"ok": False, "error": "insufficient_funds"})
    if rows[r.other] > MAX_BALANCE - r.amount:
        return dumps({"ok": False, "error": "balance_limit", "max": MAX_BALANCE})
    await tx.execute("UPDATE ledger_accounts SET balance = balance - $2 WHERE account = $1", r.account, r.amount)
    await tx.execute("UPDATE ledger_accounts SET balance = balance + $2 WHERE account = $1", r.other, r.amount)
    await entry(r.account, r.other, r.amount)
    return dumps({"ok": True})


# [service_options]' kinds: "text", "yes/no", "count" (an integer of at least 1), "seconds" (a
# finite number above 0), "number" (finite, 0 or more); keep_hours' and keep_last's bounds have
# their own lines below, "finite" and "integer" their kinds only. A wrong one was taken as it came: NaN
# timeouts, a pool of -3, idempotency = "no" (a string: true), or refused by int()'s own words
OPTION_KINDS = {
    "dsn": "text",
    "sqlite": "text",
    "pool_size": "count",
    "command_timeout": "seconds",
    "tx_idle_timeout": "seconds",
    "keep_hours": "finite",
    "keep_last": "integer",
    "busy_timeout": "number",
    "idempotency": "yes/no",
    "logon_ms": "number",
}
_KIND_TEXT = {
    "text": "a string",
    "yes/no": "true or false",
    "count": "an integer of at least 1",
    "seconds": "a finite number of seconds above 0",
    "number": "a finite number, 0 or more",
    "finite": "a finite number",
    "integer": "an integer",
}


def option_problems(options: dict[str, Any]) -> list[str]:
    """Each option of the wrong kind (OPTION_KINDS), one line each with its key."""
    out = []
    for key, v in options.items():
        kind = OPTION_KINDS[key]
        if kind == "text":
            ok = type(v) is str
        elif kind == "yes/no":
            ok = type(v) is bool
        elif kind in ("count", "integer"):
            ok = type(v) is int and (v >= 1 or kind == "integer")
        elif type(v) in (int, float) and math.isfinite(v):
            ok = v > 0 if kind == "seconds" else v >= 0 if kind == "number" else True
        else:
            ok = False
        if not ok:
            out.append(f"{key} must be {_KIND_TEXT[kind]}, not {v!r}")
    return out


PG_ONLY = ("pool_size", "command_timeout", "tx_idle_timeout")  # options of the PostgreSQL database only
SQLITE_ONLY = ("busy_timeout",)  # ... and of SQLite's
DB_DEFAULTS: dict[str, Any] = {"pool_size": 10, "command_timeout": 10.0, "tx_idle_timeout": 1.0, "busy_timeout": 5.0}  # (the options not given)
MIN_KEEP_HOURS = 1.0  # records kept less than this could be pruned under a message still held


class LedgerService:
    """`service = "ledger"` (the plug-in interface of hsb.service.api)."""

    def __init__(
        self,
        host: str,
        dsn: str = "",
        sqlite: str = "",
        pool_size: int | None = None,  # (PostgreSQL's; default in DB_DEFAULTS)
        command_timeout: float | None = None,  # (PostgreSQL's; default in DB_DEFAULTS)
        tx_idle_timeout: float | None = None,  # (PostgreSQL's; default in DB_DEFAULTS)
        keep_hours: float = 168.0,
        keep_last: int = 256,
        busy_timeout: float | None = None,  # (SQLite's; default in DB_DEFAULTS)
        idempotency: bool = True,
        logon_ms: float = 0,
    ) -> None:
        # every parameter but the host's name is an option (OPTION_KINDS: each of them; a test holds them equal)
        given = {k: v for k, v in locals().items() if k in OPTION_KINDS and v is not None}
        problems = option_problems(given)
        self.host = host
        if problems:  # (a TypeError: the config's error, said by the check with each key)
            raise TypeError("; ".join(problems))
        if not dsn and not sqlite:
            raise TypeError("ledger needs [service_options] dsn = 'postgresql://…' (or sqlite = 'PATH' on one machine)")
        if dsn and sqlite:  # (the DSN was taken, the file silently not)
            raise TypeError("dsn and sqlite are both set: name one database, dsn for PostgreSQL (two machines) or sqlite for one machine")
        other = [k for k in (PG_ONLY if sqlite else SQLITE_ONLY) if k in given]
        if other:  # (set, and without effect on this database: a setting the operator thinks holds)
            theirs, this = ("PostgreSQL's (dsn)", "sqlite") if sqlite else ("SQLite's (sqlite)", "dsn")
            raise TypeError(
                f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} {theirs}, without effect with {this}: remove {'it' if len(other) == 1 else 'them'}"
            )
        if not float(keep_hours) >= MIN_KEEP_HOURS:
            raise TypeError(
                f"keep_hours must be at least {MIN_KEEP_HOURS:g} (hours an idempotency record is kept; it must outlive the longest"
                f" time a message can wait at the CP, else a redelivery applies the effect again), not {keep_hours!r}"
            )
        self.logon_s = logon_seconds(logon_ms)  # simulated logon work per session open, as echo's
        if not int(keep_last) >= 1:
            raise TypeError(
                f"keep_last must be at least 1, and at least the CP's held_bound (records each terminal keeps however old), not {keep_last!r}"
            )
        opts = {k: given.get(k, DB_DEFAULTS[k]) for k in (PG_ONLY if dsn else SQLITE_ONLY)}
        try:
            self.db: Database = open_database(dsn or None, sqlite or None, **opts)
        except ValueError as exc:  # (a DSN asyncpg cannot use: the config's error, said by the check)
            raise TypeError(str(exc)) from None
        self.once = ExactlyOnce(self.db, keep=float(keep_hours) * 3600.0, record=bool(idempotency), keep_last=int(keep_last))
        self.ready = False
        # the one setup running, shared by every message that comes meanwhile: after a failover
        # each terminal's first message would run it again (four transactions, on PostgreSQL a
        # pool connection and the advisory lock each; 300 terminals ran it 300 times)
        self._setting_up: asyncio.Task[None] | None = None

    async def _setup(self) -> None:
        await self.db.setup(DDL)
        if self.db.kind == "postgresql":
            async with self.db.transaction() as tx:  # (both hosts may add it)
                await tx.execute("SELECT pg_advisory_xact_lock(7147)")
                if not await tx.fetchval(_HAS_SEQ):
                    await tx.execute(_ADD_SEQ)
                    log.info("ledger_table_upgraded", column="seq")
        await self.once.setup()
        self.ready = True

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        try:
            req: Request | None = parse(data)
            refused = ""
        except BadRequest as exc:
            req, refused = None, dumps({"ok": False, "error": "bad_request", "msg": str(exc)})
        if not self.ready:
            await self._setup_or_wait()

        async def effect(tx: Tx) -> str:
            if req is None:  # refused: recorded like any answer, so that it is the only one
                return refused
            return await apply(tx, terminal, message_id, req)

        # A refusal goes through the record too: a host whose code read the request (before an
        # upgrade) may be applying it right now, and its record, once committed, is the answer
        try:
            return await self.once.run(terminal, message_id, redelivered, effect, request=data)
        except RequestMismatch as exc:  # the id was used before, by another request: not applied
            return refused or dumps({"ok": False, "error": "id_reused", "msg": str(exc)})

    async def _setup_or_wait(self) -> None:
        """The tables made (or found), once for every message that waits for it: any failure
        holds the message (retried, the service shown failing) and names the fix; none is the
        request's, so none becomes its reply."""
        t = self._setting_up
        if t is None or t.done():  # none yet, or the last one failed: the next message tries again
            t = self._setting_up = asyncio.get_running_loop().create_task(self._setup(), name="ledger-setup")
        try:
            # shielded: a message cancelled while it waits (the CP link lost) leaves the setup
            # to the others; shield retrieves its error even when no one waits any more
            await asyncio.shield(t)
        except RetryTransaction as exc:  # busy (another host's transaction): waits, not an error reply
            raise ServiceUnavailable(f"database busy while setting up: {exc}") from exc
        except Exception as exc:
            why: BaseException = exc
            if isinstance(exc, ServiceUnavailable):
                # the database not there yet; a right missing is the setup's fix, said below
                if exc.__cause__ is None or getattr(exc.__cause__, "sqlstate", None) not in DEPLOYMENT_STATES:
                    raise
                why = exc.__cause__
            raise ServiceUnavailable(
                f"ledger setup failed ({type(why).__name__}: {why}): the database role must own, or be able to create and"
                " alter, the tables ledger_accounts, ledger_entries and hsb_idempotency (docs/ledger.md)"
            ) from why

    def cp_bounds(self, held_bound: int) -> None:
        """At each registration: the CP holds up to `held_bound` messages per terminal; a record
        pruned below that many could be one a redelivery still needs (hsb.service.once)."""
        self.once.check_keep_last(held_bound)

    async def open_session(self, terminal: str, attrs: dict[str, Any], standby: bool) -> None:
        if self.logon_s:
            await asyncio.sleep(self.logon_s)

    async def close_session(self, terminal: str) -> None:
        pass

    async def close(self) -> None:
        await self.db.close()

    def status(self) -> dict[str, Any]:
        return {"database": self.db.kind, **self.once.counters}
