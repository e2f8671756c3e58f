"""`hsbctl status` with more than one CP answering (docs/operations.md §7, §18): which CP's
status is believed (the newest generation; one older than the hosts have seen is superseded),
when two answers are one hsbcpd named twice and when two CPs, and how the `CP machines:` line
shows a waiting machine's journal. The pair's verdict and exit statuses are
tests/test_ctl_status.py's; a split brain of two serving CPs and pause with neither serving,
tests/test_ctl_two_cps.py's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import pair_hosts


def test_one_cp_named_by_two_addresses_is_not_two_cps() -> None:
    """cp = [the virtual address, cp-a's own] while cp-a holds the virtual address: both answer,
    the same hsbcpd at the same generation, and one was marked superseded: `ERROR … superseded by
    cp-a … stop the older one`, advice to stop the CP that serves. It is the same CP: no error,
    the verdict stands, and a warning says the ctl config names it twice."""
    from hsb.ctl.gather import newest_serving
    from hsb.ctl.verdict import summarize

    seen = [
        {"addr": "10.0.0.100:7002", "reachable": True, "name": "cp-a", "pid": 77, "instance": "c77", "state": "serving", "generation": 6},
        {"addr": "10.0.0.10:7002", "reachable": True, "name": "cp-a", "pid": 77, "instance": "c77", "state": "serving", "generation": 6},
    ]
    assert newest_serving(seen) == "10.0.0.100:7002"
    cp = {"reachable": True, "name": "cp-a", "addr": "10.0.0.100:7002", "role": "cp", "state": "serving", "epoch": 1, "generation": 6}
    st = summarize({**cp, "journal": {"durability": "fsync", "state": "ok"}}, pair_hosts(), seen)
    assert st["cp_errors"] == [] and st["exit_status"] == 0, st
    assert st["cp_warnings"] == [
        "the ctl config's cp names cp-a twice (10.0.0.100:7002 and 10.0.0.10:7002: the same hsbcpd, pid 77); name each CP machine's own admin address once (§18)"
    ], st["cp_warnings"]
    assert "stop the older one" not in str(st)
    # two processes of one name (cp-a restarted, the old one hung) at different generations are two
    seen = [{**m, "pid": 77 + i, "generation": 6 + i} for i, m in enumerate(seen)]
    seen = [{k: v for k, v in m.items() if k not in ("superseded", "same_as")} for m in seen]
    assert newest_serving(seen) == "10.0.0.10:7002" and "superseded" in seen[0]
    assert summarize({**cp, "generation": 7}, pair_hosts(), seen)["cp_errors"]


def _cps_of_one_name_ask(instances: tuple[str | None, str | None]) -> Any:
    """Two CP machines, each hsbcpd named "cp" with pid 7 (each in its container) at generation 6,
    both saying they serve, with these instances; and a pair in hot standby."""

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        if addr.startswith("cp-"):
            inst = instances[0] if addr == "cp-1:1" else instances[1]
            b, a = {"name": "host-b", "connected": True}, {"name": "host-a", "connected": True}
            cp = {"name": "cp", "pid": 7, "role": "cp", "state": "serving", "cp_state": "serving", "epoch": 5, "generation": 6}
            cp.update({"journal": {"durability": "fsync", "state": "ok"}, "active": b, "standby": a})
            return {"data": {**cp, **({"instance": inst} if inst else {})}}
        role = "active" if addr == "b:1" else "standby"
        host = {"name": "host-" + addr[0], "role": role, "state": "established", "serving": role == "active", "epoch": 5}
        return {"data": {**host, "pid": 40, "instance": addr[0] + "40", "cp_generation": {"seen": 6, "refusals": 0}}}

    return ask


@pytest.mark.timeout(30)
def test_two_cps_of_one_name_and_pid_are_one_only_with_one_instance(tmp_path: Path, secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CP machines whose hsbcpd are both named "cp", with the same pid (in containers), both
    serving at one generation: a split brain. Their answers carried no instance, so hsbctl took
    them for one hsbcpd named twice (a WARNING, the verdict unchanged). The CP's status carries its
    process's instance (its welcome's `cp`), and two answers are one hsbcpd only with one instance:
    else the ERROR as before (exit at least 1); without an instance they are two."""
    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP
    from hsb.ctl import gather
    from tests.support.procs import cp_config

    own = CP(load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig), None)
    assert own.status()["instance"] == own.instance and len(own.instance) >= 16
    for instances in (("c1", "c2"), (None, None)):
        monkeypatch.setattr(gather, "ask", _cps_of_one_name_ask(instances))
        st = asyncio.run(gather.status_all("cp-1:1", ["a:1", "b:1"], str(secret), cp_machines=["cp-1:1", "cp-2:1"]))
        assert st["cp_errors"] and not st["cp_warnings"] and st["exit_status"] == 1, (instances, st)
        assert [m.get("superseded") is not None for m in st["cps"]] == [False, True], st["cps"]
    monkeypatch.setattr(gather, "ask", _cps_of_one_name_ask(("c1", "c1")))
    st = asyncio.run(gather.status_all("cp-1:1", ["a:1", "b:1"], str(secret), cp_machines=["cp-1:1", "cp-2:1"]))
    assert not st["cp_errors"] and st["exit_status"] == 0 and st["cps"][1]["same_as"] == "cp-1:1", st
    assert st["cp_warnings"] and "names cp twice" in st["cp_warnings"][0], st["cp_warnings"]


