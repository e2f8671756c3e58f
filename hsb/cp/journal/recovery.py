"""Reading the CP journal back at start (docs/cp-journal.md): every segment in order, each
record applied to the state it describes. Pure: files in, a `Recovered` out.

Record kinds (the first element of each MessagePack array):

    ["ck", epoch, active, generation, {terminal: last acked id},
     {"history": [...], "paused": bool, "logoff": {terminal: id}, "lease": [host_lease, fresh_s],
      "closed": [segment, records], "frames": [[host, max_frame], ...],
      "acks_waiting": {terminal: id}}]
                                   checkpoint, first in every segment ("logoff": as the "o"
                                   records of the terminals logged off holding messages then;
                                   "lease": how long a lease this CP granted may outlive its last
                                   renewal, for the wait after a restart: hsb.cp.core; "closed":
                                   how many records the segment before it ended with, so that
                                   one whose end was lost, zeros where records were, is damage;
                                   "frames": as the last "f" record before it; "acks_waiting":
                                   written only while no host has registered with the CP since
                                   it took the journal over (hsb.cp.first_host), each terminal
                                   whose acks wait with the highest id it was acknowledged)
    ["a", terminal, id, data]      a message accepted (and acknowledged once durable)
    ["r", terminal, id, data]      its reply, kept until the terminal confirms it; the message is settled
    ["d", terminal, id]            its reply, not kept (a terminal that does not resume); settled;
                                   after an "r" of that id: that kept reply goes to such a terminal
                                   now, settled too
    ["c", terminal, id]            the terminal holds every reply up to id: those are settled
    ["o", terminal, id]            it logged off holding messages (id: its highest acknowledged): they
                                   are answered without it, their replies told nobody
    ["e", epoch, active]           the epoch was raised; `active` holds the active role (null: a
                                   normal termination, nobody holds it; the epoch unchanged)
    ["h", {...}]                   an entry of the switch history ({"epoch", "update": {...}}: an entry's pause)
    ["p", paused]                  the operator paused (or resumed) automatic failover
    ["f", [[host, max_frame], ...]] the pair's hosts and the max_frame each said at its registration
                                   (0: none), oldest first; it replaces the one before (hsb.cp.pair_frames);
                                   written too when the first host registers with a CP (its acks
                                   no longer wait: every "a" before it was acknowledged)
    ["se"]                         the end of a takeover snapshot (below)

(and `["g", record, ...]`, one group commit's records under one checksum, opened by
hsb.cp.journal.format.scan before they get here)

Applying is idempotent and independent of where a record sits, so a record carried forward into
a newer segment (compaction) replays to the same state. One exception: which messages were
acknowledged. A CP acknowledges nothing before a host has registered with it (hsb.cp.first_host):
while a checkpoint says `acks_waiting` and no "f" follows it, an "a" of a terminal that had no ack
waiting at that checkpoint makes it wait from the id acknowledged before it
(`Recovered.acks_waiting`): a CP restarted on that journal does not count those acknowledged
either (a CP on a stale copy of the journal, restarted, would else tell its terminals that
messages no serving CP will read were acknowledged).

Generations (hsb.cp.journal.generation): segment files are `seg-GGGGGGGG-NNNNNNNN.hsbj`, G the
generation of the CP that wrote them (`seg-NNNNNNNN.hsbj`, from before generations, count as
generation 0). A CP that takes over writes, as the first segment of its generation, a
checkpoint, every live record (the snapshot) and `["se"]`. Recovery reads only the newest
generation whose snapshot is complete (its first segment has `se`, or was compacted away,
which happens only after it was durable): what an older CP wrote after it was superseded, and a
snapshot cut short by a crash, are never read, and are deleted once the next snapshot is durable.

A segment file that vanishes while the journal is read (a superseded CP, between its last
generation check and its stop, deleting the segments it had settled) makes the whole read start
again from a new listing: a segment read before another was deleted may hold a message whose
settling record was in the one deleted, and restoring it alone would deliver it again. After
RETRIES listings that lost a file the start stops (`JournalUnsettled`).

The last segment read as damaged in its middle, or a snapshot not yet said durable (a newer
generation's, being written), is read again the same way, RETRIES times at most (counted apart
from the vanished files): the CP that wrote it may still be writing it (superseded on another machine, not yet
aware: its flush of several group records, each synced before the next, can land between two
parts of this read, so that a record not yet there is followed by one that is). Damage that is
still there after that stops the start as before, naming the file and the offset.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hsb.cp.journal.format import JOURNAL_FORMAT, JournalDamaged, JournalNewer, locate, scan
from hsb.cp.journal.generation import Generations, snap_name
from hsb.cp.state import Held, Kept
from hsb.cp.switchrec import KINDS

# (numbers are written in 8 digits at least: a journal that rotates fast passes 99,999,999)
SEGMENT = re.compile(r"^seg-(?:(\d{8,})-)?(\d{8,})\.hsbj$")
HISTORY_KEEP = 1000
RETRIES = 8  # listings in a row that lost a segment file before the start stops
RETRY_PAUSE_S = 0.05  # the pause before a listing again (times the tries so far)
T = TypeVar("T")


class JournalUnsettled(JournalDamaged):
    """Segment files kept vanishing while the journal was read: the start stops (naming the
    directory) rather than restore from a read that missed records."""

    def __init__(self, d: Path, tries: int, last: str) -> None:
        why = (
            f"segment files vanished while it was read, {tries} times in a row (the last: {last}): another CP is still"
            " deleting them; the start is stopped rather than restore from a partial read (stop any other hsbcpd on"
            " this journal, then start again)"
        )
        Exception.__init__(self, f"CP journal {d}: {why}")
        self.path = str(d)
        self.offset = 0
        self.why = why


class _Vanished(Exception):
    """A segment file listed a moment ago is gone: read everything again (`_again`)."""


class _Moving(Exception):
    """The last segment read as damaged: read everything again (`_again`); the damage stands
    once it is still there after RETRIES reads."""

    def __init__(self, damage: JournalDamaged) -> None:
        super().__init__(str(damage))
        self.damage = damage


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise _Vanished(path.name) from None


def _again(d: Path, read: Callable[[], T]) -> T:
    """`read()` (a listing of `d` and its reads), started again from scratch while a file it
    listed vanishes before it is read, or the last segment (or a snapshot still being written)
    reads as damaged, RETRIES times at most each."""
    # each kind has its own count: damage stands only once seen RETRIES times, and files are
    # said to keep vanishing only once they did RETRIES times, whatever came in between
    vanished = moving = 0
    last = ""
    while True:
        try:
            return read()
        except _Vanished as exc:
            vanished, last = vanished + 1, str(exc)
            if vanished >= RETRIES:
                raise JournalUnsettled(d, RETRIES, last) from None
        except _Moving as exc:
            moving += 1
            if moving >= RETRIES:
                raise exc.damage from None
        # a superseded CP's deletions or last writes are a moment's work: let them end
        time.sleep(RETRY_PAUSE_S * min(vanished + moving, RETRIES))


def segment_name(n: int, gen: int = 0) -> str:
    return f"seg-{gen:08d}-{n:08d}.hsbj" if gen else f"seg-{n:08d}.hsbj"


def segment_files(d: Path, names: list[str] | None = None) -> list[tuple[int, int, Path]]:
    """(generation, number, path) of every segment file of a journal directory, oldest first
    (`names`: its listing, if taken)."""
    out = []
    for name in os.listdir(d) if names is None else names:
        m = SEGMENT.match(name)
        if m:
            out.append((int(m.group(1) or 0), int(m.group(2)), d / name))
    return sorted(out)


def _complete(gen: int, segs: list[tuple[int, Path]], marked: bool = False) -> bool:
    """Whether generation `gen`'s segments hold a complete takeover snapshot (see the module
    docstring). Damage found on the way raises JournalDamaged: it stops the start, never makes a
    generation look unfinished (that would skip it, and delete it, for an older one). `marked`:
    its snapshot was said durable (snap-N, hsb.cp.journal.generation): one that does not check
    out is damage too (a flipped bit in a checkpoint-only segment read as a torn write: the CP
    started empty, epoch 0, its older generations deleted long before)."""
    if gen == 0:
        return True  # from before generations: no snapshot, the segments are the whole journal
    for first_n, path in segs:
        buf = _read(path)  # gone meanwhile (a superseded CP compacting): all is listed and read again
        try:
            recs, end, why = scan(buf, str(path), until="ck")  # the checkpoint alone first
        except JournalDamaged as exc:
            if marked:
                raise
            # its first group record caught half written, the next one already there: read again,
            # as for the snapshot's end below
            raise _Moving(exc) from None
        if recs and not (isinstance(recs[0], list) and recs[0]):  # checksummed, yet no record: a bug's, or a crafted file
            raise JournalDamaged(str(path), 0, f"its first record is not a record ({str(recs[0])[:40]})")
        if not recs or recs[0][0] != "ck":
            if marked:
                raise JournalDamaged(
                    str(path),
                    end,
                    f"generation {gen}'s snapshot was durable ({snap_name(gen)}), its checkpoint is not there ({why or 'the file reads as zeros there'})",
                )
            return False  # torn before its first record: a CP that died creating the generation
        extra = ck_extra(recs[0])
        first = extra.get("first", first_n)
        if not isinstance(first, int) or isinstance(first, bool):
            raise JournalDamaged(str(path), 0, f"its checkpoint's first segment is not a number ({str(first)[:40]})")
        if first_n > first:
            return True  # the snapshot's segment was settled and deleted: it was durable
        # the snapshot segment: complete once its end ("se") is there (the traffic after it is
        # read, and checked, by recover())
        try:
            recs, end, why = scan(buf, str(path), until="se")
        except JournalDamaged as exc:
            if marked:
                raise
            # not said durable: a CP may be writing it right now, one group record after another
            # (a snapshot larger than a group), and this read caught one half written with the next
            # already there: read again, and only damage still there stops the start
            raise _Moving(exc) from None
        if any(isinstance(r, list) and r and r[0] == "se" for r in recs):
            return True
        if marked:
            raise JournalDamaged(str(path), end, f"generation {gen}'s snapshot was durable ({snap_name(gen)}), its end is not there ({why})")
        return False
    return False


def lineage(d: Path) -> tuple[int, list[tuple[int, Path]], list[Path]]:
    """(the generation to recover, its segments in order, every other segment file: garbage)."""
    return _again(d, lambda: _lineage(d))


def _lineage(d: Path) -> tuple[int, list[tuple[int, Path]], list[Path]]:
    names = os.listdir(d)  # one listing for the segments and the snapshot marks: never a mark newer than the segments seen
    files = segment_files(d, names)
    by_gen: dict[int, list[tuple[int, Path]]] = {}
    for gen, n, path in files:
        by_gen.setdefault(gen, []).append((n, path))
    marked = Generations(d).snapshots(names)
    head = next((g for g in sorted(by_gen, reverse=True) if _complete(g, by_gen[g], g in marked)), None)
    newest = max(marked, default=0)
    if newest > (head or 0) and newest not in by_gen:
        # its snapshot was durable, and a CP never deletes the last segment of its generation:
        # every one of them removed. Starting from an older generation (or empty, at epoch 0)
        # would lose what it held and let a host it had fenced back in. The fix named is the
        # aside (it keeps the gen- files): without them the next CP takes generation 1, which
        # every hsbd that saw this one refuses, and without snap- an older generation's segments
        # left behind would be restored, stale
        raise JournalDamaged(
            str(d / snap_name(newest)),
            0,
            f"generation {newest}'s snapshot was durable but none of its segment files (seg-{newest:08d}-*.hsbj) is there"
            " (cleared on purpose too: keep its gen-* files, whose generation the hosts know, and set it aside as follows)",
        )
    segs = by_gen.get(head, []) if head is not None else []
    keep = {p for _, p in segs}
    return head or 0, segs, [p for _, _, p in files if p not in keep]


@dataclass
class Recovered:
    epoch: int = 0
    active: str | None = None
    last_acked: dict[str, int] = field(default_factory=dict)
    # terminal -> id -> what the CP keeps of it, built here once (a restore at 100,000 adopts these
    # dicts rather than build a second object per message); ids in journal order (`in_id_order`)
    held: dict[str, dict[int, Held]] = field(default_factory=dict)
    replies: dict[str, dict[int, Kept]] = field(default_factory=dict)
    confirmed: dict[str, int] = field(default_factory=dict)  # highest id each terminal confirmed
    # terminals that logged off holding messages: terminal -> its highest id acknowledged then
    # (`leaving()` says whose held messages are still a logoff's)
    logoff: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    paused: bool = False
    lease: tuple[float, float] = (0.0, 0.0)  # (host_lease, fresh_s) of the CP that wrote the newest checkpoint
    # the pair's hosts -> the max_frame each said, oldest first ({}: a journal of before them)
    frames: dict[str, int] = field(default_factory=dict)
    # no host had registered with the CP that wrote the newest records (hsb.cp.first_host):
    # terminal -> the highest id acknowledged to it (its messages above that never were); None:
    # a host had (or a journal of before it), every message recorded was acknowledged
    acks_waiting: dict[str, int] | None = None
    segments: list[int] = field(default_factory=list)
    last_segment: int = 0
    head_generation: int = 0  # the generation whose segments were read
    garbage: list[Path] = field(default_factory=list)  # segment files not read (older or unfinished generations)
    paths: list[Path] = field(default_factory=list)  # the segment files read
    highest_segment: int = 0  # the highest segment number of any file (new segments go above it)
    records: int = 0
    torn: str | None = None  # why the last segment's tail was dropped, if it was
    bytes_read: int = 0
    seconds: float = 0.0
    # monotonic, when recovery began: the acknowledgement time given to what it restores (they were
    # acknowledged before the crash, so a switch's worst pause over them includes the restart)
    at: float = 0.0

    @property
    def outstanding(self) -> int:
        return sum(len(v) for v in self.held.values()) + sum(len(v) for v in self.replies.values())

    def leaving(self, term: str) -> bool:
        """Whether `term` logged off and sent nothing since (a message sent after its bye is a
        later logon's: not leaving then, though the replies up to its bye still go to nobody)."""
        upto = self.logoff.get(term, 0)
        return upto > 0 and self.last_acked.get(term, 0) <= upto

    def live_by_segment(self) -> dict[int, int]:
        live: dict[int, int] = {}
        for per in (self.held, self.replies):
            for items in per.values():
                for item in items.values():
                    live[item.seg] = live.get(item.seg, 0) + 1
        return live


def recovered_held(mid: int, data: Any, t: float, seg: int) -> Held:
    held = Held(mid, data, t, seg)
    held.delivered_epoch = -1  # it may have been delivered before the crash: marked redelivered
    held.recovered = True  # and its reply may have reached the terminal before the crash
    return held


class NotKnown(ValueError):
    """A record whose checksum holds but whose kind, or checkpoint's format level, this hsbcpd
    does not know: written by a newer one (JournalNewer), not damage."""


def apply(r: Recovered, rec: list[Any], seg: int) -> None:
    kind = rec[0]
    if kind == "a":
        _, term, mid, data = rec
        if mid > r.confirmed.get(term, 0) and mid not in r.replies.get(term, ()):
            r.held.setdefault(term, {})[mid] = recovered_held(mid, data, r.at, seg)
        if r.acks_waiting is not None and term not in r.acks_waiting:
            r.acks_waiting[term] = r.last_acked.get(term, 0)  # (acknowledged up to here; this one waits)
        if mid > r.last_acked.get(term, 0):
            r.last_acked[term] = mid
    elif kind == "r":
        _, term, mid, data = rec
        h = r.held.get(term)
        if h is not None:
            h.pop(mid, None)
        if mid > r.confirmed.get(term, 0):
            r.replies.setdefault(term, {})[mid] = Kept(mid, data, seg)
    elif kind == "d":
        h = r.held.get(rec[1])
        if h is not None:
            h.pop(rec[2], None)
        reps = r.replies.get(rec[1])
        if reps:
            reps.pop(rec[2], None)
    elif kind == "c":
        _, term, upto = rec
        if upto > r.confirmed.get(term, 0):
            r.confirmed[term] = upto
        reps = r.replies.get(term)
        if reps:
            for mid in [m for m in reps if m <= upto]:
                del reps[mid]
    elif kind == "o":
        _, term, upto = rec
        if upto > r.logoff.get(term, 0):
            r.logoff[term] = upto
    elif kind == "e":
        _, epoch, active = rec
        if epoch >= r.epoch:
            r.epoch, r.active = epoch, active
    elif kind == "ck":
        _, epoch, active, _generation, acked = rec[:5]  # (the CP's generation is its files': Generations)
        level = rec[5].get("format", JOURNAL_FORMAT) if len(rec) > 5 else JOURNAL_FORMAT  # (none: of before the level)
        if isinstance(level, int) and level > JOURNAL_FORMAT:
            raise NotKnown(f"a checkpoint of journal format {level} (this hsbcpd reads up to {JOURNAL_FORMAT})")
        if len(rec) > 5:
            r.history = list(rec[5].get("history", r.history))
            r.paused = bool(rec[5].get("paused", r.paused))
            # the logoffs still holding something when the segment began (every "o" before it,
            # its segment perhaps dropped). Added to, never replacing, what was read: one left out
            # because it held nothing then may still be named by records read before (a reply
            # forgotten without a record at its connection's loss), and is still the logoff's
            for t, i in rec[5].get("logoff", {}).items():
                if int(i) > r.logoff.get(str(t), 0):
                    r.logoff[str(t)] = int(i)
            lease = rec[5].get("lease")
            if isinstance(lease, list) and len(lease) == 2:  # (the newest checkpoint's: segments are read in order)
                r.lease = (float(lease[0]), float(lease[1]))
            if "frames" in rec[5]:  # (a checkpoint of before them says nothing: what was read stands)
                r.frames = _frames(rec[5]["frames"])
        # (a checkpoint says the whole state: acks waiting, or none)
        waiting = rec[5].get("acks_waiting") if len(rec) > 5 else None
        r.acks_waiting = {str(t): int(i) for t, i in waiting.items()} if isinstance(waiting, dict) else None
        if epoch >= r.epoch:
            r.epoch, r.active = epoch, active
        la = r.last_acked
        for term, mid in acked.items():
            if mid > la.get(term, 0):
                la[term] = mid
    elif kind == "h":
        e = rec[1]
        if "update" in e:
            for old in reversed(r.history):
                if old.get("epoch") == e.get("epoch") and old.get("kind") in KINDS:
                    old.update(e["update"])
                    break
        else:
            r.history.append(e)
            del r.history[:-HISTORY_KEEP]
    elif kind == "p":
        r.paused = bool(rec[1])
    elif kind == "f":
        r.frames = _frames(rec[1])
        r.acks_waiting = None  # (a host registered: every ack that waited went)
    elif kind == "se":
        pass
    elif isinstance(kind, str) and isinstance(rec, list):  # (a payload that is no list is no record at all: damage)
        raise NotKnown(f"a record of kind {kind!r}")
    else:
        raise ValueError(f"unknown record kind {kind!r}")


def _frames(pairs: Any) -> dict[str, int]:
    """An "f" record's (or a checkpoint's) hosts and their max_frame, in order; ValueError if it
    is not that (the record then does not make sense: damage)."""
    out: dict[str, int] = {}
    for name, frame in pairs:
        if not isinstance(name, str) or not isinstance(frame, int) or isinstance(frame, bool) or frame < 0:
            raise ValueError(f"a host's max_frame is not a name and a number ({str([name, frame])[:40]})")
        out[name] = frame
    return out


def recover(d: Path, truncate: bool = True) -> Recovered:
    """Read every segment of journal directory `d` (created if missing). A torn tail of the last
    segment is dropped (and, with `truncate`, cut off the file); damage anywhere else raises
    JournalDamaged naming the file and the offset. A segment file that vanishes meanwhile makes
    it list and read everything again (the module docstring)."""
    t0 = time.perf_counter()
    d.mkdir(parents=True, exist_ok=True)
    r = _again(d, lambda: _recover(d, truncate))
    r.seconds = time.perf_counter() - t0
    return r


def _recover(d: Path, truncate: bool) -> Recovered:
    r = Recovered(at=time.monotonic())
    r.head_generation, segs, r.garbage = _lineage(d)
    r.highest_segment = max((n for _, n, _ in segment_files(d)), default=0)
    for (before, _), (n, path) in zip(segs, segs[1:], strict=False):
        if n != before + 1:  # only the oldest segment is ever deleted: a gap is a file lost
            raise JournalDamaged(str(path), 0, f"segment {before + 1} is missing (the segments before this one end at {before})")
    read: tuple[int, int, int, Path] | None = None  # the segment read before: (number, records, end, path)
    for i, (n, path) in enumerate(segs):
        # gone meanwhile (a superseded CP compacting): not skipped, all is read again, for what was
        # read before it may need what it held (a message's settling record)
        buf = _read(path)
        r.bytes_read += len(buf)
        try:
            recs, good, torn = scan(buf, str(path))
        except JournalDamaged as exc:
            if i == len(segs) - 1:
                raise _Moving(exc) from None
            raise
        if torn is not None:
            if i != len(segs) - 1:
                raise JournalDamaged(str(path), good, f"{torn}, in a segment that is not the last one")
            r.torn = f"{path.name} at offset {good}: {torn}"
            if truncate:
                try:
                    with open(path, "r+b") as fh:
                        fh.truncate(good)
                        os.fsync(fh.fileno())
                except FileNotFoundError:
                    raise _Vanished(path.name) from None
        if read is not None:
            _closed_whole(read, recs)
        read = (n, len(recs), good, path)
        held, last_acked, confirmed, replies = r.held, r.last_acked, r.confirmed, r.replies
        at = r.at
        for rec in recs:
            try:
                # the common records inline, as apply() would (a journal under load is mostly
                # messages, their replies and confirmations, and is read while nothing is served)
                kind = rec[0]
                if kind == "a":
                    _, term, mid, data = rec
                    if mid > confirmed.get(term, 0) and mid not in replies.get(term, ()):
                        h = held.get(term)
                        if h is None:
                            h = held[term] = {}
                        held_ = h[mid] = Held(mid, data, at, n)  # recovered_held() inline
                        held_.delivered_epoch = -1
                        held_.recovered = True
                    waiting = r.acks_waiting  # (None but before a CP's first host: hsb.cp.first_host)
                    if waiting is not None and term not in waiting:
                        waiting[term] = last_acked.get(term, 0)
                    if mid > last_acked.get(term, 0):
                        last_acked[term] = mid
                elif kind == "r":
                    _, term, mid, data = rec
                    h = held.get(term)
                    if h is not None:
                        h.pop(mid, None)
                    if mid > confirmed.get(term, 0):
                        kept = replies.get(term)
                        if kept is None:
                            kept = replies[term] = {}
                        kept[mid] = Kept(mid, data, n)
                elif kind == "c":
                    _, term, upto = rec
                    if upto > confirmed.get(term, 0):
                        confirmed[term] = upto
                    kept = replies.get(term)
                    if kept:
                        for mid in [m for m in kept if m <= upto]:
                            del kept[mid]
                else:
                    apply(r, rec, n)
            except (ValueError, TypeError, IndexError, AttributeError) as exc:
                off, k = locate(buf, next(j for j, x in enumerate(recs) if x is rec))
                where = "" if k is None else f" (record {k + 1} of the group record there)"
                if isinstance(exc, NotKnown):
                    raise JournalNewer(str(path), off, f"{exc}{where}") from None
                raise JournalDamaged(str(path), off, f"a record does not make sense{where} ({exc}): {str(rec)[:80]}") from None
        r.records += len(recs)
        r.paths.append(path)
        r.segments.append(n)
        r.last_segment = n
    for per in (r.held, r.replies):
        for term in [t for t, v in per.items() if not v]:
            del per[term]
    return r


def ck_extra(ck: list[Any]) -> dict[str, Any]:
    """A checkpoint record's map of the rest ({}: a checkpoint of before it, or of none)."""
    return ck[5] if len(ck) > 5 and isinstance(ck[5], dict) else {}


def _closed_whole(before: tuple[int, int, int, Path], recs: list[Any]) -> None:
    """The segment read before this one (`recs`) holds at least the records this one's checkpoint
    says it closed with; fewer is damage at its end (a segment is allocated whole, so a lost
    write there reads as zeros: a clean end, not a torn one). Journals of before the count say
    nothing: not checked."""
    ck = recs[0] if recs and isinstance(recs[0], list) and recs[0] and recs[0][0] == "ck" else None
    closed = ck_extra(ck).get("closed") if ck is not None else None
    n, got, end, path = before
    if isinstance(closed, list) and len(closed) == 2 and closed[0] == n and isinstance(closed[1], int) and got < closed[1]:
        raise JournalDamaged(
            str(path),
            end,
            f"the segment ends after {got} records, but the next one's checkpoint says it closed with {closed[1]}: its last records are lost",
        )


def in_id_order(items: dict[int, T]) -> dict[int, T]:
    """`items` itself when its ids are in id order, as they nearly always are (a check of the ids
    alone, cheaper than sorting); else a copy in id order (a carried-forward record can put one
    out of order)."""
    prev = -1
    for mid in items:
        if mid < prev:
            return {m: items[m] for m in sorted(items)}
        prev = mid
    return items
