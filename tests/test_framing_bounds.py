"""The framing's bounds at their edges (hsb.wire.framing.Decoder): a frame of exactly the
maximum is taken and one byte more is refused, the first frame's own bound holds for the first
frame only, the bytes held behind a first frame may reach their bound but not pass it, and HTTP
met where a frame is wanted is said as HTTP (by the decoder, and by hsbterm and hsbcpd for real)."""

from __future__ import annotations

import struct
from pathlib import Path

import msgpack
import pytest

from hsb.wire.framing import FRAME_TOO_LARGE, LOGIN_MAX, Decoder, ProtocolError


def frame_of(size: int, t: str = "msg") -> bytes:
    """A valid frame whose body is exactly `size` bytes (a map {"t": t, "d": b"..."})."""
    for n in range(size, size - 40, -1):  # the bin header grows with the data's length
        body: bytes = msgpack.packb({"t": t, "d": b"x" * n}, use_bin_type=True)
        if len(body) == size:
            return struct.pack(">I", size) + body
    raise AssertionError(f"no frame of {size} bytes")


@pytest.mark.parametrize("max_frame", [300, 70_000])
def test_a_frame_of_exactly_max_frame_bytes_is_taken_and_one_more_is_refused(max_frame: int) -> None:
    ok = frame_of(max_frame)
    assert Decoder(max_frame).feed(ok)[0]["t"] == "msg"
    with pytest.raises(ProtocolError) as ei:
        Decoder(max_frame).feed(frame_of(max_frame + 1))
    assert ei.value.code == FRAME_TOO_LARGE and str(max_frame) in ei.value.msg


def test_the_first_frames_bound_is_for_the_first_frame_only() -> None:
    d = Decoder(100_000, first_max=200)
    assert d.feed(frame_of(200))[0]["t"] == "msg"
    assert len(d.feed(frame_of(50_000) + frame_of(100_000))) == 2  # max_frame from the second frame on
    with pytest.raises(ProtocolError) as ei:
        Decoder(100_000, first_max=200).feed(frame_of(201))
    assert ei.value.code == FRAME_TOO_LARGE and "first frame" in ei.value.msg


def test_the_bytes_held_behind_a_first_frame_may_reach_their_bound_not_pass_it() -> None:
    first = frame_of(100)
    d = Decoder(100_000, first_max=300, hold=True)  # held_max: the first frame's bound, 300 bytes
    assert len(d.feed(first + b"\0" * 300)) == 1 and d.buffered == 300
    with pytest.raises(ProtocolError) as ei:
        d.feed(b"\0")
    assert ei.value.code == FRAME_TOO_LARGE and "300 bytes" in ei.value.msg


def test_a_flat_frame_takes_its_keys_up_to_the_bound_and_no_map_inside() -> None:
    from hsb.wire.framing import BAD_FIELDS, FLAT_KEYS_MAX, encode

    keys = {"t": "msg", **{f"k{i}": i for i in range(FLAT_KEYS_MAX - 1)}}
    assert Decoder(flat=True).feed(encode(keys)) == [keys]
    for bad in ({**keys, "one_more": 0}, {"t": "msg", "data": {}}, {"t": "msg", "data": {"a": 1}}):
        with pytest.raises(ProtocolError) as ei:
            Decoder(flat=True).feed(encode(bad))
        assert ei.value.code == BAD_FIELDS, bad


def test_a_bye_with_a_field_is_found_and_none_behind_a_frame_over_the_maximum() -> None:
    """has_type (a gone connection's unread bytes): a `bye` that carries a field of its own is
    still a bye; one behind a frame longer than max_frame is not read, as feed would refuse
    that frame first."""
    from hsb.wire.framing import encode

    d = Decoder()
    d.first_done()
    assert d.has_type(encode({"t": "bye", "note": "x" * 40}), "bye")
    small = Decoder(max_frame=100)
    small.first_done()
    bye = encode({"t": "bye"})
    assert small.has_type(frame_of(100) + bye, "bye")
    assert not small.has_type(frame_of(101) + bye, "bye")


