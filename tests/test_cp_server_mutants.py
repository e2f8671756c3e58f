"""hsbcpd's lifecycle (hsb/cp/server.py), in-process: each test names a behaviour that a mutation
audit of the module found no test for. The listening sockets a `--supervise` master makes
(keepalive on the terminals' alone, none left open when one cannot be made); a worker on the
master's admin socket leaves it open; the accept queue said (backlog capped by somaxconn); the
keepalive and host bookkeeping of the listeners a CP binds itself; /health (a takeover step's
bound, stopping, the journal's state and the age of its generation check, no durable journal);
startup superseded or with a SIGHUP kept from the wait; serve() superseded (exit 75); the
signals kept while a worker started; a recovery beside the admin link.
(The tick loop and reload: tests/test_cp_server_tick_mutants.py.)"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.bootclock import boot_now
from hsb.config import load
from hsb.cp import listeners, supervise
from hsb.cp import server as srv
from hsb.cp.config import CPConfig
from hsb.ops.limits import listen_backlog
from hsb.ops.listen import ListenError
from tests.support.cpcore import cp_core
from tests.support.procs import SECRET, cp_config, until

pytestmark = pytest.mark.timeout(30)


def _cfg(d: Path, terminals: int = 3, **cp: Any) -> Any:
    return load(cp_config(d, terminals=terminals, **cp), CPConfig)


def _keepalive(s: socket.socket) -> int:
    return s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_a_masters_terminal_listener_has_keepalive_and_the_host_listener_not(tmp_path: Path) -> None:
    """`hsbcpd --supervise`'s master sets TCP keepalive on the terminal listener (every terminal
    connection inherits it: a dead terminal's half-open connection is found), not on the others."""
    made = listeners.master_listeners(_cfg(tmp_path, terminal_keepalive=7))
    try:
        assert set(made) == {"terminal", "host", "admin"}, made
        assert _keepalive(made["terminal"]) == 1
        assert made["terminal"].getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert _keepalive(made["host"]) == 0 and _keepalive(made["admin"]) == 0
    finally:
        for s in made.values():
            s.close()


def test_a_master_that_cannot_make_one_listener_leaves_none_of_the_others_open(tmp_path: Path) -> None:
    """The admin port taken: master_listeners fails naming cp.admin_listen, and the terminal and
    host sockets it made before are closed (their ports free for the next try)."""
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        cfg = _cfg(tmp_path, admin_listen=f"127.0.0.1:{port}")
        with pytest.raises(ListenError) as err:
            listeners.master_listeners(cfg)
        assert err.value.key == "cp.admin_listen", err.value
        for key in ("terminal", "host"):
            h, p = getattr(cfg.cp, f"{key}_listen").rsplit(":", 1)
            socket.create_server((h, int(p))).close()  # (EADDRINUSE if the master's were left listening)
    finally:
        taken.close()


def _server(d: Path, **cp: Any) -> Any:
    """A CPServer (not started) on a journal in `d`/j."""
    cp.setdefault("journal", str(d / "j"))
    return srv.CPServer(_cfg(d, **cp), SECRET, str(d / "cp.toml"))


def test_a_takeover_step_may_take_five_journal_timeouts_when_that_is_more_than_the_least(tmp_path: Path) -> None:
    """/health while taking over: a file step under way is on time for max(10 s, 5 x
    journal_timeout) (journal_timeout 4: 20 s), so a step 15 s long is still healthy, 25 s not."""
    s = _server(tmp_path, journal_timeout=4.0)
    s.state = "taking_over"
    s.takeover_step = ("recover", time.monotonic() - 15, 0.0)
    assert s._healthy()
    s.takeover_step = ("recover", time.monotonic() - 25, 0.0)
    assert not s._healthy()


def test_a_serving_cp_without_a_durable_journal_is_healthy(tmp_path: Path) -> None:
    """`durability = "none"`: /health has no journal to judge (its memory stand-in has no
    generation check) and says healthy while serving."""
    s = _server(tmp_path, durability="none")
    s.cp = cp_core(tmp_path, 2)
    s.state = "serving"
    assert s._journal() is None
    assert s._healthy()


async def _closed(s: Any) -> None:
    for server in s.servers:
        server.close()
        await server.wait_closed()


