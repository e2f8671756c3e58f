"""The delivery verdict of SPEC §5.6, as pure functions over one terminal's record.

Definitions (per terminal; totals are sums):

- **sent**: distinct ids the terminal sent (a resend of an id counts once);
- **acked**: sent ids the CP acknowledged at least once;
- **replied**: sent ids that got at least one reply;
- **lost**: ids that were acknowledged and never got a reply — a broken
  guarantee;
- **duplicates**: replies beyond the first for an id (an id answered three
  times adds 2) — a broken guarantee;
- **unexpected**: replies to ids the terminal never sent (counted by the
  client; replies that came before their message's ack are added by the
  report);
- **unacked**: sent ids never acknowledged and never answered by the end of
  the run. The CP never took responsibility for them, so they are not *lost*,
  but a CP that silently neither acknowledges nor refuses a message breaks its
  promise too: the report fails on them.

`judge()` takes plain collections and is the reference; `judge_marks()` reads
the compact per-id byte array a `TerminalClient` keeps (see `hsb.term.client`)
and gives the same answer at C speed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypedDict

# Layout of one byte of a terminal's marks array (index = id - id base).
SENT = 0x01
ACKED = 0x02
REPLY_SHIFT = 2
REPLY_ONE = 1 << REPLY_SHIFT
REPLY_MAX = 0xFF >> REPLY_SHIFT  # the count saturates at 63 replies

SAMPLE = 20  # how many lost / duplicated ids a verdict lists


@dataclass(slots=True)
class Verdict:
    sent: int = 0
    acked: int = 0
    replied: int = 0
    lost: int = 0
    duplicates: int = 0
    unexpected: int = 0
    unacked: int = 0
    lost_ids: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    unacked_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Nothing lost, duplicated, unexpected or left unacknowledged (terminal-level checks,
        such as disconnects and reply data, are the report's)."""
        return not (self.lost or self.duplicates or self.unexpected or self.unacked)

    def add(self, other: Verdict) -> None:
        """Fold another terminal's verdict into this total."""
        self.sent += other.sent
        self.acked += other.acked
        self.replied += other.replied
        self.lost += other.lost
        self.duplicates += other.duplicates
        self.unexpected += other.unexpected
        self.unacked += other.unacked
        self.lost_ids.extend(other.lost_ids[: max(0, SAMPLE - len(self.lost_ids))])
        self.duplicate_ids.extend(other.duplicate_ids[: max(0, SAMPLE - len(self.duplicate_ids))])
        self.unacked_ids.extend(other.unacked_ids[: max(0, SAMPLE - len(self.unacked_ids))])


def judge(sent: Iterable[int], acked: Iterable[int], replies: Mapping[int, int], *, name: str = "") -> Verdict:
    """Verdict for one terminal from the ids it sent, the ids acknowledged and reply counts by id."""
    sent_set = set(sent)
    acked_set = set(acked) & sent_set
    v = Verdict(sent=len(sent_set), acked=len(acked_set))
    for i in sorted(sent_set):
        n = replies.get(i, 0)
        if n:
            v.replied += 1
            if n > 1:
                v.duplicates += n - 1
                if len(v.duplicate_ids) < SAMPLE:
                    v.duplicate_ids.append(f"{name}:{i}")
        elif i in acked_set:
            v.lost += 1
            if len(v.lost_ids) < SAMPLE:
                v.lost_ids.append(f"{name}:{i}")
        else:
            v.unacked += 1
            if len(v.unacked_ids) < SAMPLE:
                v.unacked_ids.append(f"{name}:{i}")
    v.unexpected = sum(n for i, n in replies.items() if i not in sent_set and n > 0)
    return v


def judge_marks(marks: bytes | bytearray, *, base: int = 0, stride: int = 1, unexpected: int = 0, name: str = "") -> Verdict:
    """Verdict from a marks array: byte k describes id `base + k * stride` (SENT, ACKED, reply count).

    Replies to ids outside the array are not in it; pass their number as `unexpected`.
    """
    hist = Counter(marks)
    v = Verdict(unexpected=unexpected)
    for value, n in hist.items():
        if not value & SENT:
            continue
        v.sent += n
        count = value >> REPLY_SHIFT
        if value & ACKED:
            v.acked += n
        if count:
            v.replied += n
            v.duplicates += (count - 1) * n
        elif value & ACKED:
            v.lost += n
        else:
            v.unacked += n
    if v.lost:
        v.lost_ids = _sample(marks, lambda b: b & SENT and b & ACKED and not b >> REPLY_SHIFT, base, stride, name)
    if v.duplicates:
        v.duplicate_ids = _sample(marks, lambda b: b & SENT and b >> REPLY_SHIFT > 1, base, stride, name)
    if v.unacked:
        v.unacked_ids = _sample(marks, lambda b: b == SENT, base, stride, name)
    return v


def _sample(marks: bytes | bytearray, pred: Callable[[int], object], base: int, stride: int, name: str) -> list[str]:
    out: list[str] = []
    for k, b in enumerate(marks):
        if pred(b):
            out.append(f"{name}:{base + k * stride}")
            if len(out) >= SAMPLE:
                break
    return out


# marks byte -> 1 if the id was acknowledged / got at least one reply, else 0 (for bytes.translate).
_ACKED_TABLE = bytes(1 if b & SENT and b & ACKED else 0 for b in range(256))
_REPLIED_TABLE = bytes(1 if b & SENT and b >> REPLY_SHIFT else 0 for b in range(256))
_RUN = re.compile(rb"\x01+")


def ranges_of(mask: bytes, base: int = 0, step: int = 1) -> list[list[int]]:
    """Runs of 1-bytes in `mask` as inclusive id ranges [[first, last], ...] (byte k is id
    base + k * step; a range holds every step-th id from first to last)."""
    return [[base + m.start() * step, base + (m.end() - 1) * step] for m in _RUN.finditer(mask)]


class IdRanges(TypedDict):
    """A terminal's acknowledged and answered ids as inclusive ranges, `step` apart (`id_ranges`)."""

    acked: list[list[int]]
    replied: list[list[int]]
    step: int


def id_ranges(marks: bytes | bytearray, *, base: int = 0, step: int = 1) -> IdRanges:
    """The ids a terminal had acknowledged and answered, as merged inclusive ranges.

    `{"acked": [[first, last], ...], "replied": [[first, last], ...], "step": S}`, in id order;
    consecutive ids of the terminal (S apart) form one range: `ids()` expands them. Works at C
    speed (translate + regex) on the marks array.
    """
    return {
        "acked": ranges_of(bytes(marks).translate(_ACKED_TABLE), base, step),
        "replied": ranges_of(bytes(marks).translate(_REPLIED_TABLE), base, step),
        "step": step,
    }


def ids(ranges: Iterable[Iterable[int]], step: int = 1) -> Iterator[int]:
    """Every id of a list of inclusive ranges whose ids are `step` apart."""
    for first, last in ranges:
        yield from range(first, last + 1, step)


def count_ranges(ranges: Iterable[Iterable[int]], step: int = 1) -> int:
    """How many ids a list of inclusive ranges covers."""
    return sum((last - first) // step + 1 for first, last in ranges)
