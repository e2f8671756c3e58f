"""Edges of a CP waiting to take over (hsb.cp.waiting, `takeover = "on_wake"`), all in-process,
one test for each thing a mutation audit found no test for: keepalived's state file read as
master however it spells it, and no wake from a file that is missing, says otherwise or is not
configured; a woken CP takes over at once from a CP whose last beat is old or that never beat,
defers (said once) while the serving CP beats, and says nothing of it when that CP stopped just before the wake, and never takes over a beating CP for being
woken or for waiting long; a SIGUSR1 while the address is elsewhere is spent, not kept for when
it comes, and a keepalived master without the address is not said at every poll; a SIGUSR1 during a look
that failed is kept for the next; an address check that cannot be made is said once a minute;
the wildcard is held on a machine without IPv6.
(Their other cases: tests/test_cp_waiting.py, tests/test_cp_address.py, tests/test_cp_generations.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import structlog

from hsb.cp import waiting
from tests.support.procs import SECRET, cp_config, until

pytestmark = pytest.mark.timeout(30)
REAL_HOLDS = waiting.holds_address


class Journal:
    """What the waiting CP sees of the address and of the serving CP's heartbeat, set by the test."""

    def __init__(self) -> None:
        self.held = True  # this machine holds the virtual address
        self.polls = 0  # the wait's looks at the address
        self.beat_ns = time.time_ns() - 60 * 10**9  # the serving CP's last beat (0: never); a minute ago
        self.beating = False  # each look finds a new beat
        self.failing = 0  # looks at the heartbeat still to fail (ESTALE)
        self.failed = False  # one failed
        self.recovered_at: float | None = None  # the first look that answered after one failed (monotonic)

    def holds(self, addr: str, unknown: bool = True) -> bool:
        self.polls += 1
        return self.held

    def stamp(self) -> tuple[int, int]:
        if self.failing:
            self.failing -= 1
            self.failed = True
            raise OSError(errno.ESTALE, "Stale file handle")
        if self.failed and self.recovered_at is None:
            self.recovered_at = time.monotonic()
        return 1, time.time_ns() if self.beating else self.beat_ns


def waiting_cp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **cp: Any) -> tuple[Any, Journal]:
    """A CP of `takeover = "on_wake"` (not started) whose journal one other CP served (generation 1)."""
    from hsb.config import load
    from hsb.cp import server as srv
    from hsb.cp.config import CPConfig

    journal = tmp_path / "j"
    journal.mkdir()
    cp.setdefault("takeover_stale", 30.0)  # (not the stillness: a test sees the woken decision)
    s = srv.CPServer(
        load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake", **cp), CPConfig), SECRET, str(tmp_path / "cp.toml")
    )
    j = Journal()
    monkeypatch.setattr(waiting, "holds_address", j.holds)
    assert s.gens is not None
    monkeypatch.setattr(s.gens, "stamp", j.stamp)
    return s, j


async def waits_on(s: Any, j: Journal, task: asyncio.Future[str | None], polls: int = 12) -> None:
    """The wait looked `polls` times more and has not taken over."""
    seen = j.polls
    await until(lambda: j.polls >= seen + polls or task.done(), timeout=10)
    assert not task.done(), task.result()


async def ended(s: Any, task: asyncio.Future[str | None]) -> None:
    s.should_exit.set()
    assert await asyncio.wait_for(task, 5) is None


@contextlib.asynccontextmanager
async def takeover_wait(s: Any, may_end: bool = False) -> AsyncIterator[asyncio.Future[str | None]]:
    """The CP's wait for a takeover, running; ended by a stop after the body (`ended`), but for
    one the body saw end (`may_end`: a takeover it waited for)."""
    task = asyncio.ensure_future(s.wait_for_takeover())
    try:
        yield task
    finally:
        if not (may_end and task.done()):
            await ended(s, task)


