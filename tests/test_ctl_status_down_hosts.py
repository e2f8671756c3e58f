"""hsbctl status with a host that cannot be asked (stopped, crashed, its machine down). Before,
every such status said `hsb: UNKNOWN (host-b cannot be asked); from the others: …` and exit 3,
so a monitoring check read a stopped standby as UNKNOWN rather than WARNING, and both hosts down
as UNKNOWN rather than CRITICAL. A host serves only through a CP that made it its active (the
lease rule), so when the CP answers, names as its active and standby only hosts that answered,
and every CP machine named was asked, the host not asked holds no role anywhere: it is counted
as down and the verdict stands (docs/operations.md §0, §7). In every other case (the CP not
asked, the CP naming the host not asked, a CP machine not asked or keeping it as its active,
one host named) it stays UNKNOWN. In-process, from made-up answers."""

from __future__ import annotations

from typing import Any

import pytest

from hsb.ctl.status import headline, render
from hsb.ctl.verdict import summarize
from tests.support.cli import shown_cp, shown_host

pytestmark = pytest.mark.timeout(30)

REFUSED = "connection refused: nothing listens there"


def _gone(name: str) -> dict[str, Any]:
    return {"reachable": False, "name": name, "addr": f"{name}:1", "error": REFUSED}


def _machine(addr: str, **kw: Any) -> dict[str, Any]:
    return {"addr": addr, "reachable": True, "name": addr, "state": "waiting", "generation": 3, "active": None, **kw}


def test_a_stopped_standby_is_down_and_the_pair_serves_without_a_standby() -> None:
    st = summarize(shown_cp(active={"name": "host-a"}, standby=None), [shown_host("host-a", "active"), _gone("host-b")])
    assert st["exit_status"] == 1 and st["serving"] and not st["unknown"], st
    assert [a["name"] for a in st["absent"]] == ["host-b"], st["absent"]
    lines = headline(st)
    assert lines[0] == "hsb: SERVING WITHOUT A STANDBY", lines
    assert lines[1] == f"  host-b at host-b:1: {REFUSED}; it holds no role at the CP, so it serves nothing: counted as down", lines
    assert "  host-b    cannot be asked (host-b:1)" in render(st).splitlines(), render(st)


def test_both_hosts_down_is_not_serving_critical() -> None:
    st = summarize(shown_cp(active=None, standby=None, state="no_active"), [_gone("host-a"), _gone("host-b")])
    assert st["exit_status"] == 2 and not st["serving"] and not st["unknown"], st
    assert headline(st)[0] == "hsb: NOT SERVING" and len(st["absent"]) == 2, headline(st)


def test_after_a_normal_stop_of_the_active_nothing_is_served() -> None:
    standby = shown_host("host-b", "standby", state="active_stopped", serving=False)
    st = summarize(shown_cp(active=None, standby={"name": "host-b"}, state="no_active"), [_gone("host-a"), standby])
    assert st["exit_status"] == 2 and headline(st)[0] == "hsb: NOT SERVING" and [a["name"] for a in st["absent"]] == ["host-a"], st


@pytest.mark.parametrize(
    "cp, why",
    [
        # the CP still names the host not asked as its standby (its link up): it may be hot standby
        (shown_cp(active={"name": "host-a"}, standby={"name": "host-b", "connected": True}), "the CP's standby"),
        # its link closed, not yet dropped: still named, not vouched for
        (shown_cp(active={"name": "host-a"}, standby={"name": "host-b", "connected": False}), "a standby link closing"),
        # a CP of before that does not say whom it has as its standby
        (shown_cp(active={"name": "host-a"}), "no standby field"),
        # a CP that is waiting (of two machines): it keeps nobody
        (shown_cp(active=None, standby=None, state="waiting"), "a waiting CP"),
    ],
)
def test_a_host_the_cp_may_hold_stays_unknown(cp: dict[str, Any], why: str) -> None:
    st = summarize(cp, [shown_host("host-a", "active"), _gone("host-b")])
    assert st["exit_status"] == 3 and [u["name"] for u in st["unknown"]] == ["host-b"] and not st["absent"], (why, st)
    assert headline(st)[0].startswith("hsb: UNKNOWN (host-b cannot be asked)"), (why, headline(st))