async def test_a_worker_on_the_masters_admin_socket_leaves_it_open_when_it_closes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `--supervise` a worker serves on a copy of the master's listening socket: the worker
    closing its admin server leaves the master's socket open, for the worker forked next."""
    master = socket.create_server(("127.0.0.1", 0))
    monkeypatch.setitem(supervise.LISTENERS, "admin", master)
    s = _server(tmp_path)
    await s.start_admin()
    assert s.bound["admin"] == f"127.0.0.1:{master.getsockname()[1]}"
    await _closed(s)
    try:
        assert master.fileno() != -1
        socket.create_connection(master.getsockname(), timeout=5).close()  # (still listening)
    finally:
        master.close()


@pytest.mark.parametrize("cap", [1, 1 << 20])
async def test_the_accept_queue_said_is_the_backlog_capped_by_somaxconn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    """status's accept_queue.backlog: the terminal port's backlog as the kernel allows it, the
    smaller of listen_backlog(terminals) and net.core.somaxconn."""
    monkeypatch.setattr(srv, "somaxconn", lambda: cap)
    s = _server(tmp_path)
    await s.start_admin()
    await _closed(s)
    assert s.accept_queue["backlog"] == min(listen_backlog(3), cap), s.accept_queue
    assert s.accept_queue["somaxconn"] == cap


async def test_a_cp_that_binds_its_own_terminal_listener_sets_keepalive_on_it(tmp_path: Path) -> None:
    """Without a master's sockets, start_serving binds the terminal port itself and sets TCP
    keepalive on it (inherited by each terminal connection), not on the host port."""
    s = _server(tmp_path, durability="none", terminal_keepalive=9)
    s.cp = cp_core(tmp_path, 2)
    await s.start_serving()
    try:
        by_port = {srv_.sockets[0].getsockname()[1]: srv_.sockets[0] for srv_ in s.servers}
        term = by_port[int(s.bound["terminal"].rsplit(":", 1)[1])]
        host = by_port[int(s.bound["host"].rsplit(":", 1)[1])]
        assert term.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert term.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 9
        assert host.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert s.state == "serving"
    finally:
        await _closed(s)


async def test_each_host_connection_is_known_to_the_tick_loop(tmp_path: Path) -> None:
    """A host connection accepted on the host port is in `hosts` (those the tick loop sends
    heartbeats to)."""
    s = _server(tmp_path, durability="none")
    s.cp = cp_core(tmp_path, 2)
    await s.start_serving()
    try:
        h, p = s.bound["host"].rsplit(":", 1)
        _r, w = await asyncio.open_connection(h, int(p))
        await until(lambda: len(s.hosts) == 1, what="the host link known")
        w.close()
    finally:
        await _closed(s)


def test_a_stopping_cp_is_not_healthy(tmp_path: Path) -> None:
    """/health fails once the CP is stopping (keepalived moves the address on), though its
    journal is fine."""
    s = _server(tmp_path, durability="none")
    s.cp = cp_core(tmp_path, 2)
    s.state = "serving"
    assert s._healthy()
    s.state = "stopping"
    assert not s._healthy()


def _judged(tmp_path: Path, cp_state: str, journal_state: str, checked_ago: float | None) -> bool:
    """/health's verdict on a CP in `cp_state` whose durable journal is in `journal_state`, its
    last clean generation check `checked_ago` seconds ago (None: none yet), fresh for 3 s."""
    s = _server(tmp_path)
    s.cp = cp_core(tmp_path, 2)
    s.state = cp_state
    j = SimpleNamespace(state=journal_state, checked_at=None if checked_ago is None else boot_now() - checked_ago, fresh_s=3.0)
    s._journal = lambda: j
    return bool(s._healthy())


def test_a_serving_cps_health_is_its_journals_state_and_a_recent_generation_check(tmp_path: Path) -> None:
    """Serving: healthy while its journal is "ok" and its generation was checked cleanly within
    fresh_s; a journal stalled or failing, or a check older than that (a hung mount: it may be
    superseded) fails /health."""
    assert _judged(tmp_path, "serving", "ok", 0.5)
    assert not _judged(tmp_path, "serving", "stalled", 0.5)
    assert not _judged(tmp_path, "serving", "ok", 30.0)
    assert _judged(tmp_path, "serving", "ok", None)  # (no check yet: not judged by its age)


