"""Takeover file geometry, size check, startup identifier, entry and record encoding."""

from __future__ import annotations

import struct
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.takeover import (
    EntryTooLarge,
    SessionEntry,
    TakeoverFileTooSmall,
    batch_records_for,
    decode_startup_id,
    describe_startup_id,
    entries_per_record,
    size_check,
    startup_id,
)
from hsb.takeover.layout import CRC_OFFSET, ENTRY_SIZE, KIND_RING, RECORD_HEADER, RECORD_HEADER_SIZE, max_terminals
from hsb.takeover.records import (
    BadRecord,
    Header,
    crc_of,
    decode_header,
    decode_payload,
    encode_entry,
    encode_header,
    encode_payload,
    pack_record,
    parse_record,
)
from hsb.terminals import NAME_MAX

# -- size check ------------------------------------------------------------


def test_entries_per_record() -> None:
    assert entries_per_record(4096) == 15
    assert entries_per_record(512) == 1
    assert entries_per_record(1024) == 3
    assert batch_records_for(0) == 0
    assert batch_records_for(1) == 1
    assert batch_records_for(15) == 1
    assert batch_records_for(16) == 2
    assert batch_records_for(100_000) == 6667


@pytest.mark.parametrize("record_size", [512, 1024, 4096, 8192, 65536])
@pytest.mark.parametrize("terminals", [1, 2, 15, 16, 255, 1000, 10_000, 100_000])
def test_size_check_refuses_3b_accepts_3b_plus_1(record_size: int, terminals: int) -> None:
    b = batch_records_for(terminals, record_size)
    assert b >= 1
    with pytest.raises(TakeoverFileTooSmall) as ei:
        size_check(3 * b, terminals, record_size, path="/x/tk")
    exc = ei.value
    assert (exc.records, exc.batch_records, exc.needed) == (3 * b, b, 3 * b + 1)
    msg = str(exc)
    assert f"has {3 * b} records" in msg and f"B={b} " in msg and f"at least {3 * b + 1} (3·B+1)" in msg
    assert "\n" not in msg
    lay = size_check(3 * b + 1, terminals, record_size)
    assert lay.batch_records == b
    assert lay.ring_slots >= 2 * b
    assert lay.ring_first == b + 1


def test_size_check_message() -> None:
    with pytest.raises(TakeoverFileTooSmall) as ei:
        size_check(10, 100, 4096, path="/srv/tk")
    assert str(ei.value).startswith(
        "takeover file /srv/tk has 10 records; 100 terminals need B=7 batch records "
        "(15 entries per 4096-byte record), so N must be at least 22 (3·B+1)"
    )
    assert "hsbctl file create /srv/tk --records 22" in str(ei.value)


def test_size_check_zero_terminals_and_max_terminals() -> None:
    lay = size_check(4, 0)
    assert lay.batch_records == 0 and lay.ring_slots == 3 and lay.ring_first == 1
    for n in (4, 10, 22, 1000):
        t = max_terminals(n)
        size_check(n, t)
        with pytest.raises(TakeoverFileTooSmall):
            size_check(n, t + 1)


def test_size_check_bad_record_size() -> None:
    with pytest.raises(ValueError, match="multiple of 512"):
        size_check(100, 10, 1000)


def test_ring_record_wraps() -> None:
    lay = size_check(10, 15)  # B=1, K=8: ring records 2..9
    assert [lay.ring_record(s) for s in (1, 2, 8, 9, 16, 17)] == [2, 3, 9, 2, 9, 2]


# -- startup identifier ------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "date", "ms"),
    [
        (datetime(2000, 1, 1, 0, 0, 0), 1, 0),
        (datetime(2024, 12, 31, 23, 59, 59, 999_999), 24 * 366 + 366, 86_399_999),  # leap year, day 366
        (datetime(2023, 12, 31, 23, 59, 59, 999_000), 23 * 366 + 365, 86_399_999),
        (datetime(2023, 3, 1, 12, 34, 56, 789_000), 23 * 366 + 60, 45_296_789),
        (datetime(2024, 3, 1, 12, 34, 56, 789_400), 24 * 366 + 61, 45_296_789),
        (datetime(2099, 12, 31, 0, 0, 0, 1_000), 99 * 366 + 365, 1),
        (datetime(2100, 1, 1, 0, 0, 0), 1, 0),  # the year is kept modulo 100
    ],
)
def test_startup_id_known_instants(when: datetime, date: int, ms: int) -> None:
    ident = startup_id(when)
    assert ident == (date << 32) | ms
    assert ident < 1 << 48
    assert decode_startup_id(ident) == (when.year % 100, date - (when.year % 100) * 366, ms)


