"""hsbctl status's verdict and hsbctl switchover's outcome from made-up answers, in-process: each
test here failed a mutation of hsb/ctl that every other test passed (a guard deleted, a bound
moved, an exit status changed), so a critical state said as fine, or a switchover said done or
failed when it was not, fails a test (docs/operations.md §0, §7, §8, §17)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather
from hsb.ctl import status as status_mod
from hsb.ctl import switchover as switchover_mod
from hsb.ctl.agree import split_brain
from hsb.ctl.refused import refused_line
from hsb.ctl.status import headline, render, shown
from hsb.ctl.target import Target
from hsb.ctl.verdict import summarize
from tests.support.cli import cp_answer as _cp
from tests.support.cli import host_answer as _host
from tests.support.cli import shown_cp, shown_host

pytestmark = pytest.mark.timeout(30)


# -- hsbctl status: the verdict ------------------------------------------------------------


@pytest.mark.parametrize("cp_asked", [True, False])
def test_two_actives_at_one_epoch_are_said_by_the_first_line(cp_asked: bool) -> None:
    """Two hosts serving as the active at one epoch exit 2, and the first line said `SERVING
    WITHOUT A STANDBY` (a 1 in §0's table) or, the CP not asked, `UNKNOWN` (a 3), with the two
    actives only on an ERROR line further down: the first line says TWO ACTIVES, naming both."""
    cp = shown_cp(active={"name": "host-b"}) if cp_asked else {"reachable": False, "addr": "cp:1", "error": "connection refused"}
    st = summarize(cp, [shown_host("host-a", "active"), shown_host("host-b", "active")])
    assert st["exit_status"] == 2 and st["two_actives"] == ["host-a", "host-b"], st
    first = headline(st)[0]
    assert first.startswith("hsb: TWO ACTIVES: two hosts serve as the active with a valid lease at once: host-a, host-b"), first
    assert ("the CP's active is host-b" if cp_asked else "the CP cannot be asked") in first, first
    text = render(st)
    assert text.count("two hosts serve as the active") == 1, text  # (said once, by the first line)
    if not cp_asked:
        assert "  CP at cp:1: connection refused" in text.splitlines()[1], text


def test_a_status_render_cannot_show_is_unknown_whatever_the_summary_said() -> None:
    """The summary's verdict is 0, but render cannot show the answers (a field missing: another
    version's daemon): the exit status is 3 with the UNKNOWN line, not the summary's 0."""
    st = summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [_host("host-a", "active"), _host("host-b", "standby")])
    assert st["exit_status"] == 0, st
    text = shown(st)
    assert st["exit_status"] == 3 and text.startswith("hsb: UNKNOWN (a daemon answered a status this hsbctl cannot read: KeyError"), text


def test_a_cp_whose_active_link_is_closed_is_not_serving() -> None:
    """The CP names the active with its link closed (`no_active`): nothing reaches it, though the
    host, its lease still valid, says it serves: NOT SERVING (2), never established (0)."""
    st = summarize(
        _cp(state="no_active", active={"name": "host-a", "connected": False}, standby={"name": "host-b"}),
        [_host("host-a", "active"), _host("host-b", "standby")],
    )
    assert not st["serving"] and not st["established"] and st["exit_status"] == 2, st
    assert headline(st)[0] == "hsb: NOT SERVING", headline(st)


def test_answers_still_disagreeing_are_not_established() -> None:
    """A role change under way (3) is not hot standby ready: `established` false, which
    switchover reads before it asks the active to hand over."""
    st = summarize(_cp(epoch=6, active={"name": "host-a"}, standby={"name": "host-b"}), [_host("host-a", "active", 6), _host("host-b", "standby", 7)])
    assert st["changing"] and st["exit_status"] == 3 and not st["established"], st


def test_a_standby_that_says_its_view_is_stale_is_not_hot_standby() -> None:
    """The standby says its view of the sessions is stale (the active's ring writes failing, seen
    from its side): a failover now would take over that view; not established (1)."""
    st = summarize(
        _cp(active={"name": "host-a"}, standby={"name": "host-b"}), [_host("host-a", "active"), _host("host-b", "standby", standby_view_stale=True)]
    )
    assert st["serving"] and not st["established"] and st["exit_status"] == 1, st


def test_an_answer_whose_status_has_no_state_cannot_be_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A status answer that is a map without a state (not an hsb daemon's status) is one that
    could not be read (3), not a CP that does not serve (2) or a host in no state."""

    async def ask(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "status", "data": {"epoch": 5}}

    monkeypatch.setattr(gather, "ask", ask)
    secret = tmp_path / "s"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    st = asyncio.run(gather.status_all("cp:1", ["host-a:1", "host-b:1"], str(secret)))
    assert st["exit_status"] == 3 and len(st["unknown"]) == 3 and all("without a status" in u["error"] for u in st["unknown"]), st


@pytest.mark.parametrize("state", ["stopping", "fenced"])
def test_an_old_active_stopping_or_fenced_is_not_an_active(state: str) -> None:
    """An old active stopping or fenced, still saying it serves, is not an active: one active,
    the new one (1: no standby yet), not a role change (3) or two actives."""
    st = summarize(_cp(epoch=6, active={"name": "host-b"}, standby=None), [_host("host-a", "active", 5, state=state), _host("host-b", "active", 6)])
    assert st["exit_status"] == 1 and st["serving"] and not st["changing"] and not st["two_actives"], st


def test_the_cps_active_at_an_older_epoch_than_the_cps_is_a_role_change() -> None:
    """The CP names host-a its active, host-a answered at epoch 5 and the CP at 6 (a grant after
    host-a's answer), host-b says it is the active at 6: answers of different moments (3), not two
    actives (2): the older active counts as the CP's only at the CP's own epoch."""
    st = summarize(_cp(epoch=6, active={"name": "host-a"}), [_host("host-a", "active", 5), _host("host-b", "active", 6)])
    assert not st["two_actives"] and st["changing"] and st["exit_status"] == 3, st


def test_the_cps_active_saying_it_is_the_standby_is_a_role_change() -> None:
    """The CP granted host-b (epoch 6), host-b has not heard (the standby at 5) and host-a's lease
    ended (not serving): a role change under way (3), not NOT SERVING (2)."""
    st = summarize(
        _cp(epoch=6, active={"name": "host-b"}, standby=None), [_host("host-a", "active", 5, serving=False), _host("host-b", "standby", 5)]
    )
    assert st["exit_status"] == 3 and "the CP's active at epoch 6 is host-b, which says it is the standby at epoch 5" in st["changing"], st


def test_one_cp_named_twice_is_no_split_brain_whatever_its_two_answers() -> None:
    """One hsbcpd answering at two addresses (or at one address named twice) during a role change
    names one active in one answer and the other in the next: one CP, not two (no split brain)."""
    old, new = _host("host-a", "active", 4, cp_generation={"seen": 6}), _host("host-b", "active", 5, cp_generation={"seen": 6})
    cp = _cp(epoch=5, generation=6, active={"name": "host-b"})
    best = {"addr": "cp-a:1", "reachable": True, "state": "serving", "generation": 6, "active": "host-b"}
    alias = {**best, "addr": "vip:1", "active": "host-a", "same_as": "cp-a:1"}
    assert split_brain(cp, [old, new], [best, alias]) is None
    assert split_brain(cp, [old, new], [best, {**best, "active": "host-a"}]) is None  # (the same address twice)


def test_a_split_brain_names_each_cp_machines_generation() -> None:
    """Hosts that do not say which CP generation they saw (an older hsbd): each active's CP
    generation is its CP machine's."""
    old, new = _host("host-a", "active", 4), _host("host-b", "active", 5)
    cp = _cp(epoch=5, generation=7, active={"name": "host-b"})
    machines = [
        {"addr": "cp-a:1", "name": "cp-a", "reachable": True, "state": "serving", "generation": 6, "active": "host-a"},
        {"addr": "cp-b:1", "name": "cp-b", "reachable": True, "state": "serving", "generation": 7, "active": "host-b"},
    ]
    said = split_brain(cp, [old, new], machines)
    assert said is not None and "host-a at epoch 4 (cp-a's active, CP generation 6)" in said and "(cp-b's active, CP generation 7)" in said, said


def test_the_refused_line_counts_every_terminal_the_cp_counted() -> None:
    """The CP's record names the first terminals and counts them all: the line says the count."""
    ref = {"standby": "host-b", "count": 40, "terminals": [{"terminal": f"T{n}", "reason": "attrs differ"} for n in range(5)]}
    line = refused_line({"refused_standby": ref})
    assert line is not None and line.startswith("  40 terminals took the classic path") and "T0, T1, T2, T3, T4 and 35 more" in line, line


# -- hsbctl switchover: its outcome ------------------------------------------------------------


def test_an_answer_that_does_not_say_ok_is_no_acceptance(capsys: pytest.CaptureFixture[str]) -> None:
    assert switchover_mod.refused_or_unasked({"t": "result", "msg": "what?"}, {"name": "host-a"}) == 1
    assert "error: what?" in capsys.readouterr().err


def _switchover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, polls: list[dict[str, Any]], timeout: float = 10.0) -> int:
    """hsbctl switchover, host-a taking the request, the status polls answering `polls` in turn
    (the last again after the end): its exit status."""
    n = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal n
        n += 1
        p = polls[min(n, len(polls)) - 1]
        return summarize(dict(p["cp"]), [dict(h) for h in p["hosts"]])

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover started on host-a"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    secret = tmp_path / "s"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    return switchover_mod.run_switchover(Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret)), True, timeout)


