"""Exactly-once effects: a message's effect and its idempotency record in one transaction.

hsb delivers every acknowledged message until it is answered, so after a failover a message
can reach the service a second time (marked redelivered): the old active may have committed
its effect and died before its reply reached the CP. `ExactlyOnce.run` makes that harmless:

    once = ExactlyOnce(db)
    await once.setup()

    async def handle(self, terminal, message_id, data, redelivered):
        async def effect(tx):                 # runs inside the transaction
            await tx.execute("UPDATE … WHERE …", …)
            return '{"ok":true}'              # the reply (text), stored with the record
        return await once.run(terminal, message_id, redelivered, effect)

In one transaction it runs `effect(tx)` and inserts the record (terminal, message id, reply).
If the record exists already, the transaction is rolled back (the effect with it) and the
stored reply is returned: the effect happens once and every answer to the message is the
same. A redelivered message is looked up first, so its effect is not even tried again.

Given the request (`run(..., request=data)`), the record keeps a 64-bit hash of it too, as
Stripe's idempotency keys do: a message whose (terminal, id) was recorded for another request
(ids used again after the CP's state was lost: `durability = "none"`, a journal removed) is
not answered with that request's reply; `run` raises `RequestMismatch`, nothing applied.

The contract for the effect: everything it changes goes through `tx` (nothing outside the
database: no e-mail, no call to another service, unless that is idempotent itself); it is
deterministic given the database (no reply that depends on the clock); it may run more than
once when transactions collide (it is rolled back each time but the last). It awaits nothing
but `tx`'s statements: on SQLite the whole transaction runs in one call on the database's
thread (`Database.run`).

Records are kept `keep` seconds (default 7 days) and pruned by the host that handles
messages, at most every `prune_every` seconds, `prune_batch` rows per transaction, by the
database's clock (PostgreSQL's: two hosts' clocks never disagree about a record's age). Each terminal's newest
`keep_last` records (default 256) are never pruned, however old: a message the CP still holds
for a terminal that went away (it is re-delivered only once the terminal is back, which may be
days later) is always among its terminal's newest, as the CP holds at most `held_bound` messages
per terminal and a terminal's messages are answered in order. `keep_last` must be at least the
CP's `held_bound`.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from hsb.service.api import COLLISION_WAIT, MAX_COLLISIONS, ServiceUnavailable
from hsb.service.db import Database, RetryTransaction, Tx

log = structlog.get_logger("hsb.service")

# every ExactlyOnce of this process: hsbd tells each the CP's held_bound at each registration
# (tell_cp_bounds), whether or not its service forwards `cp_bounds` itself
_INSTANCES: weakref.WeakSet[ExactlyOnce] = weakref.WeakSet()


def tell_cp_bounds(held_bound: int) -> None:
    """The CP holds up to `held_bound` messages per terminal: every ExactlyOnce's prune keeps at
    least that many records per terminal (called by hsbd at each registration with the CP)."""
    for once in list(_INSTANCES):
        once.check_keep_last(held_bound)


DDL = [
    "CREATE TABLE IF NOT EXISTS hsb_idempotency ("
    " terminal TEXT NOT NULL, msg_id BIGINT NOT NULL, reply TEXT NOT NULL, at DOUBLE PRECISION NOT NULL,"
    " request_hash BIGINT, PRIMARY KEY (terminal, msg_id))",
    "CREATE INDEX IF NOT EXISTS hsb_idempotency_at ON hsb_idempotency (at)",  # what a prune reads
]
# a table made before the request's hash was kept (its old records have none: not compared)
_HAS_HASH = {
    "postgresql": "SELECT count(*) FROM information_schema.columns WHERE table_schema = current_schema()"
    " AND table_name = 'hsb_idempotency' AND column_name = 'request_hash'",
    "sqlite": "SELECT count(*) FROM pragma_table_info('hsb_idempotency') WHERE name = 'request_hash'",
}
_ADD_HASH = "ALTER TABLE hsb_idempotency ADD COLUMN request_hash BIGINT"

_LOOKUP = "SELECT reply FROM hsb_idempotency WHERE terminal = $1 AND msg_id = $2"
_LOOKUP_HASHED = "SELECT reply, request_hash FROM hsb_idempotency WHERE terminal = $1 AND msg_id = $2"
# the database's clock, in seconds since the epoch
_NOW = {"postgresql": "EXTRACT(EPOCH FROM now())::double precision", "sqlite": "((julianday('now') - 2440587.5) * 86400.0)"}
# a prune's batch: the oldest records due (by the `at` index), then, once per terminal among them,
# the id below which its records may go (its `keep_last`-th newest; none: it keeps them all),
# those deleted (row values: both PostgreSQL and SQLite have them) and the rest due touched (dated
# now), so that a quiet terminal's kept records are not met again at every batch and prune
_DUE = "SELECT terminal, msg_id FROM hsb_idempotency WHERE at < {now} - $1 ORDER BY at LIMIT $2"
_CUT = "SELECT msg_id FROM hsb_idempotency WHERE terminal = $1 ORDER BY msg_id DESC LIMIT 1 OFFSET $2"
_DELETE = (
    "DELETE FROM hsb_idempotency WHERE (terminal, msg_id) IN (SELECT terminal, msg_id FROM hsb_idempotency"
    " WHERE terminal = $1 AND msg_id < $2 AND at < {now} - $3 ORDER BY msg_id LIMIT $4)"
)
_TOUCH = "UPDATE hsb_idempotency SET at = {now} WHERE terminal = $1 AND msg_id >= $2 AND at < {now} - $3"
_RECORD = "INSERT INTO hsb_idempotency (terminal, msg_id, reply, at, request_hash) VALUES ($1, $2, $3, {now}, $4) ON CONFLICT DO NOTHING RETURNING 1"


class _AlreadyDone(Exception):
    """The record exists: roll this transaction back and answer with the stored reply."""


class RequestMismatch(Exception):
    """The (terminal, message id) was recorded for another request: nothing applied, and that
    request's reply not given (the ids were used again after the CP's state was lost)."""

    def __init__(self, terminal: str, message_id: int) -> None:
        super().__init__(f"message {message_id} of {terminal} was recorded for another request; this one was not applied")
        self.terminal = terminal
        self.message_id = message_id


def _other_request(stored: Any, digest: int | None) -> bool:
    """A record's hash (None: a record of before the hash was kept) against this request's."""
    return digest is not None and stored is not None and int(stored) != digest


def request_hash(request: bytes | str) -> int:
    """A signed 64-bit hash of a request's data (its UTF-8 bytes for text): a BIGINT in both databases."""
    raw = request.encode("utf-8", "surrogatepass") if isinstance(request, str) else bytes(request)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big", signed=True)


