"""A CP started on a stale copy of its journal acknowledges nothing (hsb.cp.first_host).

Real hsbcpd and hsbd processes. The journal copied aside at generation 1, the CP restarted twice
on the real one (generation 3, seen by the host), then hsbcpd started on the copy at the same
address: it takes generation 2, and the host refuses it (SPEC §5.8). It used to welcome the
terminals and acknowledge their messages all the same, into a journal no CP serving the hosts
would read: lost once the real CP was back (153 of them in a walk-through). Now the messages'
records are written but their acknowledgements wait for a host to register, which none does;
the real CP back, the terminal sends them again and each is acknowledged and answered once.

Restarted once only, the real CP has generation 2, and the copy's CP takes generation 2 too, in
its own directory: the host took it (the same number) and the messages were lost the same way.
Each takeover now has an id of its own (hsb.cp.journal.generation), and the host refuses
generation 2 of another takeover than the one it saw (`cp_journal_copy_refused`).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from tests.support.hostclient import FakeTerminal, until_cp_status
from tests.support.pair import Pair, make_pair
from tests.support.procs import restart_cp

pytestmark = pytest.mark.timeout(120)

N = 20


@pytest.mark.parametrize("restarts", [2, 1])
async def test_a_cp_on_a_stale_copy_of_the_journal_acknowledges_nothing_and_the_real_one_answers_all(tmp_path: Path, restarts: int) -> None:
    real = 1 + restarts  # the real CP's generation; the copy's CP takes 2
    pair = make_pair(tmp_path)
    journal = tmp_path / "cp" / "cp-journal"
    t: FakeTerminal | None = None
    try:
        pair.cp.stop()
        shutil.copytree(journal, tmp_path / "cp-journal-then")  # the journal as it was at generation 1
        for _ in range(restarts):
            pair.cp = restart_cp(pair.cp)
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["seen"] == real
        # the stale copy started at the serving CP's address
        pair.cp.stop()
        journal.rename(tmp_path / "cp-journal-real")
        (tmp_path / "cp-journal-then").rename(journal)
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 2
        ev = pair.hosts["host-a"].wait_event("cp_generation_refused" if real > 2 else "cp_journal_copy_refused", timeout=15)
        assert (f"generation 2, below {real}" if real > 2 else "a CP on a copy of the journal") in ev["reason"], ev
        t = await FakeTerminal.connect(pair.cp.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        await t.wait(lambda m: m["t"] == "welcome")
        for i in range(1, N + 1):
            t.send({"t": "msg", "id": i, "data": f"m{i}"})
        st = await until_cp_status(
            pair.cp, lambda s: (s["journal"].get("acks_waiting_for_host") or {}).get("messages") == N and s["journal"]["outstanding"] == N
        )
        assert st["active"] is None and st["standby"] is None, st  # the host never registered with it
        ev = pair.cp.wait_event("acks_wait_for_a_host")
        assert ev["generation"] == 2 and ev["terminal"] == "T00001", ev
        # a host that keeps refusing it: still nothing acknowledged, after another refusal
        st = await pair.status("host-a")
        before = st["cp_generation"]["refusals"]
        await until_status_refusals(pair, before + 1)
        assert [m for m in t.inbox if m["t"] == "ack"] == [], t.inbox
        await t.close()
        t = None
        # the real journal back: the terminal resumes, sends again what was never acknowledged
        pair.cp.stop()
        journal.rename(tmp_path / "cp-journal-stale")
        (tmp_path / "cp-journal-real").rename(journal)
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == real + 1
        await pair.wait_state("host-a", "serving")
        t = await FakeTerminal.connect(pair.cp.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        welcome = await t.wait(lambda m: m["t"] == "welcome")
        assert welcome["last_acked"] == 0, welcome
        for i in range(1, N + 1):
            t.send({"t": "msg", "id": i, "data": f"m{i}", "resent": True})
        replies = await t.wait_count(lambda m: m["t"] == "reply", N, timeout=20)
        assert sorted(m["id"] for m in replies) == list(range(1, N + 1))
        acks = [m["id"] for m in t.inbox if m["t"] == "ack"]
        assert sorted(acks) == list(range(1, N + 1)), acks  # each once
        st = await until_cp_status(pair.cp, lambda s: s["journal"].get("acks_waiting_for_host") is None)
        assert st["active"] is not None and st["active"]["name"] == "host-a", st
    finally:
        if t is not None:
            await t.close()
        pair.stop()


async def until_status_refusals(pair: Pair, n: int, timeout: float = 15.0) -> None:
    """The host's status counts `n` refusals of the CP's generation (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    while (await pair.status("host-a"))["cp_generation"]["refusals"] < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"host-a did not refuse the CP {n} times within {timeout} s")
        await asyncio.sleep(0.05)
