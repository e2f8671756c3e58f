"""hsbctl stop, history and promote from made-up answers (hsb.ctl.ops_cmds, hsb.ctl.main,
in-process), one test for each thing a mutation audit found no test for. stop, once the host it
stopped is gone: the documented handover ("host-a stopped; host-b is the active host", 0), one
still under way when it is gone (asked again until a host serves), and until the deadline a CP
still naming the stopped host its active, a host the CP names that says it is the standby, one
that says active without serving (1: the handover did not complete), the CP not asked (3: not
known), a stop the host refused (1, at once), another host gone while the stopped one still
answers, the host named asked (without a name only an active), --no-takeover sent as asked,
--timeout's bounds. history: each kind's row. promote: no standby seen and a host not asked (3),
a refusal read from an older standby's last error, the standby the CP names of two. (Their other
cases: tests/test_ctl_errors_requests.py, tests/test_ctl_status.py, tests/test_ctl_answers.py.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest

from hsb.ctl import ops_cmds
from hsb.ctl.target import Target
from tests.support.cli import PAIR_A, PAIR_B, invoke, pair_status, stop_faked

pytestmark = pytest.mark.timeout(30)

A, B = PAIR_A, PAIR_B
GONE = {"addr": A, "name": "host-a", "error": "connection refused: nothing listens there (is the daemon running?)"}
HANDS_OVER = {"t": "result", "ok": True, "msg": "host-a hands over to the standby, then stops", "hands_over": True}


def stop(
    monkeypatch: pytest.MonkeyPatch,
    secret: Path,
    capsys: pytest.CaptureFixture[str],
    after: Callable[[dict[str, Any]], None],
    answer: dict[str, Any] = HANDS_OVER,
    timeout: float = 5.0,
    host: str | None = None,
    before: Callable[[dict[str, Any]], None] = lambda st: None,
) -> tuple[int, str, str, list[tuple[str, dict[str, Any]]], int]:
    """`hsbctl stop` (of `host`; None: the active) in a pair in hot standby (the CP naming host-a
    its active; made over by `before`), whose status once the stop was asked is the pair's made
    over by `after` (tests.support.cli.stop_faked)."""

    def made(st: dict[str, Any]) -> None:
        st["cp"]["active"] = {"name": "host-a", "connected": True}
        before(st)

    return stop_faked(monkeypatch, secret, capsys, answer, lambda st, n, addr: after(st), made, host, timeout=timeout)


def _gone(st: dict[str, Any]) -> None:
    """host-a stopped: nothing listens at its admin address."""
    st["hosts"] = st["hosts"][1:]
    st["unknown"] = [GONE]


def _handed_over(st: dict[str, Any]) -> None:
    _gone(st)
    st["hosts"][0].update(role="active", serving=True, epoch=4)
    st["cp"].update(epoch=4, active={"name": "host-b", "connected": True})


def test_a_stop_that_handed_over_says_who_serves_now(monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """docs/operations.md §9's own example, which no test had: checked as a handover nobody is
    seen to serve after, it would say the handover did not complete (exit 1)."""
    code, out, err, asked, _ = stop(monkeypatch, secret, capsys, _handed_over)
    said = ["host-a hands over to the standby, then stops", "host-a stopped; host-b is the active host"]
    assert code == 0 and out.splitlines() == said, (code, out, err)
    assert asked == [(A, {"t": "stop", "takeover": True})], asked


def _cp_still_names_host_a(st: dict[str, Any]) -> None:
    _gone(st)  # (and host-b still the standby: nobody took over)


def _cp_names_a_standby(st: dict[str, Any]) -> None:
    _gone(st)
    st["cp"]["active"] = {"name": "host-b", "connected": True}  # (host-b itself says standby)


def _active_not_serving(st: dict[str, Any]) -> None:
    _gone(st)
    st["hosts"][0].update(role="active", serving=False)
    st["cp"]["active"] = {"name": "host-b", "connected": True}


@pytest.mark.parametrize(
    "after",
    [_cp_still_names_host_a, _cp_names_a_standby, _active_not_serving],
    ids=["cp-names-the-stopped-host", "cp-names-a-host-that-says-standby", "an-active-not-serving"],
)
def test_a_handover_nobody_is_seen_to_serve_after_is_not_said_done(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str], after: Callable[[dict[str, Any]], None]
) -> None:
    """The stopped host said it hands over, and no host is seen to serve: neither the CP still
    naming the host that stopped (it would have said 'host-a stopped; host-a is the active
    host'), nor the CP naming a host that says it is the standby, nor a host that says active
    and does not serve (no lease) is a handover done."""
    code, out, err, _, polls = stop(monkeypatch, secret, capsys, after, timeout=0.5)
    assert code == 1 and "error: host-a stopped, but its handover did not complete: no host serves now" in err, (code, out, err)
    assert "is the active host" not in out, out
    assert polls > 2, polls  # (asked again until the deadline, not judged on the first status after it was gone)


def test_a_handover_still_under_way_once_the_host_is_gone_is_waited_for(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The standby says it serves a few hundred ms after the stopped host is gone: the first
    status after it is gone shows no serving active, a later one host-b serving. hsbctl stop
    said "its handover did not complete" (exit 1) on that first status; it asks again."""
    seen: list[int] = []

    def taking_over(st: dict[str, Any]) -> None:
        seen.append(1)
        if len(seen) <= 3:  # host-a gone, host-b still the standby (the CP still naming host-a)
            _gone(st)
        else:
            _handed_over(st)

    code, out, err, _, polls = stop(monkeypatch, secret, capsys, taking_over)
    said = ["host-a hands over to the standby, then stops", "host-a stopped; host-b is the active host"]
    assert code == 0 and out.splitlines() == said and err == "", (code, out, err)
    assert polls == 5, polls  # (the status before the stop, three without a serving active, then host-b serving)


def test_a_handover_with_the_cp_not_asked_is_not_known(monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No host is seen to serve and the CP could not be asked: whether the handover completed is
    not known (3), not that it failed (1)."""

    def cp_away(st: dict[str, Any]) -> None:
        _gone(st)
        st["cp"] = {"reachable": False, "addr": "cp:1", "error": "connection refused: nothing listens there"}

    code, out, err, _, _ = stop(monkeypatch, secret, capsys, cp_away, timeout=0.5)
    assert code == 3 and "error: host-a stopped; whether its handover completed is not known (the CP cannot be asked)" in err, (code, out, err)


def test_a_stop_the_host_refuses_is_an_error_at_once(monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The host answered no (ok false): its line, exit 1, and no wait for a stop that will not come."""
    refusal = {"t": "result", "ok": False, "msg": "stop: field 'takeover' must be true or false; nothing done"}
    code, out, err, _, polls = stop(monkeypatch, secret, capsys, _gone, refusal)
    assert code == 1 and err == f"error: {refusal['msg']}\n" and out == "", (code, out, err)
    assert polls == 1, polls  # (the status read before the request only)


def test_another_host_gone_is_not_the_stopped_one_gone(monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """host-b's admin port refuses connections while host-a, asked to stop, still answers: host-a
    has not stopped (it said "host-a stopped" at the first poll)."""

    def standby_gone(st: dict[str, Any]) -> None:
        st["hosts"] = st["hosts"][:1]
        st["unknown"] = [{**GONE, "addr": B, "name": "host-b"}]

    code, out, err, _, polls = stop(monkeypatch, secret, capsys, standby_gone, timeout=0.3)
    assert code == 1 and "error: host-a did not stop within 0 s; see 'hsbctl status'" in err and "stopped;" not in out, (code, out, err)
    assert polls > 1, polls


def test_stop_asks_the_host_named_and_without_a_name_only_an_active(
    monkeypatch: pytest.MonkeyPatch, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--host host-b stops host-b, not the first host that answered; without --host, a pair with
    no reachable active (host-a cannot be asked) has no host to stop: the standby is not it."""

    def b_gone(st: dict[str, Any]) -> None:
        st["hosts"] = st["hosts"][:1]
        st["unknown"] = [{**GONE, "addr": B, "name": "host-b"}]

    code, out, err, asked, _ = stop(monkeypatch, secret, capsys, b_gone, host="host-b")
    assert [a for a, _ in asked] == [B] and code == 0 and "host-b stopped; host-a is the active host" in out, (asked, code, out, err)

    def a_away(st: dict[str, Any]) -> None:
        st["hosts"][0] = {"reachable": False, "name": "host-a", "addr": A, "error": "no answer within 2 s"}
        st["unknown"] = [st["hosts"][0]]

    code, out, err, asked, _ = stop(monkeypatch, secret, capsys, _gone, before=a_away)
    assert not asked and code == 3 and "error: no reachable active host to stop; name one with --host" in err, (asked, code, out, err)


def test_no_takeover_is_asked_as_said(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    sent: list[bool] = []

    def run_stop(t: Target, host: str | None, takeover: bool, timeout: float) -> int:
        sent.append(takeover)
        return 0

    monkeypatch.setattr(ops_cmds, "run_stop", run_stop)
    assert invoke("--host", A, "--host", B, "--secret-file", str(secret), "stop", "--no-takeover")[0] == 0
    assert invoke("--host", A, "--host", B, "--secret-file", str(secret), "stop")[0] == 0
    assert sent == [False, True], sent


def test_a_timeout_from_just_above_0_up_to_a_day_is_taken() -> None:
    assert ops_cmds.SECONDS.convert("86400", None, None) == 86400.0 and ops_cmds.SECONDS.convert("1e-3", None, None) == 0.001
    for bad in ("0", "86400.5", "nan", "inf", "-1"):
        with pytest.raises(click.BadParameter, match="give seconds above 0 up to 86400"):
            ops_cmds.SECONDS.convert(bad, None, None)


# -- history -----------------------------------------------------------------------------------


def test_history_rows_say_who_handed_to_whom_how_long_and_why() -> None:
    """An undone switchover's row names both hosts as a switchover's does, a fence the host fenced;
    each row its time taken, its worst pause and its reason with its why."""
    at = 1_700_000_000.0
    entries = [
        {"kind": "failover", "at": at, "epoch": 3, "from": "host-a", "to": "host-b", "duration_ms": 812.4, "worst_pause_ms": 905.3}
        | {"reason": "active lost", "why": "its link closed"},
        {"kind": "undone", "at": at, "epoch": 4, "from": "host-b", "to": "host-a", "reason": "its grantee was lost"},
        {"kind": "fence", "at": at, "epoch": 5, "host": "host-a", "reason": "stale epoch"},
        {"kind": "pause", "at": at, "epoch": 5, "reason": "operator (hsbctl)"},
    ]
    head, failover, undone, fence, pause = ops_cmds.history_lines(entries)
    assert head.split() == ["when", "kind", "epoch", "what", "took", "worst", "pause", "reason"], head
    assert failover.split()[2:] == [
        "failover",
        "3",
        "host-a",
        "->",
        "host-b",
        "812",
        "ms",
        "905.3",
        "ms",
        "active",
        "lost",
        "(its",
        "link",
        "closed)",
    ]
    assert undone.split()[2:] == ["undone", "4", "host-b", "->", "host-a", "-", "-", "its", "grantee", "was", "lost"], undone
    assert fence.split()[2:] == ["fence", "5", "host-a", "fenced", "-", "-", "stale", "epoch"], fence
    assert pause.split()[2:] == ["pause", "5", "-", "-", "operator", "(hsbctl)"], pause
    assert ops_cmds.history_lines([]) == ["no failover, switchover, promote or fence yet"]


# -- promote (hsb.ctl.main) --------------------------------------------------------------------


def _promote(monkeypatch: pytest.MonkeyPatch, secret: Path, status: Callable[[bool], dict[str, Any]]) -> tuple[int, str, str, list[str]]:
    """`hsbctl promote` with the pair's status `status(asked)` and each request accepted."""
    from hsb.ctl import gather

    asked: list[str] = []

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        return status(bool(asked))

    async def accepts(addr: str, *a: Any, **kw: Any) -> dict[str, Any]:
        asked.append(addr)
        return {"t": "result", "ok": True, "msg": "promotion of host-b requested"}

    monkeypatch.setattr(gather, "status_all", status_all)
    monkeypatch.setattr(gather, "ask", accepts)
    code, out, err = invoke("--host", A, "--host", B, "--secret-file", str(secret), "promote", "--timeout", "5")
    return code, out, err, asked


def _b_gone(st: dict[str, Any], key: str) -> dict[str, Any]:
    """`st` with host-b not asked (connection refused), listed under `key`: `unknown` (the CP
    may hold a role for it) or `absent` (it holds none: down)."""
    st["hosts"][1] = {"reachable": False, "name": "host-b", "addr": B, "error": "connection refused: nothing listens there"}
    st[key] = [st["hosts"][1]]
    return st


@pytest.mark.parametrize(
    "key, code, said",
    [
        # not asked: whether there is one to promote is not known (3, with the host's line), not the pair's refusal (1)
        ("unknown", 3, f"error: cannot ask host-b at {B}: connection refused: nothing listens there"),
        # not asked and the CP holds no role for it (status counts it as down): none to promote, known (1)
        ("absent", 1, f"host-b at {B}: connection refused: nothing listens there; it holds no role at the CP, so it serves nothing: counted as down"),
    ],
)
def test_promote_with_the_standby_not_asked(monkeypatch: pytest.MonkeyPatch, secret: Path, key: str, code: int, said: str) -> None:
    """The standby could not be asked: the exit status and the host's line say whether it is
    known to be down."""
    got, out, err, asked = _promote(monkeypatch, secret, lambda asked: _b_gone(pair_status(A, B), key))
    assert got == code and not asked, (got, out, err)
    assert err.splitlines() == [said, "error: no reachable standby host to promote"], err


def test_promote_refused_by_a_standby_that_counts_no_refusals_is_said_at_once(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    """A standby of an older hsbd has no switch_refusals count: the CP's refusal is read from its
    last error (it waited out --timeout and said "did not become active")."""

    def status(asked: bool) -> dict[str, Any]:
        st = pair_status(A, B)
        st["hosts"][0].update(serving=False, state="stopping")
        if asked:
            st["hosts"][1]["last_error"] = "promote refused by the CP: active host host-a: it is alive on its host link"
        return st

    code, out, err, asked = _promote(monkeypatch, secret, status)
    assert asked == [B] and code == 1, (code, out, err)
    assert err == "error: promote refused: active host host-a: it is alive on its host link\n", err


def test_promote_asks_the_standby_the_cp_names_of_two_that_say_standby(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    """Both hosts say standby and neither says whether it is registered (an older hsbd): the one
    the CP names is asked, not the one listed first."""

    def status(asked: bool) -> dict[str, Any]:
        st = pair_status(A, B)
        st["hosts"][0].update(role="standby", serving=False, state="active_stopped")
        st["hosts"][1].update(state="waiting_for_active")
        st["cp"]["standby"] = {"name": "host-b"}
        if asked:
            st["hosts"][1].update(role="active", epoch=5)
        return st

    code, out, err, asked = _promote(monkeypatch, secret, status)
    assert asked == [B] and code == 0 and "host-b is the active host now (epoch 5)" in out, (asked, code, out, err)


def test_switchover_refused_names_a_standby_that_is_down(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    """The standby is down (status counts it as down: `absent`): the refusal says why, with its
    address and error, as it did when such a host was `unknown`."""
    st = _b_gone(pair_status(A, B), "absent")
    st["established"] = False
    st["cp"]["standby"] = None

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        return st

    from hsb.ctl import switchover

    monkeypatch.setattr(switchover, "status_all", status_all)
    code, out, err = invoke("--host", A, "--host", B, "--secret-file", str(secret), "switchover", "--yes")
    assert code == 1 and f"  host-b at {B}: connection refused: nothing listens there" in err.splitlines(), (code, out, err)