Effect = Callable[[Tx], Awaitable[str]]


class ExactlyOnce:
    def __init__(
        self, db: Database, keep: float = 7 * 86400.0, prune_every: float = 600.0, record: bool = True, prune_batch: int = 5000, keep_last: int = 256
    ) -> None:
        if int(keep_last) < 1:
            raise ValueError(f"keep_last must be at least 1 (and at least the CP's held_bound), not {keep_last!r}")
        if not float(keep) > 0:  # (a record it keeps is dated now: with no keep it would be due again at once)
            raise ValueError(f"keep must be a positive number of seconds, not {keep!r}")
        self.db = db
        now = _NOW.get(getattr(db, "kind", "postgresql"), _NOW["postgresql"])
        self._record_sql = _RECORD.format(now=now)
        self._due_sql, self._delete_sql, self._touch_sql = (q.format(now=now) for q in (_DUE, _DELETE, _TOUCH))
        self.keep = float(keep)
        self.keep_last = int(keep_last)
        self.held_bound = 0  # the largest the CP said (check_keep_last): a prune keeps at least that many
        self.prune_every = float(prune_every)
        self.prune_batch = int(prune_batch)  # rows deleted per transaction
        # record=False runs the effect alone: only for measuring what the record costs
        self.record = record
        self.next_prune = 0.0
        self.pruning: asyncio.Task[None] | None = None  # the prune running (one at a time)
        self.counters = {"applied": 0, "replayed": 0, "collisions": 0, "pruned": 0, "mismatched": 0}
        self._said_below: int | None = None  # the held_bound last said to be above keep_last (said once)
        _INSTANCES.add(self)

    def _mismatched(self, terminal: str, message_id: int) -> None:
        self.counters["mismatched"] += 1
        log.warning("idempotency_request_mismatch", terminal=terminal, id=message_id, msg="not applied, not answered with its reply: ids used again?")

    def check_keep_last(self, held_bound: int) -> bool:
        """Whether `keep_last` covers the CP's `held_bound` (said as an error if not). A prune
        keeps the largest held_bound said so far anyway: a message the CP still holds must not
        find its record pruned, and be applied again when redelivered."""
        self.held_bound = max(self.held_bound, int(held_bound))
        if not self.record or self.keep_last >= held_bound:
            return True
        if self._said_below == held_bound:  # (the service's own cp_bounds and hsbd's both call this)
            return False
        self._said_below = held_bound
        log.error(
            "idempotency_keep_last_below_held_bound",
            keep_last=self.keep_last,
            held_bound=held_bound,
            msg=f"prunes keep {held_bound} records a terminal meanwhile; set [service_options] keep_last to at least {held_bound}"
            " (the CP's held_bound), or lower held_bound at the CP",
        )
        return False

    async def setup(self) -> None:
        await self.db.setup(DDL)
        kind = getattr(self.db, "kind", "postgresql")
        async with self.db.transaction() as tx:  # (SQLite: the write lock; PostgreSQL: both hosts may add it)
            if kind == "postgresql":
                await tx.execute("SELECT pg_advisory_xact_lock(7147)")
            if not await tx.fetchval(_HAS_HASH.get(kind, _HAS_HASH["postgresql"])):
                await tx.execute(_ADD_HASH)
                log.info("idempotency_table_upgraded", column="request_hash")

    async def run(self, terminal: str, message_id: int, redelivered: bool, effect: Effect, request: bytes | str | None = None) -> str:
        """The reply to (terminal, message_id), its effect applied exactly once. With `request`
        (the message's data), a record of another request for the same id raises RequestMismatch."""
        digest = None if request is None else request_hash(request)
        for attempt in range(MAX_COLLISIONS):
            try:
                return await self._once(terminal, message_id, redelivered, effect, digest)
            except _AlreadyDone:
                redelivered = True  # the next round reads the stored reply
            except RetryTransaction:
                await self._collided(attempt)
            except (ServiceUnavailable, RequestMismatch):
                raise
            except Exception:
                # The effect's own error. The message may have met its own first run, done or
                # still open on the host that had it before (an insert of the same key waited
                # for that commit, then failed on it): that run's reply is the answer. Marked
                # redelivered or not: a terminal's resend after a CP crash can reach a host that
                # never had it, unmarked, and the mark is only a shortcut to the record.
                if not self.record:
                    raise
                try:
                    prior = await self.stored(terminal, message_id, request)
                except RetryTransaction:  # (the lookup collided: the whole message again)
                    await self._collided(attempt)
                    continue
                if prior is not None:
                    self.counters["replayed"] += 1
                    return prior
                raise
        raise ServiceUnavailable(f"{MAX_COLLISIONS} transactions in a row collided for {terminal} message {message_id}")

    async def _collided(self, attempt: int) -> None:
        """Another transaction got in the way: counted, and a short random wait before the next try."""
        self.counters["collisions"] += 1
        await asyncio.sleep(random.uniform(0, COLLISION_WAIT * (attempt + 1)))

    async def _once(self, terminal: str, message_id: int, redelivered: bool, effect: Effect, digest: int | None) -> str:
        async def body(tx: Tx) -> tuple[bool, str]:
            if redelivered and self.record:
                prior = await tx.fetchrow(_LOOKUP_HASHED, terminal, message_id)
                if prior is not None:
                    if _other_request(prior[1], digest):
                        raise RequestMismatch(terminal, message_id)
                    return True, str(prior[0])
            reply = await effect(tx)
            if not isinstance(reply, str):  # stored as text: a replay must give back the very same reply
                raise TypeError(f"an exactly-once effect returns its reply as text (str), not {type(reply).__name__}")
            if self.record and await tx.fetchval(self._record_sql, terminal, message_id, reply, digest) is None:
                raise _AlreadyDone  # another transaction recorded it first: roll ours back
            return False, reply

        try:
            replayed, reply = await self.db.run(body)
        except RequestMismatch:
            self._mismatched(terminal, message_id)
            raise
        if replayed:
            self.counters["replayed"] += 1
            return reply
        self.counters["applied"] += 1
        if time.monotonic() >= self.next_prune and (self.pruning is None or self.pruning.done()):
            self.next_prune = time.monotonic() + self.prune_every
            self.pruning = asyncio.get_running_loop().create_task(self._prune())
        return reply

    async def stored(self, terminal: str, message_id: int, request: bytes | str | None = None) -> str | None:
        """The reply stored for (terminal, message_id), if any (a redelivered message whose
        request this code can no longer read, say after an upgrade: the first answer stands);
        with `request`, not one recorded for another request (RequestMismatch's case: None)."""
        if not self.record:
            return None
        async with self.db.transaction() as tx:
            prior = await tx.fetchrow(_LOOKUP_HASHED, terminal, message_id)
        if prior is None:
            return None
        if request is not None and _other_request(prior[1], request_hash(request)):
            self._mismatched(terminal, message_id)
            return None
        return str(prior[0])

    async def _prune_batch(self, tx: Tx) -> tuple[int, int]:
        """One transaction of a prune: (records due it looked at, records it deleted). Each
        terminal's part is bounded by its records among those looked at: the DELETE walks its
        ids only up to the highest of them (or its cut), at most as many rows as it saw."""
        due = await tx.fetch(self._due_sql, self.keep, self.prune_batch)
        ids: dict[str, list[int]] = {}
        for r in due:
            ids.setdefault(str(r[0]), []).append(int(r[1]))
        deleted = 0
        for terminal in sorted(ids):  # (one order for every host: two prunes at once do not deadlock)
            seen = ids[terminal]
            cut = await tx.fetchval(_CUT, terminal, max(self.keep_last, self.held_bound) - 1)
            below = -1 if cut is None else int(cut)  # may go: below its keep_last-th newest
            if min(seen) < below:
                # the rows this DELETE removed, not a count before it: another host's prune
                # running at the same time must not be counted twice
                deleted += await tx.execute(self._delete_sql, terminal, min(below, max(seen) + 1), self.keep, len(seen))
            if max(seen) >= below:  # some it keeps: dated now, met again only after another `keep`
                await tx.execute(self._touch_sql, terminal, below, self.keep)
        return len(due), deleted

    async def _prune(self) -> None:
        """Delete the records older than `keep` but each terminal's newest `keep_last`,
        `prune_batch` records per transaction: one DELETE of everything due (after an outage,
        say, or at a high rate) could run past the database's command timeout every time and
        never finish, and would hold its locks all along."""
        n = 0
        try:
            while True:
                seen, batch = await self.db.run(self._prune_batch)
                n += batch
                self.counters["pruned"] += batch
                if seen < self.prune_batch:
                    break
        except Exception as exc:  # noqa: BLE001 - any failure (a privilege, a bug): said, tried again later
            log.warning("idempotency_prune_failed", error=f"{type(exc).__name__}: {exc}", pruned=n)
            self.next_prune = time.monotonic() + 30.0
        if n:
            log.info("idempotency_records_pruned", count=n, older_than_s=self.keep)


def lookup_sql() -> str:
    """The statement that reads a stored reply (for checks from outside, e.g. hsbterm's books)."""
    return _LOOKUP