_READY: dict[str, Any] = {
    "cp": _cp(epoch=3, active={"name": "host-a"}, standby={"name": "host-b"}),
    "hosts": [_host("host-a", "active", 3, switchovers_ended=0), _host("host-b", "standby", 3)],
}
_HANDING = {"cp": _READY["cp"], "hosts": [_host("host-a", "active", 3, state="handing_over", switchovers_ended=0), _host("host-b", "standby", 3)]}
_SWITCHED: dict[str, Any] = {
    "cp": _cp(epoch=4, active={"name": "host-b"}, standby={"name": "host-a"}, last_switchover={"switched": 2, "classic": 0, "all_served_ms": 1.0}),
    "hosts": [_host("host-a", "standby", 4, switchovers_ended=1), _host("host-b", "active", 4)],
}


def test_a_switchover_still_handing_over_is_not_said_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A poll before the grant (the epoch not moved, host-a still handing over, its count not up)
    is not a switchover that ended without a grant: it completes (0)."""
    assert _switchover(tmp_path, monkeypatch, [_READY, _HANDING, _HANDING, _SWITCHED]) == 0, capsys.readouterr()
    assert "switchover complete" in capsys.readouterr().out


def test_the_new_active_is_said_at_the_cps_new_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """host-b heard of the grant before the CP's answer (the CP still at epoch 3): not yet said
    active; once the CP is at 4, `host-b is active at epoch 4`."""
    early = {"cp": _READY["cp"], "hosts": [_host("host-a", "active", 3, state="handing_over", switchovers_ended=0), _host("host-b", "active", 4)]}
    assert _switchover(tmp_path, monkeypatch, [_READY, early, _SWITCHED]) == 0
    out = capsys.readouterr().out
    assert "host-b is active at epoch 4;" in out and "at epoch 3" not in out, out


def test_a_switch_without_hot_standby_again_is_not_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Switched (host-b active at epoch 4, the record known) but host-a never becomes the standby
    within the timeout: not `switchover complete ... hot standby established again` (0), but did
    not complete (1)."""
    gone = {**_SWITCHED, "hosts": [{"reachable": False, "name": "host-a", "addr": "host-a:1", "error": "refused"}, _SWITCHED["hosts"][1]]}
    assert _switchover(tmp_path, monkeypatch, [_READY, gone], timeout=0.5) == 1
    out = capsys.readouterr()
    assert "switchover complete" not in out.out and "did not complete within" in out.err, out


