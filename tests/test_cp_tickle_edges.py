"""Edges of hsb.cp.tickle that tests/test_cp_tickle.py let through: each test here failed on a
mutant of the module (a flipped comparison, a dropped condition or statement) that the others
passed. All in-process: the raw sockets are fakes."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest
import structlog

from hsb.cp import tickle
from hsb.cp.tickle import TickleList, list_name, previous_list, send_tickles, tickle_segment

pytestmark = pytest.mark.timeout(30)


async def _until(pred: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def _conns(d: Path, gen: int = 3) -> list[Any]:
    return list(msgpack.unpackb((d / list_name(gen)).read_bytes())["conns"])


# -- the list a serving CP writes ---------------------------------------------------------------


def test_a_lists_file_is_named_with_eight_digits_of_generation() -> None:
    """docs/cp-journal.md names it `tickle-GGGGGGGG` (mutant: `{gen}` without the padding)."""
    assert list_name(3) == "tickle-00000003"
    assert list_name(123456789) == "tickle-123456789"


async def test_a_connection_opened_alone_is_written(tmp_path: Path) -> None:
    """A connection opened (no hello yet, nothing else changed) makes the list changed: it is
    written at the next tick a second on (mutant: `opened` not setting `changed`)."""
    tl = TickleList(tmp_path, 3)
    tl.tick(100.0)
    await _until(lambda: tl.written == 1, "the empty list written")
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(100.0 + tickle.WRITE_EVERY_S)
    await _until(lambda: tl.written == 2, "the list with the new connection written")
    assert _conns(tmp_path) == [["10.0.0.9", 7000, "10.1.0.5", 40001, ""]]
    tl.close()


async def test_the_list_may_be_written_again_exactly_a_second_later(tmp_path: Path) -> None:
    """At most once a second: a second after the last write is soon enough (mutant: `<=`)."""
    tl = TickleList(tmp_path, 3)
    tl.tick(100.0)
    await _until(lambda: tl.written == 1, "the empty list written")
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(100.0 + tickle.WRITE_EVERY_S)
    assert tl.writing, "not written a second after the last write"
    await _until(lambda: tl.written == 2, "the list written")
    tl.close()


def test_an_address_that_is_too_short_is_not_listed(tmp_path: Path) -> None:
    """A transport whose sockname or peername is a tuple of fewer than two items is passed over,
    not an IndexError in connection_made (mutant: the length checks dropped)."""
    tl = TickleList(tmp_path, 3)
    tl.opened(object(), ("10.0.0.9",), ("10.1.0.5", 40001))
    tl.opened(object(), ("10.0.0.9", 7000), ())
    tl.opened(object(), ("10.0.0.9", 7000), None)  # (mutant: the peer's type not checked: len(None))
    assert tl.status()["connections"] == 0


async def test_status_counts_connections_served_apart_from_those_listed(tmp_path: Path) -> None:
    """`connections` is what the CP serves now, `listed` what the last list written held
    (mutant: `connections` reporting `listed`)."""
    tl = TickleList(tmp_path, 3)
    tl.tick(100.0)
    await _until(lambda: tl.written == 1, "the empty list written")
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.6", 40002))
    assert tl.status() == {"connections": 2, "listed": 0, "lists_written": 1, "error": None}
    tl.close()


async def test_one_write_at_a_time_and_each_writes_the_list_as_it_was_at_its_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a write is out, a tick starts no other (mutant: the `writing` check dropped), and a
    connection opened meanwhile is not in the list being written: the writer has a copy, not
    the loop's dict (mutant: `self.conns.values()` handed to the thread)."""
    go = threading.Event()
    calls = []

    def slow_origin() -> str:  # called by the writer's thread: holds the write until `go`
        calls.append(1)
        assert go.wait(10)
        return "here:1"

    monkeypatch.setattr(tickle, "origin", slow_origin)
    tl = TickleList(tmp_path, 3)
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(100.0)
    await _until(lambda: calls, "the write started")
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.6", 40002))
    tl.tick(200.0)  # changed and long enough ago, but the first write is still out
    go.set()
    await _until(lambda: tl.written >= 1 and not tl.writing, "the first list written")
    await asyncio.sleep(0)
    assert len(calls) == 1 and tl.written == 1, "a second write started while one was out"
    assert _conns(tmp_path) == [["10.0.0.9", 7000, "10.1.0.5", 40001, ""]]
    assert tl.status()["listed"] == 1 and tl.changed
    tl.tick(300.0)  # and the connection opened meanwhile goes in the next one
    await _until(lambda: tl.written == 2, "the second list written")
    assert len(_conns(tmp_path)) == 2
    tl.close()


