"""What the load's messages say, and what a right answer to each looks like.

The default (`echo`) sends text the service echoes back: a reply is right when its data is
what was sent. `LedgerWorkload` (`hsbterm load --workload ledger`) talks to the `ledger`
service: terminal 0 first opens the run's accounts and deposits into each (the setup, answered
before the timed load starts), then every terminal sends transfers between random accounts.
Message k of terminal i is the same every time it is asked for (a seeded generator), so a
message sent again after a reconnect is the same message. Each first reply is kept, for the
books check after the run (hsb.term.books).

Without the books check (`--books-dsn`/`--books-sqlite`) a reply is checked for its shape only:
the terminal cannot know whether a transfer should succeed (that depends on the order in which
every terminal's transfers were applied), so `{"ok":true}` in place of a refusal, or two such
answers swapped, pass; the books check catches them. A reply whose data is not UTF-8 JSON text
is bad data, never an error of the terminal.
"""

from __future__ import annotations

import json
import random
from typing import Any


class LedgerWorkload:
    """The messages of a ledger run and the check of their replies. Without --books-* that check
    is each reply's shape only: a transfer told ok that should have been refused, or two such
    answers swapped, pass (the terminal cannot know which transfers should succeed)."""

    name = "ledger"

    def __init__(self, accounts: int = 50, initial: int = 10_000, max_amount: int = 500, tag: str = "", seed: int = 1) -> None:
        if accounts < 2:
            raise ValueError("the ledger workload needs at least 2 accounts")
        self.n = accounts
        self.initial = initial
        self.max_amount = max_amount
        self.tag = tag or f"{random.getrandbits(32):08x}"
        self.prefix = f"L{self.tag}-"  # this run's accounts: a fresh set, so the books are this run's
        self.accounts = [f"{self.prefix}{j}" for j in range(accounts)]
        self.seed = seed
        self.setup_count = 2 * accounts  # terminal 0: open, deposit for each account
        self.replies: dict[int, dict[int, str]] = {}  # terminal idx -> k -> first reply data
        self.bad: list[str] = []

    # what message k of terminal `idx` says
    def payload(self, idx: int, k: int) -> str:
        if idx == 0 and k < self.setup_count:
            acct = self.accounts[k // 2]
            if k % 2 == 0:
                return json.dumps({"op": "open", "account": acct}, separators=(",", ":"))
            return json.dumps({"op": "deposit", "account": acct, "amount": self.initial}, separators=(",", ":"))
        src, dst, amount = self.transfer(idx, k)
        return json.dumps({"op": "transfer", "from": src, "to": dst, "amount": amount}, separators=(",", ":"))

    def transfer(self, idx: int, k: int) -> tuple[str, str, int]:
        rng = random.Random((self.seed << 40) ^ (idx << 24) ^ k)
        a, b = rng.sample(range(self.n), 2)
        return self.accounts[a], self.accounts[b], rng.randint(1, self.max_amount)

    def is_setup(self, idx: int, k: int) -> bool:
        return idx == 0 and k < self.setup_count

    def same_reply(self, idx: int, k: int, data: Any) -> bool:
        """A reply sent again (after a CP restart) is the first reply this request got."""
        text = _text(data)
        if text is None:
            return False
        first = self.replies.get(idx, {}).get(k)
        return first is None or text == first

    def check(self, idx: int, k: int, data: Any) -> bool:
        """A first reply: keep it; True if it is an answer this request can get (its shape only:
        whether a transfer's ok or refusal is the right one is for the books check)."""
        text = _text(data)
        # kept even when it is not text (its repr: no stored reply equals it), so the books
        # check counts the request as answered, and finds the reply differs from the stored one
        self.replies.setdefault(idx, {})[k] = repr(data) if text is None else text
        if text is None:
            return False
        try:
            r = json.loads(text)
        except (ValueError, RecursionError):  # (RecursionError: nested too deep to parse)
            return False
        if not isinstance(r, dict):
            return False
        if self.is_setup(idx, k):
            return r == ({"ok": True, "balance": 0} if k % 2 == 0 else {"ok": True, "balance": self.initial})
        return r == {"ok": True} or r == {"ok": False, "error": "insufficient_funds"}


def _text(data: Any) -> str | None:
    """A reply's data as text: a string, or UTF-8 bytes; None for anything else."""
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None
