"""Edges of the CP's admin answers, in-process (tests/support/cpcore: no socket, no daemon): the
admin link's requests (pause and resume and their answers, history, the session table's paging
fields at their bounds, and a waiting hsbcpd's `cp_waiting` to each request but status), and what
`status` and `sessions` say (hsb.cp.status_view): each field from its own source, the hosts' parts,
the last switch, the session table's rows and pages. Each test pins a behaviour a one-line change
of hsb/cp/admin.py or hsb/cp/status_view.py could break unseen (from a mutation audit of them)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb.cp import status_view
from hsb.cp.admin import CPAdminProtocol
from hsb.wire.conn import PROTOCOL_ERRORS
from tests.support.cpcore import cp_core, fake_host, fake_terminal
from tests.support.transports import RecordingTransport, stand_in

pytestmark = pytest.mark.timeout(30)


def admin(cp: Any) -> Any:
    """An authenticated admin link of a server whose CP is `cp` (None: waiting to take over)."""
    srv = SimpleNamespace(cfg=SimpleNamespace(cp=SimpleNamespace(name="cp-x")), cp=cp, status=lambda: {"said": "status"})
    p = CPAdminProtocol(srv, secret=b"s" * 32, auth_timeout=5.0, idle_timeout=None)  # type: ignore[arg-type]
    p.connection_made(stand_in(RecordingTransport("127.0.0.1:9")))
    p.clear_deadline()
    p.authed, p.name = True, "hsbctl"
    p.decoder.first_done()
    return p


def ask(p: Any, msg: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames `msg` is answered with."""
    p.flush()
    p.transport.data.clear()
    p._handle(msg)
    p.flush()
    return p.transport.frames()  # type: ignore[no-any-return]


async def test_pause_and_resume_do_what_they_say_and_history_lists_them(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 3)
    p = admin(cp)
    assert ask(p, {"t": "pause"}) == [{"t": "result", "ok": True, "msg": "paused: no automatic failover until 'hsbctl resume'"}]
    assert cp.paused
    assert ask(p, {"t": "resume"}) == [{"t": "result", "ok": True, "msg": "resumed: automatic failover on"}]
    assert not cp.paused
    [hist] = ask(p, {"t": "history"})
    assert hist["t"] == "history" and [e["kind"] for e in hist["data"]] == ["pause", "resume"], hist
    assert hist["data"][0]["reason"] == "operator (hsbctl)", hist
    assert ask(p, {"t": "status"}) == [{"t": "status", "data": {"said": "status"}}]


async def test_a_waiting_cp_answers_every_request_but_status_with_cp_waiting(tmp_path: Path) -> None:
    p = admin(None)
    for t in ("pause", "resume", "history", "sessions"):
        [ans] = ask(p, {"t": t})
        assert ans["t"] == "error" and ans["code"] == "cp_waiting" and ans["msg"].startswith("cp-x is waiting to take over"), (t, ans)
    assert ask(p, {"t": "status"}) == [{"t": "status", "data": {"said": "status"}}]
    serving = admin(cp_core(tmp_path, 1))  # a serving CP: no such error beside its answer
    assert [f["t"] for f in ask(serving, {"t": "history"})] == ["history"]


def sessions_page(p: Any, **fields: Any) -> dict[str, Any]:
    [ans] = ask(p, {"t": "sessions", **fields})
    return ans


async def test_the_session_tables_paging_fields_at_their_bounds(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 6)
    a = fake_host(cp, "host-a", "active")
    for n in sorted(cp.terms):
        fake_terminal(cp, n)
        cp.host_open(a, n, "active", {})
    p = admin(cp)
    whole = sessions_page(p)  # (no fields: from the first, a page of at most 4,000)
    assert whole["t"] == "sessions" and sorted(whole["data"]) == sorted(cp.terms) and whole["next"] is None, whole
    one = sessions_page(p, offset=0, limit=1)
    assert list(one["data"]) == [min(cp.terms)] and one["next"] == 1, one
    assert sessions_page(p, offset=5, limit=4000)["next"] is None
    for good in ({"limit": 1}, {"limit": CPAdminProtocol.SESSIONS_PAGE}, {"offset": 0}, {"offset": 99}):
        assert sessions_page(p, **good)["t"] == "sessions", good
    assert CPAdminProtocol.SESSIONS_PAGE == 4000
    for bad in ({"offset": -1}, {"offset": True}, {"limit": 0}, {"limit": 4001}, {"limit": True}, {"limit": 2.0}):
        ans = sessions_page(admin(cp), **bad)
        assert ans["t"] == "error" and ans["code"] == "bad_fields", (bad, ans)