async def test_a_failing_write_is_logged_once_not_at_each_retry(tmp_path: Path) -> None:
    """`tickle_list_write_failed` at the first failure only, not at each retry (mutant: the
    `write_error is None` test flipped, which logged the second failure and not the first)."""
    d = tmp_path / "j"  # (not there: each write fails)
    tl = TickleList(d, 3)
    with structlog.testing.capture_logs() as logs:
        tl.tick(100.0)
        await _until(lambda: not tl.writing, "the first write tried")
        assert [e["event"] for e in logs] == ["tickle_list_write_failed"], "the first failure not told"
        for at in (200.0, 300.0):
            tl.tick(at)
            assert tl.writing
            await _until(lambda: not tl.writing, "the write tried again")
    assert tl.written == 0 and tl.write_error is not None
    assert [e["event"] for e in logs] == ["tickle_list_write_failed"], "a failure told again"
    tl.close()


# -- the list a CP taking over reads ------------------------------------------------------------


def test_origin_tells_network_namespaces_of_one_kernel_apart() -> None:
    """A list written in another network namespace of this kernel (the lab's two CP machines,
    containers) is not this one's: its connections were not reset here (mutant: the origin
    only the boot id)."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1) here")
    here = tickle.origin()
    assert here, "no /proc here"
    code = "from hsb.cp.tickle import origin; print(origin())"
    env = {**os.environ, "PYTHONPATH": str(Path(tickle.__file__).parents[2])}
    r = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=20)
    if r.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {r.stderr.strip()[-200:]}")
    there = r.stdout.strip()
    assert there and there != here
    assert there.split(":")[0] == here.split(":")[0]  # the same kernel


def test_other_files_of_the_journal_directory_are_not_taken_for_lists(tmp_path: Path) -> None:
    """`gen-00000001` reads as a name of seven characters and digits: it is not a tickle list,
    nor deleted as a damaged one (mutant: the `tickle-` prefix not checked)."""
    for name in ("gen-00000001", "gen-00000002", "seg-00000001-00000001.hsbj"):
        (tmp_path / name).write_text("host 1 2\n")
    doc = {"v": 1, "origin": "elsewhere:1", "conns": [["10.0.0.9", 7000, "10.1.0.5", 40001, "T1"]]}
    (tmp_path / list_name(1)).write_bytes(msgpack.packb(doc))
    assert previous_list(tmp_path, 3) == (1, [("10.0.0.9", 7000, "10.1.0.5", 40001, "T1")], False)
    assert sorted(os.listdir(tmp_path)) == sorted(["gen-00000001", "gen-00000002", "seg-00000001-00000001.hsbj", list_name(1)])


def test_half_written_lists_of_this_or_a_later_generation_are_left_alone(tmp_path: Path) -> None:
    """Only an older generation's `.tmp` is a dead writer's: this CP's own list (its TickleList
    writes at once) and a later CP's are being written (mutants: `g < own` dropped or `<=`)."""
    for g in (2, 3, 4):
        (tmp_path / (list_name(g) + ".tmp")).write_bytes(b"half")
    assert previous_list(tmp_path, 3) == (0, [], False)
    assert sorted(os.listdir(tmp_path)) == [list_name(3) + ".tmp", list_name(4) + ".tmp"]


def test_a_damaged_newest_list_is_deleted_and_the_one_before_it_read(tmp_path: Path) -> None:
    """The newest older list damaged: it is deleted with a warning, and the next older one is
    the predecessor (mutants: the damaged one kept; the search given up on it)."""
    doc = {"v": 1, "origin": "elsewhere:1", "conns": [["10.0.0.9", 7000, "10.1.0.5", 40001, "T1"]]}
    (tmp_path / list_name(3)).write_bytes(msgpack.packb(doc))
    (tmp_path / list_name(4)).write_bytes(b"\x93 damaged")
    with structlog.testing.capture_logs() as logs:
        assert previous_list(tmp_path, 5) == (3, [("10.0.0.9", 7000, "10.1.0.5", 40001, "T1")], False)
    assert [e["event"] for e in logs] == ["tickle_list_unreadable"]
    assert os.listdir(tmp_path) == [list_name(3)]


