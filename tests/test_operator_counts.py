"""Counts and times as the operator reads them (hsb.plural), in-process: a count of one says its
noun in the singular where hsbctl (switchover, status, the takeover file's inspect), hsbterm's
verdict and the demo print it ("1 session switched", not "1 sessions switched"), and a
certificate's expiry is said in the unit that is true ("expired 2 hours ago", not "1 days ago")."""

from __future__ import annotations

import datetime as dt
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hsb.ctl.main import main
from hsb.ctl.refused import refused_line
from hsb.ctl.status import _pause, _tls_line, render
from hsb.ctl.switchover import complete_line
from hsb.ctl.verdict import _ring_unwritten, summarize
from hsb.demo import render_cp
from hsb.plural import many, span, were
from hsb.takeover import SessionEntry, TakeoverWriter, startup_id
from hsb.term.report import LoadReport, cp_restart_failures, duplicates_failure, protocol_errors_failure
from hsb.wire.tls import TLSFiles, check_files
from tests.support.certs import cert, make_ca, write
from tests.support.cli import shown_cp, shown_host

pytestmark = pytest.mark.timeout(30)


def test_a_count_of_one_is_singular_and_others_plural() -> None:
    assert many(1, "session") == "1 session" and many(0, "session") == "0 sessions" and many(2, "session") == "2 sessions"
    assert many(1, "reply", "replies") == "1 reply" and many(3, "reply", "replies") == "3 replies"
    assert many(None, "terminal") == "? terminals" and many(True, "try", "tries") == "? tries"
    assert were(1) == "was" and were(0) == "were" and were(2) == "were"


def test_a_span_is_rounded_down_in_the_unit_that_is_true() -> None:
    assert span(2 * 3600 + 5) == "2 hours" and span(3600) == "1 hour" and span(86399) == "23 hours"
    assert span(86400) == "1 day" and span(3 * 86400 + 23 * 3600) == "3 days"
    assert span(90) == "1 minute" and span(59) == "less than a minute" and span(-5) == "less than a minute"


def test_switchover_complete_says_one_session_and_one_terminal() -> None:
    one = {"switched": 1, "classic": 1, "worst_pause_ms": 2.0, "p99_pause_ms": 2.0, "in_flight_terminals": 1}
    assert complete_line(one).startswith(
        "switchover complete: 1 session switched, 1 reconnected; worst pause 2.0 ms (p99 2.0 ms) over 1 terminal with messages in flight;"
    ), complete_line(one)
    many_ = {**one, "switched": 20, "in_flight_terminals": 14}
    assert "20 sessions switched" in complete_line(many_) and "over 14 terminals with" in complete_line(many_), complete_line(many_)
    assert complete_line({"switched": 1, "classic": 0}).startswith("switchover complete: 1 session switched, 0 reconnected; no pause")


def test_status_says_one_session_switched_and_one_terminal_in_flight() -> None:
    assert " over 1 terminal in flight, all served" in _pause({"worst_pause_ms": 1.0, "all_served_ms": 0.5, "in_flight_terminals": 1})
    ls = {"kind": "failover", "from": "host-a", "to": "host-b", "epoch": 6, "at": None, "in_flight_terminals": 0}
    ls |= {"switch_ms": 1.0, "switched": 1, "classic": 0, "reason": "r"}
    text = render(summarize(shown_cp(last_switchover=ls), [shown_host("host-a", "standby"), shown_host("host-b", "active")]))
    assert "switch 1.0 ms, 1 session switched, 0 reconnected (r)" in text, text


def test_status_says_one_try_one_change_one_terminal_one_retry_one_call() -> None:
    fail = {"since": None, "failures": 1, "error": "EIO", "pending": 1}
    tf = {"path": "/t", "records": 1, "storage": "ok", "ring_write": {"generation": 1, "last_seq": 3}, "ring_write_failing": fail}
    a = shown_host("host-a", "active", takeover_file=tf)
    a["service"] = {"state": "failing", "name": "svc", "error": "E", "waiting_terminals": 1, "retries": 1}
    b = shown_host("host-b", "standby")
    b["service"] = {"state": "stalled", "name": "svc", "oldest_call_terminal": "t9", "oldest_call_s": 3, "calls_in_progress": 1}
    text = render(summarize(shown_cp(), [a, b]))
    assert "(1 try): EIO; 1 session change not written" in text, text
    assert "E; 1 terminal waits, its messages held at the CP and retried (1 retry so far)" in text, text
    assert "(1 call in progress)" in text, text
    unwritten = _ring_unwritten({"name": "host-a", "role": "active", "standby_view_stale": True, "takeover_file": tf})
    assert unwritten is not None and ", 1 session change not written:" in unwritten, unwritten


def test_one_refused_terminal_is_one_terminal() -> None:
    rec = {"refused_standby": {"standby": "host-b", "count": 1, "terminals": [{"terminal": "T1", "reason": "why"}]}}
    line = str(refused_line(rec))
    assert line.startswith("  1 terminal took the classic path (disconnected, it logs on again) because host-b refused its standby session: T1"), line
    assert "make its attrs identical" in line, line


