"""The CP journal's format and recovery at their edges (docs/cp-journal.md, *Files* and
*Recovery*), pure: the tests a mutation audit of hsb/cp/journal/format.py and
hsb/cp/journal/recovery.py found missing. Each builds journal files in tmp_path with the
package's own format functions, damages or truncates bytes, and asserts on what is restored or
on the error naming the file and the offset."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal import recovery
from hsb.cp.journal.format import HEADER, LENGTH, MAGIC, MAX_RECORD, JournalDamaged, encode, group, locate, packer, scan
from hsb.cp.journal.generation import snap_name
from hsb.cp.journal.recovery import Recovered, in_id_order, recover, segment_name
from tests.support.journal import write_segment

pytestmark = pytest.mark.timeout(60)

CK = ["ck", 1, None, 0, {}]


def _frame(body: bytes) -> bytes:
    """A record's bytes around any payload, checksummed as the journal does."""
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body, zlib.crc32(LENGTH.pack(len(body))))) + body


# ---- format.scan: torn tails, their reasons, damage ----


def test_a_tail_holding_a_whole_header_and_none_of_its_payload_is_torn_past_the_end() -> None:
    """A write torn right after its 10-byte header: a torn tail whose reason is the record
    running past the end of the file (not "shorter than a header")."""
    whole = encode(CK)
    tail = encode(["a", "T1", 1, b"x" * 20])[: HEADER.size]
    got, end, torn = scan(whole + tail)
    assert got == [CK] and end == len(whole)
    assert torn is not None and "runs past the end" in torn, torn


def test_a_length_of_max_record_is_plausible_one_above_is_not() -> None:
    """MAX_RECORD is the largest length a record may say: a header saying it, torn, runs past
    the end; one saying a byte more is an implausible length."""
    whole = encode(CK)
    _, _, torn = scan(whole + HEADER.pack(MAGIC, MAX_RECORD, 0))
    assert torn is not None and "runs past the end" in torn, torn
    _, _, torn = scan(whole + HEADER.pack(MAGIC, MAX_RECORD + 1, 0))
    assert torn is not None and "implausible" in torn, torn