def test_a_cp_not_yet_serving_is_not_judged_by_the_age_of_its_generation_check(tmp_path: Path) -> None:
    """Between the takeover and the listeners (a reload applied there, no tick beating yet) an old
    generation check does not fail /health; a journal not "ok" does."""
    assert _judged(tmp_path, "starting", "ok", 30.0)
    assert not _judged(tmp_path, "starting", "failed", 0.5)


def test_the_signals_sent_while_a_worker_started_are_acted_on_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP the master kept while this worker started asks for a reload (not a wake), a
    SIGUSR1 for a wake (not a reload); once each: the list is spent, not acted on again."""
    early = [signal.SIGHUP]
    monkeypatch.setattr(supervise, "EARLY_SIGNALS", early)
    s = _server(tmp_path)
    s.take_early_signals()
    assert s.reload_requested and s.sighups == 1
    assert not s.wake_requested and not s.woken.is_set()
    assert early == []
    s.take_early_signals()
    assert s.sighups == 1
    s.reload_requested = False
    early.append(signal.SIGUSR1)
    s.take_early_signals()
    assert s.wake_requested and s.woken.is_set()
    assert not s.reload_requested and s.sighups == 1


async def test_a_cp_superseded_while_taking_over_opens_no_listener(tmp_path: Path) -> None:
    """A newer CP took the journal over during this one's takeover: startup ends with only the
    admin link up, no terminal or host port opened."""
    s = _server(tmp_path)

    async def superseded(reason: str) -> None:
        s.superseded = True

    s.take_over = superseded
    try:
        await s.startup()
        assert set(s.bound) == {"admin"}, s.bound
        assert s.cp is None and s.state != "serving"
    finally:
        await _closed(s)


async def test_a_sighup_before_the_listeners_is_applied_there_once(tmp_path: Path) -> None:
    """A reload asked for while the CP waited is applied in startup, before the listeners, and
    is spent: the tick loop does not apply it again."""
    s = _server(tmp_path, durability="none")
    s.cp = cp_core(tmp_path, 2)
    reloads: list[str] = []

    async def reload() -> None:
        reloads.append(",".join(sorted(s.bound)))  # (the listeners open when it is applied)

    s.reload = reload
    s.reload_requested = True
    try:
        await s.startup()
        assert reloads == ["admin"], reloads
        assert "terminal" in s.bound and not s.reload_requested
    finally:
        await _closed(s)


async def test_a_worker_recovering_beside_its_admin_link_ends_that_start_if_the_takeover_fails(tmp_path: Path) -> None:
    """Forked again after a crash: the admin link starts beside the takeover; the takeover
    failing cancels the admin link's start (no listener left behind a failed start)."""
    s = _server(tmp_path)
    admin_ended: list[str] = []

    async def start_admin() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            admin_ended.append("cancelled")
            raise

    async def take_over(reason: str) -> None:
        await asyncio.sleep(0)  # (the admin start under way)
        raise RuntimeError("journal unreadable")

    s.start_admin, s.take_over = start_admin, take_over
    with pytest.raises(RuntimeError):
        await s._recover_beside_admin()
    await until(lambda: admin_ended, what="the admin start cancelled")
    assert admin_ended == ["cancelled"]


async def test_a_worker_recovering_beside_its_admin_link_has_it_up_when_the_recovery_returns(tmp_path: Path) -> None:
    """Forked again after a crash: when the recovery beside the admin link returns, the admin
    link is listening too (it is awaited, not left to start some time later)."""
    s = _server(tmp_path)

    async def take_over(reason: str) -> None:
        s.cp = cp_core(tmp_path, 2)

    s.take_over = take_over
    try:
        await s._recover_beside_admin()
        assert "admin" in s.bound and s.state == "starting"
    finally:
        await _closed(s)


async def test_a_cp_superseded_while_taking_over_exits_with_the_superseded_code(tmp_path: Path) -> None:
    """serve(): a newer CP took the journal over during this one's takeover: it stops without
    serving, with exit code 75 (EXIT_SUPERSEDED: systemd does not restart it into a fight)."""
    s = _server(tmp_path)

    async def take_over(reason: str) -> None:
        s.superseded, s.exit_code = True, srv.EXIT_SUPERSEDED

    s.take_over = take_over
    loop = asyncio.get_running_loop()
    try:
        assert await asyncio.wait_for(s.serve(), 20) == srv.EXIT_SUPERSEDED == 75
        assert "terminal" not in s.bound
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            loop.remove_signal_handler(sig)
