"""hsbctl's verdicts from the daemons' answers as they come: answers of a shape this hsbctl
cannot read are UNKNOWN (3), never a traceback; answers of different moments of a role change
are asked again, and never make a verdict none of them gave (docs/operations.md §7, §17); a
switchover undone is said at once (§8)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.ctl import status as status_mod
from hsb.ctl.target import Target
from hsb.ctl.verdict import summarize
from tests.support.procs import write_secret

pytestmark = pytest.mark.timeout(120)


def _cp(**kw: Any) -> dict[str, Any]:
    return {"reachable": True, "name": "cp", "addr": "cp:1", "role": "cp", "state": "serving", "epoch": 5, **kw}


def _host(who: str, role: str, epoch: int = 5, **kw: Any) -> dict[str, Any]:
    return {
        "reachable": True,
        "name": who,
        "addr": f"{who}:1",
        "pid": 100 + ord(who[-1]),
        "role": role,
        "state": "established",
        "serving": role == "active",
        "epoch": epoch,
        **kw,
    }


@pytest.mark.parametrize(("field", "value"), [("pid", [1]), ("name", {}), ("serving", "yes"), ("addr", ["a"]), ("takeover_file", [])])
def test_a_host_answer_of_a_shape_hsbctl_does_not_know_is_unknown_not_a_traceback(field: str, value: Any) -> None:
    """A pid or name that is a list or a map raised TypeError (unhashable) in summarize: a
    traceback and exit 1, which a monitor reads as a warning."""
    hosts = [_host("host-a", "active", **{field: value}), _host("host-b", "standby")]
    st_ = summarize(_cp(), hosts)
    assert st_["exit_status"] == 3 and not st_["established"], st_
    said = next(u for u in st_["unknown"] if u["name"] in ("host-a", "host1"))
    assert "cannot read" in said["error"] and field in said["error"] and "another version" in said["error"], said


def test_a_cp_answer_of_a_shape_hsbctl_does_not_know_is_unknown() -> None:
    st_ = summarize(_cp(journal=["ok"]), [_host("host-a", "active"), _host("host-b", "standby")])
    assert st_["exit_status"] == 3 and [u["name"] for u in st_["unknown"]] == ["CP"], st_["unknown"]


def test_any_failure_of_status_is_one_unknown_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever goes wrong in making the verdict is UNKNOWN (3) with one line, not a traceback."""

    async def broken(*a: Any, **kw: Any) -> dict[str, Any]:
        raise RuntimeError("something this hsbctl did not expect")

    monkeypatch.setattr(status_mod, "status_all", broken)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["a:1", "b:1"], secret_file=str(tmp_path / "s"))
    assert status_mod.run_status(t, False, False) == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("hsb: UNKNOWN (") and "RuntimeError" in out[0], out
    assert status_mod.run_status(t, True, False) == 3
    assert '"exit_status": 3' in capsys.readouterr().out


_NESTED: tuple[str, ...] = (
    "ring_read",
    "ring_write",
    "generation",
    "last_seq",
    "next_seq",
    "ring_pending_records",
    "responding",
    "ring_write_failing",
)
_NESTED += ("error", "failing_s", "pending", "path", "durability", "state", "seen", "name", "connected", "remaining_ms", "valid", "by")
_HOST_KEYS: tuple[str, ...] = ("reachable", "name", "addr", "pid", "role", "state", "serving", "epoch", "registered_at_cp", "standby_view_stale")
_HOST_KEYS += ("takeover_file", "cp_generation", "lease", "error", "switchovers_ended")
_CP_KEYS = ("reachable", "name", "addr", "state", "epoch", "generation", "journal", "active", "standby", "error", "paused")
_TYPICAL = st.sampled_from(["active", "standby", "established", "serving", "fenced", "host-a", "host-b", "cp:1", True, False, 1, 5, 0.5])
_LEAF = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=4) | _TYPICAL
_ANY = st.recursive(_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(_NESTED), c, max_size=4), max_leaves=8)


def _parts(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), _ANY, max_size=len(keys))


