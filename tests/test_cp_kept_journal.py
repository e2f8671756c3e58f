"""Kept replies across a CP restart (docs/protocol.md §1, docs/cp-journal.md): the journal a CP
writes, read back by the next one, keeps every reply no terminal received. A confirmation ("c")
never passes a message whose reply has not gone out: one whose discard is on its way, or one
recovered from the journal, whatever the terminal's hello says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hsb.wire.framing import encode
from tests.support.cpcore import cp_core, fake_host, recording_terminal

pytestmark = pytest.mark.timeout(30)


def _replies(p: Any) -> list[tuple[int, Any, bool]]:
    p.flush()
    return [(m["id"], m["data"], bool(m.get("resent"))) for m in p.transport.frames() if m.get("t") == "reply"]


def _journalled(cp: Any) -> tuple[list[list[Any]], list[Callable[[], None]]]:
    """Every record the CP appends, in order (as its journal writes them), and the callbacks of
    its "d" records, held until called (their group commit)."""
    records: list[list[Any]] = []
    held: list[Callable[[], None]] = []
    real = cp.journal.append

    def append(payload: list[Any], done: Any = None, lazy: bool = False) -> int:
        records.append(payload)
        if payload[0] == "d" and done is not None:
            held.append(done)
            return 1
        return int(real(payload, done, lazy))

    cp.journal.append = append
    return records, held


def _restart(tmp_path: Path, records: list[list[Any]]) -> Any:
    """A CP started on a journal of `records` (the CP before it died with them durable)."""
    from hsb.cp.journal.format import encode as record
    from hsb.cp.journal.recovery import recover, segment_name

    d = tmp_path / "j"
    d.mkdir()
    (d / segment_name(1, 0)).write_bytes(b"".join(record(r) for r in [["ck", 1, "host-a", 0, {}], *records]))
    cp = cp_core(tmp_path, 2)
    cp.restore(recover(d))
    return cp


@pytest.mark.parametrize("last_reply", [None, 2], ids=["not-resuming", "claiming-2"])
async def test_a_reply_kept_once_its_discard_is_durable_survives_a_cp_restart(tmp_path: Path, last_reply: int | None) -> None:
    """T00001 (not resuming) sends 1 and 2; its connection drops and the active answers 2 while it
    is away (kept, "r"). It reconnects (gets 2, marked) and the active answers 1: a discard ("d"),
    the reply to go once that is durable. Meanwhile the connection drops and T00001 says hello
    again: not resuming (nothing kept for it: 2 went once, settled by its own "d") or resuming with last_reply 2 (a
    claim the protocol lets count an earlier run's replies; taken as a confirm). Either wrote "c"
    up to 2, past message 1, whose reply no connection had; the connection drops again, the
    discard is durable and reply 1 is kept ("r") for the next logon, after that "c". The CP dies:
    its successor read the "r" as confirmed already and dropped it, and reply 1 never reached the
    terminal. Now no confirmation passes a message whose discard is on its way: the restarted CP
    recovers reply 1 and sends it at the next hello."""
    cp = cp_core(tmp_path, 2)
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", None)
    cp.host_open(h, "T00001", "active", {})
    records, discards = _journalled(cp)
    p.data_received(encode({"t": "msg", "id": 1, "data": "m1"}) + encode({"t": "msg", "id": 2, "data": "m2"}))
    p.connection_lost(None)
    cp.host_reply(h, "T00001", 2, "r2")  # away: kept ("r")
    p = recording_terminal(cp, "T00001", None)
    assert _replies(p) == [] and len(discards) == 1  # the kept 2: its "d" first, the reply once durable
    discards.pop()()
    assert _replies(p) == [(2, "r2", True)]
    cp.host_open(h, "T00001", "active", {})
    cp.host_reply(h, "T00001", 1, "r1")  # connected, not resuming: "d", the reply once it is durable
    assert len(discards) == 1
    p.connection_lost(None)
    p = recording_terminal(cp, "T00001", last_reply)
    p.connection_lost(None)
    discards.pop()()  # the discard durable, the terminal away: reply 1 kept ("r")
    term = cp.terms["T00001"]
    assert 1 in term.replies and not term.held
    assert not [r for r in records if r[0] == "c" and r[2] >= 1], records  # no "c" passed message 1
    after = _restart(tmp_path, records)
    assert 1 in after.terms["T00001"].replies, records
    q = recording_terminal(after, "T00001", 0)
    assert (1, "r1", True) in _replies(q)


async def test_the_reply_to_a_recovered_message_goes_whatever_the_hello_claims(tmp_path: Path) -> None:
    """Run 1 of T00001 sent 1 and 2 and died without a bye, unanswered; run 2 sent 1000 and got
    its reply (kept, unconfirmed), and the CP died. The restarted CP recovers messages 1 and 2
    and reply 1000; run 2's hello says last_reply 1000, as the protocol lets a claim count an
    earlier run's replies. The CP trusted that claim for the recovered messages: it took the
    hello as far as 999, and when the active answered 1 and 2 again, their replies were neither
    sent nor kept, though no run ever had them. Now a recovered message bounds a confirmation as
    any unanswered one does: its reply goes, marked resent (a terminal holding it ignores it), and
    is kept until the confirm that follows."""
    cp = _restart(tmp_path, [["a", "T00001", 1, "m1"], ["a", "T00001", 2, "m2"], ["a", "T00001", 1000, "m"], ["r", "T00001", 1000, "r"]])
    h = fake_host(cp, "host-a", "active")
    p = recording_terminal(cp, "T00001", 1000)
    assert _replies(p) == [(1000, "r", True)]  # recovered: sent whatever the hello said
    term = cp.terms["T00001"]
    assert term.confirmed == 0  # not past the recovered messages
    cp.host_open(h, "T00001", "active", {})
    for i in (1, 2):
        cp.host_reply(h, "T00001", i, f"r{i}")
    assert _replies(p)[1:] == [(1, "r1", True), (2, "r2", True)]
    assert sorted(term.replies) == [1, 2, 1000]
    p.data_received(encode({"t": "confirm", "id": 1000}))
    assert not term.replies and cp.counts.kept == 0 and term.confirmed == 1000


def test_a_takeover_snapshot_keeps_every_held_message_and_unconfirmed_reply(tmp_path: Path) -> None:
    """A restarted CP writes what it restored as its generation's snapshot, and the older
    generations go: read back, the snapshot gives the same held messages, kept replies and
    confirmation point (a reply left out is lost for good once the older segments are deleted)."""
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.recovery import recover
    from hsb.cp.journal.store import Journal

    cp = _restart(
        tmp_path,
        [["a", "T00001", i, f"m{i}"] for i in (1, 2, 3)]
        + [["r", "T00001", 1, "r1"], ["r", "T00001", 2, "r2"], ["c", "T00001", 1], ["a", "T00002", 5, "m5"]],
    )
    d = tmp_path / "j"
    before = recover(d)
    gen = Generations(d).take()
    j = Journal(d, generation=gen, io="thread")
    j.open(before.highest_segment + 1, cp.snapshot(), before.garbage + before.paths)
    j.close()
    after = recover(d)
    assert after.head_generation == gen and after.paths == [d / f"seg-{gen:08d}-{before.highest_segment + 1:08d}.hsbj"]
    assert {t: sorted(v) for t, v in after.held.items()} == {"T00001": [3], "T00002": [5]}
    assert {t: [(k.id, k.data) for k in v.values()] for t, v in after.replies.items()} == {"T00001": [(2, "r2")]}
    assert after.confirmed == {"T00001": 1} and after.last_acked == {"T00001": 3, "T00002": 5}
