"""One host's terminal state table and fast-switch link (hsb/host/sessions.py), the session
opens the CP refused (hsb/host/open_failures.py) and a SIGHUP's reload (hsb/host/reload.py), each
test naming a behaviour that a mutation audit of the modules found no test for: the own total
terminal count (321/521) is the number of defined terminals and sizes the batch area; the batch
write's snapshot holds the terminals on the fast-switch link only, not every defined one; a link
of up to one slice (2,048 terminals) is taken in a single turn of the loop; a refused standby
open is shown as one; a reload of a file that does not load changes nothing and is no error of
the daemon's.

The audit (73 mutants, listed in this file's commit message). sessions.py, 30: 22 killed by the
tests before, 4 by these, 4 equivalent (a TerminalState's attrs are never changed in place, a
service is given a copy, so copying them at creation or not is the same; a state set to the one
it has decrements and increments the same count; `elif old == STANDBY` as an `if` tests a state
that cannot also be ACTIVE; `standby_capable`'s initial value is read by no product code).
open_failures.py, 16: 13 before, 1 by these, 2 not behaviour (KEEP 7 or 9: a bound no document
names, and the tests use KEEP itself). reload.py, 27: 25 before, 1 by these, 1 equivalent (the
running config's terminal_table is read by no running code after the start)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hsb.host.sessions import ACTIVE, STANDBY, SessionTable
from hsb.takeover.records import SessionEntry
from hsb.terminals import TerminalDef

pytestmark = pytest.mark.timeout(30)


def _table(n: int) -> SessionTable:
    return SessionTable({f"T{i:05d}": TerminalDef(name=f"T{i:05d}", attrs={"k": i}) for i in range(1, n + 1)})


def test_the_own_total_is_the_defined_terminals_and_sizes_the_batch_area(tmp_path: Path) -> None:
    """A host with 15 terminals (one batch record's worth, E = 15 at 4,096-byte records) counts
    15 as its own total (321/521) and sizes its batch area at one record, the store's header
    saying 15 terminals: a count one too high asks for a second batch record (a takeover file
    made for the host's terminals would then be refused as too small)."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    assert _table(7).own_total == 7 and _table(0).own_total == 0
    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    text = p.read_text()
    assert text.count("count = 10") == 1
    p.write_text(text.replace("count = 10", "count = 15"))
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    assert srv.sessions.own_total == 15 == len(srv.cfg.terminal_table)
    assert srv.takeover.entries_per_record == 15
    assert srv.takeover.own_batch_records == 1 and srv.takeover.store.terminals == 15


async def test_the_batch_snapshot_holds_the_terminals_on_the_link_only() -> None:
    """Of five defined terminals, T00002 and T00004 had sessions (on the fast-switch link, T00004
    first); T00001 and T00005 never did, T00003 has an active session but is not standby-capable
    (kept off the link). The batch write's snapshot names the two on the link, in the link's
    order, and none of the others (the new standby would ask for standby sessions of terminals
    that have none, or cannot have one)."""
    t = _table(5)
    t.table["T00003"].state = ACTIVE
    for name, state in (("T00004", STANDBY), ("T00002", ACTIVE)):
        ts = t.table[name]
        ts.state = state
        assert t.join_link(ts)
    assert await t.link_entries() == [SessionEntry("T00004", {"k": 4}, False), SessionEntry("T00002", {"k": 2}, True)]


async def test_a_link_of_one_slice_is_taken_in_one_turn_and_one_more_terminal_takes_two() -> None:
    """The batch write's walk of the link lets the loop turn between slices of 2,048 terminals,
    not within one: a link of exactly 2,048 is taken without giving the loop a turn (the
    snapshot is one consistent view, not one with changes of other tasks between terminals), and
    of 2,049 with one turn between the two slices."""
    loop = asyncio.get_running_loop()
    for n, turns in ((2048, 0), (2049, 1)):  # (a turn given: the callback has run once)
        t = _table(n)
        for ts in t.table.values():
            t.join_link(ts)
        ran: list[int] = []
        loop.call_soon(ran.append, 1)  # runs at the walk's first turn given to the loop, if any
        entries = await t.link_entries()
        assert len(ran) == turns, n
        assert [e.terminal for e in entries] == list(t.table)
        await asyncio.sleep(0)  # (the callback run, if it has not)
        assert ran == [1]


def test_a_refused_standby_open_is_shown_as_a_standby_refusal() -> None:
    """The refusals shown (hsbctl status, the host's status) say which kind of session the CP
    refused: a standby open refused is shown `standby` (a terminal still served by the active),
    an active one `active` (a terminal this host does not serve)."""
    from hsb.host.open_failures import OpenFailures

    of = OpenFailures()
    of.failed("T00001", "standby", "busy")
    of.failed("T00002", "active", "no")
    assert [(r["terminal"], r["kind"]) for r in of.status()["recent"]] == [("T00001", "standby"), ("T00002", "active")]


async def test_a_reload_of_a_bad_file_changes_nothing_and_is_no_reload_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGHUP with a config file that does not load (a typo) is `config_reload_failed`, its
    errors named, and the reload ends there: nothing applied, no `config_reloaded`, and no
    exception (which start_reload would log as `config_reload_error`, a bug of the daemon's)."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.ops import reload as reload_mod
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.logrec import RecordingLog
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    srv = HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p))
    logs = RecordingLog()
    monkeypatch.setattr(reload_mod, "log", logs)
    before = (srv.cp.interval, srv.cp.timeout, len(srv.sessions.table))
    p.write_text(p.read_text().replace("[host]\n", "[host]\nheartbeat_interval = 'soon'\n", 1))
    await srv.reload()
    assert logs.events("config_reload_failed") and not logs.events("config_reloaded")
    assert (srv.cp.interval, srv.cp.timeout, len(srv.sessions.table)) == before