def test_a_certificates_days_left_are_rounded_down_and_hours_under_a_day() -> None:
    def line(days: float) -> str:
        return _tls_line({"days_left": days, "not_after": "2029-03-04T00:00:00", "names": ["cp"]}, "links")

    assert line(825.6).endswith("expires 2029-03-04 (825 days)"), line(825.6)
    assert line(1.0).endswith("(1 day)  RENEW SOON"), line(1.0)
    assert line(0.5).endswith("(12 hours)  RENEW SOON"), line(0.5)
    assert line(-0.1).endswith("(expired 2 hours ago)  RENEW SOON"), line(-0.1)


@pytest.mark.parametrize(("ago", "said"), [(dt.timedelta(hours=2, minutes=5), "2 hours"), (dt.timedelta(days=3, hours=20), "3 days")])
def test_a_certificate_that_expired_is_said_to_have_expired_when_it_did(tmp_path: Path, ago: dt.timedelta, said: str) -> None:
    """(cert(): valid for 30 days from `starts_in`; a day of 24 hours is a day, 2 hours is not "1 days".)"""
    write(tmp_path, "cp", cert("cp", make_ca(tmp_path), starts_in=-(dt.timedelta(days=30) + ago)))
    errors = check_files(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key")))
    assert len(errors) == 1 and f"cp.pem expired {said} ago; make a new one" in errors[0], errors


def test_the_verdict_says_one_of_a_thing_in_the_singular() -> None:
    r = LoadReport(terminals=3, welcomed=2, sessions_opened=1, sessions_expected=True, sent=5, lost=1, bad_data=1, unacked=1, not_back=1)
    r.logon_drops = 1
    text = "\n".join(r.failures)
    assert "lost: 1 acknowledged message never answered" in text, text
    assert "bad data: 1 reply whose data" in text and "unacknowledged: 1 message sent and never" in text, text
    assert "not logged on: 1 of 3 terminals was never welcomed" in text, text
    assert "no session: 1 of the 2 terminals welcomed was never given" in text, text
    assert "not back: 1 terminal was not logged on again" in text and "1 connection was closed after its hello" in text, text
    assert duplicates_failure(1, []) == "duplicates: 1 reply beyond the first"
    assert protocol_errors_failure(1) == "protocol errors: 1 frame from the CP broke the protocol"
    assert cp_restart_failures(0, 1)[0].startswith("session closed: 1 session closure of standby-capable terminals")
    assert "4 terminals were never welcomed" in "\n".join(LoadReport(terminals=4).failures)


def test_the_demo_says_one_held_message() -> None:
    r: dict[str, Any] = {"recovered": {"held": 1, "replies_kept": 1, "terminals": 2}, "listening_ms": 1, "resumed": 1, "terminals": 1}
    r |= {"active_after": ["host-a"], "active_before": ["host-a"], "worst_pause_ms": 1, "p99_pause_ms": 1, "all_served_ms": 1}
    r |= {"verdict": {"sent": 1}, "ok": True, "failures": []}
    text = render_cp(r)
    assert "1 held message, 1 unconfirmed reply, 2 terminals' acknowledged ids" in text, text


def test_inspect_says_one_entry_and_one_record(tmp_path: Path) -> None:
    path = str(tmp_path / "tk")
    made = CliRunner().invoke(main, ["file", "create", path, "--records", "40", "--terminals", "10"])
    assert made.exit_code == 0, made.stderr
    with TakeoverWriter(path, terminals=10, host_name="host-a") as w:
        w.batch_write(startup_id(datetime(2024, 12, 31, 23, 59, 59)), [SessionEntry("T000", {"proto": "lu2"}, True)])
        w.append_group([SessionEntry("T000", {"proto": "lu2"}, False)])
    res = CliRunner().invoke(main, ["file", "inspect", path])
    assert res.exit_code == 0, res.stderr
    assert ": 1 entry, 1 open, 0 closed" in res.stdout and "seq 1..1 in 1 record, 1 entry;" in res.stdout, res.stdout


def test_a_certificate_an_hour_from_its_expiry_is_not_said_to_have_expired(tmp_path: Path) -> None:
    """The daemon's status rounds `days_left` to 0.1 day: a certificate valid for another hour
    says 0.0 there, and one that expired an hour ago -0.0. hsbctl status's line reads the time
    left from `not_after` (the certificate's own), so neither is "expired less than a minute ago"."""
    from hsb.wire.tls import TLS

    write(tmp_path, "cp", cert("cp", make_ca(tmp_path), starts_in=-dt.timedelta(days=30) + dt.timedelta(hours=1, minutes=5)))
    st = TLS(TLSFiles(str(tmp_path / "ca.pem"), str(tmp_path / "cp.pem"), str(tmp_path / "cp.key"))).status()
    assert st["days_left"] == 0.0, st  # (what the daemon says: 0.1 day is 2.4 hours)
    line = _tls_line(st, "links")
    assert line.endswith("(1 hour)  RENEW SOON") and "expired" not in line, line
    gone = (datetime.now(dt.UTC) - dt.timedelta(hours=1, minutes=5)).isoformat()
    line = _tls_line({"days_left": -0.0, "not_after": gone, "names": ["cp"]}, "links")
    assert line.endswith("(expired 1 hour ago)  RENEW SOON"), line