def test_status_says_unknown_when_render_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """run_status's exit status is the shown verdict's: 3 when the answers cannot be shown."""

    async def fine(*a: Any, **kw: Any) -> dict[str, Any]:
        return summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [_host("host-a", "active"), _host("host-b", "standby")])

    monkeypatch.setattr(status_mod, "status_all", fine)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(tmp_path / "s"))
    assert status_mod.run_status(t, False, False) == 3
    assert capsys.readouterr().out.startswith("hsb: UNKNOWN (a daemon answered a status this hsbctl cannot read")


@pytest.mark.parametrize(
    ("b_extra", "said"),
    [
        ({"registered_at_cp": False}, "host-b is not registered at the CP (its CP link is down or refused): it could not take over"),
        ({"standby_view_stale": True}, "host-b's view of the sessions is stale (the active's takeover ring unwritten or unread)"),
        ({"takeover_file": {"responding": False}}, "host-b's takeover storage does not answer (a hung or lost mount): it follows no ring"),
    ],
    ids=["not-registered", "view-stale", "storage-silent"],
)
def test_status_says_why_a_standby_that_says_established_is_not_ready(b_extra: dict[str, Any], said: str) -> None:
    """The standby says established but could not take over: hsbctl status said SERVING WITHOUT A
    STANDBY and not why (only hsbctl switchover worked it out, by itself). The status's
    `not_ready` says it, under the verdict, once."""
    st = summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [_host("host-a", "active"), _host("host-b", "standby", **b_extra)])
    assert st["serving"] and not st["established"] and st["exit_status"] == 1, st
    assert st["not_ready"] == [said], st["not_ready"]
    assert headline(st) == ["hsb: SERVING WITHOUT A STANDBY", f"  {said}"]


