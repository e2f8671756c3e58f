"""A planned switchover with a terminal whose standby session the standby refuses (its attributes
differ on the two hosts): the standby tells the CP, whose handover then does not wait for that
session (up to 2 s, every terminal's service paused) and says why it takes the classic path.
hsbcpd and both hsbd in this process (tests/support/inproc.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby, until
from tests.support.logrec import RecordingLog
from tests.support.procs import SECRET, write_secret

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("relinked", [False, True])
async def test_a_handover_does_not_wait_for_a_standby_session_the_standby_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relinked: bool
) -> None:
    """T00003's attributes differ on host-b: host-b refuses its standby session when it reads its
    open on the ring (`standby_session_refused`), and said nothing to the CP, whose handover then
    waited the full 2 s for it (`handover_waits_for_standby_sessions`) before the grant closed
    T00003's connection anyway, saying nothing of why. Now the CP is told: the grant comes without
    that wait, and its warning gives host-b's reason. `relinked`: host-b's CP link is made again
    after the refusal (a CP restart would do the same): the new link is told again."""
    from hsb.cp import host_sessions
    from hsb.ctl.refused import refused_line
    from tests.support.hostclient import FakeTerminal

    rec = RecordingLog()
    monkeypatch.setattr(host_sessions, "log", rec)
    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        b.sessions_ctl.sessions.table["T00003"].attrs = {"kind": "kiosk"}  # (host-a's: the default {"protocol": "hsb1", "codepage": "utf-8"})
        terms = []
        for name in ("T00001", "T00002", "T00003"):
            t = await FakeTerminal.connect(cp.bound["terminal"], name)
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            terms.append(t)
        await until(lambda: "T00003" in b.sessions_ctl.refused, "host-b refusing T00003's standby session")
        await until(lambda: all(core.terms[n].standby is not None for n in ("T00001", "T00002")), "the other standby sessions")
        await until(lambda: core.standby is not None and "T00003" in core.standby.refused_standby, "the CP told of the refusal")
        if relinked:
            old = core.standby
            assert old is not None
            old.abort()
            await until(lambda: core.standby not in (None, old) and b.ha.state == "established", "host-b registered again")
            await until(lambda: all(core.terms[n].standby is not None for n in ("T00001", "T00002")), "the standby sessions again")
            await until(lambda: core.standby is not None and "T00003" in core.standby.refused_standby, "the new link told of the refusal")
        a.ha.post("switchover")
        await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover")
        await until(lambda: bool(core.switchovers) and core.switchovers[-1]["to"] == "host-b", "the switch's record")
        await terms[2].wait_closed()  # T00003: the classic path
        assert rec.events("handover_waits_for_standby_sessions") == [], rec.entries
        said = rec.events("handover_without_refused_standby_sessions")
        assert len(said) == 1 and said[0]["terminals"] == ["T00003"] and said[0]["standby"] == "host-b", rec.entries
        assert "differ from the active's" in said[0]["msg"], said
        last = core.switchovers[-1]
        assert last["switched"] == 2 and last["classic"] == 1 and not terms[0].closed and not terms[1].closed, last
        # the switch's record names them, and hsbctl switchover says which and why (it said only "1 reconnected")
        ref = last["refused_standby"]
        assert ref["standby"] == "host-b" and ref["count"] == 1 and [x["terminal"] for x in ref["terminals"]] == ["T00003"], ref
        line = refused_line(last)
        assert (
            line is not None
            and "1 terminal took the classic path" in line
            and "(disconnected, it logs on again) because host-b refused its standby session: T00003 (" in line
        ), line
        assert "differ from the active's" in line and "make its attrs identical on both hosts" in line, line
        await _status_and_history_name_them(tmp_path, cp, a, b, line)
        for t in terms:
            await t.close()


async def _status_and_history_name_them(d: Path, cp: Any, a: Any, b: Any, line: str) -> None:
    """hsbctl status, under its last switch, and hsbctl history, under the switch's entry, say
    the line hsbctl switchover said, asked over the daemons' admin links; and --json has the field
    (they said only "1 reconnected", and history's why the first terminal only)."""
    from hsb.ctl.gather import ask, status_all
    from hsb.ctl.ops_cmds import history_lines
    from hsb.ctl.status import shown

    secret = write_secret(d)
    st = await status_all(cp.bound["admin"], [a.bound["admin"], b.bound["admin"]], str(secret))
    text = shown(st).splitlines()
    at = next(i for i, x in enumerate(text) if x.strip().startswith("last switchover: host-a -> host-b"))
    assert text[at + 1] == "          " + line, text
    said = json.loads(json.dumps(st, default=str))["cp"]["last_switchover"]["refused_standby"]
    assert [x["terminal"] for x in said["terminals"]] == ["T00003"] and said["count"] == 1, said
    ans = await ask(cp.bound["admin"], SECRET, {"t": "history"})
    entry = ans["data"][-1]
    assert entry["kind"] == "switchover" and entry["refused_standby"]["terminals"][0]["terminal"] == "T00003", entry
    rows = history_lines(ans["data"])
    at = next(i for i, x in enumerate(rows) if " switchover " in x and "host-a -> host-b" in x)
    assert rows[at + 1] == "                   " + line, rows


@pytest.mark.parametrize("late", ["ring", "frame"])
async def test_a_late_refusal_at_the_new_active_does_not_close_its_session(tmp_path: Path, late: str) -> None:
    """T00003's attributes differ on host-b: at the switchover it takes the classic path and logs
    on again, now at host-b. A ring entry of host-a's read before the grant and applied after it
    (`ring`) made host-b refuse T00003's standby session, a `close` with `refused` to the CP,
    which took it for the active closing its session: T00003 was told `session closed`. The new
    active refuses no standby session; and the CP takes no `refused` from a host that is not its
    standby (`frame`: as a host of before sends it)."""
    from hsb.takeover.records import SessionEntry
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        core = cp.cp
        assert core is not None
        b.sessions_ctl.sessions.table["T00003"].attrs = {"kind": "kiosk"}  # (not host-a's)
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00003")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        await until(lambda: core.standby is not None and "T00003" in core.standby.refused_standby, "the CP told of the refusal")
        a.ha.post("switchover")
        await until(lambda: b.ha.role == "active" and a.ha.role == "standby", "the switchover")
        await t.wait_closed()  # the classic path
        await t.close()
        t = await FakeTerminal.connect(cp.bound["terminal"], "T00003")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        assert b.sessions_ctl.sessions.table["T00003"].state == "active"
        if late == "ring":
            b.sessions_ctl.apply_ring([SessionEntry("T00003", dict(a.sessions_ctl.sessions.table["T00003"].attrs), True)])
            assert "T00003" not in b.sessions_ctl.refusing, "the active refused a standby session"
        else:
            b.cp.send({"t": "close", "terminal": "T00003", "kind": "standby", "refused": "attributes differ"})
        t.send({"t": "msg", "id": 1, "data": "after"})  # (its reply comes after anything b sent before)
        await t.wait(lambda m: m["t"] == "reply" and m["id"] == 1)
        closed = [m for m in t.inbox if m["t"] == "session" and m["state"] == "closed"]
        assert closed == [] and not t.closed, t.inbox
        assert b.sessions_ctl.sessions.table["T00003"].state == "active"
        await t.close()