def test_a_batch_size_is_taken_from_1024_bytes_up_and_only_from_an_integer() -> None:
    from hsb.wire.framing import batch_bytes

    said = {"a": 1024, "b": 1023, "c": True, "d": "4096", "e": 1 << 20}
    assert [batch_bytes(said, k) for k in "abcdef"] == [1024, 0, 0, 0, 1 << 20, 0]


def test_a_texts_size_is_its_utf8_bytes_not_its_characters() -> None:
    from hsb.wire.framing import data_size, encode

    for data in ("é" * 1000, "\U0001f600" * 10, "plain", b"\xff" * 7):
        raw = data.encode() if isinstance(data, str) else data
        assert data_size(data) == len(raw)
        assert len(encode({"d": data})) - len(encode({"d": type(data)()})) >= data_size(data)


@pytest.mark.parametrize("max_frame", [LOGIN_MAX, LOGIN_MAX + 1, 1 << 20])
def test_a_held_link_decodes_its_first_frame_alone_whatever_its_max_frame(max_frame: int) -> None:
    """max_frame may be as small as LOGIN_MAX (the configs' least): an authenticated link's
    Decoder then held nothing, and everything an unvouched peer sent behind its auth frame was
    decoded before the auth was looked at."""
    from hsb.wire.framing import encode

    d = Decoder(max_frame, first_max=LOGIN_MAX, hold=True)
    rest = encode({"t": "hb"}) * 10
    assert d.feed(encode({"t": "auth"}) + rest) == [{"t": "auth"}] and d.buffered == len(rest)
    d.first_done()
    assert d.feed(b"") == [{"t": "hb"}] * 10


def test_a_decoder_that_refused_a_frame_finds_no_bye_after_it() -> None:
    """Past a protocol error nothing more of the connection is read: a bye sent after the bad
    frame is no logoff."""
    from hsb.wire.framing import encode

    d = Decoder()
    with pytest.raises(ProtocolError):
        d.feed(struct.pack(">I", 0))
    assert not d.has_type(encode({"t": "bye"}), "bye")


def test_http_where_a_frame_is_wanted_is_named_as_http() -> None:
    """An HTTP response read as a frame (a client pointed at a daemon's http_listen) and an HTTP
    request (curl at a terminal, host or admin port) are said as what they are, with the fix;
    their first four letters read as a length of about a gigabyte said nothing of the kind."""
    for data, said in ((b"HTTP/1.0 404 Not Found\r\n\r\n", "HTTP response"), (b"GET /health HTTP/1.0\r\n\r\n", "HTTP request")):
        for first in (None, LOGIN_MAX):
            with pytest.raises(ProtocolError) as exc:
                Decoder(first_max=first).feed(data)
            assert exc.value.code == FRAME_TOO_LARGE and said in exc.value.msg and "http_listen" in exc.value.msg, exc.value.msg
    # a frame too large that is not HTTP is not taken for it
    with pytest.raises(ProtocolError) as plain:
        Decoder().feed(struct.pack(">I", 0x7FFFFFFF) + b"x" * 8)
    assert "HTTP" not in plain.value.msg, plain.value.msg


def test_hsbterm_at_a_cps_http_port_and_curl_at_its_terminal_port_are_told_http(tmp_path: Path) -> None:
    """Real processes: hsbterm connect given the CP's http_listen, and an HTTP request at its
    terminal_listen: each side's line names HTTP and the port to use."""
    import socket
    import subprocess
    import sys

    from hsb.ports import free_port
    from tests.support.procs import start_cp, wait_for

    http = f"127.0.0.1:{free_port()}"
    cp = start_cp(tmp_path, terminals=2, http_listen=http)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "hsb.term", "connect", "T00001", "--cp", http],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0 and "bytes of an HTTP response" in r.stdout + r.stderr, (r.returncode, r.stdout, r.stderr)
        h, p = cp.info["terminal"].rsplit(":", 1)
        with socket.create_connection((h, int(p))) as s:
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            said = wait_for(lambda: cp.events("protocol_error"), 10, what="the CP's protocol_error")
        assert "bytes of an HTTP request" in said[-1]["msg"] and "http_listen" in said[-1]["msg"], said
    finally:
        cp.stop()
