"""Tickle ACKs (hsb.cp.tickle): the tickle list a serving CP writes, the list a CP taking over
reads, and a real tickle through a raw socket resetting a connection whose far end vanished
without a word (the terminal of a CP machine that was cut off)."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
import struct
import time
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.cp import tickle
from hsb.cp.tickle import TickleList, list_name, previous_list, send_tickles, tickle_segment

pytestmark = pytest.mark.timeout(30)


def _sum16(data: bytes) -> int:
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


@settings(max_examples=300, deadline=None)
@given(
    v6=st.booleans(),
    a=st.binary(min_size=16, max_size=16),
    b=st.binary(min_size=16, max_size=16),
    sport=st.integers(1, 65535),
    dport=st.integers(1, 65535),
)
def test_a_tickle_is_a_bare_ack_with_sequence_zero_and_a_valid_checksum(v6: bool, a: bytes, b: bytes, sport: int, dport: int) -> None:
    src, dst = (str(ipaddress.ip_address(x if v6 else x[:4])) for x in (a, b))
    seg = tickle_segment(src, sport, dst, dport)
    got_sport, got_dport, seq, ack, off, flags, _win, _csum, urg = struct.unpack("!HHIIBBHHH", seg)
    assert (got_sport, got_dport, seq, ack, off >> 4, flags, urg, len(seg)) == (sport, dport, 0, 0, 5, 0x10, 0, 20)
    ia, ib = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if ia.version == 4:
        pseudo = ia.packed + ib.packed + struct.pack("!BBH", 0, 6, 20)
    else:
        pseudo = ia.packed + ib.packed + struct.pack("!I3xB", 20, 6)
    assert _sum16(pseudo + seg) == 0xFFFF  # the receiver's check: the one's complement sum is all ones


async def _until(pred: object, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_the_list_is_written_when_it_changed_and_read_by_the_next_generation(tmp_path: Path) -> None:
    tl = TickleList(tmp_path, 3)
    tl.tick(time.monotonic())  # a new CP writes its (empty) list at once: no older list is tickled twice
    await _until(lambda: tl.written == 1, "the empty list written")
    assert msgpack.unpackb((tmp_path / list_name(3)).read_bytes())["conns"] == []
    a, b = object(), object()
    tl.opened(a, ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.opened(b, ("10.0.0.9", 7000), ("10.1.0.6", 40002, 0, 0))
    tl.opened(object(), None, ("10.1.0.7", 1))  # no address (a unix socket, say): not listed
    tl.named(b, "T00002")  # its hello came
    tl.named(object(), "T00003")  # not a listed connection: nothing
    tl.tick(time.monotonic() + tickle.WRITE_EVERY_S)
    await _until(lambda: tl.written == 2, "the first list written")
    tl.closed(a)
    tl.tick(time.monotonic() + tickle.WRITE_EVERY_S)  # changed, but written less than a second ago: not yet
    assert not tl.writing and tl.changed
    tl.tick(time.monotonic() + 2 * tickle.WRITE_EVERY_S)
    await _until(lambda: tl.written == 3, "the second list written")
    tl.tick(time.monotonic() + 10)  # unchanged: nothing written
    assert not tl.writing and tl.written == 3
    assert tl.status() == {"connections": 1, "listed": 1, "lists_written": 3, "error": None}
    tl.close()
    (tmp_path / list_name(1)).write_bytes(msgpack.packb({"v": 1, "conns": [["10.0.0.9", 7000, "10.9.9.9", 1]]}))
    (tmp_path / (list_name(1) + ".tmp")).write_bytes(b"half written")
    (tmp_path / list_name(2)).write_bytes(b"\x93 damaged")
    (tmp_path / list_name(5)).write_bytes(msgpack.packb({"v": 1, "conns": []}))  # newer than the reader: not its predecessor
    gen, conns, here = previous_list(tmp_path, 5)
    assert (gen, conns) == (3, [("10.0.0.9", 7000, "10.1.0.6", 40002, "T00002")])
    assert here  # written in this network namespace: its kernel reset these itself
    # the older, the damaged and the half-written one are gone
    assert sorted(os.listdir(tmp_path)) == [list_name(3), list_name(5)]
    doc = msgpack.unpackb((tmp_path / list_name(3)).read_bytes())
    doc["origin"] = "another-machine:1"
    doc["conns"] += [
        ["10.0.0.9", 7000, "10.1.0.7", 70000],  # no such port
        ["10.0.0.9", float("inf"), "10.1.0.7", 1],
        ["10.0.0.9", 7000, "fd00::7", 1],  # two families
        ["not an address", 7000, "10.1.0.7", 1],
        ["10.0.0.9", 7000],
        "a string",
        ["::ffff:10.0.0.9", 7000, "::ffff:10.1.0.8", 40003],  # a dual-stack listener's view: IPv4; no name
    ]
    (tmp_path / list_name(3)).write_bytes(msgpack.packb(doc))
    assert previous_list(tmp_path, 5) == (3, [("10.0.0.9", 7000, "10.1.0.6", 40002, "T00002"), ("10.0.0.9", 7000, "10.1.0.8", 40003, "")], False)
    assert previous_list(tmp_path, 3) == (0, [], False)
    (tmp_path / list_name(4)).mkdir()  # cannot be read now (as NFS's ESTALE): skipped, not deleted
    assert previous_list(tmp_path, 5)[0] == 3 and (tmp_path / list_name(4)).is_dir()


def test_only_named_terminals_not_back_are_tickled_again() -> None:
    class T:
        def __init__(self, conn: object) -> None:
            self.conn = conn

    terms = {"T1": T(None), "T2": T(object()), "T3": T(None)}
    conns = [
        ("10.0.0.9", 7000, "10.1.0.1", 1, "T1"),  # not back: again
        ("10.0.0.9", 7000, "10.1.0.2", 2, "T2"),  # back
        ("10.0.0.9", 7000, "10.1.0.3", 3, ""),  # never said who it was
        ("10.0.0.9", 7000, "10.1.0.4", 4, "T9"),  # not this CP's terminal (any more)
        ("10.0.0.9", 7000, "10.1.0.5", 5, "T3"),
    ]
    assert tickle.not_back(conns, terms) == [conns[0], conns[4]]


def _raw_reason() -> str | None:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP).close()
    except PermissionError:
        return "needs CAP_NET_RAW (root) to send a tickle ACK through a raw socket"
    return None


@pytest.mark.skipif(_raw_reason() is not None, reason=_raw_reason() or "")
@pytest.mark.parametrize("family", ["ipv4", "ipv6", "dual-stack"])
def test_a_tickle_resets_a_connection_whose_far_end_vanished_silently(family: str) -> None:
    where = {"ipv4": ("127.0.0.1", "127.0.0.1"), "ipv6": ("::1", "::1"), "dual-stack": ("::", "127.0.0.1")}[family]
    fam = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    try:
        srv = socket.create_server((where[0], 0), family=fam, dualstack_ipv6=family == "dual-stack")
    except OSError as exc:
        pytest.skip(f"no {family} listener on loopback here: {exc}")
    cli = socket.create_connection((where[1], srv.getsockname()[1]))
    conn, _ = srv.accept()
    TCP_REPAIR = 19  # close without a FIN or a reset: the far end vanishes as a machine cut off does
    try:
        conn.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, 1)
    except OSError as exc:
        pytest.skip(f"needs TCP_REPAIR (CAP_NET_ADMIN) to close a socket silently: {exc}")
    local, peer = conn.getsockname(), conn.getpeername()  # as TerminalProtocol records them
    conn.close()
    cli.setblocking(False)
    with pytest.raises(BlockingIOError):  # the terminal's side knows nothing yet
        cli.recv(1)
    entry = tickle._entry([local[0], local[1], peer[0], peer[1]])  # as previous_list reads them
    assert entry is not None
    sent, failed, why = send_tickles([entry])
    assert (sent, failed, why) == (1, 0, None)
    deadline = time.monotonic() + 5
    while True:
        try:
            cli.recv(1)
        except BlockingIOError:
            assert time.monotonic() < deadline, "no reset after the tickle"
            time.sleep(0.01)
            continue
        except ConnectionResetError as exc:
            assert exc.errno == errno.ECONNRESET
            break
        pytest.fail("the connection ended without a reset")
    cli.close()
    srv.close()


def test_without_a_raw_socket_every_tickle_fails_and_they_are_paced(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(family: int) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(tickle, "raw_socket", refuse)
    sent, failed, why = send_tickles([("10.0.0.9", 7000, "10.1.0.5", 1, "T00001"), ("10.0.0.9", 7000, "10.1.0.6", 2, "T00002")])
    assert (sent, failed) == (0, 2) and why is not None and "raw socket from 10.0.0.9" in why and "not permitted" in why
    n = 3 * tickle.TICKLE_BATCH
    t0 = time.monotonic()
    assert send_tickles([("10.0.0.9", 7000, "10.1.0.5", 1, "T00001")] * n, per_s=n / 0.3)[1] == n
    assert time.monotonic() - t0 >= 0.2  # 2 of 3 batches waited for their turn: no burst
