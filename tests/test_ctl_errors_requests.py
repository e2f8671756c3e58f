"""hsbctl's requests to the pair, against a status faked in-process: promote and switchover exit 3
when the host cannot be asked at request time and 1 when it refuses, and tell an ended or granted
switchover by what the pair says, not by an earlier refusal or a count of polls; stop picks the
serving active and says when its announced handover did not complete; status --watch polls on
after a poll that failed. (hsbctl's errors of its inputs: tests/test_ctl_errors.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather
from hsb.ctl import switchover as switchover_mod
from hsb.ctl.target import Target
from tests.support.cli import admin_port_in_thread, closed_port, invoke, one_line_error, pair_status

pytestmark = pytest.mark.timeout(60)


# -- promote and switchover: the request itself ------------------------------------------


def test_promote_exits_3_when_the_standby_cannot_be_asked_and_1_when_it_refuses(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The status step found the standby; by the time promote is asked, nothing listens there."""
    gone = closed_port()

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        return pair_status("127.0.0.1:1", gone)

    monkeypatch.setattr(gather, "status_all", status_all)
    args = ("--host", "127.0.0.1:1", "--host", gone, "--secret-file", str(secret), "promote")
    one_line_error(*invoke(*args), 3, f"cannot ask host-b at {gone}: connection refused")

    async def refuses(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": False, "msg": "host-b is active, not a standby"}

    monkeypatch.setattr(gather, "ask", refuses)
    one_line_error(*invoke(*args), 1, "host-b is active, not a standby")


def test_switchover_exits_3_when_the_active_cannot_be_asked_and_1_when_it_refuses(
    secret: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = closed_port()

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        return pair_status(gone, "127.0.0.1:1")

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    t = Target(cp="127.0.0.1:1", cps=["127.0.0.1:1"], hosts=[gone, "127.0.0.1:1"], secret_file=str(secret))
    assert switchover_mod.run_switchover(t, True, 1.0) == 3
    one_line_error(0, "", capsys.readouterr().err, 0, f"cannot ask host-a at {gone}: connection refused")

    async def refuses(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": False, "msg": "switchover refused: the standby is not established"}

    monkeypatch.setattr(switchover_mod, "ask", refuses)
    assert switchover_mod.run_switchover(t, True, 1.0) == 1
    one_line_error(0, "", capsys.readouterr().err, 0, "switchover refused: the standby is not established")


def test_switchover_with_the_standby_not_asked_is_unknown_unless_the_cp_says_there_is_none(
    secret: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """host-b's admin port cannot be reached from here (a firewall, a typo): the pair is not
    known to be established, and the switchover said "refused: no established standby", exit 1.
    Not knowing is not "no standby": exit 3, naming what could not be asked. When the CP says no
    standby is registered, that settles it: exit 1."""
    gone = closed_port()

    def state(cp_standby: Any) -> dict[str, Any]:
        st = pair_status("127.0.0.1:1", gone)
        st["hosts"][1] = {"reachable": False, "name": "host-b", "addr": gone, "error": "connection refused"}
        st.update(established=False, unknown=[{"name": "host-b", "addr": gone, "error": "connection refused"}])
        st["cp"]["standby"] = cp_standby
        return st

    t = Target(cp="127.0.0.1:1", cps=["127.0.0.1:1"], hosts=["127.0.0.1:1", gone], secret_file=str(secret))

    async def registered(*a: Any, **kw: Any) -> dict[str, Any]:
        return state({"name": "host-b"})

    monkeypatch.setattr(switchover_mod, "status_all", registered)
    assert switchover_mod.run_switchover(t, True, 1.0) == 3
    assert f"cannot ask host-b at {gone}" in capsys.readouterr().err

    async def none_registered(*a: Any, **kw: Any) -> dict[str, Any]:
        return state(None)

    monkeypatch.setattr(switchover_mod, "status_all", none_registered)
    assert switchover_mod.run_switchover(t, True, 1.0) == 1
    assert "no established standby" in capsys.readouterr().err


def _switchover_taken(monkeypatch: pytest.MonkeyPatch, secret: Path, status_all: Any, timeout: float) -> int:
    """hsbctl switchover against `status_all`, its request taken by host-a: the exit code."""

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "planned switchover started on host-a"}

    monkeypatch.setattr(switchover_mod, "status_all", status_all)
    monkeypatch.setattr(switchover_mod, "ask", accepts)
    t = Target(cp="127.0.0.1:1", cps=["127.0.0.1:1"], hosts=["127.0.0.1:1", "127.0.0.1:2"], secret_file=str(secret))
    return switchover_mod.run_switchover(t, True, timeout)


def test_a_switchover_the_cp_refuses_after_the_host_took_it_is_an_error_at_once(
    secret: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The active took the request, then the CP refused the handover: said at once, not after
    the whole timeout of waiting for a switch that will not come."""
    calls = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        st = pair_status("127.0.0.1:1", "127.0.0.1:2")
        ended = 0 if calls == 1 else 1
        st["hosts"][0].update(switchovers_ended=ended, last_error="planned switchover refused by the CP: no standby registered" if ended else None)
        return st

    t0 = time.monotonic()
    assert _switchover_taken(monkeypatch, secret, status_all, 30.0) == 1
    assert time.monotonic() - t0 < 5.0
    err = capsys.readouterr().err
    assert "planned switchover refused by the CP: no standby registered" in err and "host-a is still the active" in err, err


def test_a_switchover_granted_before_the_old_actives_link_dropped_is_no_error(
    secret: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Granted, then the old active's link to the CP dropped before it heard: it calls its
    switchover abandoned (its count goes up), but the epoch moved and the other host is active:
    the switchover happened, and hsbctl says so (it said "still the active", exit 1)."""
    calls = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        st = pair_status("127.0.0.1:1", "127.0.0.1:2")
        st["hosts"][0]["switchovers_ended"] = 0
        if calls > 1:
            st["hosts"][0].update(role="standby", switchovers_ended=1, last_error="planned switchover abandoned: the host link to the CP is down")
            st["hosts"][1].update(role="active")
            st["cp"].update(epoch=4, last_switchover={"switched": 10, "classic": 0, "all_served_ms": 1.0, "worst_pause_ms": None})
        return st

    assert _switchover_taken(monkeypatch, secret, status_all, 10.0) == 0
    out = capsys.readouterr()
    assert "switchover complete" in out.out and "still the active" not in out.err, out


def test_promote_asks_the_standby_the_cp_names(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host-b, the active, stopped normally and was started again by a unit named standby; the CP
    refused it (standby_exists: host-a is its standby), so host-b says standby but is not
    registered. Listed first, it was asked to promote, took the request and dropped it: hsbctl
    waited 10 s, "did not become active", and host-a could not be promoted. The CP's standby is
    asked (else one the CP registered)."""
    asked: list[str] = []

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        b = {"reachable": True, "name": "host-b", "addr": "127.0.0.1:2", "role": "standby", "state": "waiting_for_active"}
        a_ = {"reachable": True, "name": "host-a", "addr": "127.0.0.1:1", "role": "standby", "state": "active_stopped"}
        b["registered_at_cp"], a_["registered_at_cp"] = False, True
        if asked == ["127.0.0.1:1"]:
            a_.update(role="active", epoch=7)
        return {"hosts": [b, a_], "unknown": [], "established": False, "cp": {"reachable": True, "epoch": 6, "standby": {"name": "host-a"}}}

    async def accepts(addr: str, *a: Any, **kw: Any) -> dict[str, Any]:
        asked.append(addr)
        return {"t": "result", "ok": True, "msg": "promotion requested"}

    monkeypatch.setattr(gather, "status_all", status_all)
    monkeypatch.setattr(gather, "ask", accepts)
    args = ("--host", "127.0.0.1:2", "--host", "127.0.0.1:1", "--secret-file", str(secret), "promote", "--timeout", "5")
    code, out, err = invoke(*args)
    assert asked == ["127.0.0.1:1"] and code == 0 and "host-a is the active host now" in out, (asked, code, out, err)

    # the CP not saying (an older CP): the standby it registered
    async def no_cp_word(*a: Any, **kw: Any) -> dict[str, Any]:
        st = await status_all()
        del st["cp"]["standby"]
        return st

    asked.clear()
    monkeypatch.setattr(gather, "status_all", no_cp_word)
    code, out, err = invoke(*args)
    assert asked == ["127.0.0.1:1"] and code == 0, (asked, code, out, err)


@contextlib.contextmanager
def silent_admin(secret: Path) -> Iterator[tuple[str, list[str]]]:
    """An admin port that authenticates hsbctl, takes promote, switchover, stop, pause, history
    and status (recorded, as a daemon acts on them) and never answers: a host whose loop is slow. (address, what it took)"""
    from hsb.wire.authlink import AuthServerProtocol

    took: list[str] = []

    class Silent(AuthServerProtocol):
        link = "admin"
        server_name = "host-a"
        dispatch = {t: "on_request" for t in ("promote", "switchover", "stop", "pause", "history", "status")}

        def on_request(self, msg: dict[str, Any]) -> None:
            took.append(msg["t"])

    with admin_port_in_thread(secret, Silent) as addr:
        yield addr, took


def test_a_request_taken_and_not_answered_in_time_is_no_cannot_ask(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host's loop slow past hsbctl's 2 s: it acts on the request (the intent posted, the stop
    begun) and its answer comes late. hsbctl said "cannot ask host-a … no answer within 2 s (a
    wrong port, a firewall…)", exit 3, for a request the host had taken. switchover and promote
    now say so and watch the pair's status for the outcome, as after an answer; stop says its
    outcome is not known and to look at the status."""
    from hsb.ctl import ops_cmds

    polls: list[int] = []
    with silent_admin(secret) as (addr, took):

        async def pair_then_swapped(*a: Any, **kw: Any) -> dict[str, Any]:
            polls.append(len(took))
            st = pair_status(addr, "127.0.0.1:2")
            st["hosts"][0]["switchovers_ended"] = 0
            if took:  # it acted: host-b the active, host-a the standby, hot standby again
                st["hosts"][0].update(role="standby", serving=False)
                st["hosts"][1].update(role="active", serving=True, epoch=4)
                rec = {"all_served_ms": 1.0, "worst_pause_ms": None, "switched": 3, "classic": 0}
                st["cp"] = {"reachable": True, "epoch": 4, "active": {"name": "host-b"}, "last_switchover": rec}
            return st

        monkeypatch.setattr(switchover_mod, "status_all", pair_then_swapped)
        code, out, err = invoke("--host", addr, "--host", "127.0.0.1:2", "--secret-file", str(secret), "switchover", "--yes", "--timeout", "10")
        assert took == ["switchover"] and code == 0 and "switchover complete" in out, (code, out, err)
        assert "cannot ask" not in err and "took the request and gave no answer in time" in err, err
        assert polls[-1] == 1 and len(polls) >= 2, polls  # the status watched after the request

        took.clear()

        async def standby_then_active(*a: Any, **kw: Any) -> dict[str, Any]:
            st = pair_status("127.0.0.1:2", addr)  # (host-a the active at :2, host-b the standby here)
            st["hosts"][0].update(serving=False, state="stopping")  # (stopped normally)
            if took:
                st["hosts"][1].update(role="active", epoch=5)
            return st

        monkeypatch.setattr(gather, "status_all", standby_then_active)
        code, out, err = invoke("--host", addr, "--host", "127.0.0.1:2", "--secret-file", str(secret), "promote", "--timeout", "10")
        assert took == ["promote"] and code == 0 and "host-b is the active host now" in out, (code, out, err)
        assert "cannot ask" not in err, err

        took.clear()
        monkeypatch.setattr(ops_cmds, "status_all", lambda *a, **kw: gather_pair(addr))
        code, out, err = invoke("--host", addr, "--host", "127.0.0.1:2", "--secret-file", str(secret), "stop", "--timeout", "10")
        line = one_line_error(code, out, err, 3, "host-a at", "took the stop request and gave no answer in time", "see 'hsbctl status'")
        assert took == ["stop"] and "cannot ask" not in line, line
        # (and the CP taking a pause so: whether it applied is not known)
        line = one_line_error(*invoke("--cp", addr, "--secret-file", str(secret), "pause"), 3, "whether it applied is not known")
        assert took == ["stop", "pause"] and "cannot ask" not in line, line


def test_a_read_not_answered_in_time_is_asked_not_cannot_ask(secret: Path) -> None:
    """A CP or host whose loop is slow past 2 s authenticates hsbctl and answers late. history said
    "cannot ask the CP at …", and a command's list of daemons its status could not read said
    "cannot ask host1 at …", the line of a wrong address or secret, for a daemon that was asked:
    they now say asked, no answer within 2 s, busy or stuck; one never reached still cannot be asked."""
    with silent_admin(secret) as (addr, took):
        line = one_line_error(*invoke("--cp", addr, "--secret-file", str(secret), "history"), 3, f"asked the CP at {addr}, no answer within 2 s")
        assert took == ["history"] and "busy or stuck" in line and "cannot ask" not in line, line
        refused = closed_port()
        code, out, err = invoke("--host", addr, "--host", refused, "--secret-file", str(secret), "stop", "--host", "host-a")
        assert code == 3 and "Traceback" not in err, (code, out, err)
        assert f"error: asked host1 at {addr}, no answer within 2 s: it authenticated and is busy or stuck" in err, err
        assert f"error: cannot ask host2 at {refused}: connection refused" in err, err
        assert "status" in took and "stop" not in took, took


async def gather_pair(addr: str) -> dict[str, Any]:
    return pair_status(addr, "127.0.0.1:2")


def test_promote_is_not_refused_by_a_refusal_from_before_it(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A promote refused earlier (the active was alive) left its last error; the operator stops
    the active and promotes again: the old refusal is not this request's answer."""
    calls = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        st = pair_status("127.0.0.1:1", "127.0.0.1:2")
        st["hosts"][1].update(switch_refusals=1, last_error="takeover refused by the CP: active host host-a: alive")
        if calls > 2:
            st["hosts"][1].update(role="active", epoch=5)
        return st

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "promotion of host-b requested"}

    monkeypatch.setattr(gather, "status_all", status_all)
    monkeypatch.setattr(gather, "ask", accepts)
    code, out, err = invoke("--host", "127.0.0.1:1", "--host", "127.0.0.1:2", "--secret-file", str(secret), "promote")
    assert code == 0 and "host-b is the active host now" in out, (code, out, err)


def test_promote_waits_its_timeout_not_a_count_of_polls(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each poll may wait (a host slow to answer, up to the poll's own timeout): promote gives up
    after --timeout seconds, not after 100 polls of however long each took, nor after a last
    poll that began just before the deadline."""
    polls = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal polls
        polls += 1
        await asyncio.sleep(0.0 if polls == 1 else kw.get("timeout", 1.0))  # no answer until the poll's timeout; never active
        return pair_status("127.0.0.1:1", "127.0.0.1:2")

    async def accepts(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "result", "ok": True, "msg": "promotion of host-b requested"}

    monkeypatch.setattr(gather, "status_all", status_all)
    monkeypatch.setattr(gather, "ask", accepts)
    t0 = time.monotonic()
    args = ("--host", "127.0.0.1:1", "--host", "127.0.0.1:2", "--secret-file", str(secret), "promote", "--timeout", "1.5")
    code, out, err = invoke(*args)
    assert code == 1 and "host-b did not become active within 1.5 s" in err, (code, out, err)
    assert time.monotonic() - t0 < 1.5 + 0.4, "a poll ran past the deadline"  # (the 1 s polls: 2.1 s and more)


def test_an_accepted_request_is_no_error() -> None:
    assert switchover_mod.refused_or_unasked({"t": "result", "ok": True, "msg": "promotion of host-b requested"}, {"name": "host-b"}) is None


# -- stop and status --watch: what hsbctl makes of the pair's answers --------------------------


def test_stop_without_a_name_stops_the_serving_active(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An old active cut off from the CP (its lease lost) still says role "active", and came first
    in the list: `hsbctl stop` stopped it, not the host that serves."""
    from hsb.ctl import ops_cmds

    asked: list[str] = []

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        st = pair_status("127.0.0.1:1", "127.0.0.1:2")
        st["hosts"][0]["serving"] = False  # host-a: lease lost, not serving
        st["hosts"][1].update(role="active", serving=True)  # host-b took over
        if asked:  # after the stop: host-b gone
            st["hosts"] = st["hosts"][:1]
            st["unknown"] = [{"addr": "127.0.0.1:2", "error": "connection refused: nothing listens there"}]
        return st

    async def ask(addr: str, *a: Any, **kw: Any) -> dict[str, Any]:
        asked.append(addr)
        return {"t": "result", "ok": True, "msg": "stopping"}

    monkeypatch.setattr(ops_cmds, "status_all", status_all)
    monkeypatch.setattr(ops_cmds, "ask", ask)
    code, out, err = invoke("--host", "127.0.0.1:1", "--host", "127.0.0.1:2", "--secret-file", str(secret), "stop", "--timeout", "5")
    assert asked == ["127.0.0.1:2"], (asked, out, err)
    assert code == 0 and "host-b stopped" in out, (code, out, err)


def test_a_stop_whose_announced_handover_did_not_complete_is_an_error(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The active said it hands over, then stops; the handover failed (the CP refused it, say)
    and it stopped normally, nobody taking over: `hsbctl stop` said "stopped; no host serves
    now", exit 0, and a script running `hsbctl stop && …` believed the service had moved."""
    from hsb.ctl import ops_cmds

    asked: list[str] = []

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        st = pair_status("127.0.0.1:1", "127.0.0.1:2")
        if asked:  # after the stop: host-a gone, host-b still the standby
            st["hosts"] = st["hosts"][1:]
            st["unknown"] = [{"addr": "127.0.0.1:1", "error": "connection refused: nothing listens there"}]
        return st

    async def ask(addr: str, *a: Any, **kw: Any) -> dict[str, Any]:
        asked.append(addr)
        return {"t": "result", "ok": True, "msg": "host-a hands over to the standby, then stops", "hands_over": True}

    monkeypatch.setattr(ops_cmds, "status_all", status_all)
    monkeypatch.setattr(ops_cmds, "ask", ask)
    code, out, err = invoke("--host", "127.0.0.1:1", "--host", "127.0.0.1:2", "--secret-file", str(secret), "stop", "--timeout", "0.5")
    assert code == 1 and "handover did not complete" in err, (code, out, err)
    # the other host not asked (not named, its admin port out of reach) but the CP says it serves:
    # the handover did complete
    asked.clear()

    async def cp_knows(*a: Any, **kw: Any) -> dict[str, Any]:
        st = await status_all()
        st["hosts"] = [h for h in st["hosts"] if h["name"] != "host-b"]
        st["cp"]["active"] = {"name": "host-b"} if asked else {"name": "host-a"}
        return st

    monkeypatch.setattr(ops_cmds, "status_all", cp_knows)
    code, out, err = invoke("--host", "127.0.0.1:1", "--secret-file", str(secret), "stop", "--timeout", "5")
    assert code == 0 and "host-b is the active host" in out, (code, out, err)
    # ... but not for a host whose link to it is down (nobody serves then)
    asked.clear()

    async def cp_lost_it(*a: Any, **kw: Any) -> dict[str, Any]:
        st = await cp_knows()
        st["cp"]["active"] = {"name": "host-b", "connected": False} if asked else {"name": "host-a", "connected": True}
        return st

    monkeypatch.setattr(ops_cmds, "status_all", cp_lost_it)
    code, out, err = invoke("--host", "127.0.0.1:1", "--secret-file", str(secret), "stop", "--timeout", "0.5")
    assert code == 1 and "handover did not complete" in err, (code, out, err)


def test_status_watch_goes_on_after_a_poll_that_failed(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`status --watch` ended with a traceback at one poll that failed (a secret file being
    rotated, say): it says so and polls on."""
    from hsb.ctl import status as status_mod

    polls: list[int] = []

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        polls.append(1)
        if len(polls) == 1:
            raise ValueError("the secret file is empty")
        if len(polls) >= 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C
        return {**pair_status("127.0.0.1:1", "127.0.0.1:2"), "exit_status": 0}

    monkeypatch.setattr(status_mod, "status_all", status_all)
    monkeypatch.setattr(status_mod, "shown", lambda st: "hsb: OK")
    code, out, err = invoke("--host", "127.0.0.1:1", "--secret-file", str(secret), "status", "--watch")
    assert code == 0 and len(polls) == 3, (code, out, err)
    assert "this poll failed: ValueError: the secret file is empty" in err and "hsb: OK" in out, (out, err)
