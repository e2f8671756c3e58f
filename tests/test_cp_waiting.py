"""A CP waiting to take over (`takeover = "on_wake"`; docs/cp-journal.md "Generations"), in
process: a storage error while it polls said as the journal's and looked at again, a stop during
its last poll taking nothing over, a hung journal mount (it stops when asked, its status and
health answer, systemd's watchdog is pinged, it is ready and says the storage hangs), a storage
failure it recovers from, and a reload asked meanwhile applied before it listens.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import SECRET, cp_config, until
from tests.support.waitingcp import waiting_cp_under_systemd, watchdog_pings

pytestmark = pytest.mark.timeout(90)


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


async def test_a_waiting_cp_pings_systemds_watchdog_while_its_journal_mount_hangs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung mount stops the waiting CP's polls, not its event loop: the watchdog (WatchdogSec)
    is still pinged, as a serving CP's tick pings it while its journal hangs. Before, the pings
    came from the polling loop itself, so systemd killed the waiting CP and restarted it onto the
    same hung mount (its /health failing already says it cannot take over)."""

    from hsb.cp import waiting
    from tests.support.logrec import RecordingLog

    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
    monkeypatch.setattr(waiting, "holds_address", lambda *a: True)
    stamp, hung, entered = _hanging_stamp()

    def pings() -> int:
        return watchdog_pings(sd)

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
    s, sd = waiting_cp_under_systemd(tmp_path, monkeypatch)
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
