"""Fencing by generation (SPEC §5.8, docs/cp-journal.md): which CP may write the journal.

A CP that takes over the journal first creates `gen-N` in the journal directory, N one above
the highest there, with O_EXCL (atomic, also on NFS: of two CPs racing for the same N exactly
one wins, and the other takes N+1). It reads nothing before that file is durable. The CP with
the highest N owns the journal; one that sees `gen-(own+1)` has been superseded and stops at
once: it checks after every group commit, before the acknowledgements of that group go out,
and every tick while idle. One that finds its own file gone with none newer (removed by hand, the
directory replaced) stops the same way, said as that (GenerationGone): it cannot prove it is the
newest. So a CP alive behind a partition can never acknowledge a message
the new CP did not see: the new CP made its generation durable before it read anything, and
whatever the old CP made durable before its last successful check was there to read.

The serving CP also touches its `gen-N` file every tick (its heartbeat; a CP taking the journal
over, from the moment it created the file): a CP waiting to take over can tell a serving CP from
a dead one without comparing clocks (it watches the file's
modification time change, on its own monotonic clock).

Once a CP's takeover snapshot is durable (before it deletes anything of older generations) it
creates `snap-N`: from then on, a first segment of generation N that does not hold the
snapshot whole is damage (JournalDamaged at recovery), never "a CP that died creating the
generation", which recovery skips: skipping it would start empty, the older generations gone.

Generations of two journals are unrelated counters: a CP started on another directory (a second
CP machine with a local one instead of the shared one) may well have a generation as high. So
the journal has an identity too, `journal-id` (a random id), made the first time a CP takes it
over (after its `gen-N` file is durable, before it reads anything; a journal of an older hsbcpd
gets one at its next takeover) and never changed: the CP says it to the hosts beside its
generation, and a host refuses a CP whose journal is not the one it followed (hsb.host.cplink).
It is made whole under another name and linked into place (atomic, fails if the name exists,
also on NFS): of two CPs racing, the loser reads the winner's, never a half-written file.

Neither tells a CP on a *copy* of the journal (a backup restored, the directory copied aside)
from the real one when both took the same number, each in its own directory. So each takeover
also has a random id of its own, written in its `gen-N` file and said to the hosts beside the
generation (`takeover`): a host that has seen generation N of one takeover refuses generation
N of another (hsb.host.cplink).
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import structlog

from hsb.cp.journal.format import JournalDamaged
from hsb.fsutil import fsync_dir

log = structlog.get_logger("hsb.cp")

GEN = re.compile(r"^gen-(\d{8,})$")
SNAP = re.compile(r"^snap-(\d{8,})$")  # the generation's takeover snapshot was durable
SEG_GEN = re.compile(r"^seg-(\d{8,})-\d{8,}\.hsbj$")  # a segment's generation, in its name
KEEP = 8  # older generation files are removed, the newest few kept for the record
JOURNAL_ID = "journal-id"  # the journal's identity (one line: a uuid4's hex), never changed once made
ID = re.compile(r"^[0-9A-Za-z._-]{1,64}$")  # what an id may be (made: 32 hex digits)


def _there(path: str) -> bool:
    """Whether `path` exists. Only "no such file" says no: any other error of the storage (EIO,
    ESTALE on NFS) is raised, so that a storage in trouble reads as failing, not as a newer
    CP's file (os.path.exists would say no and the CP would stop for good as superseded)."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return False
    return True


class Superseded(Exception):
    """A newer CP owns the journal: this one must not acknowledge anything more."""

    def __init__(self, own: int, newer: int) -> None:
        super().__init__(f"the journal was taken over by a newer CP (generation {newer}; this CP has {own})")
        self.own = own
        self.newer: int | None = newer  # (None: GenerationGone's, no newer one)

    def say(self, **kw: Any) -> None:
        """The stop's event (error), once, by whoever stops the CP for it."""
        log.error("cp_superseded", generation=self.own, newer=self.newer, msg=str(self), **kw)