@pytest.mark.parametrize(
    ("a_extra", "b_extra", "cut"),
    [
        ({}, {}, True),
        ({"peer_link": {"up": True}}, {}, False),  # (serving for another reason: no standby established with it yet)
        ({}, {"registered_at_cp": False}, False),  # (the standby cut off from the CP too: it could not take over)
        ({}, {"state": "batch_reading"}, False),  # (a standby not yet established)
        ({}, {"takeover_file": {"responding": False}}, False),  # (its storage silent: it follows no ring)
        ({"last_error": "batch write failed: takeover file /t is gone"}, {}, False),
        ({}, {"reachable": False, "error": "connection refused"}, False),
    ],
    ids=["peer-cut", "peer-up", "standby-unregistered", "standby-not-established", "standby-storage-silent", "batch-failing", "standby-unasked"],
)
def test_only_the_peer_link_down_is_said_as_such_not_as_no_standby(a_extra: dict[str, Any], b_extra: dict[str, Any], cut: bool) -> None:
    """Found by the slow-links walk-through: with only the peer link down, status said SERVING
    WITHOUT A STANDBY ("no failover possible right now", §0), though the standby, registered at
    the CP and following the ring, still takes over a crash. It is its own verdict (1, a
    warning: no switchover, no handover at a stop), with the line naming the link; any other
    cause keeps SERVING WITHOUT A STANDBY."""
    a = _host("host-a", "active", **{"state": "serving", "peer_link": {"up": False}, **a_extra})
    st = summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [a, _host("host-b", "standby", **b_extra)])
    assert st["serving"] and not st["established"] and st["exit_status"] in (1, 3), st
    if "reachable" not in b_extra:
        assert st["exit_status"] == 1, st
    head = headline(st)
    if cut:
        assert head[0] == "hsb: SERVING, PEER LINK DOWN (a crash is still taken over; no switchover)", head
        assert st["peer_link_down"].startswith("the peer link between host-a and host-b is down: host-b (registered at the CP"), st
        assert head[1:] == [f"  {st['peer_link_down']}"], head
    else:
        assert not st["peer_link_down"] and "PEER LINK DOWN" not in "\n".join(head), (st, head)
        assert head[0] == "hsb: SERVING WITHOUT A STANDBY" or ("reachable" in b_extra and head[0].startswith("hsb: UNKNOWN")), head


def test_what_the_cp_or_the_active_said_of_the_standby_is_not_said_twice() -> None:
    """The CP names no standby and the standby says it is not registered; the active cannot write
    its ring and the standby says its view is stale: one line for each, the CP's and the active's
    (with their fixes), not the standby's own again."""
    ring = {"path": "/t", "ring_write_failing": {"error": "EIO", "failing_s": 9.0}}
    st = summarize(
        _cp(active={"name": "host-a"}, standby=None),
        [
            _host("host-a", "active", standby_view_stale=True, takeover_file=ring),
            _host("host-b", "standby", registered_at_cp=False, standby_view_stale=True),
        ],
    )
    assert len(st["not_ready"]) == 2, st["not_ready"]
    assert st["not_ready"][0].startswith("host-a cannot write its takeover ring (EIO) for 9 s"), st["not_ready"]
    assert st["not_ready"][1].startswith("the CP has no standby registered, though host-b (established)"), st["not_ready"]


def test_a_switchover_refused_says_the_roles_changing_and_the_standby_s_own_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both reasons at once, the roles changing and the standby's storage silent: the refusal
    said only the status's `not_ready` (the storage) and left out that the roles were changing."""
    st = summarize(
        _cp(epoch=6, active={"name": "host-a"}, standby={"name": "host-b"}),
        [_host("host-a", "active", 6), _host("host-b", "standby", 6, takeover_file={"responding": False})],
    )
    st["changing"] = "host-b says it is the active at epoch 7"  # (as gather says it after asking again)

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        return st

    async def never(*a: Any, **kw: Any) -> dict[str, Any]:
        raise AssertionError("asked for a switchover the status refuses")

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", never)
    secret = tmp_path / "s"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 10.0) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[1:] == [
        "  the roles are changing: host-b says it is the active at epoch 7",
        "  host-b's takeover storage does not answer (a hung or lost mount): it follows no ring",
    ], err