def _cp_machines_line(second: dict[str, Any]) -> str:
    """hsbctl status's `CP machines:` line for cp-a serving and `second` (cp-b, waiting)."""
    from hsb.ctl.status import render

    st = {
        "established": False,
        "serving": False,
        "hosts": [],
        "cp": {"reachable": False, "addr": "10.0.0.11:7002"},
        "cps": [
            {"addr": "10.0.0.11:7002", "reachable": True, "name": "cp-a", "state": "serving", "generation": 7},
            {"addr": "10.0.0.12:7002", "reachable": True, "name": "cp-b", "state": "waiting", **second},
        ],
    }
    line = next(x for x in render(st).splitlines() if x.startswith("CP machines:"))
    assert "cp-a at 10.0.0.11:7002 SERVING (generation 7)" in line, line
    return line


def test_a_cp_machine_whose_journal_is_missing_is_shown_so() -> None:
    """The waiting CP of the other machine, its shared storage not mounted: said plainly, not
    as "generation None"."""
    line = _cp_machines_line({"generation": None, "journal_missing": True})
    assert "cp-b at 10.0.0.12:7002 waiting JOURNAL MISSING: is the shared storage mounted?" in line and "None" not in line, line


def test_a_cp_machine_whose_journal_storage_hangs_is_shown_so() -> None:
    """The waiting CP of the other machine says a look at its journal has gone unanswered (a hung
    NFS mount): hsbctl status says so, not "generation 7" from the last look that answered."""
    line = _cp_machines_line({"generation": 7, "journal_unanswered_s": 12.5})
    assert "cp-b at 10.0.0.12:7002 waiting JOURNAL NOT ANSWERING for 12.5 s: does the shared storage hang?" in line, line


