"""hsbcpd's tick loop and reload (hsb/cp/server.py), in-process: what a mutation audit found no test
for. The tick loop beats the journal's generation, runs journal_tick, ends the takeover's own
beats, sends heartbeats every min(host_timeout / 4, 0.1) s to registered hosts only, drives the
tickle list, reloads once per SIGHUP and never two at once, and (on_wake) spends each wake and
stops when the address leaves; a worker forked again leaves its config for the next, once. A
reload applies the held bounds and a host_timeout within the lease rule to the running CP,
adds, changes and removes (only idle) terminals, and leaves its config and new certificates for
a worker forked again. (Startup, listeners and /health: tests/test_cp_server_mutants.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import structlog.testing

from hsb.cp import server as srv
from hsb.cp import supervise
from tests.support.cpcore import cp_core, fake_host
from tests.support.procs import cp_config, until
from tests.test_cp_server_mutants import _cfg, _closed, _server

pytestmark = pytest.mark.timeout(30)


def _hbs(h: Any) -> int:
    h.flush()
    return sum(1 for m in h.transport.frames() if m.get("t") == "hb")


async def test_the_tick_loop_beats_to_registered_hosts_every_tenth_of_a_second_at_most(tmp_path: Path) -> None:
    """Heartbeats go to each authenticated host that registered a role, every min(host_timeout
    / 4, 0.1) s (host_timeout 60: still every 0.1 s, not every 15 s), and not to one that has
    not registered."""
    s = _server(tmp_path, durability="none", host_timeout=60.0)
    s.cp = cp_core(tmp_path, 2)
    s.cp.host_timeout = 60.0
    a = fake_host(s.cp, "host-a", "active", record=True)
    b = fake_host(s.cp, "host-b", None, record=True)
    s.hosts.update({a, b})
    loop = asyncio.ensure_future(s.tick_loop())
    try:
        await until(lambda: _hbs(a) >= 3, timeout=10, what="three heartbeats")
        assert _hbs(b) == 0
    finally:
        s.should_exit.set()
        await asyncio.wait_for(loop, 10)


@contextlib.asynccontextmanager
async def _ticking(s: Any) -> AsyncIterator[asyncio.Future[None]]:
    """`s.tick_loop()` running for the body; stopped after it (should_exit)."""
    loop = asyncio.ensure_future(s.tick_loop())
    try:
        yield loop
    finally:
        s.should_exit.set()
        await asyncio.wait_for(loop, 10)


async def test_the_tick_loop_beats_the_journal_tidies_it_and_ends_the_takeovers_beats(tmp_path: Path) -> None:
    """Serving, the tick loop writes the generation's heartbeat, runs the journal's periodic
    work (journal_tick) and ends the takeover's own heartbeat task (its own beats from now on)."""
    s = _server(tmp_path, durability="none")
    s.cp = cp = cp_core(tmp_path, 2)
    seen = {"heartbeat": 0, "journal_tick": 0}

    def count(name: str) -> Callable[[], None]:
        def f() -> None:
            seen[name] += 1

        return f

    cp.journal.heartbeat = count("heartbeat")
    cp.journal_tick = count("journal_tick")
    beats = asyncio.ensure_future(asyncio.sleep(3600))
    s._takeover_beats = beats
    async with _ticking(s):
        await until(lambda: seen["heartbeat"] >= 2 and seen["journal_tick"] >= 1, what="a beat and a journal tick")
        await until(lambda: beats.done(), what="the takeover's beats ended")
    assert beats.cancelled() and s._takeover_beats is None