def test_an_empty_newest_list_is_the_predecessor_and_the_older_ones_are_deleted(tmp_path: Path) -> None:
    """The CP before wrote its empty list at once, precisely so that the list of the one before
    it is not tickled again: that empty list is the predecessor (mutant: the search going on
    while the list found is empty, which tickled the older list's connections)."""
    old = {"v": 1, "origin": "elsewhere:1", "conns": [["10.0.0.9", 7000, "10.1.0.5", 40001, "T1"]]}
    (tmp_path / list_name(1)).write_bytes(msgpack.packb(old))
    (tmp_path / list_name(2)).write_bytes(msgpack.packb({"v": 1, "origin": "elsewhere:2", "conns": []}))
    assert previous_list(tmp_path, 3) == (2, [], False)
    assert os.listdir(tmp_path) == [list_name(2)]


def test_a_generation_of_eight_digits_or_more_is_read_whole(tmp_path: Path) -> None:
    """The generation is every digit after `tickle-` (mutant: the first one skipped, which is
    a padding zero only below 10,000,000)."""
    for gen in (12_345_678, 123_456_789):
        (tmp_path / list_name(gen)).write_bytes(msgpack.packb({"v": 1, "conns": [["10.0.0.9", 7000, "10.1.0.5", 1]]}))
        assert previous_list(tmp_path, gen + 1)[0] == gen


@pytest.mark.parametrize(
    ("entry", "want"),
    [
        (["10.0.0.9", 0, "10.1.0.5", 1], None),  # no such ports
        (["10.0.0.9", 70000, "10.1.0.5", 1], None),
        (["10.0.0.9", 7000, "10.1.0.5", 0], None),
        (["10.0.0.9", 65535, "10.1.0.5", 65535], ("10.0.0.9", 65535, "10.1.0.5", 65535, "")),  # the highest
        (["10.0.0.9", 1, "10.1.0.5", 1, "T1"], ("10.0.0.9", 1, "10.1.0.5", 1, "T1")),
        (["::ffff:1", 7000, "fd00::5", 1], ("::ffff:1", 7000, "fd00::5", 1, "")),  # IPv6, not a mapped IPv4
        (["::ffff:10.0.0.9", 7000, "::ffff:10.1.0.5", 1], ("10.0.0.9", 7000, "10.1.0.5", 1, "")),
    ],
)
def test_an_entrys_ports_and_addresses_are_checked(entry: list[Any], want: Any) -> None:
    """Ports 1-65535 both (mutants: the CP port not checked, 65535 refused, port 0 taken);
    `::ffff:` is a mapped IPv4 address only when an IPv4 address follows (mutant: `::ffff:1`
    cut to `1` and the entry dropped)."""
    assert tickle._entry(entry) == want


# -- the tickle itself ---------------------------------------------------------------------------


@pytest.mark.parametrize("sport", [43779, 43780, 43781, 65535])
def test_a_checksum_whose_sum_carries_twice_is_folded_twice(sport: int) -> None:
    """All-ones IPv6 addresses and these ports make a sum whose first fold carries again: the
    checksum is still right (mutant: `_fold` folding once)."""
    src = dst = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    seg = tickle_segment(src, sport, dst, 65535)
    pseudo = socket.inet_pton(socket.AF_INET6, src) * 2 + struct.pack("!I3xB", 20, 6)
    data = pseudo + seg
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    assert s == 0xFFFF


class _FakeRaw:
    """A raw socket that records what it is asked to do."""

    made: list[_FakeRaw] = []
    bind_fails: set[str] = set()
    send_fails: set[str] = set()

    def __init__(self, family: int) -> None:
        self.family = family
        self.bound: Any = None
        self.sent: list[tuple[bytes, Any]] = []
        self.closed = False
        _FakeRaw.made.append(self)

    def bind(self, addr: Any) -> None:
        if addr[0] in _FakeRaw.bind_fails:
            raise OSError(99, "Cannot assign requested address")
        self.bound = addr

    def sendto(self, data: bytes, addr: Any) -> int:
        if addr[0] in _FakeRaw.send_fails:
            raise OSError(101, f"Network is unreachable ({addr[0]})")
        self.sent.append((data, addr))
        return len(data)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake_raw(monkeypatch: pytest.MonkeyPatch) -> type[_FakeRaw]:
    _FakeRaw.made, _FakeRaw.bind_fails, _FakeRaw.send_fails = [], set(), set()
    monkeypatch.setattr(tickle, "raw_socket", _FakeRaw)
    return _FakeRaw


