"""hsbterm load: acknowledged/answered id ranges (`record_ids`, `--ids-out`), exit status 2 when
nothing connected, and closed-loop load (each terminal keeps a window outstanding)."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from hsb.term.load import run_load, terminal_names
from hsb.term.report import LoadReport, format_table
from hsb.term.verdict import ACKED, REPLY_ONE, SENT, count_ranges, id_ranges, ids, ranges_of
from tests.support.fakecp import FakeConn, FakeCP, free_port, reap, spawn
from tests.support.hostclient import FakeHost
from tests.support.procs import Proc, addr, start_cp

pytestmark = pytest.mark.timeout(60)


def to_ranges(ids: list[int], step: int = 1) -> list[list[int]]:
    """Reference: sorted distinct ids -> merged inclusive ranges of ids `step` apart."""
    out: list[list[int]] = []
    for i in sorted(set(ids)):
        if out and out[-1][1] == i - step:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


def journal(fake: FakeCP) -> dict[str, list[int]]:
    """The ids the fake CP acknowledged (and delivered), per terminal."""
    per: dict[str, list[int]] = defaultdict(list)
    for name, mid in fake.deliveries:
        per[name].append(mid)
    return per


# --------------------------------------------------------------------------- pure


def test_id_ranges_from_marks() -> None:
    A, R = SENT | ACKED, SENT | ACKED | REPLY_ONE
    marks = bytearray([R, R, A, R, SENT, SENT, R, R, R | REPLY_ONE, A])
    got = id_ranges(marks, base=100)
    assert got == {"acked": [[100, 103], [106, 109]], "replied": [[100, 101], [103, 103], [106, 108]], "step": 1}
    # a terminal of a load run: its ids are `step` apart (its own sequence among the run's terminals)
    got = id_ranges(marks, base=100, step=7)
    assert got["acked"] == [[100, 121], [142, 163]] and got["step"] == 7
    assert list(ids(got["replied"], 7)) == [100, 107, 121, 142, 149, 156]
    assert count_ranges(got["acked"], 7) == 8 and count_ranges(got["replied"], 7) == 6
    assert id_ranges(b"", base=5) == {"acked": [], "replied": [], "step": 1}
    assert ranges_of(b"\x01" * 5, 1) == [[1, 5]]
    assert to_ranges([7, 3, 4, 5, 9, 8]) == [[3, 5], [7, 9]]


def test_report_ids_left_out_of_to_dict_unless_asked() -> None:
    r = LoadReport(terminals=1, welcomed=1, ids={"T1": {"acked": [[1, 2]], "replied": [[1, 2]], "step": 1}})
    assert "ids" not in r.to_dict()
    assert r.to_dict(include_ids=True)["ids"] == {"T1": {"acked": [[1, 2]], "replied": [[1, 2]], "step": 1}}
    assert r.ids is not None  # to_dict does not consume it


def test_nothing_welcomed_is_not_green() -> None:
    r = LoadReport(terminals=3, welcomed=0)
    assert not r.connected and not r.ok and r.exit_status == 2
    assert "no terminal was ever welcomed" in format_table(r)
    assert r.to_dict()["exit_status"] == 2
    assert LoadReport(terminals=0).exit_status == 1  # no terminals: nothing to reach, and nothing proven (a failure, not unreachable)
    lossy = LoadReport(terminals=3, welcomed=3, sent=5, acked=5, replied=4, lost=1)
    assert lossy.exit_status == 1


# --------------------------------------------------------------------------- against a fake CP


async def test_record_ids_match_the_cp_journal(fake: FakeCP) -> None:
    fake.lose = lambda name, seq: name == "T00002" and seq in (2, 3, 7)
    r = await run_load(("127.0.0.1", fake.port), terminals=4, rate=200, duration=0.6, settle=0.5, record_ids=True)
    assert r.lost == 3 and r.ids is not None
    assert set(r.ids) == set(terminal_names(4))
    acked_journal = journal(fake)
    for name, rng in r.ids.items():
        assert rng["step"] == 4  # each of the 4 terminals has its own ids
        assert rng["acked"] == to_ranges(acked_journal[name], 4), name
        # The fake acks every id it gets, and ids are consecutive: one range per terminal.
        assert len(rng["acked"]) == 1
    t2 = r.ids["T00002"]
    first = t2["acked"][0][0]
    lost = {first + 2 * 4, first + 3 * 4, first + 7 * 4}
    assert t2["replied"] == to_ranges([i for i in acked_journal["T00002"] if i not in lost], 4)
    assert sum(count_ranges(v["replied"], 4) for v in r.ids.values()) == r.replied
    assert sum(count_ranges(v["acked"], 4) for v in r.ids.values()) == r.acked
    assert "ids" not in r.to_dict()
    json.dumps(r.to_dict(include_ids=True))


async def test_no_ids_unless_asked(fake: FakeCP) -> None:
    r = await run_load(("127.0.0.1", fake.port), terminals=2, rate=50, duration=0.2, settle=2)
    assert r.ids is None and r.ok


async def test_unacked_ids_are_not_in_acked_ranges() -> None:
    class NoAckAfter(FakeCP):
        """Acknowledges (and answers) only a terminal's first 3 messages; the rest are ignored."""

        def handle(self, conn: FakeConn, m: dict[str, Any]) -> None:
            if m["t"] == "msg" and conn.term is not None and self.seq(conn.term, m["id"]) >= 3:
                return
            super().handle(conn, m)

    cp = NoAckAfter()
    await cp.start()
    try:
        r = await run_load(("127.0.0.1", cp.port), terminals=2, rate=100, duration=0.4, settle=0.3, record_ids=True)
    finally:
        await cp.stop()
    assert r.unacked > 0 and r.ids is not None
    assert not r.ok and r.exit_status == 1  # never acknowledged: a broken promise
    for name, rng in r.ids.items():
        assert rng["acked"] == rng["replied"] == to_ranges(journal(cp)[name], 2)
        assert count_ranges(rng["acked"], 2) == 3