async def test_a_cp_on_wake_serving_spends_each_wake_and_stops_when_the_address_leaves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`takeover = "on_wake"`, serving: a SIGUSR1 is spent at the next beat (not kept for a
    later wait); while this machine holds the address it serves on; once the address is gone
    the tick loop ends with the CP asked to exit."""
    held = [True]
    monkeypatch.setattr(srv, "holds_address", lambda addr, *a: held[0])
    s = _server(tmp_path, takeover="on_wake")  # (its CP below: one on a memory journal)
    s.cp = cp_core(tmp_path, 2)
    loop = asyncio.ensure_future(s.tick_loop())
    try:
        s._wake()
        await until(lambda: not s.wake_requested, what="the wake spent")
        assert not loop.done() and not s.should_exit.is_set()
        held[0] = False
        await asyncio.wait_for(loop, 10)
        assert s.should_exit.is_set()
    finally:
        s.should_exit.set()
        await asyncio.wait_for(loop, 10)


def _beating(tmp_path: Path, **cp: Any) -> tuple[Any, list[int]]:
    """A CPServer serving a CP core (memory journal), and its count of tick-loop beats."""
    s = _server(tmp_path, durability="none", **cp)
    s.cp = cp_core(tmp_path, 2)
    beats = [0]

    def beat() -> None:
        beats[0] += 1

    s.cp.journal.heartbeat = beat
    return s, beats


async def _passes(beats: list[int], n: int = 3) -> None:
    """The tick loop beat `n` more times."""
    seen = beats[0]
    await until(lambda: beats[0] >= seen + n, what=f"{n} beats")


async def test_the_tick_loop_reloads_once_per_sighup_and_never_two_at_once(tmp_path: Path) -> None:
    """A SIGHUP while serving: the tick loop starts one reload (not one at every pass); a SIGHUP
    during that reload waits for it to end, then starts the next."""
    s, beats = _beating(tmp_path)
    started: list[asyncio.Event] = []

    async def reload() -> None:
        ev = asyncio.Event()
        started.append(ev)
        await ev.wait()

    s.reload = reload
    async with _ticking(s):
        s._sighup()
        await until(lambda: len(started) == 1, what="the reload started")
        s._sighup()
        await _passes(beats)
        assert len(started) == 1  # (the first still running)
        started[0].set()
        await until(lambda: len(started) == 2, what="the second reload")
        started[1].set()
        await _passes(beats)
        assert len(started) == 2 and not s.reload_requested


@pytest.mark.parametrize("forked_again", [True, False])
async def test_a_worker_forked_again_keeps_its_config_once_after_a_while(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forked_again: bool) -> None:
    """Under a master, a worker forked again (after a crash) leaves the config it runs on for the
    next one, once, KEEP_APPLIED_AFTER_S after it starts serving; a first worker does not."""
    monkeypatch.setattr(srv, "KEEP_APPLIED_AFTER_S", 0.05)
    monkeypatch.setattr(supervise, "FORKED_AGAIN", forked_again)
    s, beats = _beating(tmp_path)
    s.supervisor = {"pid": 1, "restarts": 1 if forked_again else 0}
    kept: list[Any] = []

    async def keep_applied(cfg: Any = None) -> None:
        kept.append(cfg)

    s.keep_applied = keep_applied
    async with _ticking(s):
        if forked_again:
            await until(lambda: kept, what="the config kept")
        await _passes(beats, 4)
    assert kept == ([None] if forked_again else [])


def _reloadable(d: Path, terminals: int = 5, **cp: Any) -> Any:
    """A CPServer serving a CP core made from its own config (memory journal), reloadable from
    d/cp.toml."""
    from hsb.cp.core import CP

    s = _server(d, durability="none", terminals=terminals, **cp)
    s.cp = CP(s.cfg, None)
    return s


def _rewrite(s: Any, d: Path, terminals: int = 5, extra_terms: list[dict[str, Any]] | None = None, **cp: Any) -> None:
    """d/cp.toml rewritten: the same ports and journal, `terminals` T…, and `cp`'s settings."""
    c = s.cfg.cp
    same = {k: getattr(c, k) for k in ("terminal_listen", "host_listen", "admin_listen", "journal")}
    cp_config(d, terminals=terminals, extra_terms=extra_terms, durability="none", **same, **cp)


async def test_a_reload_applies_the_held_bounds_to_the_running_cp_and_rechecks_the_slowed(tmp_path: Path) -> None:
    """SIGHUP with new held_bound, held_bytes and held_total_bytes: the running CP's own bounds
    change (not only the config's), and the terminals it slowed are looked at again at once."""
    s = _reloadable(tmp_path)
    rechecks = [0]
    real = s.cp.recheck_slowed

    def recheck() -> None:
        rechecks[0] += 1
        real()

    s.cp.recheck_slowed = recheck
    _rewrite(s, tmp_path, held_bound=77, held_bytes=123456, held_total_bytes=9876543)
    await s.reload()
    assert (s.cp.held_bound, s.cp.held_bytes, s.cp.held_total_bytes) == (77, 123456, 9876543)
    assert rechecks == [1]


async def test_a_reload_applies_a_host_timeout_only_within_the_lease_rule(tmp_path: Path) -> None:
    """A host_timeout that still exceeds the running host_lease + margin is applied to the
    running CP; one that does not is not (it waits for a restart)."""
    s = _reloadable(tmp_path)
    lease, before = s.cp.host_lease, s.cp.host_timeout
    _rewrite(s, tmp_path, host_timeout=before + 7)
    await s.reload()
    assert s.cp.host_timeout == before + 7
    _rewrite(s, tmp_path, host_timeout=lease)  # (below host_lease + the margin)
    await s.reload()
    assert s.cp.host_timeout == before + 7


