"""SPEC §6.1 framing: raw bytes in, messages or one typed ProtocolError out."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.wire.framing import (
    BAD_KEYS,
    BAD_MSGPACK,
    EMPTY_FRAME,
    FRAME_TOO_LARGE,
    MISSING_TYPE,
    NOT_A_MAP,
    UNKNOWN_TYPE,
    Decoder,
    ProtocolError,
    encode,
)


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_round_trip_and_split_anywhere() -> None:
    msgs = [{"t": "msg", "id": i, "data": b"x" * i} for i in range(20)]
    stream = b"".join(encode(m) for m in msgs)
    for cut in range(1, len(stream), 7):
        d = Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == msgs
        assert d.buffered == 0


def test_byte_at_a_time() -> None:
    d = Decoder()
    out = []
    for b in encode({"t": "hello", "terminal": "T1"}):
        out += d.feed(bytes([b]))
    assert out == [{"t": "hello", "terminal": "T1"}]


@pytest.mark.parametrize(
    "raw, code",
    [
        (struct.pack(">I", 0), EMPTY_FRAME),
        (struct.pack(">I", 2_000_000), FRAME_TOO_LARGE),
        (frame(b"\xc1"), BAD_MSGPACK),  # 0xc1 is never used in MessagePack
        (frame(msgpack.packb({"t": "x"}) + b"\x00"), BAD_MSGPACK),  # trailing bytes
        (frame(b"\xa2\xff\xfe"), BAD_MSGPACK),  # str with invalid UTF-8
        (frame(msgpack.packb([1, 2])), NOT_A_MAP),
        (frame(msgpack.packb(7)), NOT_A_MAP),
        (frame(msgpack.packb({1: "a", "t": "msg"})), BAD_KEYS),
        (frame(msgpack.packb({"id": 1})), MISSING_TYPE),
        (frame(msgpack.packb({"t": 5})), MISSING_TYPE),
        (frame(msgpack.packb({"t": "nope"})), UNKNOWN_TYPE),
    ],
)
def test_each_error_case_has_its_code(raw: bytes, code: str) -> None:
    d = Decoder(known_types={"msg", "hello"})
    with pytest.raises(ProtocolError) as ei:
        d.feed(raw)
    assert ei.value.code == code
    assert ei.value.frame()["t"] == "error"
    # the decoder stays failed: the connection must be closed
    with pytest.raises(ProtocolError):
        d.feed(encode({"t": "msg"}))


def test_max_frame_is_configurable() -> None:
    big = encode({"t": "msg", "data": b"y" * 100})
    assert Decoder(max_frame=200).feed(big)[0]["data"] == b"y" * 100
    with pytest.raises(ProtocolError) as ei:
        Decoder(max_frame=50).feed(big)
    assert ei.value.code == FRAME_TOO_LARGE


def test_length_limit_is_checked_before_the_body_arrives() -> None:
    d = Decoder(max_frame=1024)
    with pytest.raises(ProtocolError) as ei:
        d.feed(struct.pack(">I", 1025))  # header only: must not wait for 1 KiB
    assert ei.value.code == FRAME_TOO_LARGE


def test_valid_frames_before_a_bad_one_are_kept() -> None:
    d = Decoder()
    with pytest.raises(ProtocolError) as ei:
        d.feed(encode({"t": "a"}) + encode({"t": "b"}) + struct.pack(">I", 0))
    assert [m["t"] for m in ei.value.before] == ["a", "b"]


def test_deep_nesting_is_a_protocol_error_not_a_crash() -> None:
    body = b"\x91" * 5000 + b"\xc0"  # 5000 nested one-element arrays
    with pytest.raises(ProtocolError) as ei:
        Decoder().feed(frame(body))
    assert ei.value.code in (BAD_MSGPACK, NOT_A_MAP)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=8))
def test_arbitrary_bytes_yield_messages_or_the_typed_error(data: bytes, cuts: list[int]) -> None:
    d = Decoder(max_frame=4096, known_types={"msg"})
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for a, b in zip(points, points[1:], strict=False):
        try:
            for m in d.feed(data[a:b]):
                assert isinstance(m, dict) and m["t"] == "msg"
                assert all(isinstance(k, str) for k in m)
        except ProtocolError as exc:
            assert exc.code in {EMPTY_FRAME, FRAME_TOO_LARGE, BAD_MSGPACK, NOT_A_MAP, BAD_KEYS, MISSING_TYPE, UNKNOWN_TYPE}
            return


@settings(max_examples=200, deadline=None)
@given(
    msgs=st.lists(
        st.fixed_dictionaries(
            {"t": st.sampled_from(["msg", "hello"])},
            optional={"id": st.integers(min_value=-(2**63), max_value=2**64 - 1), "data": st.binary(max_size=300) | st.text(max_size=100)},
        ),
        max_size=10,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=6),
)
def test_valid_streams_split_anywhere_decode_exactly(msgs: list[dict[str, Any]], cuts: list[int]) -> None:
    stream = b"".join(encode(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    d = Decoder(known_types={"msg", "hello"})
    got = []
    for a, b in zip(points, points[1:], strict=False):
        got += d.feed(stream[a:b])
    assert got == msgs


def test_a_flat_frame_with_many_keys_is_refused_before_it_is_built() -> None:
    """A terminal's frame is one map of a few plain values: a megabyte of padding keys (about
    100,000 of them) took 15 MB and 90 ms of the event loop to decode before anything refused
    it (and then took it). Refused by the map's own count of keys now, with a code and a reason."""
    padded = {"t": "msg", "id": 1, "data": "x", **{f"k{i}": 0 for i in range(100_000)}}
    d = Decoder(max_frame=4 << 20, flat=True)
    with pytest.raises(ProtocolError) as err:
        d.feed(frame(msgpack.packb(padded)))
    assert err.value.code == "bad_fields" and "more than 16 keys" in err.value.msg, err.value
    ok = Decoder(max_frame=4 << 20, flat=True)  # the frames a terminal sends still pass
    assert ok.feed(frame(msgpack.packb({"t": "msg", "id": 1, "data": "x", "resent": True}))) == [{"t": "msg", "id": 1, "data": "x", "resent": True}]


