"""hsbctl status's text (hsb.ctl.status) from made-up answers, in-process: each test here failed a
mutation of status.py that every other test passed (a mutation audit): labels, ages and lines
that say what a daemon's answer holds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import status as status_mod
from hsb.ctl.status import _age, _pause, _role_label, headline, render, shown
from hsb.ctl.target import Target
from hsb.ctl.verdict import summarize
from tests.support.cli import shown_cp, shown_host

pytestmark = pytest.mark.timeout(30)


def _lines(cp: dict[str, Any], *hosts: dict[str, Any]) -> list[str]:
    return render(summarize(cp, list(hosts))).splitlines()


def test_ages_are_seconds_then_minutes_then_hours() -> None:
    now = time.time()
    assert _age(None) == "-" and _age(0) == "-" and _age(now - 90) == "90s ago"
    assert _age(now - 5000) == "83m ago", _age(now - 5000)
    assert _age(now - 9000) == "2.5h ago", _age(now - 9000)


def test_a_hosts_role_is_shown_in_capitals_and_an_active_fenced_says_so() -> None:
    lines = _lines(shown_cp(), shown_host("host-a", "active"), shown_host("host-b", "standby"))
    assert any(x.startswith("  host-b    STANDBY ") for x in lines), lines
    assert _role_label({"role": "active", "serving": False, "state": "fenced"}) == "FENCED"
    assert _role_label({"role": "active", "serving": False, "state": "serving", "lease": {"lost_ms_ago": 0}}) == "LEASE-LOST"


def test_a_switch_with_nothing_in_flight_is_not_said_unmeasured() -> None:
    assert _pause({"in_flight_terminals": 0}) == "nothing in flight (no pause to measure), "
    assert _pause({}) == "worst pause not measured yet, "
    assert "all served after 0.0 ms" in _pause({"worst_pause_ms": 1.0, "all_served_ms": 0.0, "in_flight_terminals": 2})


def test_what_the_cp_answer_holds_is_each_shown() -> None:
    """Paused, the limits' warnings, held bytes at the bound, a switch from nobody (after a normal
    stop) with no kind, the journal off, an active that stopped normally: each has its line."""
    ls = {"kind": "promote", "planned": True, "from": None, "to": "host-b", "epoch": 6, "at": None, "in_flight_terminals": 0}
    ls |= {"switch_ms": 1.0, "switched": 0, "classic": 0, "reason": "r"}
    cp = shown_cp(paused=True, open_files={"warning": "W-open"}, accept_queue={"warning": "W-accept"}, last_switchover=ls)
    cp |= {
        "held_bytes": {"reached": True, "total": 3 << 20, "bound": 4 << 20},
        "journal": {"durability": "none"},
        "active_stopped_normally": "host-x",
    }
    text = "\n".join(_lines(cp, shown_host("host-a", "active"), shown_host("host-b", "standby")))
    assert "PAUSED: automatic failover is off" in text, text
    assert "WARNING W-open" in text and "WARNING W-accept" in text, text
    assert "WARNING held messages at the CP's bound (3.0 MiB of 4.0 MiB" in text, text
    assert "last promote: (none: after a normal stop) -> host-b at epoch 6" in text, text
    assert "journal OFF (durability none)" in text and "active host-x stopped normally" in text, text


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        ({"kind": "promote", "stopped": "host-a"}, "last promote: (none: host-a had stopped normally) -> host-b"),
        ({"kind": "failover"}, "last failover: (none) -> host-b"),
    ],
)
def test_a_switch_from_nobody_names_who_had_stopped_or_says_none(extra: dict[str, Any], said: str) -> None:
    ls: dict[str, Any] = {"planned": False, "from": None, "to": "host-b", "epoch": 6, "at": None, "in_flight_terminals": 0}
    ls |= {"switch_ms": 1.0, "switched": 0, "classic": 0, "reason": "r"} | extra
    text = "\n".join(_lines(shown_cp(last_switchover=ls), shown_host("host-a", "standby"), shown_host("host-b", "active")))
    assert said in text, text


def test_a_failing_journal_is_said_with_its_error() -> None:
    lines = _lines(
        shown_cp(journal={"state": "failing", "dir": "/j", "error": "EIO"}), shown_host("host-a", "active"), shown_host("host-b", "standby")
    )
    assert any("journal FAILING /j" in x and "ERROR EIO: acknowledgements stopped" in x for x in lines), lines


def test_acknowledgements_waiting_for_a_host_are_said_with_their_count_and_age() -> None:
    waiting = {"messages": 20, "since": time.time() - 12}
    lines = _lines(shown_cp(journal={"state": "ok", "dir": "/j", "acks_waiting_for_host": waiting}))
    [line] = [x for x in lines if "ACKNOWLEDGEMENTS WAIT" in x]
    assert "(20 messages, the first 12s ago)" in line and "journal and generation it follows" in line, line
    for none in (None, {"messages": 0, "since": None}):  # (a host came, or no message yet: nothing withheld)
        assert not [x for x in _lines(shown_cp(journal={"state": "ok", "dir": "/j", "acks_waiting_for_host": none})) if "WAIT" in x]


def test_what_a_hosts_answer_holds_is_each_shown() -> None:
    """A standby's ring read (not its own ring write) with a lag of 0, the terminals the CP
    refused (the last one named), a file mismatch, a last error, a stalled call; the rejoined
    note only for a host that serves as the standby."""
    ring = {"ring_write": {"generation": 1, "last_seq": 5}}
    a = shown_host("host-a", "active", rejoined_as_standby_of="x", takeover_file={"path": "/t", "records": 1, "storage": "ok", **ring})
    a["service"] = {"state": "stalled", "name": "svc", "oldest_call_terminal": "t9", "oldest_call_s": 3, "calls_in_progress": 1}
    tf = {"path": "/t", "records": 1, "storage": "ok", "ring_write": {"generation": 1, "last_seq": 3}, "ring_read": {"generation": 1, "next_seq": 6}}
    refused = [{"terminal": "t1", "kind": "k1", "reason": "r1"}, {"terminal": "t2", "kind": "k2", "reason": "r2"}]
    b = shown_host(
        "host-b", "standby", rejoined_as_standby_of="x", takeover_file=tf, open_failed={"recent": refused}, file_mismatch="FM", last_error="LE"
    )
    lines = _lines(shown_cp(), a, b)
    text = "\n".join(lines)
    assert any(x.startswith("  host-b ") and "rejoined as the standby" in x for x in lines), lines
    assert not any(x.startswith("  host-a ") and "rejoined" in x for x in lines), lines
    assert "ring read gen 1 next 6 lag 0" in text, text
    assert "SESSIONS REFUSED by the CP, not open here: t1, t2; last t2 (k2)" in text and ": r2" in text, text
    assert "ERROR FM" in text and "last error: LE" in text, text
    assert "SERVICE STALLED (svc): a call for t9 has not returned for 3 s" in text, text


def test_each_cp_machine_is_shown_with_what_it_said() -> None:
    machines: list[dict[str, Any]] = [
        {"addr": "a:1", "reachable": False, "error": "E1", "error_answer": True},
        {"addr": "b:1", "reachable": False, "error": "E2"},
        {"addr": "c:1", "reachable": True, "name": "c", "state": "serving", "superseded": {"by": "d", "generation": 2}, "journal_unanswered_s": 0},
        {"addr": "d:1", "reachable": True, "name": "d", "state": "serving", "same_as": "e:1", "generation": 2},
    ]
    text = render(summarize(shown_cp(), [shown_host("host-a", "active"), shown_host("host-b", "standby")], machines))
    line = next(x for x in text.splitlines() if x.startswith("CP machines: "))
    assert line == (
        "CP machines: a:1 E1; b:1 cannot be asked (E2); c at c:1 SUPERSEDED (says it serves) JOURNAL NOT ANSWERING for 0 s: does the shared"
        " storage hang?; d at d:1 SERVING (the same hsbcpd as at e:1) (generation 2)"
    ), line
    assert "ERROR: two CPs say they serve: c at c:1" in text, text
    machines[3]["addr"] = "e2:1"
    assert "WARNING: the ctl config's cp names d twice" in render(summarize(shown_cp(), [shown_host("host-a", "active")], machines)), machines


def test_a_status_render_cannot_read_is_unknown_exit_3() -> None:
    """A CP answer without its terminal counts (KeyError in render): UNKNOWN and exit 3."""
    st = summarize({k: v for k, v in shown_cp().items() if k != "terminals"}, [shown_host("host-a", "active"), shown_host("host-b", "standby")])
    assert st["exit_status"] == 0
    assert shown(st).startswith("hsb: UNKNOWN (a daemon answered a status this hsbctl cannot read: KeyError") and st["exit_status"] == 3


def test_watch_shows_a_status_once_until_it_changes_and_again_after_a_failed_poll(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Polls that differ only in a heartbeat's age are shown once; after a poll that failed, the
    next status is shown again (the screen said the failure)."""
    polls: list[Any] = [0.0, 5.0, RuntimeError("rotated"), 9.0]

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        p = polls.pop(0)
        if isinstance(p, Exception):
            raise p
        return summarize(shown_cp(), [shown_host("host-a", "active", peer_link={"up": True, "heartbeat_age_ms": p}), shown_host("host-b", "standby")])

    def sleep(_: float) -> None:
        if not polls:
            raise KeyboardInterrupt

    monkeypatch.setattr(status_mod, "status_all", status_all)
    monkeypatch.setattr(time, "sleep", sleep)  # (status.run_status sleeps between polls)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["a:1", "b:1"], secret_file=str(tmp_path / "s"))
    assert status_mod.run_status(t, False, True) == 0
    out = capsys.readouterr()
    assert out.out.count("hsb: ESTABLISHED") == 2 and out.out.count("(watching; Ctrl-C to stop)") == 2, out.out
    assert "this poll failed: RuntimeError: rotated" in out.err, out.err


