"""hsbd's bookkeeping of the session opens the CP refused (hsb.host.open_failures) and its
SIGHUP reload (hsb.host.reload), each test naming a behaviour that a mutation audit of the two
modules found no test for: which refused terminals the status keeps and in what order, how a
refusal is counted, and what a reload changes in the running links, waits and config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.host import open_failures as open_failures_mod
from hsb.host.open_failures import OpenFailures

pytestmark = pytest.mark.timeout(30)


def _shown(of: OpenFailures) -> list[str]:
    return [r["terminal"] for r in of.status()["recent"]]


def test_the_status_keeps_the_newest_refused_terminals_and_a_refused_one_again_moves_to_the_newest() -> None:
    """KEEP refused terminals are shown, the oldest going first when one more is refused; a
    terminal refused again is the newest, not dropped as the oldest it was."""
    keep = open_failures_mod.KEEP
    of = OpenFailures()
    for i in range(keep):
        of.failed(f"T{i}", "active", "no")
    assert _shown(of) == [f"T{i}" for i in range(keep)]
    of.failed("T0", "active", "again")  # T0 is now the newest
    of.failed("T99", "active", "no")  # one too many: T1, the oldest, goes
    assert _shown(of) == [f"T{i}" for i in range(2, keep)] + ["T0", "T99"]
    assert of.status()["recent"][-2]["reason"] == "again"


def test_every_refusal_is_counted_by_its_kind_and_an_unknown_kind_is_an_active_one() -> None:
    """The counts cover every refusal (not only the terminals shown), by kind; a kind the CP did
    not say (str(None)) or does not name is an active session's refusal: a terminal not served."""
    of = OpenFailures()
    for i in range(open_failures_mod.KEEP + 3):
        of.failed(f"T{i}", "standby", "busy")
    of.failed("A1", "active", "no")
    of.failed("A2", "None", "no")
    of.failed("A3", "weird", "no")
    st = of.status()
    assert (st["active"], st["standby"]) == (3, open_failures_mod.KEEP + 3)
    assert [r["kind"] for r in st["recent"] if r["terminal"].startswith("A")] == ["active"] * 3


def test_a_long_reason_is_cut_and_an_opened_terminal_is_no_longer_shown() -> None:
    """The CP's reason is kept to 200 characters (the status stays bounded); a terminal whose
    session opened since is no longer shown as refused, the others stay."""
    of = OpenFailures()
    of.failed("T1", "active", "x" * 1000)
    of.failed("T2", "standby", "y")
    assert len(of.status()["recent"][0]["reason"]) == 200
    of.opened("T1")
    of.opened("T9")  # (never refused: nothing to do)
    assert _shown(of) == ["T2"] and of.status()["active"] == 1


def _host(tmp_path: Path) -> tuple[Any, Path]:
    """hsbd's HostServer for host-a (10 terminals, a batch area of 15 entries), not started,
    and its config file."""
    from hsb.config import load
    from hsb.host.config import HostConfig
    from hsb.host.server import HostServer
    from hsb.service.builtin import EchoService
    from hsb.takeover.fileio import create_file
    from tests.support.procs import SECRET, host_config

    create_file(str(tmp_path / "t.dat"), 16, 4096)
    p = host_config(tmp_path, "host-a", cp="127.0.0.1:1", peer_listen="127.0.0.1:0", peer="127.0.0.1:1", takeover=tmp_path / "t.dat", records=16)
    return HostServer(load(p, HostConfig), "active", SECRET, EchoService("host-a"), str(p)), p


async def test_a_reload_moves_both_links_heartbeats_and_every_storage_deadline_and_keeps_them(tmp_path: Path, monkeypatch: Any) -> None:
    """New heartbeat and storage settings reach the CP link and the peer link alike (interval
    and timeout), the takeover store and the CP-generation file alike, and the running config
    (which the standby's ring polls and the next reload read); the TLS files are read again."""
    from hsb.host import reload as host_reload

    srv, p = _host(tmp_path)
    tls_reloads: list[Any] = []
    monkeypatch.setattr(host_reload, "reload_tls", lambda t, name: tls_reloads.append(t))
    p.write_text(
        p.read_text()
        .replace("[host]\n", "[host]\nheartbeat_interval = 0.3\nheartbeat_timeout = 1.7\nring_poll_interval = 0.2\n", 1)
        .replace("[takeover]\n", "[takeover]\nstorage_timeout = 3.0\n", 1)
    )
    await srv.reload()
    assert (srv.cp.interval, srv.peer.interval, srv.cp.timeout, srv.peer.timeout) == (0.3, 0.3, 1.7, 1.7)
    assert (srv.takeover.store.timeout, srv.cp_memory.timeout) == (3.0, 3.0)
    h = srv.cfg.host
    assert (h.heartbeat_interval, h.heartbeat_timeout, h.ring_poll_interval, srv.cfg.takeover.storage_timeout) == (0.3, 1.7, 0.2, 3.0)
    assert tls_reloads == [srv.tls]


async def test_a_reload_fills_the_batch_area_exactly_and_terminals_beyond_it_are_named_for_a_restart(tmp_path: Path, monkeypatch: Any) -> None:
    """Terminals added up to exactly the batch area's capacity (15 here) are applied; renamed ones
    that would not fit beside the old names are neither added nor said applied: they are named as
    needing a restart, and the running config keeps its terminals (the next reload tries again)."""
    from hsb.ops import reload as reload_mod
    from tests.support.logrec import RecordingLog

    srv, p = _host(tmp_path)
    logs = RecordingLog()
    monkeypatch.setattr(reload_mod, "log", logs)
    text = p.read_text()
    p.write_text(text.replace("count = 10", "count = 15"))
    await srv.reload()
    done = logs.events("config_reloaded")[-1]
    assert done["applied"] == ["terminal_groups"] and done["terminals_added"] == 5 and done["needs_restart"] == [], done
    assert srv.sessions.get("T00015") is not None
    p.write_text(text.replace('prefix = "T"', 'prefix = "U"'))
    await srv.reload()
    done = logs.events("config_reloaded")[-1]
    assert done["applied"] == [] and done["terminals_added"] == 0, done
    assert done["needs_restart"] == ["terminals (the batch area B was sized at start)"], done
    assert [g.prefix for g in srv.cfg.terminal_groups] == ["T"] and "U00001" not in srv.cfg.terminal_table


async def test_a_reload_changes_a_closed_sessions_attributes_but_not_an_open_ones(tmp_path: Path) -> None:
    """A terminal's new attributes apply at once to a closed session; an open session keeps those
    it was opened with (they change at its next open)."""
    srv, p = _host(tmp_path)
    srv.sessions.get("T00002").state = "active"
    old = dict(srv.sessions.get("T00002").attrs)
    p.write_text(p.read_text().replace("'codepage': 'utf-8'", "'codepage': 'cp500'").replace('codepage = "utf-8"', 'codepage = "cp500"'))
    assert "cp500" in p.read_text()
    await srv.reload()
    assert srv.sessions.get("T00001").attrs["codepage"] == "cp500"
    assert srv.sessions.get("T00002").attrs == old