async def test_run_that_reaches_nothing_exits_2() -> None:
    r = await run_load(("127.0.0.1", free_port()), terminals=3, rate=10, duration=0.1, settle=0.1, connect_timeout=0.3)
    assert r.welcomed == 0 and r.connect_failures > 0 and r.sent == 0
    assert not r.ok and r.exit_status == 2


async def test_closed_loop_keeps_the_window_full() -> None:
    class Tracking(FakeCP):
        max_held: int = 0

        def handle(self, conn: FakeConn, m: dict[str, Any]) -> None:
            super().handle(conn, m)
            if conn.term is not None:
                self.max_held = max(self.max_held, len(conn.term.held))

    cp = Tracking(reply_delay=0.02)
    await cp.start()
    try:
        r = await run_load(("127.0.0.1", cp.port), terminals=5, rate=0, duration=1.0, settle=3, window=4, closed_loop=True)
    finally:
        await cp.stop()
    assert r.ok and r.closed_loop and r.window == 4 and r.rate == 0
    assert r.replied == r.sent == r.acked
    assert cp.max_held == 4  # never more than the window outstanding, and the window was used
    # 5 terminals x 4 outstanding / 20 ms per reply = about 1,000 replies/s; allow a slow machine.
    assert 300 <= r.reply_rate <= 1100, r.reply_rate
    per_term = [len(v) for v in journal(cp).values()]
    assert len(per_term) == 5 and max(per_term) - min(per_term) <= 8
    assert "closed loop (window 4)" in format_table(r)
    with pytest.raises(ValueError):
        await run_load(("127.0.0.1", cp.port), terminals=1, rate=0, duration=0.1, window=0, closed_loop=True)


# --------------------------------------------------------------------------- CLI