def _two_cps_ask(asked: list[tuple[str, str]]) -> Any:
    """Admin answers after cp-b (second in the ctl config) took over at generation 7 from cp-a,
    whose journal mount hangs: cp-a still says it serves (generation 6), the hosts moved to cp-b."""

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        asked.append((addr, msg["t"]))
        if msg["t"] in ("pause", "resume"):
            return {"t": "result", "ok": True, "msg": f"paused at {addr}"}
        cp = {"role": "cp", "cp_state": "serving", "journal": {"durability": "fsync", "state": "ok"}}
        if addr == "cp-a:1":
            return {"data": {**cp, "name": "cp-a", "state": "no_active", "epoch": 4, "generation": 6, "active": None, "standby": None}}
        if addr == "cp-b:1":
            b, a = {"name": "host-b", "connected": True}, {"name": "host-a", "connected": True}
            return {"data": {**cp, "name": "cp-b", "state": "serving", "epoch": 5, "generation": 7, "active": b, "standby": a}}
        role = "active" if addr == "b:1" else "standby"
        host = {"name": "host-" + addr[0], "role": role, "state": "established", "serving": role == "active", "epoch": 5, "pid": ord(addr[0])}
        return {"data": {**host, "cp_generation": {"seen": 7, "refusals": 0}}}

    return ask