def test_one_raw_socket_per_cp_address_bound_to_it_and_closed(fake_raw: type[_FakeRaw]) -> None:
    """Each CP address gets one raw socket, bound to it (the tickles' source), used for all its
    connections and closed at the end (mutants: a socket per tickle, left open; no bind; the
    socket not kept; not closed)."""
    conns = [
        ("10.0.0.9", 7000, "10.1.0.5", 1, "T1"),
        ("10.0.0.9", 7000, "10.1.0.6", 2, "T2"),
        ("fd00::9", 7000, "fd00::1:5", 3, "T3"),
        ("10.0.0.9", 7001, "10.1.0.7", 4, "T4"),
    ]
    assert send_tickles(conns) == (4, 0, None)
    assert [(s.family, s.bound, len(s.sent), s.closed) for s in fake_raw.made] == [
        (socket.AF_INET, ("10.0.0.9", 0), 3, True),
        (socket.AF_INET6, ("fd00::9", 0), 1, True),
    ]
    assert fake_raw.made[0].sent[1] == (tickle_segment("10.0.0.9", 7000, "10.1.0.6", 2), ("10.1.0.6", 0))


def test_a_socket_that_cannot_be_bound_is_closed_and_its_tickles_fail(fake_raw: type[_FakeRaw]) -> None:
    """A CP address not (yet) this machine's: its socket is closed, each of its tickles fails,
    and the first failure is the one told (mutants: not closed; the reason overwritten)."""
    fake_raw.bind_fails = {"10.0.0.9", "10.0.0.8"}
    conns = [
        ("10.0.0.9", 7000, "10.1.0.5", 1, ""),
        ("10.0.0.8", 7000, "10.1.0.6", 2, ""),
        ("10.0.0.9", 7000, "10.1.0.7", 3, ""),
        ("10.0.0.7", 7000, "10.1.0.8", 4, ""),
    ]
    sent, failed, why = send_tickles(conns)
    assert (sent, failed) == (1, 3)
    assert why is not None and why.startswith("raw socket from 10.0.0.9:")
    assert len(fake_raw.made) == 3 and all(s.closed for s in fake_raw.made)


def test_a_tickle_that_cannot_be_sent_is_counted_failed_and_the_first_reason_told(fake_raw: type[_FakeRaw]) -> None:
    """A send refused counts as failed, and `why` is the first such failure (mutants: the
    failure not counted; a later one overwriting it)."""
    fake_raw.send_fails = {"10.1.0.5", "10.1.0.7"}
    conns = [
        ("10.0.0.9", 7000, "10.1.0.5", 1, ""),
        ("10.0.0.9", 7000, "10.1.0.6", 2, ""),
        ("10.0.0.9", 7000, "10.1.0.7", 3, ""),
    ]
    sent, failed, why = send_tickles(conns)
    assert (sent, failed) == (1, 2)
    assert why is not None and why.startswith("to 10.1.0.5:1:")


def test_fewer_tickles_than_a_batch_go_out_at_once(fake_raw: type[_FakeRaw]) -> None:
    """Pacing is by batches: a hundred tickles at 50 a second still go out without a wait
    (mutant: a batch of one, which spaced them over two seconds)."""
    conns = [("10.0.0.9", 7000, "10.1.0.5", 1 + k, "") for k in range(100)]
    t0 = time.monotonic()
    assert send_tickles(conns, per_s=50.0) == (100, 0, None)
    assert time.monotonic() - t0 < 1.0


async def test_a_connection_named_alone_is_written_with_its_name(tmp_path: Path) -> None:
    """A hello on a listed connection (nothing else changed) makes the list changed: the next
    list names the terminal, so the next CP can resend to it if it is not back (mutant: `named`
    not setting `changed`)."""
    tl = TickleList(tmp_path, 3)
    key = object()
    tl.opened(key, ("10.0.0.9", 7000), ("10.1.0.5", 40001))
    tl.tick(100.0)
    await _until(lambda: tl.written == 1, "the list with the unnamed connection written")
    assert _conns(tmp_path) == [["10.0.0.9", 7000, "10.1.0.5", 40001, ""]]
    tl.named(key, "T00001")
    tl.tick(100.0 + tickle.WRITE_EVERY_S)
    await _until(lambda: tl.written == 2, "the list with the name written")
    assert _conns(tmp_path) == [["10.0.0.9", 7000, "10.1.0.5", 40001, "T00001"]]
    tl.close()
