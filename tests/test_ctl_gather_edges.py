"""hsb.ctl.gather's edges, in-process from made-up answers: each test here failed a mutation of
gather.py that every other test passed (a mutation audit): which CP machine serves, which
answers are kept when asked again, what the verdict counts, and a CP that answered waiting said
not to serve rather than not to be asked."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather
from hsb.ctl.gather import newest_serving, serving_cp
from hsb.ctl.verdict import summarize

pytestmark = pytest.mark.timeout(30)

_REFUSED = {"reachable": False, "error": "connection refused: nothing listens there"}


def _cp(**kw: Any) -> dict[str, Any]:
    return {"name": "cp", "state": "serving", "epoch": 5, "active": {"name": "host-a"}, "standby": {"name": "host-b"}, **kw}


def _host(who: str, role: str, epoch: int = 5, **kw: Any) -> dict[str, Any]:
    return {"name": who, "pid": 100 + ord(who[-1]), "role": role, "state": "established", "serving": role == "active", "epoch": epoch, **kw}


def _fake(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[dict[str, Any] | None]]) -> dict[str, int]:
    """gather.ask answering each address from its list, one per question (the last one again
    after the end; None: refused); how often each was asked."""
    asked = dict.fromkeys(answers, 0)

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        n = asked[addr] = asked[addr] + 1
        data = answers[addr][min(n, len(answers[addr])) - 1]
        return {**_REFUSED, "addr": addr} if data is None else {"t": "status", "data": data}

    monkeypatch.setattr(gather, "ask", ask)
    return asked


def test_a_cp_whose_answer_says_state_waiting_without_cp_state_is_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    """An hsbcpd that says only `state: waiting` (no cp_state) waits: it is not a serving CP
    superseded by the other one, and never the one believed."""
    _fake(monkeypatch, {"cp-a:1": [{"name": "cp-a", "state": "waiting"}], "cp-b:1": [{"name": "cp-b", "state": "serving", "generation": 3}]})
    chosen, seen = asyncio.run(serving_cp(["cp-a:1", "cp-b:1"], b"s"))
    assert chosen == "cp-b:1", seen
    assert seen[0]["state"] == "waiting" and "superseded" not in seen[0], seen


def test_one_cp_answering_at_two_addresses_with_two_generations_is_superseded_not_named_twice() -> None:
    """The same process (name, pid, instance) answered at two addresses at different generations
    (it took the journal over between the two): the older answer is not "the same hsbcpd", it is
    superseded by the newer one."""
    one = {"reachable": True, "state": "serving", "name": "cp-a", "pid": 7, "instance": "i1"}
    seen = [{**one, "addr": "vip:1", "generation": 6}, {**one, "addr": "cp-a:1", "generation": 7}]
    assert newest_serving(seen) == "cp-a:1"
    assert "same_as" not in seen[0] and seen[0]["superseded"] == {"by": "cp-a", "generation": 7}, seen[0]


def test_a_cp_machine_that_could_not_be_asked_is_asked_again_for_the_status(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither CP machine served when asked which one serves (cp-a refused, cp-b waits): the
    configured CP is asked again for the status, not judged on the answer it did not give."""
    asked = _fake(
        monkeypatch,
        {
            "cp-a:1": [None, _cp()],
            "cp-b:1": [{"name": "cp-b", "state": "waiting", "cp_state": "waiting"}],
            "host-a:1": [_host("host-a", "active")],
            "host-b:1": [_host("host-b", "standby")],
        },
    )
    st = asyncio.run(gather.status_all("cp-a:1", ["host-a:1", "host-b:1"], str(secret), cp_machines=["cp-a:1", "cp-b:1"]))
    assert asked["cp-a:1"] == 2, asked
    assert st["cp"]["reachable"] and st["exit_status"] == 0 and not st["unknown"], st


