"""hsbd pair procedures (issue 4): real hsbd and hsbcpd processes and a real takeover file."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.hostclient import FakeTerminal
from tests.support.pair import Pair, make_pair
from tests.support.procs import log_events, until

ATTRS = {"protocol": "hsb1", "codepage": "utf-8"}


@pytest.fixture
def pairs():  # type: ignore[no-untyped-def]
    made: list[Pair] = []
    yield made
    for p in made:
        p.stop()


async def logon(pair: Pair, name: str) -> FakeTerminal:
    t = await FakeTerminal.connect(pair.cp.info["terminal"], name)
    await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
    return t


async def converged(pair: Pair, timeout: float = 15.0) -> dict[str, Any]:
    """Wait until the CP's standby sessions equal its standby-capable active sessions, attrs included."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        s = await pair.cp_sessions()
        active = {n: v["active"]["attrs"] for n, v in s.items() if v["active"] and not n.startswith("NOSB")}
        standby = {n: v["standby"]["attrs"] for n, v in s.items() if v["standby"]}
        if active == standby:
            return s
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(
                f"not converged: only active {sorted(set(active) - set(standby))[:10]}, only standby {sorted(set(standby) - set(active))[:10]}"
            )
        await asyncio.sleep(0.05)


async def test_fig2_active_first_then_standby_then_ring(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = make_pair(tmp_path)
    pairs.append(pair)
    pair.start("host-a", "active")
    await pair.wait_state("host-a", "serving")
    terms = [await logon(pair, f"T{i:05d}") for i in range(1, 6)]
    # nothing is written before a standby starts [0092]
    st = await pair.status("host-a")
    assert st["takeover_file"]["ring_writer"] == "off" and st["generation"] is None
    pair.start("host-b", "standby")
    b = await pair.wait_state("host-b", "established")
    a = await pair.wait_state("host-a", "established")
    assert b["startup_id"]["own"] == a["startup_id"]["partner"]
    assert pair.hosts["host-a"].events("hot_standby_established") and pair.hosts["host-b"].events("hot_standby_established")
    s = await converged(pair)
    assert {n for n, v in s.items() if v["standby"]} == {f"T{i:05d}" for i in range(1, 6)}
    assert s["T00001"]["standby"]["attrs"] == ATTRS
    # later logons and logoffs reach the standby through the ring
    more = [await logon(pair, f"T{i:05d}") for i in range(6, 9)]
    terms[0].send({"t": "bye"})
    await terms[0].wait_closed()
    s = await converged(pair)
    assert s.get("T00001", {}).get("standby") is None
    assert all(s[f"T{i:05d}"]["standby"] for i in range(6, 9))
    st = await pair.status("host-a")
    assert st["takeover_file"]["ring_write"]["last_seq"] >= 1
    more[0].send({"t": "msg", "id": 1, "data": "x"})
    assert (await more[0].wait(lambda m: m["t"] == "reply"))["data"] == "x"


async def test_fig3_normal_stop_no_takeover_then_active_restarts(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = make_pair(tmp_path)
    pairs.append(pair)
    pair.start("host-a", "active")
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "established")
    terms = [await logon(pair, f"T{i:05d}") for i in range(1, 5)]
    await converged(pair)
    b1 = await pair.status("host-b")
    # hsbctl stop --no-takeover: the patent's normal termination (SIGTERM would hand over)
    ans = await pair.admin("host-a", {"t": "stop", "takeover": False})
    assert ans["t"] == "result" and ans["ok"] and "--no-takeover" in ans["msg"], ans
    assert pair.hosts["host-a"].popen.wait(10) == 0
    for t in terms:
        m = await t.wait(lambda m: m["t"] == "session" and m["state"] == "closed")
        assert "normally" in m.get("reason", "")
    b = await pair.wait_state("host-b", "active_stopped", role="standby")
    assert b["active_stopped_by"] == "host-a"
    await asyncio.sleep(1.0)  # well past the heartbeat timeout: still no takeover
    assert (await pair.status("host-b"))["role"] == "standby"
    assert all(not t.closed for t in terms)
    # the active starts again: sessions come back; the standby rebuilds under a new identifier
    pair.start("host-a", "active")
    for t in terms:
        await t.wait_count(lambda m: m["t"] == "session" and m["state"] == "open", 2)
    b2 = await pair.wait_state("host-b", "established")
    assert b2["startup_id"]["own"] != b1["startup_id"]["own"]
    assert pair.hosts["host-b"].events("active_restarted")
    await converged(pair)
    terms[1].send({"t": "msg", "id": 1, "data": "after"})
    assert (await terms[1].wait(lambda m: m["t"] == "reply"))["data"] == "after"


async def test_standby_first_then_active_and_standby_restarts(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = make_pair(tmp_path)
    pairs.append(pair)
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "waiting_for_active")
    pair.start("host-a", "active")
    await pair.wait_state("host-b", "established")
    terms = [await logon(pair, f"T{i:05d}") for i in range(1, 4)]
    await converged(pair)
    ids = set()
    for _ in range(4):
        pair.hosts["host-b"].kill(signal.SIGKILL)
        pair.hosts["host-b"].popen.wait(5)
        pair.start("host-b", "standby")
        st = await pair.wait_state("host-b", "established")
        ids.add(st["startup_id"]["own"])
        await converged(pair)
        assert (await pair.status("host-a"))["role"] == "active"
    assert len(ids) == 4
    terms[0].send({"t": "msg", "id": 1, "data": "ok"})
    assert (await terms[0].wait(lambda m: m["t"] == "reply"))["data"] == "ok"


async def test_hosts_naming_different_files(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = make_pair(tmp_path, separate_files=True)
    pairs.append(pair)
    pair.start("host-a", "active")
    t = await logon(pair, "T00001")
    b = pair.start("host-b", "standby")
    rc = await asyncio.get_running_loop().run_in_executor(None, b.popen.wait, 15)
    assert rc != 0
    log = b.log.read_text()
    assert "takeover_file_mismatch" in log and str(tmp_path / "takeover-b.dat") in log
    pair.hosts["host-a"].wait_event("takeover_file_mismatch")
    a = await pair.status("host-a")
    assert a["role"] == "active" and a["file_mismatch"] and "different takeover files" in a["file_mismatch"]
    t.send({"t": "msg", "id": 1, "data": "still served"})
    assert (await t.wait(lambda m: m["t"] == "reply"))["data"] == "still served"


@pytest.mark.parametrize("who", ["host-a", "host-b"])
async def test_too_small_file_is_refused_at_start(tmp_path: Path, pairs: list[Pair], who: str) -> None:
    # 20 terminals need B = 2 records (E = 15 at 4096 bytes), so N must be >= 7; give 6
    small = {"terminals": 20}
    pair = make_pair(tmp_path, records=6, host_a=small, host_b=small)
    pairs.append(pair)
    p = pair.start(who, "active" if who == "host-a" else "standby", wait=False)
    rc = await asyncio.get_running_loop().run_in_executor(None, p.popen.wait, 15)
    assert rc == 78  # EX_CONFIG: a restart cannot fix it
    err = p.log.read_text().strip().splitlines()[-1]
    assert err.startswith("config error:") and "6 records" in err and "at least 7" in err


@pytest.mark.parametrize("who", ["host-a", "host-b"])
async def test_a_file_this_host_cannot_write_is_refused_at_start(tmp_path: Path, pairs: list[Pair], who: str) -> None:
    """Either host writes the file once it is the active: a standby that can only read it (a
    file of another owner, a read-only mount, root_squash) is refused at its start, not found
    out at its first batch write after a failover. An immutable file (chattr +i) stands for
    them here: even root cannot open it for writing."""
    import subprocess

    pair = make_pair(tmp_path, records=64)
    pairs.append(pair)
    assert pair.takeover is not None
    r = subprocess.run(["chattr", "+i", str(pair.takeover)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(
            f"chattr +i does not work here ({(r.stderr or r.stdout).strip()}): it needs e2fsprogs' chattr and a file system with the immutable flag"
        )
    try:
        p = pair.start(who, "active" if who == "host-a" else "standby", wait=False)
        rc = await asyncio.get_running_loop().run_in_executor(None, p.popen.wait, 15)
        assert rc == 78  # EX_CONFIG: a restart cannot fix it
        err = p.log.read_text().strip().splitlines()[-1]
        assert err.startswith("config error:") and "cannot be opened for writing" in err and str(pair.takeover) in err, err
    finally:
        subprocess.run(["chattr", "-i", str(pair.takeover)], check=False)


async def test_different_terminal_counts_standby_uses_active_B(tmp_path: Path, pairs: list[Pair]) -> None:
    pair = make_pair(tmp_path, cp_terminals=600, records=128, host_a={"terminals": 20}, host_b={"terminals": 600})
    pairs.append(pair)
    pair.start("host-a", "active")
    terms = [await logon(pair, f"T{i:05d}") for i in range(1, 4)]  # noqa: F841  (kept: a collected client logs off)
    pair.start("host-b", "standby")
    b = await pair.wait_state("host-b", "established")
    assert b["batch_records"]["own"] == 40 and b["batch_records"]["partner"] == 2
    await converged(pair)


async def test_one_terminal_with_different_attrs_is_refused_rest_established(tmp_path: Path, pairs: list[Pair]) -> None:
    b_terms = [{"name": f"T{i:05d}", "attrs": ATTRS if i != 2 else {"protocol": "hsb2", "codepage": "utf-8"}} for i in range(1, 11)]
    pair = make_pair(tmp_path, host_b={"terminals": 0, "extra_terms": b_terms})
    pairs.append(pair)
    pair.start("host-a", "active")
    terms = [await logon(pair, f"T{i:05d}") for i in range(1, 4)]  # noqa: F841  (kept: a collected client logs off)
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "established")
    ev = pair.hosts["host-b"].wait_event("standby_session_refused", terminal="T00002")
    assert "differ" in ev["reason"]
    s = await pair.cp_sessions()
    assert s["T00001"]["standby"] and s["T00003"]["standby"] and s["T00002"]["standby"] is None


async def test_ring_lap_ends_in_resync_and_consistent_sessions(tmp_path: Path, pairs: list[Pair]) -> None:
    # 20 terminals: B = 2, N = 7 → a ring of 4 records; the standby polls rarely
    opts = {"terminals": 20}
    pair = make_pair(tmp_path, records=7, host_a=opts, host_b={**opts, "ring_poll_interval": 1.5})
    pairs.append(pair)
    pair.start("host-a", "active")
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "established")
    # a burst of separate groups: each logon is one ring record, far more than 4
    terms = []
    for i in range(1, 21):
        terms.append(await logon(pair, f"T{i:05d}"))
        await asyncio.sleep(0.01)
    for t in terms[:10]:
        t.send({"t": "bye"})
    for t in terms[:10]:
        await t.wait_closed()
    pair.hosts["host-b"].wait_event("ring_resync_needed", timeout=10)
    await pair.wait_state("host-b", "established")
    s = await converged(pair, timeout=20)
    assert sorted(n for n, v in s.items() if v["standby"]) == [f"T{i:05d}" for i in range(11, 21)]


async def test_property_standby_follows_random_logons_and_logoffs(tmp_path: Path, pairs: list[Pair]) -> None:
    """1,000 terminals log on and off at random; at every quiet point the CP's standby
    sessions equal the active's standby-capable sessions, attributes included."""
    import random

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.support.massterm import Fleet

    n = 1000
    pair = make_pair(tmp_path, cp_terminals=n, records=512, host_a={"terminals": n}, host_b={"terminals": n})
    pairs.append(pair)
    pair.start("host-a", "active")
    fleet = Fleet(pair.cp.info["terminal"])
    names = [f"T{i:05d}" for i in range(1, n + 1)]
    await fleet.logon(names[:400])
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "established", timeout=30)
    await converged(pair, timeout=30)
    loop = asyncio.get_running_loop()
    rounds = {"n": 0}

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 4))
    def prop(seed: int, steps: int) -> None:
        rng = random.Random(seed)

        async def run() -> None:
            for _ in range(steps):
                off = [x for x in names if x in fleet.on and rng.random() < 0.3]
                on = [x for x in names if x not in fleet.on and rng.random() < 0.3]
                await asyncio.gather(fleet.logoff(off), fleet.logon(on))
            s = await converged(pair, timeout=30)
            assert {x for x, v in s.items() if v["active"]} == set(fleet.on)
            rounds["n"] += 1

        asyncio.run_coroutine_threadsafe(run(), loop).result(120)

    await loop.run_in_executor(None, prop)
    assert rounds["n"] >= 6
    b = await pair.status("host-b")
    assert b["state"] == "established" and b["role"] == "standby"
    await fleet.close()