@settings(max_examples=200, deadline=None)  # (drawing these nested answers is slow: 0.05 s each)
@given(
    cp=_parts(_CP_KEYS),
    hosts=st.lists(_parts(_HOST_KEYS), max_size=3),
    machines=st.none() | st.lists(_parts(("addr", "name", "reachable", "state", "generation", "superseded")), max_size=2),
)
def test_summarize_never_raises_whatever_the_daemons_answer(cp: dict[str, Any], hosts: list[dict[str, Any]], machines: Any) -> None:
    machines = [{**m, "addr": str(m.get("addr"))} for m in machines] if machines is not None else None  # (serving_cp's own: a text address)
    out = summarize(cp, hosts, machines)
    assert out["exit_status"] in (0, 1, 2, 3)
    status_mod.shown(out)  # (and the text: the verdict, or UNKNOWN with the raw status)


def test_an_undone_switchover_is_an_error_at_once_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Granted to host-b, host-b lost before the grant took effect, the role given back to
    host-a at a newer epoch: the epoch moved, so hsbctl waited its whole timeout and said only
    "did not complete", though host-a's last error said why at once."""
    from hsb.ctl import switchover as switchover_mod

    secret = write_secret(tmp_path)
    calls = 0
    why = "planned switchover undone at epoch 5: the standby was lost before it took effect"

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        a_, b_ = _host("host-a", "active", 3, switchovers_ended=0), _host("host-b", "standby", 3)
        cp = _cp(epoch=3, active={"name": "host-a"}, standby={"name": "host-b"})
        if calls > 1:  # (host-b restarting: waiting for the active, not registered yet)
            a_.update(epoch=5, switchovers_ended=1, last_error=why)
            b_.update(epoch=0, state="waiting_for_active")
            cp.update(epoch=5, standby=None, last_switchover={"kind": "undone", "epoch": 5, "reason": "granted host lost"})
        return summarize(cp, [a_, b_])

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover started on host-a"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    t0 = time.monotonic()
    assert switchover_mod.run_switchover(t, True, 10.0) == 1
    assert time.monotonic() - t0 < 5.0, "waited for the timeout"
    err = capsys.readouterr().err
    assert why in err and "host-a has the role back" in err, err


def test_a_switchover_names_the_terminals_the_standby_refused_and_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CP's switch record names the terminals a planned switchover put on the classic path
    because the standby refused their standby session: hsbctl switchover said only "7
    reconnected". It names the first few, the count of the others, the standby's reason for
    the first and the fix, on a line under `switchover complete`."""
    from hsb.ctl import switchover as switchover_mod

    secret = write_secret(tmp_path)
    calls = 0
    why = "terminal 'T00011': this host's session attributes {'kind': 'kiosk'} differ from the active's {'kind': 'till'}"
    refused = {"standby": "host-b", "count": 7, "terminals": [{"terminal": f"T000{n}", "reason": why.replace("11", str(n))} for n in range(11, 18)]}

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        a_, b_ = _host("host-a", "active", 3), _host("host-b", "standby", 3)
        cp = _cp(epoch=3, active={"name": "host-a"}, standby={"name": "host-b"})
        if calls > 1:
            a_.update(role="standby", serving=False, epoch=4)
            b_.update(role="active", serving=True, epoch=4)
            rec = {"kind": "switchover", "switched": 13, "classic": 7, "all_served_ms": 1.0, "worst_pause_ms": None, "refused_standby": refused}
            cp.update(epoch=4, active={"name": "host-b"}, standby={"name": "host-a"}, last_switchover=rec)
        return summarize(cp, [a_, b_])

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover started on host-a"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 10.0) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2].startswith("switchover complete: 13 sessions switched, 7 reconnected;"), lines
    assert lines[-1].startswith("  7 terminals took the classic path (disconnected, they log on again) because host-b refused"), lines
    assert ": T00011, T00012, T00013, T00014, T00015 and 2 more (T00011: terminal 'T00011': this host's session" in lines[-1], lines
    assert "T00016" not in lines[-1] and lines[-1].endswith(
        "make their attrs identical on both hosts and reload the one you change (docs/operations.md §5)"
    )


def test_a_switchover_granted_while_the_old_actives_link_was_down_is_not_undone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Granted to host-b, host-a's link dropped before it heard (its count up, still saying
    active, not serving) and host-b not answering this once: not undone; it completes."""
    from hsb.ctl import switchover as switchover_mod

    secret = write_secret(tmp_path)
    calls = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        a_, b_ = _host("host-a", "active", 3, switchovers_ended=0), _host("host-b", "standby", 3)
        cp = _cp(epoch=3, active={"name": "host-a"}, standby={"name": "host-b"})
        if calls == 2:
            a_.update(switchovers_ended=1, serving=False, last_error="planned switchover abandoned: host link to the CP lost")
            b_ = {"reachable": False, "name": "host-b", "addr": "host-b:1", "error": "no answer within 1 s"}
            cp.update(epoch=4, active={"name": "host-b"}, standby=None)
        elif calls > 2:
            a_.update(role="standby", serving=False, epoch=4, switchovers_ended=1)
            b_.update(role="active", serving=True, epoch=4)
            cp.update(
                epoch=4, active={"name": "host-b"}, standby={"name": "host-a"}, last_switchover={"switched": 2, "classic": 0, "all_served_ms": 1.0}
            )
        return summarize(cp, [a_, b_])

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover started on host-a"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 10.0) == 0, capsys.readouterr()
    assert "switchover complete" in capsys.readouterr().out


