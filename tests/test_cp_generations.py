"""Two CPs, one journal (SPEC §5.8; docs/cp-journal.md "Generations"): fencing by generation,
without keepalived (tests/netns/test_cpfailover.py runs the real thing in namespaces).

Real hsbcpd processes on one journal directory: a CP that takes the journal over raises its
generation first; the one it superseded stops at once (exit 75) and none of what it
acknowledged is missing at the new one; a CP waiting to take over (`takeover = "on_wake"`)
takes over when woken, or when the serving CP's heartbeat stops, and not while it beats;
hosts refuse a CP with an older generation than one they saw.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hsb.cp.journal.generation import Generations, gen_name
from hsb.cp.journal.recovery import recover
from hsb.wire.client import request
from tests.support.hostclient import FakeTerminal
from tests.support.procs import SECRET, Proc, _run_cp, addr, cp_config, free_port, http_get, log_events, restart_cp, start_cp, until

pytestmark = pytest.mark.timeout(90)

ATTRS = {"protocol": "hsb1"}


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
    return (await request(h, p, SECRET, {"t": "status"}))["data"]


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
    try:
        for _ in range(2):  # the CP restarted twice: generation 3
            pair.cp = restart_cp(pair.cp)
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["seen"] == 3
        # a CP on another (older) journal appears at the same address: refused
        pair.cp.stop()
        journal = tmp_path / "cp" / "cp-journal"
        journal.rename(tmp_path / "cp-journal-newer")
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 1
        host = pair.hosts["host-a"]
        ev = host.wait_event("cp_generation_refused", timeout=15)
        assert "generation 1, below 3" in ev["reason"], ev
        st = await pair.status("host-a")
        assert st["cp_generation"]["refusals"] >= 1 and not st["registered_at_cp"]
        assert (await pair.cp_status())["active"] is None  # the host never registered with it
    finally:
        pair.stop()


async def test_a_restarted_host_still_refuses_a_cp_older_than_one_it_saw(tmp_path: Path) -> None:
    """The generation seen is kept across the host's own restart (hsb.host.cpgen): a host that
    crashed and started again while a superseded CP answers at its address started from 0 and
    registered with that CP. Now it reads the generation from its file beside the takeover file
    and refuses the older CP, as the process before it would have."""
    from tests.support.pair import make_pair

    pair = make_pair(tmp_path)
    try:
        pair.cp = restart_cp(pair.cp)  # generation 2
        pair.start("host-a", "active")
        st = await pair.wait_state("host-a", "serving")
        assert st["cp_generation"]["seen"] == 2 and st["cp_generation"]["remembered"] == 2, st["cp_generation"]
        kept = Path(st["cp_generation"]["file"])
        assert kept == tmp_path / "host-a.cp-generation" and kept.exists()
        pair.hosts["host-a"].stop()  # a crash (SIGKILL): nothing written at the end
        # while it is down, a CP on another (older) journal answers at the same address
        pair.cp.stop()
        (tmp_path / "cp" / "cp-journal").rename(tmp_path / "cp-journal-newer")
        pair.cp = restart_cp(pair.cp)
        assert pair.cp.wait_event("journal_recovered")["generation"] == 1
        host = pair.start("host-a", "active")  # a new process
        assert host.wait_event("cp_generation_loaded")["generation"] == 2
        ev = host.wait_event("cp_generation_refused", timeout=10)
        assert "generation 1, below 2" in ev["reason"], ev
        st = await pair.status("host-a")
        assert st["cp_generation"]["refusals"] >= 1 and st["cp_generation"]["seen"] == 2 and not st["registered_at_cp"], st
        assert (await pair.cp_status())["active"] is None  # the restarted host never registered with it
    finally:
        pair.stop()


def test_generation_files_are_taken_once_each(tmp_path: Path) -> None:
    """Two CPs taking the next generation at once get different ones (O_EXCL)."""
    import threading

    g = Generations(tmp_path)
    got: list[int] = []
    barrier = threading.Barrier(8)

    def take() -> None:
        barrier.wait()
        got.append(g.take())

    threads = [threading.Thread(target=take) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(got) == list(range(1, 9))
    assert g.newer_than(3) == 8 and g.newer_than(8) is None


def test_an_unfinished_snapshot_is_not_read(tmp_path: Path) -> None:
    """A CP that died while writing its takeover snapshot: the next one reads the generation
    before (whose files are still there), not the half-written one."""
    from hsb.cp.journal.format import encode
    from hsb.cp.journal.recovery import segment_name

    (tmp_path / segment_name(1, 1)).write_bytes(b"".join(encode(r) for r in [["ck", 1, "host-a", 1, {}, {"first": 1}], ["a", "T1", 5, b"x"], ["se"]]))
    (tmp_path / segment_name(2, 1)).write_bytes(encode(["ck", 1, "host-a", 1, {"T1": 5}, {"first": 1}]) + encode(["a", "T1", 6, b"y"]))
    # generation 2 began its snapshot and died before its end marker
    (tmp_path / segment_name(3, 2)).write_bytes(encode(["ck", 1, "host-a", 2, {"T1": 6}, {"first": 3}]) + encode(["a", "T1", 5, b"x"]))
    r = recover(tmp_path)
    assert r.head_generation == 1
    assert sorted(r.held["T1"]) == [5, 6]
    assert [p.name for p in r.garbage] == [segment_name(3, 2)]
    # gen 1's snapshot segment compacted away (settled): gen 1 is still complete
    (tmp_path / segment_name(1, 1)).unlink()
    assert recover(tmp_path).head_generation == 1


def test_a_storage_error_on_the_generation_files_is_an_error_not_a_newer_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EIO (or ESTALE) on a stat of the CP's own generation file says nothing about a newer CP:
    it is raised as the storage's error (the group is retried), not taken as superseded (the
    CP would stop for good)."""
    gens = Generations(tmp_path)
    own = gens.take()
    gens.check(own)  # its own file is there and no newer one: fine
    real = os.stat

    def stat(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path).endswith(gen_name(own)):
            raise OSError(116, "Stale file handle")
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(OSError, match="Stale file handle"):
        gens.check(own)
    monkeypatch.setattr(os, "stat", real)
    (tmp_path / gen_name(own + 1)).touch()  # a newer CP's file: superseded, as before
    assert gens.newer_than(own) == own + 1


