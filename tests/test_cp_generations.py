"""Two CPs, one journal (SPEC §5.8; docs/cp-journal.md "Generations"): fencing by generation,
without keepalived (tests/netns/test_cpfailover.py runs the real thing in namespaces).

Real hsbcpd processes on one journal directory: a CP that takes the journal over raises its
generation first; the one it superseded stops at once (exit 75) and none of what it
acknowledged is missing at the new one; a CP waiting to take over (`takeover = "on_wake"`)
takes over when woken, or when the serving CP's heartbeat stops, and not while it beats (nor
while a long takeover beats); hosts refuse a CP with an older generation than one they saw,
and one on another journal (its id, test_cp_journal_identity in process) whatever its generation.
The generation files in process: tests/test_cp_generation_files.py; a waiting CP in process:
tests/test_cp_waiting.py; the takeover's steps: tests/test_cp_takeover_steps.py.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import pytest

from hsb.cp.journal.generation import Generations, gen_name
from hsb.cp.journal.recovery import recover
from hsb.wire.client import request
from tests.support.hostclient import FakeTerminal, host_came
from tests.support.procs import SECRET, Proc, _run_cp, addr, cp_config, free_port, http_get, log_events, restart_cp, start_cp
from tests.support.waitingcp import held_recovery

pytestmark = pytest.mark.timeout(90)


def second_cp(d: Path, journal: Path, wait: bool = True, **kw: Any) -> Proc:
    """Another hsbcpd (its own ports and log) on the journal directory `journal`."""
    d.mkdir(parents=True, exist_ok=True)
    cfg = cp_config(d, terminals=6, host_timeout=0.5, journal=str(journal), **kw)
    p = _run_cp(d, cfg, None, wait=wait)
    return p


def exit_code(p: Proc, timeout: float = 10.0) -> int:
    try:
        return p.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        return -999


async def test_a_newer_cp_stops_the_old_one_and_has_all_it_acknowledged(tmp_path: Path) -> None:
    cp1 = start_cp(tmp_path / "cp1", terminals=6, host_timeout=0.5)
    journal = tmp_path / "cp1" / "cp-journal"
    try:
        await host_came(cp1)  # (else nothing is acknowledged: hsb.cp.first_host)
        t = await FakeTerminal.connect(cp1.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        await t.wait(lambda m: m["t"] == "welcome")
        sent = 0
        stop = asyncio.Event()

        async def send() -> None:  # messages keep coming while the second CP takes over
            nonlocal sent
            while not stop.is_set() and not t.closed:
                sent += 1
                try:
                    t.send({"t": "msg", "id": sent, "data": f"m{sent}"})
                except (ConnectionError, OSError):
                    return
                await asyncio.sleep(0.002)

        sender = asyncio.ensure_future(send())
        await t.wait_count(lambda m: m["t"] == "ack", 50)
        gen1 = Generations(journal).current()
        cp2 = second_cp(tmp_path / "cp2", journal)
        try:
            assert exit_code(cp1) == 75, cp1.log.read_text()[-3000:]  # superseded: stops at once, with its own status
            stop.set()
            await sender
            ev = [e for e in log_events(tmp_path / "cp1" / "cp.log") if e.get("event") == "cp_superseded"]
            assert ev and ev[0]["generation"] == gen1 and ev[0]["newer"] == gen1 + 1, ev
            rec = cp2.wait_event("journal_recovered")
            assert rec["generation"] == gen1 + 1 and rec["from_generation"] == gen1
            # every id the old CP acknowledged is at the new one (held, not yet answered)
            acked = sorted(m["id"] for m in t.inbox if m["t"] == "ack")
            assert acked == list(range(1, len(acked) + 1)) and len(acked) >= 50
            st = await cp_status_at(cp2)
            assert st["held_messages"] >= len(acked), (st["held_messages"], len(acked))
            assert st["generation"] == gen1 + 1
        finally:
            cp2.stop()
    finally:
        cp1.stop()
    # and a journal read afterwards holds exactly the new generation's snapshot onward
    r = recover(journal)
    assert r.head_generation == gen1 + 1
    assert max(r.last_acked.get("T00001", 0), 0) >= len(acked)


@pytest.mark.parametrize("how", ["removed", "replaced"])
@pytest.mark.parametrize("takeover", ["at_start", "on_wake"])
async def test_a_cp_whose_generation_file_is_removed_under_it_stops_and_says_so_not_superseded(tmp_path: Path, how: str, takeover: str) -> None:
    """The serving CP's gen-* files removed by hand, or its journal directory replaced (one with
    a lower generation's file in its place): it stopped as it must (it cannot prove it is the
    newest), but said "taken over by a newer CP" (cp_superseded), sending the operator after a
    CP that is not there. It stops the same way (nothing acknowledged after) with its own
    event, cp_generation_file_removed, whose line says what happened and what to do; exit 75 in
    both modes: with `on_wake`, a 0 had systemd start it again, and on its machine's keepalived
    master it took the directory put in place (an older copy) straight back."""
    journal = tmp_path / "cp1" / "cp-journal"
    journal.mkdir(parents=True)
    for g in (1, 2):  # earlier CPs' (not beating): this one takes generation 3
        (journal / gen_name(g)).touch()
    kw: dict[str, Any] = {"takeover": "on_wake", "takeover_stale": 0.5} if takeover == "on_wake" else {}
    cp1 = start_cp(tmp_path / "cp1", terminals=6, host_timeout=0.5, **kw)
    try:
        await host_came(cp1)
        t = await FakeTerminal.connect(cp1.info["terminal"], "T00001", hello=False)
        t.send({"t": "hello", "terminal": "T00001", "last_reply": 0})
        await t.wait(lambda m: m["t"] == "welcome")
        t.send({"t": "msg", "id": 1, "data": "before"})
        await t.wait(lambda m: m["t"] == "ack" and m["id"] == 1)
        gen = Generations(journal).current()
        assert gen == 3
        if how == "removed":
            for f in journal.glob("gen-*"):
                f.unlink()
        else:
            journal.rename(journal.with_name("cp-journal.old"))
            journal.mkdir()
            (journal / gen_name(1)).touch()  # (an older CP's, not its own: by name, its own would pass)
        t.send({"t": "msg", "id": 2, "data": "after"})  # its group's check finds the file gone: never acknowledged
        assert exit_code(cp1) == 75, cp1.log.read_text()[-3000:]  # not restarted by itself, in either mode
        await t.wait_closed()
        assert [m["id"] for m in t.inbox if m["t"] == "ack"] == [1]
        assert cp1.events("cp_superseded") == []
        (ev,) = cp1.events("cp_generation_file_removed")
        assert ev["level"] == "error" and ev["generation"] == gen and ev["found"] == (0 if how == "removed" else 1), ev
        assert ev["path"] == str(journal / gen_name(gen)), ev
        msg = ev["msg"]
        assert "\n" not in msg and f"generation file {gen_name(gen)} (generation {gen}) was removed from {journal} under it" in msg, msg
        assert "no newer CP's file" in msg and "put the journal directory back" in msg and "never remove gen-* files" in msg, msg
    finally:
        cp1.stop()


async def cp_status_at(cp: Proc) -> dict[str, Any]:
    h, p = addr(cp.info["admin"])
    return cast(dict[str, Any], (await request(h, p, SECRET, {"t": "status"}))["data"])


async def test_a_waiting_cp_takes_over_when_the_serving_one_stops_beating_not_before(tmp_path: Path) -> None:
    cp1 = start_cp(tmp_path / "cp1", terminals=6, host_timeout=0.5)
    journal = tmp_path / "cp1" / "cp-journal"
    cp2: Proc | None = None
    try:
        cp2 = second_cp(tmp_path / "cp2", journal, wait=False, takeover="on_wake", takeover_stale=0.5)
        ev = cp2.wait_event("cp_waiting")
        assert ev["generation"] == 1
        # the serving CP beats: the waiting one (which holds its loopback address) keeps waiting
        await asyncio.sleep(1.5)  # three times takeover_stale: a fixed window in which nothing may happen
        assert not cp2.events("journal_recovered") and cp1.popen.poll() is None
        h, p = addr(cp_config_admin(tmp_path / "cp2"))
        st = (await request(h, p, SECRET, {"t": "status"}))["data"]
        assert st["state"] == "waiting" and st["journal_generation"] == 1 and st["holds_address"] is True
        cp1.kill(signal.SIGSTOP)  # frozen: its heartbeat stands still
        try:
            rec = cp2.wait_event("journal_recovered", timeout=10)
            assert rec["generation"] == 2 and "has not beaten" in rec["reason"], rec
        finally:
            cp1.kill(signal.SIGCONT)
        assert exit_code(cp1) == 75  # woken, it finds the newer generation and stops
    finally:
        if cp2 is not None:
            cp2.stop()
        cp1.stop()


async def test_a_waiting_cp_whose_shared_journal_is_not_mounted_does_not_take_over_an_empty_one(tmp_path: Path) -> None:
    """Two CP machines: the journal is on the storage both share. Not mounted, its directory is
    missing here: a CP that made an empty one under the mount point and took it over would serve
    without anything the other CP acknowledged. It waits, says why (log and status), and takes
    over once the directory is there; it never makes it."""
    mnt = tmp_path / "mnt"  # the mount point, nothing mounted on it
    mnt.mkdir()
    journal = mnt / "cp-journal"
    http = f"127.0.0.1:{free_port()}"
    cp = second_cp(tmp_path / "cp", journal, wait=False, takeover="on_wake", takeover_stale=0.5, http_listen=http)
    try:
        ev = cp.wait_event("cp_waiting")
        assert ev["generation"] is None
        # keepalived's track script asks /health: failing, the address goes to the machine that has the storage
        code, _ = await asyncio.get_running_loop().run_in_executor(None, http_get, http, "/health")
        assert code == 503
        missing = cp.wait_event("cp_journal_missing")
        assert "is it mounted" in missing["msg"].lower() and str(journal) in missing["msg"], missing
        cp.kill(signal.SIGUSR1)  # keepalived's notify: this machine is master (and it holds the address)
        await asyncio.sleep(1.5)  # three times takeover_stale: a fixed window in which nothing may happen
        assert not cp.events("journal_recovered") and cp.popen.poll() is None
        assert not journal.exists(), "the CP made the journal directory itself"
        st = (await request(*addr(cp_config_admin(tmp_path / "cp")), SECRET, {"t": "status"}))["data"]
        assert st["state"] == "waiting" and st["journal_missing"] is True and st["journal_generation"] is None, st
        assert len(cp.events("cp_journal_missing")) == 1  # said once, not at every poll
        journal.mkdir()  # mounted (made once on the shared storage)
        cp.kill(signal.SIGUSR1)
        rec = cp.wait_event("journal_recovered", timeout=10)
        assert rec["generation"] == 1, rec
        cp.wait_event("cp_started")
        code, _ = await asyncio.get_running_loop().run_in_executor(None, http_get, http, "/health")
        assert code == 200
    finally:
        cp.stop()


def cp_config_admin(d: Path) -> str:
    import tomllib

    return str(tomllib.loads((d / "cp.toml").read_text())["cp"]["admin_listen"])


async def test_a_woken_cp_takes_over_once_the_serving_one_is_silent_not_while_it_beats(tmp_path: Path) -> None:
    """SIGUSR1 (keepalived: this machine is master now) while the serving CP still beats: split
    brain, not a failover; the woken CP defers. Once the serving CP dies it takes over as soon
    as the last heartbeat is takeover_stale old. A CP whose address is elsewhere ignores it."""
    cp1 = start_cp(tmp_path / "cp1", terminals=6, host_timeout=0.5)
    journal = tmp_path / "cp1" / "cp-journal"
    procs = [cp1]  # each stopped at the end, whatever happens
    try:
        # 192.0.2.1 (TEST-NET-1) is on no interface here: this CP does not hold its address
        away = second_cp(tmp_path / "away", journal, wait=False, takeover="on_wake", terminal_listen="192.0.2.1:7000")
        procs.append(away)
        here = second_cp(tmp_path / "here", journal, wait=False, takeover="on_wake")
        procs.append(here)
        away.wait_event("cp_waiting")
        here.wait_event("cp_waiting")
        away.kill(signal.SIGUSR1)
        away.wait_event("cp_wake_ignored")
        here.kill(signal.SIGUSR1)
        here.wait_event("cp_wake_deferred")
        assert not here.events("journal_recovered")
        t_kill = time.time()
        cp1.kill(signal.SIGKILL)
        here.kill(signal.SIGUSR1)
        rec = here.wait_event("journal_recovered", timeout=10)
        assert rec["generation"] == 2, rec
        at = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        assert at - t_kill <= 2.0, (at - t_kill, rec["reason"])
        # Not while the dead CP's last beat (its generation file's mtime, final now) was younger
        # than takeover_stale (0.3 s). The file clock is coarse, so the mtime is if anything early.
        last_beat = (journal / gen_name(1)).stat().st_mtime_ns / 1e9
        assert at - last_beat >= 0.3, (at - last_beat, rec["reason"])
        assert away.popen.poll() is None and not away.events("journal_recovered")
    finally:
        for p in procs:
            p.stop()


async def test_a_host_refuses_a_cp_older_than_one_it_saw(tmp_path: Path) -> None:
    from tests.support.pair import make_pair

    pair = make_pair(tmp_path)
    journal = tmp_path / "cp" / "cp-journal"
    try:
        pair.cp.stop()
        shutil.copytree(journal, tmp_path / "cp-journal-then")  # the journal as it was at generation 1
        for _ in range(2):  # the CP restarted twice: generation 3
            pair.cp = restart_cp(pair.cp)
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["seen"] == 3
        # a CP left behind on the same journal (its state at generation 1: it takes 2) answers at
        # the same address: a superseded CP, refused by generation
        pair.cp.stop()
        journal.rename(tmp_path / "cp-journal-newer")
        (tmp_path / "cp-journal-then").rename(journal)
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 2
        host = pair.hosts["host-a"]
        ev = host.wait_event("cp_generation_refused", timeout=15)
        assert "generation 2, below 3" in ev["reason"] and "a superseded CP" in ev["reason"], ev
        st = await pair.status("host-a")
        assert st["cp_generation"]["refusals"] >= 1 and st["cp_generation"]["journal_refusals"] == 0 and not st["registered_at_cp"], st
        assert (await pair.cp_status())["active"] is None  # the host never registered with it
        # a CP on another, new journal (generation 1, lower too): said as another journal, not as a
        # superseded CP (it never was on this one)
        pair.cp.stop()
        journal.rename(tmp_path / "cp-journal-older")
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 1
        ev = host.wait_event("cp_journal_refused", timeout=15)
        assert "(generation 1), not journal" in ev["reason"] and "different journals" in ev["msg"], ev
        assert (await pair.cp_status())["active"] is None
    finally:
        pair.stop()


async def test_a_restarted_host_still_refuses_a_cp_older_than_one_it_saw(tmp_path: Path) -> None:
    """The generation seen is kept across the host's own restart (hsb.host.cpgen): a host that
    crashed and started again while a superseded CP answers at its address started from 0 and
    registered with that CP. Now it reads the generation from its file beside the takeover file
    and refuses the older CP, as the process before it would have."""
    from tests.support.pair import make_pair

    pair = make_pair(tmp_path)
    journal = tmp_path / "cp" / "cp-journal"
    try:
        pair.cp.stop()
        shutil.copytree(journal, tmp_path / "cp-journal-then")  # the journal as it was at generation 1
        for _ in range(2):  # generation 3
            pair.cp = restart_cp(pair.cp)
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["seen"] == 3 and st["cp_generation"]["remembered"] == 3, st["cp_generation"]
        kept = Path(st["cp_generation"]["file"])
        assert kept == tmp_path / "host-a.cp-generation" and kept.exists()
        pair.hosts["host-a"].stop()  # a crash (SIGKILL): nothing written at the end
        # while it is down, a CP left behind on the same journal (at generation 1: it takes 2)
        # answers at the same address
        pair.cp.stop()
        journal.rename(tmp_path / "cp-journal-newer")
        (tmp_path / "cp-journal-then").rename(journal)
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 2
        host = pair.start("host-a", "active")  # a new process
        assert host.wait_event("cp_generation_loaded")["generation"] == 3
        ev = host.wait_event("cp_generation_refused", timeout=10)
        assert "generation 2, below 3" in ev["reason"], ev
        st = await pair.status("host-a")
        assert st["cp_generation"]["refusals"] >= 1 and st["cp_generation"]["seen"] == 3 and not st["registered_at_cp"], st
        assert (await pair.cp_status())["active"] is None  # the restarted host never registered with it
    finally:
        pair.stop()


async def test_a_takeover_that_reads_long_beats_so_a_woken_waiting_cp_does_not_supersede_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A split brain: the other machine's hsbcpd waits, holds the address too, and is woken. A
    CP taking the journal over beats its new generation file from the moment it takes it, not
    only once it serves: a takeover that reads for longer than takeover_stale was taken for a
    dead CP's and superseded in the middle (the two then superseding each other in turn)."""

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    (tmp_path / "cp1").mkdir()
    cfg = load(cp_config(tmp_path / "cp1", terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp1" / "cp.toml"))
    entered, release = held_recovery(monkeypatch, 10)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(s.startup())
    cp2: Proc | None = None
    try:
        assert await loop.run_in_executor(None, entered.wait, 10)  # generation 1 taken, the journal being read
        # (the waits on cp2 off this loop, which is cp1's: a blocked loop beats no generation
        # file, and cp2 would rightly take cp1 for dead)
        cp2 = await loop.run_in_executor(None, lambda: second_cp(tmp_path / "cp2", journal, wait=False, takeover="on_wake", takeover_stale=0.3))
        await loop.run_in_executor(None, cp2.wait_event, "cp_waiting")
        cp2.kill(signal.SIGUSR1)  # keepalived's notify: master here too
        await loop.run_in_executor(None, lambda: cp2.wait_event("cp_wake_deferred", timeout=10))
        await asyncio.sleep(1.0)  # three times takeover_stale more, the takeover still reading: a window in which nothing may happen
        assert not cp2.events("journal_recovered") and Generations(journal).current() == 1
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None and not s.superseded and s.took_over["generation"] == 1
    finally:
        release.set()
        if not task.done():
            task.cancel()
        if cp2 is not None:
            cp2.stop()
        await s.shutdown()


async def test_a_host_refuses_a_cp_on_another_journal_even_at_a_higher_generation(tmp_path: Path) -> None:
    """Generations of two journals are unrelated counters: a second CP machine misconfigured with
    a local journal directory, its generation as high as the shared one's or above, was taken by
    the hosts (the epoch went back, what the real journal held never delivered). Its journal id
    differs from the one the host followed: refused (not registered), also by the host started
    again (the id kept in its file); the CP on the host's journal back: taken."""
    from hsb.cp.journal.generation import read_journal_id
    from hsb.host.cpgen import read_kept
    from tests.support.pair import make_pair

    pair = make_pair(tmp_path)
    try:
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        j1 = read_journal_id(tmp_path / "cp" / "cp-journal")
        assert j1 is not None and st["cp_generation"]["journal"] == j1 and st["cp_generation"]["seen"] == 1, st["cp_generation"]
        kept = Path(st["cp_generation"]["file"])
        assert read_kept(kept, "host-a") == (1, j1)
        assert (await pair.cp_status())["journal"]["id"] == j1  # (the CP says it: hsbctl status compares)
        # another hsbcpd on the same ports, on another journal taken over a few times before
        j2 = tmp_path / "cp" / "local-journal"
        j2.mkdir()
        for g in (1, 2, 3):
            (j2 / gen_name(g)).touch()
        cfg = tmp_path / "cp" / "cp.toml"
        other = cfg.with_name("cp-local.toml")
        other.write_text(cfg.read_text().replace("[cp]\n", f'[cp]\njournal = "{j2}"\n', 1))
        pair.cp.stop()
        pair.cp = _run_cp(tmp_path / "cp", other, None)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 4  # above the host's 1
        j2id = read_journal_id(j2)
        assert j2id is not None and j2id != j1
        host = pair.hosts["host-a"]
        ev = host.wait_event("cp_journal_refused", timeout=15)
        assert f"serves journal {j2id}" in ev["reason"] and f"not journal {j1}" in ev["reason"], ev
        assert "two CPs on different journals" in ev["msg"] and str(kept) in ev["msg"], ev
        st = await pair.status("host-a")
        assert st["cp_generation"]["journal_refusals"] >= 1 and st["cp_generation"]["seen"] == 1 and not st["registered_at_cp"], st
        assert (await pair.cp_status())["active"] is None  # the host never registered with it
        assert read_kept(kept, "host-a") == (1, j1)
        # the host started again: the journal it followed read from its file, the CP still refused
        host.stop()
        host = pair.start("host-a", "active")
        assert host.wait_event("cp_generation_loaded")["journal"] == j1
        host.wait_event("cp_journal_refused", timeout=15)
        assert (await pair.cp_status())["active"] is None
        # the CP on the host's journal back: taken (its generation above, the same journal)
        pair.cp.stop()
        pair.cp = _run_cp(tmp_path / "cp", cfg, None)
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["journal"] == j1 and st["cp_generation"]["seen"] == 2 and st["registered_at_cp"], st["cp_generation"]
    finally:
        pair.stop()