def test_startup_id_describe() -> None:
    ident = startup_id(datetime(2024, 12, 31, 23, 59, 59, 999_000))
    assert describe_startup_id(ident).startswith("2024-12-31 23:59:59.999 local")
    assert describe_startup_id(startup_id(datetime(2026, 1, 1, 0, 0, 0))).startswith("2026-01-01 00:00:00.000")
    assert describe_startup_id(0).startswith("none")
    assert "invalid" in describe_startup_id((23 * 366 + 366) << 32)  # 2023 has no day 366


def test_startup_id_after_is_strictly_larger() -> None:
    t = datetime(2025, 6, 1, 8, 0, 0)
    a = startup_id(t)
    b = startup_id(t, after=a)
    c = startup_id(t, after=b)
    assert a < b < c and c - a == 2
    later = datetime(2025, 6, 1, 8, 0, 1)
    assert startup_id(later, after=c) == startup_id(later)


def test_startup_id_now_is_today() -> None:
    yy, day, ms = decode_startup_id(startup_id())
    now = datetime.now()
    assert yy == now.year % 100 and 1 <= day <= 366 and 0 <= ms < 86_400_000


# -- entries -----------------------------------------------------------------


def test_entry_round_trip_and_limits() -> None:
    e = SessionEntry("T1", {"proto": "lu2", "cp": 932, "raw": b"\x00\xff", "list": [1, 2]}, True)
    data = encode_entry(e)
    assert decode_payload(encode_payload([data]), 1) == [e]
    name = "N" * NAME_MAX
    fits = SessionEntry(name, {"a": "x" * (ENTRY_SIZE - 60)}, False)
    assert len(encode_entry(fits)) <= ENTRY_SIZE
    with pytest.raises(EntryTooLarge, match=r"terminal 'BIG' .* at most 256"):
        encode_entry(SessionEntry("BIG", {"a": "x" * 300}, True))
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        encode_entry(SessionEntry("N" * (NAME_MAX + 1), {}, True))
    with pytest.raises(ValueError, match="bytes of UTF-8"):
        encode_entry(SessionEntry("é" * 25, {}, True))  # 50 bytes
    with pytest.raises(ValueError, match="'T2' cannot be encoded"):
        encode_entry(SessionEntry("T2", {"x": object()}, True))
    with pytest.raises(ValueError, match="must be a dict"):
        encode_entry(SessionEntry("T3", ["no"], True))  # type: ignore[arg-type]


def test_decode_payload_rejects_bad_shapes() -> None:
    import msgpack

    with pytest.raises(ValueError, match="header says 2"):
        decode_payload(encode_payload([encode_entry(SessionEntry("A", {}, True))]), 2)
    with pytest.raises(ValueError, match="bad entry encoding"):
        decode_payload(msgpack.packb([["A", 1, {}]]), 1)
    with pytest.raises(ValueError, match="bad entry encoding"):
        decode_payload(b"\xc1", 1)


# -- records -------------------------------------------------------------------


def _ring_record(record_size: int = 1024) -> bytearray:
    payload = encode_payload([encode_entry(SessionEntry("T1", {"a": 1}, True))])
    return pack_record(KIND_RING, 7, 42, payload, record_size, 1)


def test_record_round_trip() -> None:
    buf = _ring_record()
    rec = parse_record(memoryview(buf))
    assert rec is not None
    assert (rec.kind, rec.generation, rec.seq, rec.n_entries) == (KIND_RING, 7, 42, 1)
    assert decode_payload(rec.payload, rec.n_entries) == [SessionEntry("T1", {"a": 1}, True)]