class GenerationGone(Superseded):
    """This CP's own generation file is gone and no newer one is there (removed by hand, the
    journal directory replaced or unmounted): not a newer CP, but this one can no longer prove
    it is the newest, so it stops all the same, as superseded (the same safety, its own words)."""

    def __init__(self, own: int, found: int, path: str) -> None:
        d, _, name = path.rpartition("/")
        Exception.__init__(
            self,
            f"this CP's generation file {name} (generation {own}) was removed from {d} under it, and no newer CP's file is"
            f" there ({'none at all' if found == 0 else f'the highest is gen-{found:08d}'}): its gen-* files were removed or the"
            " journal directory replaced or unmounted, so it can no longer prove it is the newest CP and stopped; check with"
            " hsbctl status that no other CP serves, put the journal directory back if it was replaced or unmounted, then"
            " start hsbcpd again (it recovers the segment files under a generation above theirs); never remove gen-* files"
            " under a running hsbcpd",
        )
        self.own = own
        self.newer = None
        self.found = found
        self.path = path

    def say(self, **kw: Any) -> None:
        log.error("cp_generation_file_removed", generation=self.own, found=self.found, path=self.path, msg=str(self), **kw)


def snap_name(n: int) -> str:
    return f"snap-{n:08d}"


def _durable_file(path: Path, content: bytes, flags: int = 0) -> None:
    """`path` created (or opened) with `content` written, its bytes and its name durable."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o600)
    try:
        if content:
            os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(path.parent)


def gen_name(n: int) -> str:
    return f"gen-{n:08d}"


def read_journal_id(d: Path) -> str | None:
    """The id in journal directory `d`'s `journal-id`; None if it has none (a journal of an older
    hsbcpd); JournalDamaged for a file that holds no id (the storage's own errors raised as they are)."""
    path = d / JOURNAL_ID
    try:
        raw = path.read_bytes()[:200]
    except FileNotFoundError:
        return None
    text = raw.decode("ascii", "replace").strip()
    if not ID.match(text):
        raise JournalDamaged(str(path), 0, f"{JOURNAL_ID} holds {text[:40]!r}, not a journal id (a uuid's hex)")
    return text


SPLIT_MARK = " split"  # the end of a gen-N file's line: taken from a CP that still beat


class Generations:
    def __init__(self, d: Path) -> None:
        self.dir = d
        # the takeover that made this CP's generation (random, in its gen-N file): said to the hosts
        # beside the generation, so that a CP on a copy of the journal that took the same number in
        # its own directory is told apart from the CP that holds it (hsb.host.cplink)
        self.takeover: str | None = None
        self._paths: tuple[int, str, str] | None = None  # (own, own's file, the next one's): checked every group commit

    def current(self, names: list[str] | None = None) -> int:
        """The highest generation in the directory (0: none yet); `names`: its listing, if taken."""
        best = 0
        for name in os.listdir(self.dir) if names is None else names:
            m = GEN.match(name)
            if m:
                best = max(best, int(m.group(1)))
        return best

    def take(self, split: bool = False) -> int:
        """Create the next generation's file, durably; the generation this CP now owns. `split`:
        taken from a CP that still beat (hsb.cp.waiting, split_brain_takeover), said in its file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        # above every segment's generation too: with gen- files missing (cleaned up by hand, a
        # listing that missed them) a lower one would be refused by the hosts, and lose to the
        # older generation's segments at the next recovery
        names = os.listdir(self.dir)
        current = self.current(names)
        n = max(current, max((int(m.group(1)) for name in names if (m := SEG_GEN.match(name))), default=0)) + 1
        if current and n > current + 1:
            self._create(current + 1, b"")  # a CP of `current` still running looks for this one: fenced
        token = uuid.uuid4().hex[:16]
        line = f"{socket.gethostname()} pid {os.getpid()} at {time.time():.3f} takeover {token}{SPLIT_MARK if split else ''}\n"
        while not self._create(n, line.encode()):
            n += 1  # another CP took this one at the same moment: the next is ours
        self.takeover = token
        return n

    def identity(self, own: int) -> str:
        """The journal's id, made now if it has none (by the CP of generation `own`, whose
        `gen-N` is durable): written whole and durable under a name of its own generation, then
        linked to `journal-id` (fails if that exists: another CP made it first, and its id is
        the one), the directory made durable."""
        found = read_journal_id(self.dir)
        if found is not None:
            return found
        tmp = self.dir / f"{JOURNAL_ID}.{gen_name(own)}"
        made = uuid.uuid4().hex
        _durable_file(tmp, f"{made}\n".encode(), os.O_TRUNC)  # (a name only this generation uses)
        try:
            os.link(tmp, self.dir / JOURNAL_ID)
        except FileExistsError:  # another CP's is there: its id is the one
            found = read_journal_id(self.dir)
            assert found is not None
            made = found
        finally:
            os.unlink(tmp)
            fsync_dir(self.dir)
        return made

    def _create(self, n: int, content: bytes) -> bool:
        """Create gen-`n` with `content`, durably (its name too); False if it exists already."""
        try:
            _durable_file(self.dir / gen_name(n), content, os.O_EXCL)
        except FileExistsError:
            return False
        return True

    def taken_in_split(self, n: int) -> bool:
        """Whether generation `n` was taken from a CP that still beat (`take(split=True)`): a
        waiting CP never takes such a one over by the same rule, or two CP machines both master
        (a VRRP split brain) would take the journal from each other in turn."""
        try:
            return (self.dir / gen_name(n)).read_bytes().rstrip().endswith(SPLIT_MARK.encode())
        except OSError:
            return False

    def mark_snapshot(self, own: int) -> None:
        """`own`'s takeover snapshot is durable: said durably (snap-N), before older generations go."""
        _durable_file(self.dir / snap_name(own), b"")

    def snapshots(self, names: list[str] | None = None) -> set[int]:
        """The generations whose takeover snapshot was made durable (snap-N)."""
        return {int(m.group(1)) for name in (os.listdir(self.dir) if names is None else names) if (m := SNAP.match(name))}

    def newer_than(self, own: int) -> int | None:
        """A generation above `own` if one exists (cheap: one or two stats), else None. A CP whose
        own file is gone was superseded long ago (newer CPs prune old generation files, keeping
        the newest): GenerationGone if no generation above it is there either."""
        p = self._paths
        if p is None or p[0] != own:
            p = self._paths = (own, str(self.dir / gen_name(own)), str(self.dir / gen_name(own + 1)))
        if _there(p[2]):
            return max(self.current(), own + 1)
        if _there(p[1]):
            return None
        highest = self.current()
        if highest > own:
            return highest
        raise GenerationGone(own, highest, p[1])

    def check(self, own: int) -> None:
        """Raise Superseded if a newer CP owns the journal (GenerationGone: if this CP's own file
        is gone with none newer)."""
        newer = self.newer_than(own)
        if newer is not None:
            raise Superseded(own, newer)

    def beat(self, own: int) -> None:
        """The serving CP's heartbeat: its generation file's modification time moves."""
        try:
            os.utime(self.dir / gen_name(own))
        except FileNotFoundError:
            pass

    def stamp(self) -> tuple[int, int]:
        """(current generation, its file's mtime in ns): what a waiting CP watches."""
        n = self.current()
        if n == 0:
            return 0, 0
        try:
            return n, os.stat(self.dir / gen_name(n)).st_mtime_ns
        except FileNotFoundError:
            return n, 0

    def age(self, stamp: tuple[int, int] | None = None) -> tuple[int, float | None]:
        """(current generation, seconds since its CP last beat, on this machine's clock; None:
        never), from `stamp` when the caller has just read it."""
        n, mtime_ns = stamp if stamp is not None else self.stamp()
        if n == 0 or mtime_ns == 0:
            return n, None
        return n, max(0.0, time.time() - mtime_ns / 1e9)

    def prune(self, own: int) -> None:
        """Delete the generation files older than the newest KEEP, oldest first: a far-behind CP
        checks the next generation's file before its own, so during a prune it finds either the
        next one still there or its own gone, never its own there and the next one gone."""
        names = os.listdir(self.dir)
        old = sorted(g for name in names if (m := GEN.match(name)) and (g := int(m.group(1))) < own - KEEP)
        for g in old:
            try:
                os.unlink(self.dir / gen_name(g))
            except FileNotFoundError:
                pass
        for g in sorted(g for g in self.snapshots(names) if g < own):  # (older generations' segments are gone)
            try:
                os.unlink(self.dir / snap_name(g))
            except FileNotFoundError:
                pass