async def test_cli_ids_out(fake: FakeCP, tmp_path: Path) -> None:
    fake.lose = lambda name, seq: name == "T00001" and seq == 1
    out_file = tmp_path / "ids.json"
    proc = await spawn(
        "load",
        "--cp",
        f"127.0.0.1:{fake.port}",
        "-n",
        "3",
        "--rate",
        "90",
        "--duration",
        "0.5",
        "--settle",
        "0.5",
        "--ids-out",
        str(out_file),
        "--json",
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await reap(proc)
    assert proc.returncode == 1, err.decode()  # the lost message still fails the run
    d = json.loads(out)
    assert "ids" not in d and d["lost"] == 1
    got = json.loads(out_file.read_text())
    assert set(got) == set(terminal_names(3))
    jr = journal(fake)
    for name, rng in got.items():
        assert rng["acked"] == to_ranges(jr[name], 3)
    first = got["T00001"]["acked"][0][0]
    assert got["T00001"]["replied"] == to_ranges([i for i in jr["T00001"] if i != first + 3], 3)


async def test_cli_exits_2_when_nothing_connects(tmp_path: Path) -> None:
    out_file = tmp_path / "ids.json"
    proc = await spawn(
        "load",
        "--cp",
        f"127.0.0.1:{free_port()}",
        "-n",
        "2",
        "--rate",
        "10",
        "--duration",
        "0.1",
        "--settle",
        "0.1",
        "--connect-timeout",
        "0.3",
        "--json",
        "--ids-out",
        str(out_file),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await reap(proc)
    assert proc.returncode == 2, (out, err)
    d = json.loads(out)
    assert d["welcomed"] == 0 and d["ok"] is False and d["exit_status"] == 2
    assert b"no terminal was ever welcomed" in err
    assert json.loads(out_file.read_text()) == {n: {"acked": [], "replied": [], "step": 2} for n in terminal_names(2)}


async def test_cli_exits_2_when_every_terminal_is_refused() -> None:
    cp = FakeCP(known={"OTHER"})
    await cp.start()
    proc = await spawn(
        "load", "--cp", f"127.0.0.1:{cp.port}", "-n", "2", "--rate", "10", "--duration", "0.1", "--settle", "0.1", "--connect-timeout", "0.5"
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await reap(proc)
        await cp.stop()
    assert proc.returncode == 2, (out, err)
    assert "unknown_terminal" in out.decode() and "no terminal was ever welcomed" in out.decode()


async def test_cli_closed_loop_and_rate_usage(fake: FakeCP) -> None:
    proc = await spawn("load", "--cp", f"127.0.0.1:{fake.port}", "-n", "2", "--closed-loop", "--window", "2", "--duration", "0.3", "--json")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await reap(proc)
    assert proc.returncode == 0, err.decode()
    d = json.loads(out)
    assert d["closed_loop"] is True and d["reply_rate"] > 0 and d["replied"] == d["sent"] > 0
    proc = await spawn("load", "--cp", f"127.0.0.1:{fake.port}", "-n", "2", "--duration", "0.3")
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await reap(proc)
    assert proc.returncode == 2 and b"--rate is required" in err


# --------------------------------------------------------------------------- against hsbcpd


@pytest.fixture
def cp(tmp_path):  # type: ignore[no-untyped-def]
    proc = start_cp(tmp_path / "cp", terminals=6, host_timeout=2.0)
    yield proc
    proc.stop()


async def test_ids_match_what_the_host_was_delivered(cp: Proc) -> None:
    host = await FakeHost.connect(cp.info["host"], "host-a", "active")
    host.auto_open, host.auto_reply = {"protocol": "hsb1"}, True
    try:
        r = await run_load(addr(cp.info["terminal"]), terminals=6, rate=0, duration=0.5, settle=5, window=3, closed_loop=True, record_ids=True)
    finally:
        await host.close()
    assert r.ok and r.ids is not None and r.replied == r.sent > 0
    delivered: dict[str, list[int]] = defaultdict(list)
    for m in host.inbox:
        if m["t"] == "deliver":
            delivered[m["terminal"]].append(m["id"])
    for name, rng in r.ids.items():
        assert rng["acked"] == rng["replied"] == to_ranges(delivered[name], 6), name