def test_a_host_that_stops_answering_when_asked_again_keeps_its_first_answer(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answers disagree (the CP granted host-b at epoch 6, the hosts answered before it); asked
    again, host-a no longer answers: its first answer is kept (a role change under way), it is
    not called down."""
    granted = _cp(epoch=6, active={"name": "host-b"}, standby=None)
    _fake(
        monkeypatch,
        {"cp:1": [granted], "host-a:1": [_host("host-a", "active"), None], "host-b:1": [_host("host-b", "standby")]},
    )
    st = asyncio.run(gather.status_all("cp:1", ["host-a:1", "host-b:1"], str(secret)))
    assert st["exit_status"] == 3 and st["changing"] and not st["unknown"], st


def _both_cp_machines_waiting(secret: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """hsbctl's status of a pair whose two CP machines both answer waiting (no machine holds the address)."""
    waits = {"state": "waiting", "cp_state": "waiting", "takeover": "on_wake"}
    _fake(
        monkeypatch,
        {
            "cp-a:1": [{"name": "cp-a", **waits}],
            "cp-b:1": [{"name": "cp-b", **waits}],
            "host-a:1": [_host("host-a", "active")],
            "host-b:1": [_host("host-b", "standby")],
        },
    )
    return asyncio.run(gather.status_all("cp-a:1", ["host-a:1", "host-b:1"], str(secret), cp_machines=["cp-a:1", "cp-b:1"]))


def test_with_both_cp_machines_waiting_no_cp_serves_names_both(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CP machines wait: the line names both (not only the one asked for the status), and
    gives no hint to name both CP machines in the ctl config (it does)."""
    st = _both_cp_machines_waiting(secret, monkeypatch)
    why = st["unknown"][0]["error"]
    assert why == "no CP serves: cp-a at cp-a:1 waiting, cp-b at cp-b:1 waiting", st["unknown"]


def test_with_both_cp_machines_waiting_the_cp_is_said_not_to_serve_not_to_be_unreachable(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CP machines answered, waiting (no machine holds the address): the first line and the
    CP's line say the CP does not serve; "cannot be asked" is for a daemon that did not answer
    (down, a wrong address or secret), which sent the operator to look at running hsbcpd."""
    from hsb.ctl.status import headline

    st = _both_cp_machines_waiting(secret, monkeypatch)
    lines = headline(st)
    assert st["exit_status"] == 3 and lines[0].startswith("hsb: UNKNOWN (CP does not serve); the hosts say: host-a"), lines
    assert gather.unheard(st["cp"]) == "does not serve" and not any("cannot be asked" in line for line in lines), (st["cp"], lines)  # (the CP line)


def test_a_pid_that_is_a_boolean_cannot_be_read() -> None:
    """`pid: true` is an int to isinstance: it is still not a pid (another version's answer)."""
    hosts = [{**_host("host-a", "active"), "reachable": True, "pid": True}, {**_host("host-b", "standby"), "reachable": True}]
    st = summarize({**_cp(), "reachable": True}, hosts)
    assert st["exit_status"] == 3 and "pid is 'True', a bool" in st["unknown"][0]["error"], st["unknown"]


def test_a_superseded_cp_machine_is_said_once_not_again_for_the_hosts_generation() -> None:
    """cp-a (generation 6) is superseded by cp-b (7) and host-a has seen 7: one ERROR line, the
    two CP machines', not a second one for the same CP from the host's generation."""
    cp = {**_cp(generation=6), "reachable": True, "addr": "cp-a:1", "name": "cp-a"}
    machines = [
        {"addr": "cp-a:1", "reachable": True, "name": "cp-a", "state": "serving", "generation": 6, "superseded": {"by": "cp-b", "generation": 7}}
    ]
    hosts = [{**_host("host-a", "active", cp_generation={"seen": 7}), "reachable": True}, {**_host("host-b", "standby"), "reachable": True}]
    st = summarize(cp, hosts, machines)
    assert len(st["cp_errors"]) == 1 and st["cp_errors"][0].startswith("two CPs say they serve"), st["cp_errors"]


def _ring(active_last: int, standby_next: int, standby_gen: int = 1, owed: int | None = None) -> dict[str, Any]:
    atf: dict[str, Any] = {"ring_write": {"generation": 1, "last_seq": active_last}}
    if owed is not None:
        atf["ring_pending_records"] = owed
    a = {**_host("host-a", "active", takeover_file=atf), "reachable": True}
    b = {**_host("host-b", "standby", takeover_file={"ring_read": {"generation": standby_gen, "next_seq": standby_next}}), "reachable": True}
    sb: dict[str, Any] = summarize({**_cp(), "reachable": True}, [a, b])["hosts"][1]
    return sb


def test_the_ring_lag_is_what_the_active_wrote_past_what_the_standby_read() -> None:
    """The active wrote up to 5, the standby reads 5 next: 1 behind (and the records owed)."""
    assert _ring(5, 6)["ring_lag"] == 0 and _ring(5, 5)["ring_lag"] == 1 and _ring(5, 5, owed=2)["ring_lag"] == 3
    assert "ring_lag" not in _ring(5, 1, standby_gen=2)  # (another generation's ring: no lag to tell)


def test_answers_that_disagree_keep_the_disagreement_not_a_list_of_actives() -> None:
    """host-a says it is the active at 5, host-b at 6, the CP's active host-b at 6: the line says
    where they disagree (the CP's active), not only that two hosts say they are the active."""
    cp = {**_cp(epoch=6, active={"name": "host-b"}, standby=None), "reachable": True}
    hosts = [{**_host("host-a", "active", 5), "reachable": True}, {**_host("host-b", "active", 6, state="serving"), "reachable": True}]
    st = summarize(cp, hosts)
    assert st["exit_status"] == 3 and not st["two_actives"] and "the CP's active is host-b" in str(st["changing"]), st["changing"]


def test_why_hot_standby_is_not_ready_is_said_only_while_serving() -> None:
    """The CP's journal failing (nothing served: exit 2): the standby's readiness is not listed."""
    cp = {**_cp(standby=None, journal={"state": "failing", "error": "EIO"}), "reachable": True}
    st = summarize(cp, [{**_host("host-a", "active"), "reachable": True}, {**_host("host-b", "standby"), "reachable": True}])
    assert st["exit_status"] == 2 and not st["serving"] and st["not_ready"] == [], st
