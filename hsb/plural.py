"""Counts and spans of time as an operator reads them: the noun agreeing with its count (1 session,
2 sessions) and a time said in the unit that is true (2 hours, not "1 days"). Used by what hsbctl,
hsbterm's verdict and the demo print.
"""

from __future__ import annotations

from typing import Any


def many(n: Any, one: str, more: str | None = None) -> str:
    """`n` of a thing, its noun agreeing: 1 held message, 2 held messages (`more` where adding an
    "s" is wrong: 1 reply, 2 replies). A count that is not a number (missing from a record) is `?`."""
    if isinstance(n, bool) or not isinstance(n, int):
        return f"? {more or one + 's'}"
    return f"{n} {one if n == 1 else more or one + 's'}"


def agree(n: Any, one: str, more: str) -> str:
    """The word agreeing with a count `n` (a verb, a pronoun): `one` for 1, else `more`."""
    return one if n == 1 else more


def were(n: Any) -> str:
    """The verb agreeing with a count: 1 was, 2 were."""
    return agree(n, "was", "were")


def span(seconds: float) -> str:
    """How long, rounded down to what is true: days from a day on, hours under a day, minutes
    under an hour, "less than a minute" under that (never "1 days" for 2 hours)."""
    s = max(0.0, seconds)
    for unit, length in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= length:
            return many(int(s // length), unit)
    return "less than a minute"