def test_all_zero_record_is_never_written_not_corrupt() -> None:
    assert parse_record(memoryview(bytes(1024))) is None
    half = bytearray(1024)
    half[900] = 1  # zero header, something behind it: a torn write
    with pytest.raises(BadRecord) as ei:
        parse_record(memoryview(half))
    assert ei.value.torn


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 1023), bit=st.integers(0, 7))
def test_any_flipped_bit_is_detected(pos: int, bit: int) -> None:
    buf = _ring_record()
    buf[pos] ^= 1 << bit
    with pytest.raises(BadRecord):
        parse_record(memoryview(buf))


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(1, 1023))
def test_short_write_over_an_older_record_is_detected(cut: int) -> None:
    old = pack_record(KIND_RING, 6, 33, encode_payload([encode_entry(SessionEntry("OLD", {"x": "y" * 200}, False))]), 1024, 1)
    new = _ring_record()
    torn = new[:cut] + old[cut:]
    if torn in (new, old):  # nothing of the write landed yet, or the rest happens to be equal
        return
    with pytest.raises(BadRecord) as ei:
        parse_record(memoryview(torn))
    assert ei.value.torn


def test_header_round_trip_and_consistency() -> None:
    h = Header(4096, 100, 7, 3, 0x1234_5678_9ABC, 100, ENTRY_SIZE, 1_700_000_000_000, "host-a")
    rec = parse_record(memoryview(encode_header(h)))
    assert rec is not None
    assert decode_header(rec) == h
    assert RECORD_HEADER_SIZE == 32
    bad = Header(4096, 10, 9, 1, 0, 0)  # B leaves no ring slot
    rec = parse_record(memoryview(encode_header(bad)))
    assert rec is not None
    with pytest.raises(ValueError, match="B=9"):
        decode_header(rec)


def test_a_startup_identifier_is_larger_than_the_last_one_even_at_the_days_last_millisecond() -> None:
    t = datetime(2024, 12, 31, 23, 59, 59, 999000)
    last = startup_id(t)
    assert startup_id(t, after=last) > last  # (it was equal: a late BATCH WRITE COMPLETE of the earlier start could match)
    assert startup_id(datetime(2024, 6, 1, 12), after=startup_id(datetime(2024, 6, 1, 12))) == startup_id(datetime(2024, 6, 1, 12)) + 1


def test_a_header_claiming_more_batch_entries_than_its_batch_area_holds_is_refused() -> None:
    h = Header(4096, 100, 2, 3, 1, 2 * 15 + 1)  # B=2 records of E=15 entries hold at most 30
    rec = parse_record(memoryview(encode_header(h)))
    assert rec is not None
    with pytest.raises(ValueError, match="31 batch entries, but B=2 records hold at most 30"):
        decode_header(rec)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [(0, b"XXXX", "bad magic"), (2, 2, "format version 2"), (1, 9, "unknown record kind 9")],
)
def test_a_checksummed_record_of_another_kind_version_or_format_is_refused(field: int, value: object, reason: str) -> None:
    """The checksum says the bytes are whole, not that they are ours: a record of a later format
    version (a host of a newer hsb on the same file) or of no known kind is not read as one."""
    buf = pack_record(KIND_RING, 1, 1, encode_payload([encode_entry(SessionEntry("T1", {}, True))]), 512, 1)
    fields = list(RECORD_HEADER.unpack_from(buf))
    fields[field] = value
    RECORD_HEADER.pack_into(buf, 0, *fields)
    struct.pack_into("<I", buf, CRC_OFFSET, crc_of(buf))  # (checksummed again: only the field is wrong)
    with pytest.raises(BadRecord, match=reason) as ei:
        parse_record(memoryview(buf))
    assert not ei.value.torn


def test_entries_of_exactly_entry_size_bytes_are_written_and_e_of_them_fill_a_record() -> None:
    """The bound is inclusive: an entry that encodes to ENTRY_SIZE bytes is written (refused, the
    host would drop that terminal's session change from the ring), and E of them fit one record."""
    import msgpack

    pads = [n for n in range(ENTRY_SIZE) if len(msgpack.packb(["T0000", True, {"a": "x" * n}])) == ENTRY_SIZE]
    assert pads, "no padding makes an entry of exactly ENTRY_SIZE bytes"
    e = entries_per_record(4096)
    full = [SessionEntry(f"T{i:04d}", {"a": "x" * pads[0]}, True) for i in range(e)]
    encoded = [encode_entry(x) for x in full]
    assert {len(x) for x in encoded} == {ENTRY_SIZE}
    rec = parse_record(memoryview(pack_record(KIND_RING, 1, 1, encode_payload(encoded), 4096, e)))
    assert rec is not None and decode_payload(rec.payload, e) == full
