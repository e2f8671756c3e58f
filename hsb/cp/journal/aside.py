"""Setting a damaged CP journal aside (`hsbcpd --set-journal-aside`, docs/operations.md §11).

A journal that recovery refuses as damaged stops every start of hsbcpd (exit 65): the operator
moves it aside, keeps it for inspection, and starts empty. Started on an empty directory, a CP
would take generation 1, and every hsbd that saw a higher one refuses it as an older CP (SPEC
§5.8) until it is restarted. So the directory goes to a sibling one, whole, and a new one gets
copies of its generation files and its identity (`journal-id`): the next CP takes the generation
above the highest one, as after any restart, on the same journal as far as the hosts can tell (it
continues its lineage: they would refuse a CP on another journal). A journal that recovers whole
is refused unless forced: what it holds is owed. So is one a newer hsbcpd wrote (JournalNewer):
its records are whole, only unknown to this one.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

from hsb.cp.journal.format import JournalDamaged, JournalNewer
from hsb.cp.journal.generation import GEN, JOURNAL_ID, Generations, _durable_file, gen_name, read_journal_id
from hsb.cp.journal.recovery import recover
from hsb.fsutil import fsync_dir

WATCH_S = 1.0  # a serving CP touches its generation file every 0.1 s (its heartbeat)


class AsideRefused(Exception):
    """The journal cannot be set aside (one line: what and what to do)."""


def set_aside(d: Path, watch: float = WATCH_S, force: bool = False) -> tuple[Path, int, int]:
    """Move journal directory `d` to `d.damaged-STAMP` and make `d` again with its generation
    files only: (the moved directory, files in it, the highest generation kept). Refused while a
    CP serves it (the newest generation file's time changes while it is watched for `watch`
    seconds: the serving CP's heartbeat), and, unless `force`, for a journal that recovers whole
    (what it holds was acknowledged, and the ids acknowledged to each terminal keep a resend from
    being processed twice: set aside, they would be lost)."""
    if not d.is_dir():
        raise AsideRefused(f"{d} is not a directory: nothing to set aside (check [cp] journal)")
    names = os.listdir(d)
    gens = Generations(d)
    newest = gens.current(names)
    if newest:
        path = d / gen_name(newest)
        t0 = os.stat(path).st_mtime_ns
        time.sleep(watch)
        if os.stat(path).st_mtime_ns != t0 or gens.current() != newest:
            raise AsideRefused(
                f"a CP is serving {d} (its generation file {path.name} changed within {watch:g} s): stop every hsbcpd"
                " that uses this journal (on both CP machines) and try again"
            )
    if not [n for n in names if not GEN.match(n) and n != JOURNAL_ID]:
        raise AsideRefused(f"{d} holds no records (only its generation files): start hsbcpd on it as it is")
    if not force:
        try:
            r = recover(d, truncate=False)
        except JournalNewer as exc:  # (not damage: whole records this hsbcpd cannot read, all owed)
            raise AsideRefused(
                f"{d} is not damaged: a newer hsbcpd wrote it ({exc.why}, at offset {exc.offset} of {Path(exc.path).name});"
                " set aside, what it holds is lost: the messages acknowledged and not yet answered, the replies kept, and the ids"
                " acknowledged to each terminal. Start the newer hsbcpd on it, and go back to this one only once the journal is"
                " settled (docs/operations.md §11, Upgrading); --force sets it aside anyway"
            ) from None
        except JournalDamaged:
            pass
        except Exception as exc:  # noqa: BLE001 - (another CP's deletions under way, the storage's error): said
            raise AsideRefused(f"{d} could not be read to see whether it is damaged ({type(exc).__name__}: {exc})") from exc
        else:
            held = sum(len(v) for v in r.held.values())
            kept = sum(len(v) for v in r.replies.values())
            raise AsideRefused(
                f"{d} is not damaged: it recovers whole ({held} held messages, {kept} replies kept, and the ids acknowledged to"
                f" {len(r.last_acked)} terminals, which a terminal sending one again is acknowledged for, not answered twice);"
                " set aside, that is lost. Start hsbcpd on it (--force sets it aside anyway: a downgrade, say)"
            )
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime(now))
    to = d.with_name(f"{d.name}.damaged-{stamp}")
    k = 1
    while to.exists():
        k += 1
        to = d.with_name(f"{d.name}.damaged-{stamp}-{k}")
    # the new directory made whole first, beside it (its generation files, the old one's owner and
    # mode: run as root, the CP's user must still own it), then two renames: a CP starting
    # meanwhile finds the old journal whole, or the new one (a moment with none at all between
    # the two, which a CP taking over on a second machine waits out: it never makes one)
    new = d.with_name(f".{d.name}.new-{os.getpid()}")
    st = os.stat(d)
    new.mkdir(mode=0o700)
    for n in names:
        if GEN.match(n):
            _durable_file(new / n, (d / n).read_bytes(), os.O_EXCL)
            _same_owner(new / n, st)
    try:
        journal_id = read_journal_id(d)
    except JournalDamaged:
        journal_id = None  # (not kept: the next CP makes a new one, which the hosts refuse, saying so)
    if journal_id is not None:
        _durable_file(new / JOURNAL_ID, f"{journal_id}\n".encode(), os.O_EXCL)
        _same_owner(new / JOURNAL_ID, st)
    _same_owner(new, st)
    os.chmod(new, stat.S_IMODE(st.st_mode))
    fsync_dir(new)
    os.rename(d, to)
    os.rename(new, d)
    fsync_dir(d.parent)
    return to, len(names), newest


def _same_owner(p: Path, st: os.stat_result) -> None:
    if os.geteuid() == 0 and (st.st_uid, st.st_gid) != (0, 0):
        os.chown(p, st.st_uid, st.st_gid)