def test_the_cps_active_not_asked_stays_unknown() -> None:
    """The CP names the host not asked as its active (crashed, not yet noticed; or the ctl config's
    address for it wrong): whether it serves is not known."""
    st = summarize(shown_cp(active={"name": "host-a", "connected": True}, standby=None), [_gone("host-a"), shown_host("host-b", "standby")])
    assert st["exit_status"] == 3 and [u["name"] for u in st["unknown"]] == ["host-a"] and not st["absent"], st


def test_the_cp_not_asked_leaves_every_host_unknown() -> None:
    cp = {"reachable": False, "addr": "cp:1", "error": REFUSED}
    st = summarize(cp, [shown_host("host-a", "active"), _gone("host-b")])
    assert st["exit_status"] == 3 and {u["name"] for u in st["unknown"]} == {"CP", "host-b"} and not st["absent"], st


def test_one_host_named_is_not_enough() -> None:
    st = summarize(shown_cp(active=None, standby=None, state="no_active"), [_gone("host-a")])
    assert st["exit_status"] == 3 and not st["absent"], st


@pytest.mark.parametrize(
    "other, vouched",
    [
        (_machine("cp2:1"), True),  # the other CP machine waits: it keeps nobody
        ({"addr": "cp2:1", "reachable": False, "error": REFUSED}, False),  # not asked: it may keep host-b
        (_machine("cp2:1", state="serving", generation=2, active="host-b"), False),  # it keeps host-b (a split brain)
        (_machine("cp2:1", state="serving", generation=2, active="host-a"), True),  # it keeps only a host that answered
    ],
)
def test_every_cp_machine_must_be_asked_and_keep_no_host_not_asked(other: dict[str, Any], vouched: bool) -> None:
    serving = _machine("cp1:1", state="serving", active="host-a")
    st = summarize(shown_cp(active={"name": "host-a"}, standby=None), [shown_host("host-a", "active"), _gone("host-b")], [serving, other])
    assert bool(st["absent"]) is vouched and (st["exit_status"] == 3) is not vouched, (other, st["exit_status"], st["unknown"])


@pytest.mark.parametrize(
    "cp, host_a, why",
    [
        # one of two CP machines (takeover on_wake), the other not in the ctl config: it may keep host-b
        (shown_cp(active={"name": "host-a"}, standby=None, takeover="on_wake", generation=6), {}, "on_wake alone"),
        # host-a has seen a newer CP generation than this CP's: a newer CP serves somewhere
        (shown_cp(active=None, standby=None, state="no_active", generation=6), {"cp_generation": {"seen": 7}}, "superseded"),
        # host-a follows another journal: the hosts refuse this CP, another one serves them
        (
            shown_cp(active=None, standby=None, state="no_active", generation=6, journal={"id": "J2", "dir": "/j"}),
            {"cp_generation": {"seen": 4, "journal": "J1"}},
            "another journal",
        ),
    ],
)
def test_answers_that_show_another_cp_leave_the_host_not_asked_unknown(cp: dict[str, Any], host_a: dict[str, Any], why: str) -> None:
    """Found by review: these said SERVING WITHOUT A STANDBY (1) or NOT SERVING (2) with host-b
    'counted as down', though the host not asked may be the other CP's active (a CP split brain)."""
    a = shown_host("host-a", "active", **host_a) if not host_a else shown_host("host-a", "standby", serving=False, **host_a)
    st = summarize(cp, [a, _gone("host-b")])
    assert st["exit_status"] == 3 and [u["name"] for u in st["unknown"]] == ["host-b"] and not st["absent"], (why, st["exit_status"], st["absent"])