async def test_a_ring_record_damaged_for_good_costs_one_resync_not_one_a_pass(tmp_path: Path, pairs: list[Pair]) -> None:
    """A ring record torn for good (a crash mid ring write) where the standby waits for the
    ring: it asks for a resync naming the record, and the active's batch write clears it. The
    batch write rewrites only records 0..B, so without that the standby met the same damage
    when the new ring came round to it, and asked again, at every pass."""
    from hsb.takeover import batch_read

    # 20 terminals: B = 2, N = 7: a ring of 4 records (3..6)
    opts = {"terminals": 20}
    pair = make_pair(tmp_path, records=7, host_a=opts, host_b=opts)
    pairs.append(pair)
    pair.start("host-a", "active")
    pair.start("host-b", "standby")
    await pair.wait_state("host-b", "established")
    path = pair.takeover
    assert path is not None
    layout = batch_read(str(path)).header.layout
    size = batch_read(str(path)).header.record_size
    waits_at = layout.ring_record(1)  # nothing written to the ring yet: the standby waits at seq 1
    damaged = layout.ring_record(3)
    with open(path, "r+b") as f:  # seq 3's slot torn: a byte that is no record's
        f.seek(damaged * size + 40)
        b = f.read(1)
        f.seek(damaged * size + 40)
        f.write(bytes([b[0] ^ 0x5A]))

    async def read_up_to(seq: int) -> None:
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            st = await pair.status("host-b")
            rr = (st.get("takeover_file") or {}).get("ring_read") or {}
            if st["state"] == "established" and rr.get("next_seq", 0) > seq:
                return
            assert asyncio.get_running_loop().time() < deadline, f"host-b did not read ring seq {seq}: {st['state']} {rr}"
            await asyncio.sleep(0.05)

    def resyncs() -> list[dict[str, Any]]:
        return [e for e in log_events(pair.hosts["host-b"].log) if e.get("event") == "ring_resync_needed"]

    terms = [await logon(pair, "T00001")]  # seq 1
    await read_up_to(1)
    terms.append(await logon(pair, "T00002"))  # seq 2: then the standby waits at seq 3, torn
    await until(resyncs, 15, what="host-b asking for a resync at the torn record")

    def requested() -> list[dict[str, Any]]:  # (host-a logs it when the request arrives: after host-b logged it)
        return [e for e in log_events(pair.hosts["host-a"].log) if e.get("event") == "resync_requested"]

    await until(requested, 15, what="host-a receiving the resync request")
    assert requested()[-1].get("record") == damaged, requested()
    await pair.wait_state("host-b", "established")
    assert waits_at == layout.ring_record(1)
    # the new ring: seq 1 and 2, then the standby waits at seq 3, the slot that was torn
    for i in (3, 4):
        terms.append(await logon(pair, f"T{i:05d}"))
        await read_up_to(i - 2)
    # it stays there, established, through many more polls than a torn record is given
    # (TORN_RETRIES at ring_poll_interval 0.05 s: 0.25 s), and finds nothing wrong
    t_end = asyncio.get_running_loop().time() + 1.0
    while asyncio.get_running_loop().time() < t_end:
        st = await pair.status("host-b")
        rr = (st.get("takeover_file") or {}).get("ring_read") or {}
        assert st["state"] == "established" and rr.get("next_seq") == 3, (st["state"], rr, st.get("last_error"))
        assert "torn" not in str(st.get("last_error") or ""), st.get("last_error")
        await asyncio.sleep(0.05)
    for i in (5, 6):  # seq 3 and 4 written and read
        terms.append(await logon(pair, f"T{i:05d}"))
        await read_up_to(i - 2)
    assert len(resyncs()) == 1, resyncs()
    await converged(pair)