@pytest.mark.parametrize("said", ["MASTER\n", "VI_1 master\n", "INSTANCE VI_1 MASTER"])
async def test_a_cp_woken_by_keepalived_takes_over_at_once_from_a_cp_whose_last_beat_is_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str
) -> None:
    wake = tmp_path / "keepalived.state"
    wake.write_text(said)
    s, _ = waiting_cp(tmp_path, monkeypatch, wake_file=str(wake))
    reason = await asyncio.wait_for(s.wait_for_takeover(), 5)
    assert reason is not None and reason.startswith("woken holding the address; the CP of generation 1 last beat 6"), reason


@pytest.mark.parametrize("said", [None, "BACKUP\n", "MASTER -> BACKUP", "missing"])
async def test_a_cp_keepalived_did_not_make_master_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, said: str | None) -> None:
    """No wake_file configured, one missing, or one that says another state: not woken, so a
    serving CP whose last beat is old is not taken over before takeover_stale of stillness."""
    wake = tmp_path / "keepalived.state"
    if said is not None and said != "missing":
        wake.write_text(said)
    s, j = waiting_cp(tmp_path, monkeypatch, **({} if said is None else {"wake_file": str(wake)}))
    async with takeover_wait(s) as task:
        await waits_on(s, j, task)


async def test_a_woken_cp_takes_over_a_journal_whose_cp_never_beat(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.beat_ns = 0  # (the generation file's mtime unknown: never beaten)
    s._wake()  # SIGUSR1
    reason = await asyncio.wait_for(s.wait_for_takeover(), 5)
    assert reason == "woken holding the address; the CP of generation 1 last beat never", reason


async def test_a_cp_woken_while_the_serving_one_beats_defers_said_once_and_waits_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Split brain, not a failover: the woken CP says it defers, once, and waits; waiting longer
    than takeover_stale is no reason to take over a CP whose beat keeps moving. Nor longer than
    split_brain_takeover, for a MASTER written before it started (the CP of a machine whose
    keepalived died, superseded and started again: the wake file still says MASTER; else the two
    would take the journal from each other in turn: tests/test_cp_split_brain_takeover.py)."""
    wake = tmp_path / "keepalived.state"
    wake.write_text("MASTER\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(wake), takeover_stale=0.2, split_brain_takeover=0.2)
    j.beating = True
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            started = time.monotonic()
            await waits_on(s, j, task, polls=20)
            assert time.monotonic() - started > 3 * 0.2
    assert [e["event"] for e in logs].count("cp_wake_deferred") == 1, logs
    said = [e for e in logs if e["event"] == "cp_wake_deferred"]
    assert said[0]["takeover_in_s"] is None, said


async def test_a_cp_woken_just_after_the_last_beat_takes_over_when_it_is_stale_without_deferring(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keepalived's wake (its state file) can come before the lost CP's last beat is
    takeover_stale old (its adverts and beats are of different phases; keepalived's priority
    near 255 makes its skew time ~0): that is a failover, not a split brain. The woken CP looks
    again when the beat is due to be stale, not a poll later, and says nothing of deferring."""
    monkeypatch.setattr(waiting, "WAIT_POLL", 2.0)  # (a poll later would be 2 s)
    wake = tmp_path / "keepalived.state"
    wake.write_text("MASTER\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(wake), takeover_stale=0.3)
    j.beat_ns = time.time_ns() - 150 * 10**6  # the last beat 0.15 s ago: stale in 0.15 s
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        reason = await asyncio.wait_for(s.wait_for_takeover(), 5)
        took = time.monotonic() - started
    assert reason is not None and reason.startswith("woken holding the address; the CP of generation 1 last beat 0.3"), reason
    assert 0.1 <= took < 1.0, took
    assert "cp_wake_deferred" not in [e["event"] for e in logs], logs


async def test_a_cp_woken_just_after_the_serving_one_stopped_takes_over_without_a_split_brain_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ordinary failover: keepalived makes this machine master a moment after the serving CP
    stopped (released, killed), its last beat younger than takeover_stale. The CP waits for the
    beat to age and takes over; it says no cp_wake_deferred ("split brain?"), which is for a CP
    that beats again after the wake."""
    wake = tmp_path / "keepalived.state"
    wake.write_text("MASTER\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(wake), takeover_stale=0.5)
    j.beat_ns = time.time_ns()  # the last beat, just now; no more
    with structlog.testing.capture_logs() as logs:
        reason = await asyncio.wait_for(s.wait_for_takeover(), 5)
    beat = reason.removeprefix("woken holding the address; the CP of generation 1 last beat ") if reason else ""
    assert beat.endswith(" s ago") and float(beat.removesuffix(" s ago")) >= 0.5, reason
    assert "cp_wake_deferred" not in [e["event"] for e in logs], logs


async def test_a_sigusr1_while_the_address_is_elsewhere_is_spent_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Woken without the address: said (cp_wake_ignored), once; when the address comes later,
    that old wake does not make this CP take over (takeover_stale of stillness still applies)."""
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.held = False
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            await waits_on(s, j, task, polls=2)
            s._wake()
            await waits_on(s, j, task, polls=5)
            assert [e["event"] for e in logs].count("cp_wake_ignored") == 1, logs
            j.held = True
            await waits_on(s, j, task)


async def test_a_keepalived_master_without_the_address_is_not_said_at_every_poll(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wake = tmp_path / "keepalived.state"
    wake.write_text("MASTER\n")
    s, j = waiting_cp(tmp_path, monkeypatch, wake_file=str(wake))
    j.held = False
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            await waits_on(s, j, task)
    assert "cp_wake_ignored" not in [e["event"] for e in logs], logs


async def test_a_sigusr1_during_a_look_that_failed_is_kept_for_the_next(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.failing = 1  # (ESTALE: the NFS server restarting)
    s._wake()
    reason = await asyncio.wait_for(s.wait_for_takeover(), 5)
    assert reason is not None and reason.startswith("woken holding the address"), reason
    assert j.failing == 0


def test_an_address_check_that_cannot_be_made_is_said_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_socket(*_: object, **__: object) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(waiting, "_check_failed_at", time.monotonic() - 61.0)
    with structlog.testing.capture_logs() as logs:
        assert [waiting.holds_address("10.255.255.9:7000", False) for _ in range(3)] == [False] * 3
    said = [e for e in logs if e["event"] == "address_check_failed"]
    assert len(said) == 1 and said[0]["assumed"] == "not held", logs


def test_the_wildcard_is_held_on_a_machine_without_ipv6(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.socket

    def no_ipv6(family: int = socket.AF_INET, *a: Any, **kw: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *a, **kw)

    monkeypatch.setattr(socket, "socket", no_ipv6)
    assert waiting.holds_address("[::]:7000") is True
    assert waiting.holds_address("[fd00::10]:7000") is False


async def test_a_journal_not_mounted_is_said_once_and_in_status_until_it_is_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared storage not mounted (the journal directory missing): said once however many
    looks find it missing, in status (waiting, missing, no generation, no error); once there,
    taken over."""
    s, j = waiting_cp(tmp_path, monkeypatch)
    journal = Path(s.cfg.cp.journal)
    journal.rmdir()
    monkeypatch.setattr(s.gens, "stamp", lambda: (0, 0))
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s, may_end=True) as task:
            await waits_on(s, j, task)
            st = s.status()
            assert (st["cp_state"], st["journal_missing"], st["journal_generation"], st["journal_error"]) == ("waiting", True, None, None), st
            journal.mkdir()
            assert await asyncio.wait_for(task, 5) == "the address is here and no CP ever served this journal"
    assert [e["event"] for e in logs].count("cp_journal_missing") == 1, logs


async def test_a_waiting_cp_that_cannot_check_the_address_does_not_take_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket to be had (the open-files limit): whether this machine holds the address is not
    known, and a waiting CP waits (it would take the journal over where the address is not)."""

    s, j = waiting_cp(tmp_path, monkeypatch)
    looks = 0

    def no_socket(*_: object, **__: object) -> socket.socket:
        nonlocal looks
        looks += 1
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(waiting, "holds_address", REAL_HOLDS)
    monkeypatch.setattr(socket, "socket", no_socket)
    monkeypatch.setattr(s.gens, "stamp", lambda: (0, 0))  # (no CP ever served it: taken over at once where held)
    async with takeover_wait(s) as task:
        await until(lambda: looks >= 10 or task.done(), timeout=10)
        assert not task.done(), task.result()


async def test_a_journal_unmounted_again_is_said_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, j = waiting_cp(tmp_path, monkeypatch)
    journal = Path(s.cfg.cp.journal)
    journal.rmdir()
    j.beating = True  # (mounted: another CP serves it)
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            await waits_on(s, j, task, polls=3)
            journal.mkdir()
            await waits_on(s, j, task, polls=3)
            journal.rmdir()
            await until(lambda: [e["event"] for e in logs].count("cp_journal_missing") == 2 or task.done(), timeout=5)
            assert not task.done()


async def test_a_storage_that_answers_even_with_an_error_is_not_said_unanswered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Between two looks at the journal's storage (one answered, one failed with ESTALE), status
    never says the storage hangs (journal_unanswered_s), and the error is said with its type."""
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.held = False
    monkeypatch.setattr(waiting, "STORAGE_POLL", 0.3)
    monkeypatch.setattr(waiting, "STORAGE_STUCK", 0.05)
    assert s.gens is not None
    real = s.gens.current
    looks, failing = 0, False

    def current(names: Any = None) -> int:
        nonlocal looks
        looks += 1
        if failing:
            raise OSError(errno.ESTALE, "Stale file handle")
        return cast(int, real(names))

    monkeypatch.setattr(s.gens, "current", current)
    unanswered: list[float] = []

    def sample(until_looks: int) -> bool:
        unanswered.extend(t for t in [s.status()["journal_unanswered_s"]] if t is not None)
        return looks >= until_looks

    async with takeover_wait(s):
        await until(lambda: sample(3), timeout=10)
        failing, target = True, looks + 3
        await until(lambda: sample(target), timeout=10)
        assert s.status()["journal_error"] == f"OSError: {OSError(errno.ESTALE, 'Stale file handle')}"
        assert unanswered == [], unanswered


async def test_a_sighup_while_waiting_reloads_the_certificates_and_checks_the_config_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.held = False
    reloads: list[Any] = []
    monkeypatch.setattr(waiting, "reload_tls", lambda t, name: reloads.append((t, name)))
    with structlog.testing.capture_logs() as logs:
        async with takeover_wait(s) as task:
            await waits_on(s, j, task, polls=2)
            s._sighup()
            await until(lambda: "config_checked" in [e["event"] for e in logs], timeout=5)
            await waits_on(s, j, task)  # (the chores' turns go on meanwhile)
    assert [e["event"] for e in logs].count("config_checked") == 1 and reloads == [(s.tls, s.cfg.cp.name)], (logs, reloads)


async def test_a_heartbeat_not_looked_at_is_not_a_heartbeat_seen_still(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Looks that failed (ESTALE, for longer than takeover_stale) say nothing of the serving CP's
    heartbeat: once the storage answers, the beat must stand still takeover_stale more before
    this CP takes over, not at once."""
    s, j = waiting_cp(tmp_path, monkeypatch, takeover_stale=0.6)
    async with takeover_wait(s, may_end=True) as task:
        await waits_on(s, j, task, polls=2)
        j.failing = 5  # (backing off: 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s)
        reason = await asyncio.wait_for(task, 10)
        took_over = time.monotonic()
    assert reason == "the address is here and the CP of generation 1 has not beaten for 0.6 s", reason
    assert j.recovered_at is not None and took_over - j.recovered_at >= 0.5, (j.recovered_at, took_over)


async def test_a_heartbeat_still_while_the_address_was_elsewhere_counts_from_its_return(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The address went away (keepalived moved it) and came back: the stillness of the serving
    CP's heartbeat is counted from its return, not from before it went."""
    s, j = waiting_cp(tmp_path, monkeypatch, takeover_stale=0.6)
    async with takeover_wait(s, may_end=True) as task:
        await waits_on(s, j, task, polls=2)
        j.held = False
        await waits_on(s, j, task, polls=16)  # (0.8 s, past takeover_stale)
        j.held, returned = True, time.monotonic()
        reason = await asyncio.wait_for(task, 10)
        took_over = time.monotonic()
    assert reason == "the address is here and the CP of generation 1 has not beaten for 0.6 s", reason
    assert took_over - returned >= 0.5, took_over - returned


async def test_a_heartbeat_still_for_takeover_stale_is_taken_over_then_not_later(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, _ = waiting_cp(tmp_path, monkeypatch, takeover_stale=1.0)
    started = time.monotonic()
    reason = await asyncio.wait_for(s.wait_for_takeover(), 10)
    took = time.monotonic() - started
    assert reason == "the address is here and the CP of generation 1 has not beaten for 1 s", reason
    assert 1.0 <= took < 2.0, took  # (a look every 50 ms; twice takeover_stale would be 2 s at least)


async def test_a_sigusr1_makes_one_look_at_once_not_a_busy_wait(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Woken while the serving CP beats (deferred): the wait goes on looking every 50 ms."""
    s, j = waiting_cp(tmp_path, monkeypatch)
    j.beating = True
    async with takeover_wait(s) as task:
        await waits_on(s, j, task, polls=2)
        s._wake()
        started = time.monotonic()
        await waits_on(s, j, task, polls=10)
        assert time.monotonic() - started >= 0.35, time.monotonic() - started


@pytest.mark.parametrize(("key", "errno_", "lost"), [("cp.host_listen", errno.EADDRNOTAVAIL, True), ("cp.terminal_listen", errno.EADDRINUSE, False)])
async def test_a_takeovers_bind_failing_is_the_address_lost_only_for_its_listeners_and_eaddrnotavail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str, errno_: int, lost: bool
) -> None:
    """The host listener on the virtual address refused with EADDRNOTAVAIL: the address left (a
    release, exit 0); the port taken (EADDRINUSE) is another hsbcpd's, an error (73)."""
    from hsb.ops.listen import ListenError

    s, _ = waiting_cp(tmp_path, monkeypatch, terminal_listen="192.0.2.1:7000", host_listen="192.0.2.1:7001")
    exc = ListenError(key, "192.0.2.1:7001" if key == "cp.host_listen" else "192.0.2.1:7000", OSError(errno_, "refused"))
    assert await s._address_lost(exc) is lost


async def test_a_config_checked_while_waiting_says_what_needs_a_restart_and_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP while waiting: a host_timeout the running host_lease does not allow waits for a
    restart (said so, config_reload_incomplete); a terminal added applies once serving, nothing
    said of a restart; either way, the config checked is kept for a worker forked again."""
    from types import SimpleNamespace

    from hsb.cp import supervise

    s, _ = waiting_cp(tmp_path, monkeypatch, host_timeout=0.5)
    kept: list[Any] = []
    monkeypatch.setattr(supervise, "APPLIED", SimpleNamespace(store=kept.append))
    path = Path(s.config_path)
    text = path.read_text()
    lease = (("host_timeout = 0.5", "host_timeout = 0.4\nhost_lease = 0.05"), ["cp.host_timeout", "cp.host_lease"])
    for change, restart in [lease, (("count = 2", "count = 3"), [])]:
        path.write_text(text.replace(*change))
        with structlog.testing.capture_logs() as logs:
            await s._check_config()
        applies = next(e for e in logs if e["event"] == "config_checked")["applies_when_serving"]
        incomplete = [e["msg"] for e in logs if e["event"] == "config_reload_incomplete"]
        if restart:
            assert "cp.host_timeout" not in applies and len(incomplete) == 1 and all(k in incomplete[0] for k in restart), (applies, incomplete)
        else:
            assert "terminal_groups" in applies and incomplete == [], (applies, incomplete)
        assert kept[-1].cp.host_timeout == (0.4 if restart else 0.5) and kept[-1].terminal_groups[0].count == (2 if restart else 3), kept