def test_a_last_record_whose_magic_is_damaged_is_a_torn_tail_not_a_clean_end(tmp_path: Path) -> None:
    """The last record's magic damaged (its length and checksum intact): a torn tail, said so
    (bad magic) and, with truncate, cut off the file; never read as a clean end."""
    recs = [CK, ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"]]
    p = write_segment(tmp_path, 1, recs, gen=0)
    good = len(encode(recs[0])) + len(encode(recs[1]))
    blob = bytearray(p.read_bytes())
    blob[good] ^= 0xFF
    p.write_bytes(bytes(blob))
    got, end, torn = scan(bytes(blob))
    assert got == recs[:2] and end == good and torn is not None and "bad magic" in torn
    r = recover(tmp_path)
    assert list(r.held["T1"]) == [1] and r.last_acked == {"T1": 1}
    assert r.torn is not None and f"{p.name} at offset {good}" in r.torn
    assert p.stat().st_size == good


def test_a_checksummed_record_with_an_empty_payload_is_damage_even_last() -> None:
    """A record whose checksum holds but whose payload (here: none) does not decode is damage
    at its offset, also as the last record of the file: a torn write never checks out."""
    whole = encode(CK)
    with pytest.raises(JournalDamaged) as exc:
        scan(whole + _frame(b""), "seg")
    assert exc.value.offset == len(whole) and "does not decode" in exc.value.why


def test_a_bad_record_with_a_valid_one_right_at_its_end_is_damage_though_a_torn_one_follows() -> None:
    """A record with a bad checksum followed, right where its length says it ends, by a valid
    record is damage (a crash tears the last record only), even when the file's own last write
    is torn after that."""
    a, b, c = encode(["a", "T1", 1, b"one"]), encode(["a", "T1", 2, b"two"]), encode(["a", "T1", 3, b"three"])
    whole = encode(CK)
    bad = bytearray(a)
    bad[-1] ^= 0x01  # its payload: the checksum no longer holds
    with pytest.raises(JournalDamaged) as exc:
        scan(whole + bytes(bad) + b + c[:-3], "seg")
    off = len(whole)
    assert exc.value.offset == off and f"a valid record follows at offset {off + len(a)}" in exc.value.why


def test_a_stray_byte_before_a_valid_record_is_damage_at_the_stray_byte() -> None:
    """One byte of garbage between two records: damage at that byte, the valid record one byte
    after it named (not a torn tail that drops the record after it)."""
    whole = encode(CK)
    nxt = encode(["a", "T1", 1, b"one"])
    with pytest.raises(JournalDamaged) as exc:
        scan(whole + b"\x07" + nxt, "seg")
    off = len(whole)
    assert exc.value.offset == off and f"follows at offset {off + 1}" in exc.value.why


@pytest.mark.parametrize("zeros", [0, 4096])
def test_a_length_damaged_upward_over_valid_records_is_damage_with_or_without_room_after(zeros: int) -> None:
    """A record whose length was damaged upward, so that every record after it lies inside its
    claimed extent: damage, since valid records run from the next one to the end of what was
    written, whether the file ends there or in the zeros of a segment allocated whole."""
    recs = [CK, ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"], ["a", "T1", 3, b"three"]]
    blob = bytearray(b"".join(encode(r) for r in recs))
    off = len(encode(recs[0]))
    LENGTH.pack_into(blob, off + 2, len(blob) - off - HEADER.size + 2)  # 2 bytes past the last record
    with pytest.raises(JournalDamaged) as exc:
        scan(bytes(blob) + b"\x00" * zeros, "seg")
    assert exc.value.offset == off and "a valid record follows" in exc.value.why


def test_a_torn_last_record_whose_data_holds_a_records_bytes_is_a_torn_tail(tmp_path: Path) -> None:
    """A terminal's data is kept verbatim and may hold a whole record's bytes: the last record
    torn after them (and after more of its data) is a torn tail, dropped, not damage at every
    start."""
    inner = encode(["a", "X", 1, b"inner"])
    last = encode(["a", "T1", 2, b"head" + inner + b"more of the data"])
    p = tmp_path / segment_name(1)
    first = encode(CK) + encode(["a", "T1", 1, b"one"])
    p.write_bytes(first + last[:-3])
    r = recover(tmp_path)
    assert list(r.held["T1"]) == [1] and r.torn is not None and p.stat().st_size == len(first)


def test_a_record_inside_a_group_is_located_at_its_group_and_position() -> None:
    """`locate()` gives a payload's record offset and its position in a group record, for each
    payload of a segment mixing records alone and group records."""
    pack = packer()
    g1 = [["a", "T1", 1, b"x"], ["a", "T1", 2, b"y"], ["a", "T1", 3, b"z"]]
    lone = ["c", "T1", 1]
    g2 = [["a", "T2", 1, b"p"], ["a", "T2", 2, b"q"]]
    parts = [encode(CK), group([pack(r) for r in g1]), encode(lone), group([pack(r) for r in g2])]
    buf = b"".join(parts)
    offs = [sum(len(p) for p in parts[:i]) for i in range(len(parts))]
    got, _, _ = scan(buf)
    assert got == [CK, *g1, lone, *g2]
    want = [(offs[0], None), (offs[1], 0), (offs[1], 1), (offs[1], 2), (offs[2], None), (offs[3], 0), (offs[3], 1)]
    assert [locate(buf, i) for i in range(len(got))] == want


# ---- recovery: which generation is read ----


def _ck(first: int, epoch: int = 1, active: str | None = None, **extra: Any) -> list[Any]:
    return ["ck", epoch, active, 0, {}, {"first": first, **extra}]


def test_a_newer_generation_torn_before_its_checkpoint_is_skipped_for_the_older_one(tmp_path: Path) -> None:
    """A CP that died creating its generation (its first segment holds a few bytes of a header,
    no snapshot mark): the older, complete generation is read, the newer one's file is garbage."""
    write_segment(tmp_path, 1, [_ck(1), ["a", "T1", 1, b"one"], ["se"]], gen=1)
    torn = tmp_path / segment_name(2, 2)
    torn.write_bytes(encode(_ck(2, epoch=2))[:5])
    r = recover(tmp_path)
    assert r.head_generation == 1 and list(r.held["T1"]) == [1] and r.garbage == [torn]


def test_a_newer_snapshot_without_its_end_is_skipped_for_the_older_generation(tmp_path: Path) -> None:
    """A newer generation whose first segment is its snapshot segment (`first` its own number)
    but holds no `se` yet, and no snapshot mark: not complete, the older generation is read."""
    old = write_segment(tmp_path, 1, [_ck(1), ["a", "T1", 1, b"one"], ["se"]], gen=1)
    new = write_segment(tmp_path, 2, [_ck(2, epoch=5), ["a", "T9", 1, b"nine"]], gen=2)
    r = recover(tmp_path)
    assert r.head_generation == 1 and r.epoch == 1 and set(r.held) == {"T1"}
    assert r.paths == [old] and r.garbage == [new]


def test_a_generation_whose_snapshot_segment_was_compacted_away_is_complete(tmp_path: Path) -> None:
    """A generation whose first segment left says its snapshot was an earlier one (compacted
    away once durable) is complete without an `se`: it is read, the older one is garbage."""
    old = write_segment(tmp_path, 1, [_ck(1), ["a", "T1", 1, b"one"], ["se"]], gen=1)
    write_segment(tmp_path, 3, [_ck(2, epoch=5), ["a", "T9", 1, b"nine"]], gen=2)
    r = recover(tmp_path)
    assert r.head_generation == 2 and r.epoch == 5 and set(r.held) == {"T9"} and r.garbage == [old]


def test_a_marked_snapshot_without_its_end_is_damage(tmp_path: Path) -> None:
    """A generation whose snapshot was said durable (snap-N) but whose first segment holds no
    `se`: damage naming that file, never skipped for an older generation."""
    write_segment(tmp_path, 1, [_ck(1), ["se"]], gen=1)
    p = write_segment(tmp_path, 2, [_ck(2, epoch=5), ["a", "T9", 1, b"nine"]], gen=2)
    (tmp_path / snap_name(2)).touch()
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and "its end is not there" in exc.value.why


def test_a_marked_generation_with_none_of_its_segments_left_is_damage(tmp_path: Path) -> None:
    """snap-N there but no segment of generation N: damage naming the mark (starting from the
    older generation would let a fenced host back in)."""
    write_segment(tmp_path, 1, [_ck(1), ["se"]], gen=1)
    (tmp_path / snap_name(2)).touch()
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(tmp_path / snap_name(2)) and "none of its segment files" in exc.value.why


def test_a_first_record_that_is_not_a_record_is_damage_at_offset_0(tmp_path: Path) -> None:
    """A generation's first segment whose first record checks out but is no array: damage at
    offset 0 of that file."""
    p = tmp_path / segment_name(1, 1)
    p.write_bytes(encode(7) + encode(["se"]))
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and exc.value.offset == 0 and "not a record" in exc.value.why


# ---- recovery: reading again what may still be being written ----


def _reads(monkeypatch: pytest.MonkeyPatch, path: Path, versions: list[bytes]) -> list[int]:
    """`path` reads as each of `versions` in turn (the last one from then on): a file another
    CP is still writing. Returns the count of its reads, kept up to date."""
    count = [0]
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            count[0] += 1
            return versions[min(count[0], len(versions)) - 1]
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    return count


def _damaged_middle(recs: list[list[Any]], i: int) -> bytes:
    """`recs` encoded, record `i`'s checksum broken (a valid record after it: damage)."""
    parts = [bytearray(encode(r)) for r in recs]
    parts[i][-1] ^= 0x01
    return b"".join(bytes(p) for p in parts)


def test_damage_in_the_last_segment_that_a_read_again_finds_whole_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last segment reads as damaged, then whole (a superseded CP's flush landing between
    two parts of the read): read again, recovered, no damage."""
    recs = [CK, ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"]]
    p = write_segment(tmp_path, 1, recs)
    count = _reads(monkeypatch, p, [_damaged_middle(recs, 1), p.read_bytes()])
    r = recover(tmp_path)
    assert list(r.held["T1"]) == [1, 2] and count[0] >= 2


def test_an_unmarked_snapshot_caught_half_written_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A newer generation's snapshot segment, not said durable, damaged before its checkpoint
    or inside its snapshot at one read and whole at the next (a CP writing it now): read again,
    and that generation recovered."""
    recs = [_ck(1, epoch=4), ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"], ["se"]]
    for i in (0, 1):
        d = tmp_path / str(i)
        d.mkdir()
        p = write_segment(d, 1, recs, gen=1)
        with monkeypatch.context() as m:
            _reads(m, p, [_damaged_middle(recs, i), p.read_bytes()])
            r = recover(d)
        assert r.head_generation == 1 and r.epoch == 4 and list(r.held["T1"]) == [1, 2]


def test_a_marked_snapshot_damaged_stops_at_the_first_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A snapshot said durable (snap-N) that reads as damaged, before its checkpoint or inside
    the snapshot: damage at once, naming the file and offset (nobody writes it any more)."""
    recs = [_ck(1), ["a", "T1", 1, b"one"], ["a", "T1", 2, b"two"], ["se"]]
    for i in (0, 1):
        d = tmp_path / str(i)
        d.mkdir()
        p = write_segment(d, 1, recs, gen=1)
        (d / snap_name(1)).touch()
        with monkeypatch.context() as m:
            count = _reads(m, p, [_damaged_middle(recs, i), p.read_bytes()])
            with pytest.raises(JournalDamaged) as exc:
                recover(d)
        assert count[0] == 1 and exc.value.path == str(p)
        assert exc.value.offset == sum(len(encode(r)) for r in recs[:i])


def test_files_that_keep_vanishing_stop_the_start_after_retries_listings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A segment file listed but gone at each read: the journal is listed again, and after
    RETRIES listings in a row that lost it the start stops naming the directory."""
    p = write_segment(tmp_path, 1, [CK])
    count = [0]
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == p:
            count[0] += 1
            raise FileNotFoundError(str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    monkeypatch.setattr(recovery, "RETRY_PAUSE_S", 0.0)
    with pytest.raises(recovery.JournalUnsettled) as exc:
        recover(tmp_path)
    assert count[0] == recovery.RETRIES and exc.value.path == str(tmp_path)


# ---- recovery: damage between segments ----


def test_a_segment_missing_between_two_is_damage_at_the_one_after(tmp_path: Path) -> None:
    """Segments 1 and 3 without 2: damage at offset 0 of segment 3, naming the missing one."""
    write_segment(tmp_path, 1, [CK, ["a", "T1", 1, b"one"]])
    p = write_segment(tmp_path, 3, [CK])
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and exc.value.offset == 0 and "segment 2 is missing" in exc.value.why


def test_a_torn_tail_in_a_segment_that_is_not_the_last_is_damage_at_its_offset(tmp_path: Path) -> None:
    """A torn last record in a segment a later one follows: damage at the torn record's offset
    (only the last segment's tail can be a crash's)."""
    recs = [CK, ["a", "T1", 1, b"one"]]
    p = write_segment(tmp_path, 1, recs)
    good = p.stat().st_size
    p.write_bytes(p.read_bytes() + encode(["a", "T1", 2, b"two"])[:-2])
    write_segment(tmp_path, 2, [CK])
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and exc.value.offset == good and "not the last one" in exc.value.why


@pytest.mark.parametrize("truncate", [True, False])
def test_a_torn_tail_is_cut_off_exactly_with_truncate_and_left_without(tmp_path: Path, truncate: bool) -> None:
    """The torn tail of the last segment is dropped from what is restored; with `truncate` the
    file is cut exactly at the end of its last valid record, without it left as it was."""
    p = write_segment(tmp_path, 1, [CK, ["a", "T1", 1, b"one"]])
    good = p.stat().st_size
    blob = p.read_bytes() + encode(["a", "T1", 2, b"two"])[:-2]
    p.write_bytes(blob)
    r = recover(tmp_path, truncate=truncate)
    assert list(r.held["T1"]) == [1] and r.torn is not None
    assert p.read_bytes() == (blob[:good] if truncate else blob)


@pytest.mark.parametrize(("closed", "damaged"), [([1, 3], True), ([1, 2], False), ([7, 3], False), (None, False)])
def test_a_segment_that_ends_with_fewer_records_than_the_next_checkpoint_says_is_damage(
    tmp_path: Path, closed: list[int] | None, damaged: bool
) -> None:
    """The next segment's checkpoint says the one before closed with more records than it
    holds: damage at the end of that one. As many as said, a count about another segment, or
    none said: read as is."""
    p = write_segment(tmp_path, 1, [CK, ["a", "T1", 1, b"one"]])
    extra = {} if closed is None else {"closed": closed}
    write_segment(tmp_path, 2, [["ck", 1, None, 0, {"T1": 1}, extra], ["a", "T1", 2, b"two"]])
    if damaged:
        with pytest.raises(JournalDamaged) as exc:
            recover(tmp_path)
        assert exc.value.path == str(p) and exc.value.offset == p.stat().st_size and "closed with 3" in exc.value.why
    else:
        assert list(recover(tmp_path).held["T1"]) == [1, 2]


# ---- recovery: applying records, in any order ----


def _recover(tmp_path: Path, recs: list[list[Any]]) -> Recovered:
    write_segment(tmp_path, 1, [CK, *recs])
    return recover(tmp_path)


def test_a_message_carried_after_its_settling_record_stays_settled(tmp_path: Path) -> None:
    """Applying is independent of where a record sits: a message whose confirmation, or whose
    reply, was read before it is not held again; a lower id read after a higher one does not
    lower the highest acknowledged."""
    r = _recover(tmp_path, [["c", "T1", 5], ["a", "T1", 5, b"m5"], ["r", "T2", 3, b"R3"], ["a", "T2", 3, b"m3"], ["a", "T2", 1, b"m1"]])
    assert "T1" not in r.held and list(r.held["T2"]) == [1] and list(r.replies["T2"]) == [3]
    assert r.last_acked == {"T1": 5, "T2": 3}


def test_a_confirmation_settles_the_replies_up_to_its_id_and_no_reply_at_or_below_it_comes_back(tmp_path: Path) -> None:
    """`c` up to id drops every kept reply up to and including that id; a reply at or below a
    confirmed id read after it is not kept; the empty per-terminal tables are gone."""
    r = _recover(
        tmp_path,
        [["a", "T1", 4, b"m4"], ["a", "T1", 5, b"m5"], ["r", "T1", 4, b"R4"], ["r", "T1", 5, b"R5"], ["c", "T1", 5], ["r", "T1", 5, b"R5"]],
    )
    assert r.replies == {} and r.held == {} and r.confirmed == {"T1": 5} and r.outstanding == 0


def test_a_record_of_the_wrong_types_is_damage_naming_its_place_in_its_group(tmp_path: Path) -> None:
    """A record that checks out but makes no sense (an id that is not a number), second in a
    group record: damage at the group's offset naming it record 2 of that group."""
    pack = packer()
    p = tmp_path / segment_name(1)
    head = encode(CK)
    p.write_bytes(head + group([pack(["a", "T1", 1, b"one"]), pack(["a", "T1", "two", b"two"])]))
    with pytest.raises(JournalDamaged) as exc:
        recover(tmp_path)
    assert exc.value.path == str(p) and exc.value.offset == len(head)
    assert "record 2 of the group record there" in exc.value.why


def test_the_epoch_and_active_of_a_normal_termination_are_restored(tmp_path: Path) -> None:
    """An `e` at the same epoch with no active (a normal termination) and a later checkpoint of
    the same epoch with none: nobody holds the role after recovery."""
    r = _recover(tmp_path, [["e", 3, "hostA"], ["e", 3, None]])
    assert (r.epoch, r.active) == (3, None)
    d = tmp_path / "ck"
    d.mkdir()
    write_segment(d, 1, [["ck", 3, "hostA", 0, {}]])
    write_segment(d, 2, [["ck", 3, None, 0, {}]])
    r = recover(d)
    assert (r.epoch, r.active) == (3, None)


def test_logoffs_are_never_lowered_and_leaving_holds_up_to_the_logoffs_id(tmp_path: Path) -> None:
    """A logoff's id is never lowered, by an older `o` or a checkpoint's; a terminal whose
    highest acknowledged id is its logoff's is leaving, one that sent above it is not."""
    write_segment(tmp_path, 1, [CK, ["a", "T1", 9, b"m"], ["o", "T1", 9], ["o", "T1", 4], ["a", "T2", 8, b"n"], ["o", "T2", 7]])
    write_segment(tmp_path, 2, [["ck", 1, None, 0, {"T1": 9, "T2": 8}, {"logoff": {"T1": 2, "T2": 3}}]])
    r = recover(tmp_path)
    assert r.logoff == {"T1": 9, "T2": 7}
    assert r.leaving("T1") and not r.leaving("T2") and not r.leaving("T3")


def test_a_checkpoint_keeps_what_it_does_not_say(tmp_path: Path) -> None:
    """A checkpoint without `frames` leaves the hosts' max_frame read before; a `lease` that is
    not a pair is ignored; a max_frame of 0 (none said) is one."""
    r = _recover(
        tmp_path,
        [["f", [["hostA", 0], ["hostB", 4096]]], ["ck", 1, None, 0, {}, {"lease": [5.0]}], ["ck", 1, None, 0, {}, {"lease": [2.0, 1.0]}]],
    )
    assert r.frames == {"hostA": 0, "hostB": 4096} and r.lease == (2.0, 1.0)
    d = tmp_path / "bad"
    d.mkdir()
    write_segment(d, 1, [CK, ["ck", 1, None, 0, {}, {"lease": [5.0]}]])
    assert recover(d).lease == (0.0, 0.0)


def test_the_history_keeps_its_last_entries(tmp_path: Path) -> None:
    """The switch history keeps its HISTORY_KEEP newest entries, the oldest dropped."""
    n = recovery.HISTORY_KEEP + 3
    r = _recover(tmp_path, [["h", {"epoch": i, "kind": "x"}] for i in range(n)])
    assert [e["epoch"] for e in r.history] == list(range(3, n))


def test_in_id_order_sorts_only_what_is_out_of_order() -> None:
    """`in_id_order` gives the dict itself when its ids ascend, else a copy in id order."""
    ordered = {1: "a", 2: "b", 5: "c"}
    assert in_id_order(ordered) is ordered
    assert list(in_id_order({5: "c", 1: "a", 2: "b"})) == [1, 2, 5]