def test_a_role_change_is_said_even_when_a_daemon_cannot_be_asked() -> None:
    st = {"established": False, "serving": True, "unknown": [{"name": "host-c", "addr": "c:1", "error": "E"}], "changing": "host-a says X"}
    lines = headline(st)
    assert lines[0].startswith("hsb: UNKNOWN (host-c cannot be asked); from the others"), lines
    assert any(x.startswith("  roles are changing") and x.endswith("host-a says X") for x in lines), lines


def test_a_normal_stop_with_no_standby_registered_does_not_send_the_operator_to_promote() -> None:
    """After a normal stop the CP's line names the way on: promote while the CP has a standby; with
    none registered (both hosts down) promote can only fail, so the line says to start a host."""
    hosts = (shown_host("host-a", "standby", state="active_stopped"), shown_host("host-b", "active", serving=False, state="stopping"))
    with_standby = "\n".join(
        _lines(shown_cp(active_stopped_normally="host-b", standby={"name": "host-a", "role": "standby", "connected": True}), *hosts)
    )
    assert "active host-b stopped normally; 'hsbctl promote' moves the service to the standby" in with_standby, with_standby
    alone = "\n".join(_lines(shown_cp(active_stopped_normally="host-b", standby=None), *hosts))
    assert "'hsbctl promote' moves the service" not in alone, alone
    assert (
        "active host-b stopped normally; no standby is registered at the CP to promote:"
        " start host-b again, or start the other host and 'hsbctl promote' it"
    ) in alone, alone