def _rounds(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """gather.ask answering each address from its list, one per question (the last one again
    after the end); how often each was asked."""
    from hsb.ctl import gather

    asked = dict.fromkeys(answers, 0)

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        n = asked[addr] = asked[addr] + 1
        data = {k: v for k, v in answers[addr][min(n, len(answers[addr])) - 1].items() if k not in ("reachable", "addr")}
        return {"t": "status", "data": data}

    monkeypatch.setattr(gather, "ask", ask)
    return asked


def _status(tmp_path: Path) -> dict[str, Any]:
    import asyncio

    from hsb.ctl import gather

    secret = write_secret(tmp_path)
    return asyncio.run(gather.status_all("cp:1", ["host-a:1", "host-b:1"], str(secret)))


_BEFORE = [_host("host-a", "active", 5), _host("host-b", "standby", 5)]
_GRANTED = _cp(epoch=6, active={"name": "host-b"}, standby=None)


def test_a_cp_that_answered_after_a_grant_the_hosts_had_not_heard_of_is_asked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP answered after granting host-b (epoch 6, no standby), the hosts just before (host-a
    active, host-b standby, established at 5): that was ESTABLISHED, exit 0, in the middle of a
    failover. The answers disagree: all three are asked again, and the verdict is the later ones'."""
    after = [_host("host-a", "active", 5, serving=False, state="fenced"), _host("host-b", "active", 6, state="serving")]
    asked = _rounds(monkeypatch, {"cp:1": [_GRANTED], "host-a:1": [_BEFORE[0], after[0]], "host-b:1": [_BEFORE[1], after[1]]})
    st_ = _status(tmp_path)
    assert st_["exit_status"] == 1 and not st_["established"] and not st_["changing"], st_
    assert asked == {"cp:1": 2, "host-a:1": 2, "host-b:1": 2}, asked


def test_answers_that_still_disagree_are_a_role_change_not_a_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked again within the timeout, the answers still disagree: UNKNOWN (3), saying a role
    change is under way and where they disagree; never ESTABLISHED."""
    from hsb.ctl.status import headline

    asked = _rounds(monkeypatch, {"cp:1": [_GRANTED], "host-a:1": [_BEFORE[0]], "host-b:1": [_BEFORE[1]]})
    st_ = _status(tmp_path)
    assert st_["exit_status"] == 3 and not st_["established"] and not st_["two_actives"], st_
    assert "host-a says it is the active at epoch 5, the CP's active is host-b at epoch 6" in st_["changing"], st_["changing"]
    lines = headline(st_)
    assert lines[0] == "hsb: UNKNOWN (a role change is under way)" and "roles are changing" in lines[1], lines
    assert 2 <= asked["cp:1"] <= 1 + len(gather_pauses()), asked


def test_answers_are_asked_again_three_times_before_a_role_change_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hosts' answers catch up with the CP's grant only at the third asking again: the verdict
    is the agreeing answers' (the new active serving alone, 1), not UNKNOWN from an earlier round."""
    after = [_host("host-a", "active", 5, serving=False, state="fenced"), _host("host-b", "active", 6, state="serving")]
    late = {"cp:1": [_GRANTED], "host-a:1": [_BEFORE[0]] * 3 + [after[0]], "host-b:1": [_BEFORE[1]] * 3 + [after[1]]}
    asked = _rounds(monkeypatch, late)
    st_ = _status(tmp_path)
    assert st_["exit_status"] == 1 and not st_["changing"], st_
    assert asked == {"cp:1": 4, "host-a:1": 4, "host-b:1": 4}, asked


def gather_pauses() -> tuple[float, ...]:
    from hsb.ctl.agree import REASK_PAUSES

    return REASK_PAUSES


def test_an_old_active_answering_just_before_its_lease_ended_is_not_two_actives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host-a answered shortly before its lease ended (epoch 5), host-b after its grant (epoch 6):
    that was two actives, exit 2, "stop one of them". Asked again, host-a's lease has ended."""
    b = _host("host-b", "active", 6, state="serving")
    a_late = _host("host-a", "active", 5, serving=False, lease={"valid": False, "lost_ms_ago": 50.0})
    _rounds(monkeypatch, {"cp:1": [_GRANTED], "host-a:1": [_host("host-a", "active", 5), a_late], "host-b:1": [b]})
    st_ = _status(tmp_path)
    assert st_["exit_status"] == 1 and not st_["two_actives"] and not st_["changing"], st_


def test_two_actives_are_said_only_when_the_answers_cannot_be_of_different_moments() -> None:
    """Same epoch: one grant makes one active, two actives whatever the timing (2). Different
    epochs, the CP's active the newer: a role change (3). The CP's active the older one at the
    CP's epoch, the other claiming a newer epoch the CP never granted (another CP's): two (2)."""
    a5, b6 = _host("host-a", "active", 5), _host("host-b", "active", 6)
    same = summarize(_cp(epoch=6, active={"name": "host-b"}), [_host("host-a", "active", 6), dict(b6)])
    assert same["two_actives"] == ["host-a", "host-b"] and same["exit_status"] == 2, same
    moving = summarize(_cp(epoch=6, active={"name": "host-b"}), [dict(a5), dict(b6)])
    assert not moving["two_actives"] and moving["exit_status"] == 3 and moving["changing"], moving
    other_cp = summarize(_cp(epoch=5, active={"name": "host-a"}), [dict(a5), dict(b6)])
    assert other_cp["two_actives"] == ["host-a", "host-b"] and other_cp["exit_status"] == 2, other_cp
    # the CP not asked: no one to say which is the older one's grant; different epochs are a change under way
    no_cp = summarize({"reachable": False, "addr": "cp:1", "error": "refused"}, [dict(a5), dict(b6)])
    assert not no_cp["two_actives"] and no_cp["exit_status"] == 3 and "host-a says it is the active at epoch 5" in no_cp["changing"]


def test_agreeing_answers_are_asked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _rounds(
        monkeypatch, {"cp:1": [_cp(active={"name": "host-a"}, standby={"name": "host-b"})], "host-a:1": [_BEFORE[0]], "host-b:1": [_BEFORE[1]]}
    )
    st_ = _status(tmp_path)
    assert st_["exit_status"] == 0 and st_["established"] and asked == {"cp:1": 1, "host-a:1": 1, "host-b:1": 1}, (st_, asked)


def test_a_switchover_refused_for_a_stale_standby_view_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both hosts say established, but the active cannot write its takeover ring: the refusal
    named both hosts 'established' and not the cause an operator has to fix."""
    from hsb.ctl import switchover as switchover_mod

    secret = write_secret(tmp_path)
    failing = {"path": "/var/lib/hsb/takeover", "ring_write_failing": {"error": "Input/output error", "failing_s": 12.0}}

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        a_ = _host("host-a", "active", standby_view_stale=True, takeover_file=failing)
        return summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [a_, _host("host-b", "standby")])

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 10.0) == 1
    err = capsys.readouterr().err
    assert "switchover refused" in err and "host-a cannot write its takeover ring (Input/output error)" in err, err


def test_no_standby_at_the_cp_is_not_hot_standby_ready() -> None:
    """Both hosts said established and the CP answered standby None (host-b's registration lost,
    or refused): `ESTABLISHED (hot standby ready)`, exit 0, though no failover could happen. It is
    SERVING WITHOUT A STANDBY (1) with a line saying the CP has no standby registered."""
    from hsb.ctl.status import headline

    hosts = [_host("host-a", "active"), _host("host-b", "standby")]
    st_ = summarize(_cp(active={"name": "host-a"}, standby=None), hosts)
    assert st_["exit_status"] == 1 and not st_["established"] and st_["serving"], st_
    lines = headline(st_)
    assert lines[0] == "hsb: SERVING WITHOUT A STANDBY", lines
    assert "the CP has no standby registered, though host-b (established) says it is the standby" in lines[1], lines
    # the CP naming it: ready; a CP that does not say (an older one): as before
    hosts = [_host("host-a", "active"), _host("host-b", "standby")]
    assert summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), hosts)["exit_status"] == 0
    hosts = [_host("host-a", "active"), _host("host-b", "standby")]
    assert summarize(_cp(), hosts)["exit_status"] == 0


def test_the_cps_link_to_the_standby_down_is_not_hot_standby_ready() -> None:
    """The CP closed its link to the standby (silence, a protocol error) and the connection is
    not yet gone: its status names the standby with connected false. Both hosts saying
    established made it ESTABLISHED (hot standby ready), exit 0, though the CP could grant the
    standby nothing. It is SERVING WITHOUT A STANDBY (1) with a line saying the link is down."""
    from hsb.ctl.status import headline

    hosts = [_host("host-a", "active"), _host("host-b", "standby")]
    st_ = summarize(_cp(active={"name": "host-a", "connected": True}, standby={"name": "host-b", "connected": False}), hosts)
    assert st_["exit_status"] == 1 and not st_["established"] and st_["serving"], st_
    lines = headline(st_)
    assert lines[0] == "hsb: SERVING WITHOUT A STANDBY", lines
    assert "the CP's link to the standby host-b is down" in lines[1] and "host-b says it is the standby" in lines[1], lines
    # the link up: ready
    hosts = [_host("host-a", "active"), _host("host-b", "standby")]
    assert summarize(_cp(active={"name": "host-a", "connected": True}, standby={"name": "host-b", "connected": True}), hosts)["exit_status"] == 0


def test_a_status_with_its_optional_figures_null_is_rendered_not_unknown() -> None:
    """Fields a status may give as null (a CP without a name, which summarize takes; a journal's
    size; a switch record's p99 or silence, each null without the other): the CP's line put them
    through a format spec and raised, so hsbctl status said UNKNOWN ("another version?", exit 3)
    about a healthy pair. Each is left out or 0, and the verdict stands."""
    ls = {
        "kind": "failover", "from": "host-a", "to": "host-b", "epoch": 5, "at": time.time(), "reason": "active_lost",
        "silence_to_loss_ms": None, "loss_to_grant_ms": 12.5, "worst_pause_ms": 30.0, "p99_pause_ms": None,
        "all_served_ms": 40.0, "in_flight_terminals": 2, "switch_ms": 3.0, "switched": 10, "classic": 0,
    }  # fmt: skip
    journal = {"durability": "fsync", "state": "ok", "dir": "/j", "size_bytes": None, "segments": 1, "last_sync_ms": None}
    cp = _cp(
        name=None,
        active={"name": "host-b", "connected": True},
        standby={"name": "host-a", "connected": True},
        terminals={"defined": 10, "connected": 10, "active_sessions": 10, "standby_sessions": 10},
        held_messages=0,
        journal=journal,
        last_switchover=ls,
    )

    def host(who: str, role: str) -> dict[str, Any]:
        return _host(
            who,
            role,
            sentence="ok",
            cp_link="up",
            peer_link={"up": True, "heartbeat_age_ms": None},
            takeover_file={"path": "/t", "records": 10, "storage": "ok"},
            batch_records={"own": 8},
            startup_id={"own": "x", "partner": "y"},
            terminals={"defined": 10, "linked": 10, "active_sessions": 10, "standby_sessions": 10},
        )

    st_ = summarize(cp, [host("host-a", "standby"), host("host-b", "active")])
    text = status_mod.shown(st_)
    assert st_["exit_status"] == 0 and text.startswith("hsb: ESTABLISHED (hot standby ready)"), text
    lines = text.splitlines()
    assert lines[1].startswith("  CP -      epoch 5"), lines
    assert "noticed to grant 12.5 ms, worst pause 30.0 ms over 2 terminals in flight" in text and "silent" not in text, text
    assert "journal ok /j  0 KiB in 1 segment," in text, text


def test_history_names_the_terminals_the_standby_refused_and_an_older_entry_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """hsbctl history said only a switchover's why, which names the first terminal the standby
    refused a standby session: under the entry it now says them as hsbctl switchover does, and
    --json has the entry's refused_standby. An entry an older hsbcpd journalled (no such field)
    is shown as before: its row, no line under it."""
    from hsb.cp.switchrec import History
    from hsb.ctl import ops_cmds
    from hsb.ctl.refused import refused_line

    secret = write_secret(tmp_path)
    why = "terminal 'T00011': this host's session attributes {'kind': 'kiosk'} differ from the active's {'kind': 'till'}"
    ref: dict[str, Any] = {
        "standby": "host-b",
        "count": 7,
        "terminals": [{"terminal": f"T000{n}", "reason": why.replace("11", str(n))} for n in range(11, 18)],
    }
    kept = History.refused(ref)  # (the entry keeps the names, and the reason of the first only: it is in every checkpoint)
    assert kept is not None and kept["terminals"][0] == ref["terminals"][0] and kept["terminals"][1] == {"terminal": "T00012"}, kept
    assert History.refused(None) is None
    switch = {"kind": "switchover", "at": time.time(), "epoch": 4, "from": "host-a", "to": "host-b", "reason": "planned switchover"}
    old = {**switch, "epoch": 3, "why": "released by host-b; 1 terminal takes the classic path: host-a refused its standby session (T00009: x)"}
    new = {**switch, "why": "released by host-a; 7 terminals take the classic path", "refused_standby": kept}

    async def ask(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "history", "data": [old, new]}

    monkeypatch.setattr(ops_cmds, "ask", ask)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(secret))
    assert ops_cmds.run_history(t, False) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and " switchover     3 " in lines[1] and " switchover     4 " in lines[2], lines
    assert lines[3] == " " * 19 + str(refused_line({"refused_standby": ref})), lines  # (the same line as hsbctl switchover's, under its row)
    assert ": T00011, T00012, T00013, T00014, T00015 and 2 more (T00011: terminal 'T00011': this host's" in lines[3], lines
    assert ops_cmds.run_history(t, True) == 0
    entries = json.loads(capsys.readouterr().out)
    assert "refused_standby" not in entries[0] and entries[1]["refused_standby"] == kept, entries


@pytest.mark.parametrize(
    ("cp_extra", "b_extra", "said"),
    [
        ({"journal": {"state": "stalled", "durability": "fsync"}}, {}, "the CP is not serving (state serving, journal stalled)"),
        ({}, {"standby_view_stale": True}, "host-b's view of the sessions is stale"),
        ({}, {"registered_at_cp": False}, "host-b is not registered at the CP"),
        ({}, {"takeover_file": {"responding": False}}, "host-b's takeover storage does not answer"),
    ],
    ids=["journal-stalled", "view-stale", "not-registered", "storage-silent"],
)
def test_a_switchover_refused_while_both_say_established_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cp_extra: dict[str, Any], b_extra: dict[str, Any], said: str
) -> None:
    """Both hosts say established, the pair is not in hot standby: the refusal said only the two
    states ("host-a active/established, host-b standby/established") and not what was wrong."""
    from hsb.ctl import switchover as switchover_mod

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        cp = _cp(epoch=3, active={"name": "host-a"}, standby={"name": "host-b"}, **cp_extra)
        return summarize(cp, [_host("host-a", "active", 3), _host("host-b", "standby", 3, **b_extra)])

    async def never(*a: Any, **kw: Any) -> dict[str, Any]:
        raise AssertionError("asked for a switchover the status refuses")

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", never)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(write_secret(tmp_path)))
    assert switchover_mod.run_switchover(t, True, 10.0) == 1
    err = capsys.readouterr().err
    assert "no established standby (host-a active/established, host-b standby/established)" in err and said in err, err