# -- status and sessions (hsb.cp.status_view) ------------------------------------------------------


async def test_status_says_the_hosts_and_whether_the_cp_serves(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 2)
    assert cp.status()["state"] == "no_active" and cp.status()["active"] is None
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    a.peer, b.peer = "10.0.0.1:5", "10.0.0.2:6"
    st = cp.status()
    assert st["state"] == "serving", st
    assert {k: st["active"][k] for k in ("name", "role", "peer", "connected")} == {
        "name": "host-a",
        "role": "active",
        "peer": "10.0.0.1:5",
        "connected": True,
    }
    assert {k: st["standby"][k] for k in ("name", "role", "peer", "connected")} == {
        "name": "host-b",
        "role": "standby",
        "peer": "10.0.0.2:6",
        "connected": True,
    }
    a.last_rx -= 2.0  # (heard from two seconds ago)
    assert 2000.0 <= cp.status()["active"]["heard_ms_ago"] < 3000.0
    a.fenced = True
    assert cp.status()["state"] == "no_active", "a fenced active serves nobody"


async def test_status_takes_each_count_from_its_own_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status_view, "AUDIT", False)  # (the kept totals are set by hand here: no walk to match them)
    monkeypatch.setitem(PROTOCOL_ERRORS, ("admin", "zz_test_code"), 3)
    cp = cp_core(tmp_path, 2)
    c = cp.counts
    c.active, c.standby, c.held, c.kept, c.paused, c.held_data, c.kept_data = 11, 12, 13, 14, 15, 16, 17
    cp.total_over = True
    cp.switchovers = [{"epoch": 2}, {"epoch": 3}]
    cp.logons.deferred, cp.logons.deferred_byes, cp.logons.deferred_losses = 21, 22, 23
    cp.paused = True
    cp.drops.add("reset")
    cp.drops.add("logoff")
    st = cp.status()
    drops = {"total": {"reset": 1, "logoff": 1}, "recent": {"reset": 1}, "recent_s": 60.0}
    assert st["terminals"] == {
        "defined": 2,
        "connected": 0,
        "active_sessions": 11,
        "standby_sessions": 12,
        "backpressured": 15,
        "disconnects": drops,
    }, st["terminals"]
    assert st["held_messages"] == 13 and st["journal"]["outstanding"] == 27, st
    assert st["held_bytes"] == {"total": 16, "kept": 17, "bound": cp.held_total_bytes, "reached": True}, st["held_bytes"]
    assert st["switchovers"] == 2 and st["last_switchover"] == {"epoch": 3}, st
    assert {k: st["counters"][k] for k in ("logons_queued", "logoffs_queued", "disconnects_queued")} == {
        "logons_queued": 21,
        "logoffs_queued": 22,
        "disconnects_queued": 23,
    }
    assert st["paused"] is True
    assert {"link": "admin", "code": "zz_test_code", "count": 3} in st["protocol_errors"], st["protocol_errors"]


async def test_sessions_lists_the_terminals_with_anything_to_say_in_pages(tmp_path: Path) -> None:
    cp = cp_core(tmp_path, 5)
    a = fake_host(cp, "host-a", "active")
    b = fake_host(cp, "host-b", "standby")
    names = sorted(cp.terms)
    fake_terminal(cp, names[0])  # connected, no session yet
    fake_terminal(cp, names[1])
    cp.host_open(a, names[1], "active", {"k": 1})  # and its sessions
    cp.host_open(b, names[1], "standby", {"k": 2})
    cp.terms[names[3]].held[7] = "m"  # a message held for a terminal gone (counted, not read)
    data, after = cp.sessions()
    assert sorted(data) == [names[0], names[1], names[3]] and after is None, data
    assert data[names[0]] == {"connected": True, "active": None, "standby": None, "held": 0}
    assert data[names[1]] == {
        "connected": True,
        "active": {"host": "host-a", "attrs": {"k": 1}},
        "standby": {"host": "host-b", "attrs": {"k": 2}},
        "held": 0,
    }
    assert data[names[3]]["held"] == 1 and not data[names[3]]["connected"]
    assert cp.sessions(0, 2) == ({names[0]: data[names[0]], names[1]: data[names[1]]}, 2)
    assert cp.sessions(2, 2) == ({names[3]: data[names[3]]}, 4)
    assert cp.sessions(4, 2) == ({}, None)
    assert cp.sessions(0, 5)[1] is None, "a page that ends at the last terminal has no next"
    cp.terms[names[3]].held.clear()