def test_a_frame_type_is_found_in_a_gone_connections_queue_without_decoding_the_rest() -> None:
    """A gone connection's unread queue is searched for a `bye` (hsb.cp.terminal_link.gone): it
    was decoded whole, up to 16 MiB of small frames in one call (over a second of the loop). Now
    only a frame holding "t": "bye" is decoded, with the framing walked only when such bytes are
    there; a "bye" inside a message's data is no bye; a frame split across the read still counts."""
    from hsb.wire.framing import Decoder, encode

    d = Decoder()
    d.first_done()
    many = encode({"t": "confirm", "id": 1}) * 50_000
    assert not d.has_type(many, "bye")
    assert d.has_type(many + encode({"t": "bye"}), "bye")
    assert d.has_type(encode({"id": 3, "t": "bye"}), "bye")  # (not its first key)
    assert not d.has_type(encode({"t": "msg", "id": 1, "data": "bye"}) * 100, "bye")
    assert not d.has_type(encode({"t": "msg", "id": 1, "data": {"t": "bye"}}), "bye")  # (nested: its own frame is a msg)
    assert not d.has_type(b"\x00\x00\x00\x00" + encode({"t": "bye"}), "bye")  # behind a malformed frame: not read
    d2 = Decoder()
    d2.first_done()
    bye = encode({"t": "bye"})
    assert d2.feed(bye[:3]) == [] and d2.has_type(bye[3:], "bye")


def test_a_flat_links_array_is_refused_by_its_length_not_once_built() -> None:
    """A terminal's frames are one map of plain values: an array in one was refused only once
    msgpack had built it whole (a megabyte of small ints: 12 ms of the loop and 11 MB). Refused by
    its length as it is met; an empty one is refused too, with the same code."""
    import tracemalloc

    from hsb.wire.framing import BAD_FIELDS

    for data in ([0] * 500_000, []):
        d = Decoder(max_frame=4 << 20, flat=True)
        raw = encode({"t": "msg", "id": 1, "data": data})
        tracemalloc.start()
        try:
            with pytest.raises(ProtocolError) as ei:
                d.feed(raw)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert ei.value.code == BAD_FIELDS and "an array" in ei.value.msg
        # (the frame's own bytes are copied a few times: about 1.5 MB; building the list took 5.4 MB)
        assert peak < 4 * len(raw) + (256 << 10), f"{peak} bytes allocated for a frame of {len(raw)}"


def test_a_bool_is_no_int_where_a_field_may_be_an_int_or_null() -> None:
    from hsb.wire.conn import require

    assert require({"t": "x", "a": 5}, "a", (int, type(None))) == 5
    assert require({"t": "x", "a": None}, "a", (int, type(None))) is None
    for typ in (int, (int, type(None))):
        with pytest.raises(ProtocolError) as ei:
            require({"t": "x", "a": True}, "a", typ)
        assert ei.value.code == "bad_fields"


def test_a_hold_without_a_bound_of_its_own_keeps_what_follows_the_first_frame_undecoded() -> None:
    """A terminal's (held_max None): its hello decoded alone, whatever follows kept as bytes
    (more than the first frame's bound: a terminal may send on), all of it decoded once it is taken."""
    from hsb.wire.framing import LOGIN_MAX

    d = Decoder(known_types=("hello", "msg"), first_max=LOGIN_MAX, hold=True, held_max=None)
    rest = b"".join(encode({"t": "msg", "id": i, "data": b"x" * 100}) for i in range(1, 101))
    assert [m["t"] for m in d.feed(encode({"t": "hello"}) + rest[:5000])] == ["hello"]
    assert d.feed(rest[5000:]) == [] and d.buffered == len(rest) > LOGIN_MAX
    d.first_done()
    assert [m["id"] for m in d.feed(b"")] == list(range(1, 101)) and d.buffered == 0