def test_a_new_generation_is_above_every_segments_even_with_gen_files_missing(tmp_path: Path) -> None:
    """The gen- files are the fence; segment names carry their generation too. A CP taking over a
    directory whose gen- files were removed must not take a generation below its segments'."""
    from hsb.cp.journal.generation import Generations
    from hsb.cp.journal.recovery import segment_name

    (tmp_path / segment_name(1, 5)).write_bytes(b"")
    (tmp_path / segment_name(2, 5)).write_bytes(b"")
    assert Generations(tmp_path).take() == 6
    assert Generations(tmp_path).take() == 7  # and the gen- file it made counts from then on
    # a jump over a generation whose CP may still run marks the next one, which that CP looks for
    g = Generations(tmp_path)
    (tmp_path / segment_name(1, 9)).write_bytes(b"")
    assert g.take() == 10
    assert g.newer_than(7) is not None  # the CP of 7 is superseded (gen-8 is there)


async def test_a_cp_superseded_while_it_takes_over_deletes_nothing_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPs taking over at once: the newer one may list the journal before the older one's
    snapshot is complete, and read the generation before it. The older one, superseded when its
    snapshot is durable, must not then delete that generation's segments as garbage (what they hold
    would be lost), and must not serve."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import taking_over
    from hsb.cp.config import CPConfig
    from hsb.cp.journal.format import encode
    from hsb.cp.journal.recovery import segment_name

    journal = tmp_path / "j"
    journal.mkdir()
    Generations(journal).take()  # generation 1, whose segment holds an acknowledged message
    old = journal / segment_name(1, 1)
    old.write_bytes(b"".join(encode(r) for r in [["ck", 1, "host-a", 1, {}, {"first": 1}], ["a", "T00001", 5, b"x"], ["se"]]))
    real = taking_over.recover

    def recover_then_superseded(d: Path, **kw: Any) -> Any:
        r = real(d, **kw)
        Generations(d).take()  # another CP takes the next generation (and reads generation 1)
        return r

    monkeypatch.setattr(taking_over, "recover", recover_then_superseded)
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    try:
        await s.startup()
        assert s.superseded and s.cp is None and s.exit_code == 75
        assert old.exists(), "the generation the newer CP reads was deleted"
        assert recover(journal).held["T00001"].keys() == {5}
    finally:
        await s.shutdown()