@pytest.mark.timeout(30)
def test_of_two_cps_that_say_they_serve_the_newest_generation_is_believed(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cp-a, first in the ctl config, was superseded by cp-b (generation 7) but still says it
    serves: hsbctl status gave its verdict from cp-a (NOT SERVING, exit 2, though cp-b served
    with hot standby) with no word of two CPs, and pause went to cp-a. The newest generation's
    status is the verdict, an ERROR line names the older one (exit at least 1), and pause,
    resume and history ask the newest."""
    from hsb.ctl import gather, ops_cmds
    from hsb.ctl.status import render
    from hsb.ctl.target import Target

    asked: list[tuple[str, str]] = []
    monkeypatch.setattr(gather, "ask", _two_cps_ask(asked))
    monkeypatch.setattr(ops_cmds, "ask", _two_cps_ask(asked))
    st = asyncio.run(gather.status_all("cp-a:1", ["a:1", "b:1"], str(secret), cp_machines=["cp-a:1", "cp-b:1"]))
    assert st["cp"]["name"] == "cp-b" and st["established"], st
    assert st["exit_status"] == 1 and len(st["cp_errors"]) == 1 and "cp-a at cp-a:1 (generation 6) is superseded by cp-b" in st["cp_errors"][0]
    text = render({**st, "cp": {"reachable": False}, "hosts": []})  # (the daemons' lines: their whole status)
    assert text.startswith("hsb: ESTABLISHED") and "\nERROR: two CPs say they serve: cp-a" in text, text
    assert "cp-a at cp-a:1 SUPERSEDED (says it serves)" in text and "cp-b at cp-b:1 SERVING (generation 7)" in text, text
    # pause asks the newest CP
    asked.clear()
    t = Target(cp="cp-a:1", cps=["cp-a:1", "cp-b:1"], hosts=["a:1", "b:1"], secret_file=str(secret))
    assert ops_cmds.run_pause(t, True) == 0
    assert ("cp-b:1", "pause") in asked and ("cp-a:1", "pause") not in asked, asked


def test_a_cp_older_than_the_hosts_have_seen_is_said_superseded() -> None:
    """One CP address in the ctl config, and the CP there has a generation below one the hosts
    have seen: a superseded CP still answering there (or one on a new journal directory)."""
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "name": "cp-a", "addr": "vip:1", "state": "serving", "epoch": 1, "generation": 6}
    pair = pair_hosts()
    st = summarize(dict(cp), [dict(h) for h in pair])
    assert st["exit_status"] == 0 and not st["cp_errors"]
    pair[0]["cp_generation"] = {"seen": 7, "refusals": 2}
    st = summarize(dict(cp), pair)
    assert st["exit_status"] == 1 and "has generation 6, below the 7 a has seen" in st["cp_errors"][0], st["cp_errors"]


def test_a_cp_on_a_copy_of_the_journal_at_the_generation_the_hosts_have_seen_is_said_so() -> None:
    """The CP asked has the generation a host has seen, but of another takeover (its journal's
    `takeover`, the host's cp_generation.takeover): a CP on a copy of the journal, which the hosts
    refuse, said as that with what to do; the same takeover, or one not said: nothing."""
    from hsb.ctl.verdict import summarize

    journal = {"dir": "/var/lib/hsb/cp-journal", "durability": "fsync", "state": "ok", "id": "b" * 32, "takeover": "c0c0c0c0c0c0c0c0"}
    cp = {"reachable": True, "name": "cp-a", "addr": "vip:1", "state": "serving", "epoch": 1, "generation": 6, "journal": journal}
    for took in ("c0c0c0c0c0c0c0c0", None):
        pair = pair_hosts()
        pair[0]["cp_generation"] = {"seen": 6, "refusals": 0, "journal": "b" * 32, "takeover": took}
        assert not summarize(dict(cp), pair)["cp_errors"]
    pair = pair_hosts()
    pair[0]["cp_generation"] = {"seen": 6, "refusals": 3, "journal": "b" * 32, "takeover": "a1a1a1a1a1a1a1a1"}
    st = summarize(dict(cp), pair)
    assert st["exit_status"] == 1 and len(st["cp_errors"]) == 1, st["cp_errors"]
    said = st["cp_errors"][0]
    assert "generation 6 of takeover c0c0c0c0c0c0c0c0, but a has seen generation 6 of takeover a1a1a1a1a1a1a1a1" in said, said
    assert "a CP on a copy of the journal" in said and "the journal directory the serving CP had" in said, said


def test_a_cp_on_another_journal_than_the_hosts_follow_is_said_so_whatever_its_generation() -> None:
    """The CP asked serves journal B; a host follows journal A (its cp_generation.journal): two CPs
    on different journals, said as that (not as a superseded CP, though its generation is lower
    too), with the directory to check; the same journal: nothing said."""
    from hsb.ctl.verdict import summarize

    journal = {"dir": "/var/lib/hsb/cp-journal", "durability": "fsync", "state": "ok", "id": "b" * 32}
    cp = {"reachable": True, "name": "cp-a", "addr": "vip:1", "state": "serving", "epoch": 1, "generation": 6, "journal": journal}
    pair = pair_hosts()
    pair[0]["cp_generation"] = {"seen": 6, "refusals": 0, "journal": "b" * 32}
    st = summarize(dict(cp), [dict(h) for h in pair])
    assert not st["cp_errors"], st["cp_errors"]
    pair[0]["cp_generation"] = {"seen": 7, "refusals": 2, "journal": "a" * 32}
    st = summarize(dict(cp), pair)
    assert st["exit_status"] == 1 and len(st["cp_errors"]) == 1, st["cp_errors"]
    said = st["cp_errors"][0]
    assert f"serves journal {'b' * 32}, not journal {'a' * 32} a follows, so the hosts do not register with it" in said, said
    assert "its journal directory was replaced" in said and "or two CPs on different journals" in said, said
    assert "/var/lib/hsb/cp-journal: is it the directory both CP machines share?" in said and "below" not in said, said


def test_the_hosts_ahead_of_a_cp_on_a_copy_of_the_journal_are_no_role_change() -> None:
    """A CP on a copy of the journal took the generation the hosts have seen, of another takeover:
    they refuse it for good (`cp_journal_copy_refused`), so their epochs, ahead of the copy's
    journal, never agree with its own: NOT SERVING (2) with the line that says so, as for a CP on
    another journal, not `UNKNOWN (a role change is under way)` (3) after asking again (gather asks
    again on the same test, `hosts_refuse`). It was taken for a role change: the hosts' answers
    never agree with a CP they refuse."""
    from hsb.ctl.verdict import summarize

    journal = {"dir": "/var/lib/hsb/cp-journal", "durability": "fsync", "state": "ok", "id": "b" * 32, "takeover": "c0c0c0c0c0c0c0c0"}
    cp = {"reachable": True, "name": "cp-a", "addr": "vip:1", "state": "serving", "epoch": 0, "generation": 2, "journal": journal}
    cp |= {"active": None, "standby": None}
    seen = {"seen": 2, "refusals": 3, "journal": "b" * 32, "takeover": "a1a1a1a1a1a1a1a1"}
    hosts: list[dict[str, Any]] = [
        {"reachable": True, "name": "a", "role": "active", "state": "serving", "serving": False, "epoch": 1, "cp_generation": dict(seen)},
        {"reachable": True, "name": "b", "role": "standby", "state": "waiting_for_active", "epoch": 1, "cp_generation": dict(seen)},
    ]
    st = summarize(dict(cp), [dict(h) for h in hosts])
    assert st["changing"] is None and st["exit_status"] == 2 and not st["serving"], st
    assert len(st["cp_errors"]) == 1 and "a CP on a copy of the journal" in st["cp_errors"][0], st["cp_errors"]
    # the same takeover (the CP the hosts follow, behind them on a grant): a role change, asked again
    for h in hosts:
        h["cp_generation"]["takeover"] = "c0c0c0c0c0c0c0c0"
    st = summarize(dict(cp), [dict(h) for h in hosts])
    assert st["changing"] and st["exit_status"] == 3 and not st["cp_errors"], st


def _one_serving_one_waiting_ask(holds: bool) -> Any:
    """cp-1 serves (generation 6), cp-2 waits, its machine holding the virtual address or not;
    a pair in hot standby."""

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        if addr == "cp-1:1":
            b, a = {"name": "host-b", "connected": True}, {"name": "host-a", "connected": True}
            cp = {"name": "cp-1", "pid": 7, "instance": "i7", "role": "cp", "state": "serving", "cp_state": "serving", "epoch": 5, "generation": 6}
            return {"data": {**cp, "journal": {"durability": "fsync", "state": "ok"}, "active": b, "standby": a}}
        if addr == "cp-2:1":
            return {
                "data": {
                    "name": "cp-2",
                    "pid": 8,
                    "role": "cp",
                    "state": "waiting",
                    "cp_state": "waiting",
                    "journal_generation": 6,
                    "holds_address": holds,
                }
            }
        role = "active" if addr == "b:1" else "standby"
        host = {"name": "host-" + addr[0], "role": role, "state": "established", "serving": role == "active", "epoch": 5}
        return {"data": {**host, "pid": 40, "instance": addr[0] + "40", "cp_generation": {"seen": 6, "refusals": 0}}}

    return ask


def test_both_cp_machines_holding_the_address_is_said(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """keepalived dead or hung on the serving machine (it keeps the address) or a VRRP split
    brain: the waiting CP's machine holds the address too, and the terminals reach whichever
    machine announced it last (the two-CP walk-through: NOT SERVING with no word of why)."""
    from hsb.ctl import gather
    from hsb.ctl.status import render

    monkeypatch.setattr(gather, "ask", _one_serving_one_waiting_ask(True))
    st = asyncio.run(gather.status_all("cp-1:1", ["a:1", "b:1"], str(secret), cp_machines=["cp-1:1", "cp-2:1"]))
    assert len(st["cp_warnings"]) == 1, st["cp_warnings"]
    w = st["cp_warnings"][0]
    assert w.startswith("both CP machines hold the virtual address: cp-2 at cp-2:1 (waiting) holds it too, while cp-1 serves"), w
    assert "keepalived dead or hung on cp-1" in w and "split_brain_takeover" in w, w
    shown = render(
        {
            "established": False,
            "serving": False,
            "hosts": [],
            "cp": {"reachable": False, "addr": "cp-1:1"},
            "cps": st["cps"],
            "cp_warnings": st["cp_warnings"],
        }
    )
    assert "WARNING: both CP machines hold the virtual address" in shown, shown
    monkeypatch.setattr(gather, "ask", _one_serving_one_waiting_ask(False))
    st = asyncio.run(gather.status_all("cp-1:1", ["a:1", "b:1"], str(secret), cp_machines=["cp-1:1", "cp-2:1"]))
    assert st["cp_warnings"] == [] and st["exit_status"] == 0, st