async def test_a_reload_adds_changes_and_removes_only_idle_terminals(tmp_path: Path) -> None:
    """A reload: a terminal added to the table is known at once; one kept gets its new
    definition; one removed is forgotten if idle (its standby flip settled and any session
    kept for it at the active closed, before it goes), but kept while connected, holding
    messages or owed replies. The config it runs on becomes the new one, and the config is
    left for a worker forked again; the log says how many were added and removed."""
    s = _reloadable(tmp_path, terminals=5)
    cp = s.cp
    names = sorted(cp.terms)
    assert len(names) == 5
    busy = {names[1]: "conn", names[2]: "held", names[3]: "replies"}
    cp.terms[names[1]].conn = SimpleNamespace(parked=None)
    cp.terms[names[2]].held[1] = SimpleNamespace()
    cp.terms[names[3]].replies[1] = SimpleNamespace()
    calls: list[tuple[str, str, bool]] = []
    cp.settle_flip_for = lambda t: calls.append(("settle", t.name, t.name in cp.terms))
    cp._close_active_session = lambda t, why: calls.append(("close", t.name, why == "disconnect"))
    cp.terms[names[4]].active = SimpleNamespace()  # (a session of its, kept at the active: closed by the stand-in above)
    assert cp.counts.active == 1
    kept: list[Any] = []

    async def keep_applied(cfg: Any = None) -> None:
        kept.append(sorted(s.cfg.terminal_table))

    s.keep_applied = keep_applied
    extra = [{"name": "X1", "attrs": {"kind": "kiosk"}}]
    # the table becomes T1 (its attrs changed) and X1: T2..T5 go, the busy ones stay
    cp_config(
        tmp_path,
        terminals=0,
        extra_terms=[{"name": names[0], "attrs": {"kind": "new"}}, *extra],
        durability="none",
        **{k: getattr(s.cfg.cp, k) for k in ("terminal_listen", "host_listen", "admin_listen", "journal")},
    )
    with structlog.testing.capture_logs() as logs:
        await s.reload()
    [said] = [e for e in logs if e["event"] == "config_reloaded"]
    assert (said["terminals_added"], said["terminals_removed"], said["terminals_kept"]) == (1, 1, 3), said
    [named] = [e for e in logs if e["event"] == "terminals_kept_after_removal"]
    assert (named["terminals"], named["count"]) == (sorted(busy), 3), named
    assert set(cp.terms) == {names[0], "X1", *busy}, sorted(cp.terms)
    assert cp.terms[names[0]].defn.attrs == {"kind": "new"}
    assert calls == [("settle", names[4], True), ("close", names[4], True)], calls
    assert cp.counts.active == 0  # (forgotten: out of the totals)
    assert sorted(s.cfg.terminal_table) == sorted([names[0], "X1"])
    assert kept == [sorted([names[0], "X1"])]


async def test_the_config_left_for_the_next_worker_is_the_one_given_else_the_running_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keep_applied(cfg) leaves `cfg` (one checked while waiting) for a worker forked again;
    keep_applied() the config this worker runs on."""
    stored: list[Any] = []
    monkeypatch.setattr(supervise, "APPLIED", SimpleNamespace(store=stored.append))
    s = _server(tmp_path)
    (tmp_path / "other").mkdir()
    other = _cfg(tmp_path / "other")
    await s.keep_applied(other)
    await s.keep_applied()
    assert stored == [other, s.cfg]


async def test_a_reload_that_loaded_new_certificates_leaves_them_for_the_next_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP, the TLS files changed and loaded: their PEM is left with the master (a worker
    forked again while the files are broken starts on them); unchanged, nothing is left."""
    s = _reloadable(tmp_path)
    kept: list[Any] = []
    monkeypatch.setattr(supervise, "keep_tls", kept.append)
    s.tls = SimpleNamespace(pem={"cert": b"pem"})
    changed = [True]
    monkeypatch.setattr(srv, "reload_tls", lambda tls, name: changed[0])
    await s.reload()
    changed[0] = False
    await s.reload()
    assert kept == [{"cert": b"pem"}]


async def test_the_tickle_acks_start_with_serving_and_the_tick_loop_drives_their_list(tmp_path: Path) -> None:
    """A takeover that found the old CP's terminal connections (cp.tickles): startup starts the
    tickle ACKs to them for that generation once the listeners are up, and each pass of the tick
    loop gives their list the time."""
    s, beats = _beating(tmp_path)
    ticks: list[float] = []
    s.cp.tickles = SimpleNamespace(gen=3, tick=ticks.append, status=dict)
    tickled: list[int] = []

    async def tickle(gen: int) -> None:
        tickled.append(gen)

    s.tickle = tickle
    try:
        await s.startup()
        await until(lambda: tickled, what="the tickles started")
        assert tickled == [3] and "terminal" in s.bound
        async with _ticking(s):
            await _passes(beats)
        assert len(ticks) >= 3
    finally:
        await _closed(s)