def test_a_far_behind_cps_check_meeting_a_prune_still_finds_itself_superseded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest CP prunes old generation files oldest first, and a check (the thread's, and the
    io_uring chain's) looks for the next generation's file before its own: a check that lands in
    the middle of a prune finds the next one still there or its own gone. Deleting newest first
    (or looking at its own file first) let a CP 10+ generations behind see its own file there and
    the next one gone, and acknowledge what the new CP never reads."""
    from hsb.cp.journal import generation as genmod

    for g in range(1, 16):
        (tmp_path / gen_name(g)).write_text("")
    gens = Generations(tmp_path)
    deleted: list[int] = []
    real_unlink = os.unlink

    def unlink(p: Any) -> None:
        deleted.append(int(Path(p).name[4:]))
        real_unlink(p)

    monkeypatch.setattr(genmod.os, "unlink", unlink)
    gens.prune(15)
    assert deleted == sorted(deleted) and deleted, deleted  # oldest first
    # the thread's check: the next generation's file is looked at before its own
    looked: list[str] = []
    monkeypatch.setattr(genmod, "_there", lambda p: looked.append(Path(p).name) or Path(p).exists())
    with pytest.raises(Exception, match="newer|supersed"):
        gens.check(14)
    assert looked[0] == gen_name(15), looked


def test_a_cp_whose_own_file_is_gone_is_superseded_only_if_a_newer_file_is_there(tmp_path: Path) -> None:
    """The check tells the two apart: a far-behind CP whose own file the newest CP pruned is
    superseded by that one (its file is among the newest kept); a CP whose own file is gone with
    nothing above it is GenerationGone (its file was removed, not a newer CP's doing). Both stop."""
    from hsb.cp.journal.generation import GenerationGone, Superseded

    for g in range(1, 16):
        (tmp_path / gen_name(g)).write_text("")
    gens = Generations(tmp_path)
    gens.prune(15)
    assert not (tmp_path / gen_name(3)).exists() and not (tmp_path / gen_name(4)).exists()
    with pytest.raises(Superseded) as superseded:
        gens.check(3)
    assert type(superseded.value) is Superseded and superseded.value.newer == 15
    (tmp_path / gen_name(15)).unlink()  # the newest's own file removed: gen-14 is below it
    with pytest.raises(GenerationGone) as gone:
        gens.check(15)
    assert gone.value.found == 14 and gone.value.newer is None and "the highest is gen-00000014" in str(gone.value)


async def test_a_storage_error_while_waiting_is_said_as_the_journals_not_the_ports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A waiting CP's polls read the journal directory on the shared storage: an error there
    (EACCES: the hsb user's uid differs between the machines; ESTALE) ends the start with a line
    naming the journal and the fix, not "cannot listen ... another hsbcpd on these ports?"."""
    import errno

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig
    from hsb.cp.main import os_error_line

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)

    def refused() -> Any:
        raise PermissionError(errno.EACCES, "Permission denied")

    assert s.gens is not None
    monkeypatch.setattr(s.gens, "stamp", refused)
    with pytest.raises(PermissionError) as exc:
        await asyncio.wait_for(s.serve(), 10)
    line = os_error_line(s.state, cfg.cp.journal, exc.value)
    assert line.startswith(f"cannot read the CP journal {journal} while waiting to take over: Permission denied"), line
    assert "same uid" in line and "ports" not in line
    await s.shutdown()


async def test_a_storage_error_while_waiting_is_said_and_looked_at_again_not_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ESTALE (the NFS server restarted) or EIO on a waiting CP's look at the generation files
    ended it, exit 1, down for its restart's backoff just when a failover may be needed: it goes
    on waiting, the error said once (journal_storage_error), in status and /health (503), looked
    at again with a backoff (50 ms doubling to 0.5 s), and takes over once the storage answers."""
    import errno

    import structlog

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    assert s.gens is not None
    real_stamp, real_current = s.gens.stamp, s.gens.current
    failing = True
    stamps: list[float] = []  # when the wait looked (failing)

    def stamp() -> Any:
        if failing:
            stamps.append(time.monotonic())
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_stamp()

    def current(names: Any = None) -> int:  # (the status watcher's look fails alike)
        if failing:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real_current(names)

    monkeypatch.setattr(s.gens, "stamp", stamp)
    monkeypatch.setattr(s.gens, "current", current)
    with structlog.testing.capture_logs() as logs:
        task = asyncio.ensure_future(s.wait_for_takeover())
        try:
            await until(lambda: len(stamps) >= 6 or task.done(), timeout=10)
            assert not task.done(), task.exception()
            assert "Stale file handle" in (s.status()["journal_error"] or "") and not s._healthy()
            gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
            assert gaps[-1] >= 0.4, gaps  # backed off (no pause between the first few: 50 ms)
            failing = False
            assert await asyncio.wait_for(task, 5) == "the address is here and no CP ever served this journal"
            assert s.storage_error is None
        finally:
            if not task.done():
                task.cancel()
    said = [e["event"] for e in logs if e["event"].startswith("journal_storage")]
    assert said == ["journal_storage_error", "journal_storage_answers"], said


async def test_a_stop_that_comes_during_the_last_poll_takes_nothing_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (only a flag) arrives while the poll that would decide to take over runs: the CP
    stops, without raising the journal's generation, recovering and listening first."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    assert s.gens is not None

    def stamp_then_stop() -> Any:
        s.should_exit.set()
        return (0, 0)  # no CP ever served: a reason to take over, were it not stopping

    monkeypatch.setattr(s.gens, "stamp", stamp_then_stop)
    assert await asyncio.wait_for(s.serve(), 10) == 0
    assert s.cp is None and not list(journal.glob("gen-*")), list(journal.iterdir())


def _hanging_stamp() -> tuple[Any, Any, Any]:
    """A stand-in for `Generations.stamp` on a hung mount: (it, `hung`: set it to let the look
    return, `entered`: set once a look is under way)."""
    import threading

    hung, entered = threading.Event(), threading.Event()

    def stamp() -> Any:
        entered.set()
        hung.wait(30)  # the mount hangs
        return (1, 0)

    return stamp, hung, entered


async def test_a_waiting_cp_whose_journal_mount_hangs_stops_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its poll of the journal on a hung NFS mount never returns: a stop (SIGTERM: the flag)
    must not wait for it. serve() returns at once; the poll's thread is left behind."""

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    stamp, hung, entered = _hanging_stamp()

    assert s.gens is not None
    monkeypatch.setattr(s.gens, "stamp", stamp)
    task = asyncio.ensure_future(s.serve())
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        t0 = time.monotonic()
        s.should_exit.set()
        assert await asyncio.wait_for(task, 5) == 0
        assert time.monotonic() - t0 < 2.0
        assert s.cp is None
    finally:
        hung.set()
        if not task.done():
            task.cancel()


async def test_a_waiting_cps_status_and_health_answer_while_its_storage_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The journal's storage (an NFS mount) hangs under a waiting CP: its status and /health are
    read from the last look, taken on a thread, so they still answer at once (keepalived's track
    script and hsbctl status would otherwise hang with the whole event loop). /health fails once a
    look has gone unanswered for STORAGE_STUCK (it could not take over), and passes once it answers."""
    import threading

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: False)  # (the address elsewhere: only the storage is looked at)
    monkeypatch.setattr(waiting, "STORAGE_POLL", 0.02)
    monkeypatch.setattr(waiting, "STORAGE_STUCK", 0.3)
    assert s.gens is not None
    hung, entered = threading.Event(), threading.Event()
    real = s.gens.current
    looks = 0

    def current(names: Any = None) -> int:
        nonlocal looks
        looks += 1
        if looks == 3:  # the third look hangs: the mount stops answering
            entered.set()
            hung.wait(30)
        return 7 if looks < 3 else real(names)

    monkeypatch.setattr(s.gens, "current", current)
    task = asyncio.ensure_future(s.serve())
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        t0 = time.monotonic()
        st = s.status()
        assert time.monotonic() - t0 < 0.2
        assert st["state"] == "waiting" and st["journal_generation"] == 7 and st["journal_missing"] is False
        assert s._healthy()  # not unanswered for long yet
        await until(lambda: not s._healthy(), timeout=5)
        assert s.status()["journal_unanswered_s"] >= 0.3
        hung.set()
        await until(lambda: s._healthy() and s.status()["journal_unanswered_s"] is None, timeout=5)
        assert s.status()["journal_generation"] == 0  # the look that answered: no generation file yet
        s.should_exit.set()
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        hung.set()
        if not task.done():
            task.cancel()


async def test_a_waiting_cp_whose_storage_fails_once_says_so_and_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One look at the journal's storage fails (ESTALE after the NFS server restarted, EIO): the
    watcher of a waiting CP died of it, silently, and the look it left unanswered kept /health
    failing for good (keepalived's track script held the machine in FAULT, so it could never take
    over). The error is said in status and /health fails while it lasts; the next look that
    answers makes it healthy again."""
    import errno

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp import waiting
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    monkeypatch.setattr(waiting, "holds_address", lambda *a: False)
    monkeypatch.setattr(waiting, "STORAGE_POLL", 0.02)
    monkeypatch.setattr(waiting, "STORAGE_STUCK", 0.3)
    assert s.gens is not None
    real = s.gens.current
    looks = 0
    failing = True

    def current(names: Any = None) -> int:
        nonlocal looks
        looks += 1
        if looks >= 3 and failing:
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(names)

    monkeypatch.setattr(s.gens, "current", current)
    task = asyncio.ensure_future(s.serve())
    try:
        await until(lambda: s.status().get("journal_error") is not None, timeout=5)
        assert "Stale file handle" in s.status()["journal_error"] and not s._healthy()
        seen = looks
        await until(lambda: looks > seen + 2, timeout=5)  # still looking
        failing = False
        await until(lambda: s._healthy() and s.status()["journal_error"] is None, timeout=5)
        assert s.status()["journal_unanswered_s"] is None
        s.should_exit.set()
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        if not task.done():
            task.cancel()


async def test_the_loop_answers_while_a_cp_takes_its_journal_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Taking the journal over reads it back and writes the snapshot: seconds for a journal that
    holds much. It ran on the event loop, so /health, status and the watchdog went unanswered
    meanwhile (keepalived's track script failed and took the address away in the middle of the
    takeover). The file work runs on a thread: the loop answers."""

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    entered, release = _held_recovery(monkeypatch, 3)

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(s.startup())
    try:
        assert await loop.run_in_executor(None, entered.wait, 10)
        assert not release.is_set()
        t0 = loop.time()
        await asyncio.sleep(0.05)
        assert loop.time() - t0 < 0.5, "the loop did not run while the journal was read"
        st = (await request(*addr(s.bound["admin"]), SECRET, {"t": "status"}, timeout=2))["data"]
        assert st["cp_state"] == "taking_over", st
        assert not release.is_set(), "answered only after the recovery"
        assert s._healthy() and s.takeover_step is not None and s.takeover_step[0] == "recovery"
        s.takeover_step_s = 0.2  # a step past its bound (a hung mount): /health fails, the watchdog pings stop
        await until(lambda: not s._healthy(), timeout=5)
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None and s.took_over["generation"] == 1
    finally:
        release.set()
        if not task.done():
            task.cancel()
        await s.shutdown()


def _watchdog_pings(sd: Any) -> int:
    """The WATCHDOG=1 pings waiting on the test's systemd socket `sd` (non-blocking), read."""
    n = 0
    while True:
        try:
            n += sd.recv(256).count(b"WATCHDOG=1")
        except BlockingIOError:
            return n


def _held_recovery(monkeypatch: pytest.MonkeyPatch, most: float) -> tuple[Any, Any]:
    """The takeover's read of the journal held on its thread (at most `most` s) until the test
    lets it go: (entered, release), two threading.Events."""
    import threading

    from hsb.cp import taking_over

    entered, release = threading.Event(), threading.Event()
    real = taking_over.recover

    def slow_recover(d: Path, truncate: bool = True) -> Any:
        entered.set()
        release.wait(most)  # (on the takeover's thread: without it, the loop itself waits here)
        return real(d, truncate=truncate)

    monkeypatch.setattr(taking_over, "recover", slow_recover)
    return entered, release


def _taken_over_or_not(s: Any, task: Any, release: Any, sd: Any) -> None:
    """The end of a test of a takeover held on a thread: let it go, cancel what is left, close."""
    release.set()
    if not task.done():
        task.cancel()
    sd.close()
    if s.cp is not None:
        s.cp.journal.close()


def _waiting_cp_under_systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """A CP of `takeover = "on_wake"` (not started) whose systemd is a datagram socket of the
    test's, with WatchdogSec=0.1 (a ping every 0.05 s): (the server, that socket, non-blocking)."""
    import socket

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    sock_path = tmp_path / "notify.sock"
    sd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sd.bind(str(sock_path))
    sd.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    return srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml")), sd


async def test_a_waiting_cp_pings_systemds_watchdog_while_its_journal_mount_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung mount stops the waiting CP's polls, not its event loop: the watchdog (WatchdogSec)
    is still pinged, as a serving CP's tick pings it while its journal hangs. Before, the pings
    came from the polling loop itself, so systemd killed the waiting CP and restarted it onto the
    same hung mount (its /health failing already says it cannot take over)."""

    from hsb.cp import waiting
    from tests.support.logrec import RecordingLog

    s, sd = _waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    stamp, hung, entered = _hanging_stamp()

    def pings() -> int:
        return _watchdog_pings(sd)

    assert s.gens is not None
    monkeypatch.setattr(s.gens, "stamp", stamp)
    task = asyncio.ensure_future(s.serve())
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        pings()  # those sent before the mount hung
        seen = 0

        def enough() -> bool:
            nonlocal seen
            seen += pings()
            return seen >= 5

        await until(enough, timeout=5)
        assert not task.done() and s.cp is None  # still waiting, never took over
        # a SIGHUP meanwhile is acted on too: the config file checked now, not once the mount answers
        rec = RecordingLog()
        monkeypatch.setattr(waiting, "log", rec)
        toml = tmp_path / "cp.toml"
        toml.write_text(toml.read_text().replace("[cp]\n", "[cp]\nheld_bound = 7\n", 1))
        s._sighup()
        await until(lambda: rec.events("config_checked"), timeout=5)
        assert rec.events("config_checked")[0]["applies_when_serving"] == ["cp.held_bound"]
        s.should_exit.set()
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        hung.set()
        sd.close()
        if not task.done():
            task.cancel()


async def test_a_waiting_cp_whose_journal_mount_hangs_from_the_start_is_ready_and_says_the_storage_hangs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mount hangs already when the waiting CP starts: its first look at the storage never
    returns. It still tells systemd it is ready (READY=1 came only after that look: the start
    timeout killed it) and pings the watchdog, and /health fails once the look has gone
    unanswered for STORAGE_STUCK (it could not take over)."""
    import threading

    from hsb.cp import waiting

    monkeypatch.setattr(waiting, "STORAGE_STUCK", 0.3)
    s, sd = _waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(waiting, "holds_address", lambda *a: False)
    hung = threading.Event()

    def current(names: Any = None) -> int:
        hung.wait(30)  # the mount hangs from the first look on
        return 0

    assert s.gens is not None
    monkeypatch.setattr(s.gens, "current", current)
    got: list[bytes] = []

    def said(what: bytes) -> bool:
        while True:
            try:
                got.append(sd.recv(256))
            except BlockingIOError:
                break
        return sum(what in g for g in got) >= (5 if what == b"WATCHDOG=1" else 1)

    task = asyncio.ensure_future(s.serve())
    try:
        await until(lambda: said(b"READY=1"), timeout=5)
        await until(lambda: said(b"WATCHDOG=1"), timeout=5)
        await until(lambda: not s._healthy(), timeout=5)
        assert s.status()["journal_unanswered_s"] >= 0.3 and s.cp is None
        s.should_exit.set()
        assert await asyncio.wait_for(task, 5) == 0
    finally:
        hung.set()
        sd.close()
        if not task.done():
            task.cancel()


async def test_a_serving_cps_health_fails_once_its_generation_check_has_not_come_back(tmp_path: Path) -> None:
    """An idle serving CP whose journal's mount hangs writes nothing, so its journal still says
    ok, and /health answered 200: keepalived kept the address on a CP that renews no lease (its
    generation check hangs) until traffic stalled a write. It fails once no clean check has come
    back for fresh_s, as the lease answers stop."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig
    from hsb.cp.journal.store import boot_now

    cfg = load(cp_config(tmp_path, terminals=2, journal=str(tmp_path / "j")), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    await s.startup()
    try:
        assert s.cp is not None
        j = s.cp.journal
        assert s._healthy() and j.checked_at is not None
        j.checked_at = boot_now() - j.fresh_s - 0.1  # its last clean check, too long ago (the next one hangs)
        assert j.state == "ok" and not s._healthy()
        j.checked_at = boot_now()  # a check came back
        assert s._healthy()
    finally:
        await s.shutdown()


async def test_a_reload_asked_while_waiting_is_applied_before_the_cp_listens(tmp_path: Path) -> None:
    """A SIGHUP to a waiting CP only checks its file then; the rest applied once it serves, at its
    first tick, after its listeners opened: a terminal added meanwhile was refused as unknown,
    and its session the active named at its registration closed. Applied before it listens."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    path = cp_config(tmp_path, terminals=2, journal=str(tmp_path / "j"))
    s = srv.CPServer(load(path, CPConfig), SECRET, str(path))
    path.write_text(path.read_text().replace("count = 2", "count = 3"))  # a terminal added
    s._sighup()  # (while it waited: checked, applied once it serves)
    await s.startup()
    try:
        assert s.cp is not None and "T00003" in s.cp.terms
    finally:
        await s.shutdown()


async def test_a_cp_taking_its_journal_over_pings_the_watchdog_while_each_step_keeps_to_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal read back for seconds (a big one) went unpinged, and systemd (WatchdogSec)
    killed the CP in the middle of its takeover; a step past its bound (a hung mount) stops the
    pings, as /health fails then."""

    s, sd = _waiting_cp_under_systemd(tmp_path, monkeypatch)
    entered, release = _held_recovery(monkeypatch, 10)

    def pings() -> int:
        return _watchdog_pings(sd)

    task = asyncio.ensure_future(s.take_over("woken"))
    try:
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 10)
        assert s.takeover_step is not None and s.takeover_step[0] == "recovery" and s.takeover_step[2] > 0  # (its bytes' time)
        pings()
        seen = [0]
        await until(lambda: (seen.__setitem__(0, seen[0] + pings()), seen[0] >= 2)[1], timeout=5)  # pinged while the journal is read
        s.takeover_step_s = 0.1  # past its bound now
        await until(lambda: not s._takeover_on_time(), timeout=5)  # (no turn of the ping task after this pings)
        pings()
        await asyncio.sleep(0.6)  # a window of twelve of WatchdogSec's half intervals: not one ping in it
        assert pings() == 0, "pinged while a step hung"
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None
    finally:
        _taken_over_or_not(s, task, release, sd)


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
    entered, release = _held_recovery(monkeypatch, 10)

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


async def test_a_takeovers_first_looks_at_the_storage_run_off_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The takeover asks first whether the journal is there and how its storage is mounted: on
    the event loop, a hung mount stopped the loop there (no /health, no status, no watchdog ping
    for keepalived and systemd to act on). They run on the takeover's timed thread steps now."""
    import threading

    from hsb.cp import taking_over

    s, sd = _waiting_cp_under_systemd(tmp_path, monkeypatch)
    entered, release = threading.Event(), threading.Event()

    def hung(path: str) -> str | None:
        entered.set()
        release.wait(10)
        return None

    monkeypatch.setattr(taking_over, "nfs_fencing_problem", hung)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(s.take_over("woken"))
    try:
        assert await loop.run_in_executor(None, entered.wait, 10)
        t0 = loop.time()
        await asyncio.sleep(0.05)
        assert loop.time() - t0 < 0.5, "the loop did not run while the storage was asked"
        assert s.takeover_step is not None and s.takeover_step[0] == "mount options"
        s.takeover_step_s = 0.1  # past its bound: the watchdog's pings stop, as for any hung step
        await until(lambda: not s._takeover_on_time(), timeout=5)
        release.set()
        await asyncio.wait_for(task, 10)
        assert s.cp is not None
    finally:
        _taken_over_or_not(s, task, release, sd)


async def test_a_takeover_step_past_its_bound_stops_the_takeovers_beat(tmp_path: Path) -> None:
    """A step of the takeover past its bound fails /health and stops the watchdog's pings, so
    keepalived moves the address: the takeover's beat stops too, or the CP woken on the other
    machine would see a live one and defer for ever, nobody serving."""
    import time as _time

    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal)), CPConfig)
    s = srv.CPServer(cfg, SECRET, str(tmp_path / "cp.toml"))
    assert s.gens is not None
    gen = s.gens.take()
    path = journal / gen_name(gen)
    os.utime(path, (0, 0))
    s.takeover_step, s.takeover_step_s = ("recovery", _time.monotonic() - 10, 0.0), 1.0  # hung past its bound
    big = 160 * 1024 * 1024  # a journal of 160 MiB gets 10 s more to be read back: not past its bound yet
    assert not s._takeover_on_time() and (
        s.__setattr__("takeover_step", ("recovery", _time.monotonic() - 10, big / srv.BULK_RATE)) or s._takeover_on_time()
    )
    s.takeover_step = ("recovery", _time.monotonic() - 10, 0.0)
    task = asyncio.ensure_future(s._beat_while_taking_over(gen))
    try:
        await asyncio.sleep(0.4)  # four beats' time: a window in which none may come
        assert os.stat(path).st_mtime == 0, "beat while a step hung"
        s.takeover_step = None  # the step ended: beats again
        await until(lambda: os.stat(path).st_mtime > 0, timeout=5)
    finally:
        task.cancel()
