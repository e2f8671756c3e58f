"""The alert rules' descriptions (configs/prometheus/hsb-rules.yml) quote `hsbctl status` as it
reads in the situations that fire them, checked against hsbctl's own verdict (hsb.ctl.gather.
summarize, hsb.ctl.status.headline). Found by the on-call walk-through on a sandbox:
HsbNobodyServes promised `exit 2, NOT SERVING`, but after a normal stop of the active (or a
crash with failover paused) the stopped host cannot be asked and hsbctl said `UNKNOWN (host-a
cannot be asked); from the others: NOT SERVING`, exit 3 (it now says NOT SERVING, exit 2, with
the stopped host counted as down: the CP holds no role for it); HsbJournalStalled named only the
journal's word, while the first line says NOT SERVING (exit 2), whose §0 row meant "no active
host" and pointed at promote."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl.status import headline
from hsb.ctl.verdict import summarize

pytestmark = pytest.mark.timeout(30)

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "configs" / "prometheus" / "hsb-rules.yml"
OPERATIONS_MD = ROOT / "docs" / "operations.md"


def description(alert: str) -> str:
    """An alert's description, its folded lines joined with single spaces."""
    text = RULES.read_text()
    m = re.search(rf"- alert: {alert}\n(.*?)(?=\n\s*- alert: |\Z)", text, re.DOTALL)
    assert m, alert
    d = re.search(r"description: >-\n(.*)", m.group(1), re.DOTALL)
    assert d, alert
    return " ".join(d.group(1).split())


def _host(name: str, role: str, **kw: Any) -> dict[str, Any]:
    return {"reachable": True, "addr": f"{name}:1", "name": name, "pid": 7, "role": role, "epoch": 5, **kw}


def _cp(**kw: Any) -> dict[str, Any]:
    return {"reachable": True, "addr": "cp:1", "name": "cp", "state": "serving", "epoch": 5, **kw}


def test_nobody_serves_quotes_the_status_of_a_stopped_active_that_cannot_be_asked() -> None:
    """After `hsbctl stop --no-takeover` (the case the description says to promote): the CP has
    no active, the stopped host refuses connections, the standby waits."""
    stopped = {"reachable": False, "addr": "host-a:1", "name": "host-a", "error": "connection refused"}
    standby = _host("host-b", "standby", state="active_stopped", serving=False, established=False)
    st = summarize(_cp(active=None, standby={"name": "host-b"}), [stopped, standby])
    first = headline(st)[0]
    down = headline(st)[1]
    assert st["exit_status"] == 2 and first == "hsb: NOT SERVING", (st, first)
    text = description("HsbNobodyServes")
    assert down.startswith("  host-a at host-a:1: connection refused;") and down.endswith(": counted as down"), down
    assert "NOT SERVING (exit 2)" in text and down.split("; ")[-1] + '"' in text and "(exit 3)" not in text, text
    # and what it says when every daemon answers
    all_asked = summarize(_cp(active=None, standby={"name": "host-b"}), [_host("host-a", "standby", serving=False), standby])
    assert all_asked["exit_status"] == 2 and headline(all_asked)[0] == "hsb: NOT SERVING"
    assert "NOT SERVING (exit 2)" in text, text
    # no CP serving also leaves every host not serving (seen with one CP down, and two both waiting)
    assert "HsbCPUnreachable" in text and "HsbNoCPServes" in text, text


def test_journal_stalled_quotes_the_verdict_and_section_0_says_what_it_means() -> None:
    """The CP's journal failing: every daemon answers, the active serves with a valid lease, and
    hsbctl's verdict is NOT SERVING (exit 2): nothing new is acknowledged."""
    active = _host("host-a", "active", state="established", serving=True, established=True, lease={"valid": True})
    standby = _host("host-b", "standby", state="established", serving=False, established=True)
    journal = {"state": "failing", "durability": "fsync", "error": "OSError: [Errno 28] No space left on device"}
    st = summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}, journal=journal), [active, standby])
    assert st["exit_status"] == 2 and headline(st)[0] == "hsb: NOT SERVING", st
    assert "NOT SERVING, exit 2, with journal STALLED or FAILING" in description("HsbJournalStalled")
    row = next(ln for ln in OPERATIONS_MD.read_text().splitlines() if ln.startswith("| 2 | `hsb: NOT SERVING` |"))
    assert "journal STALLED" in row and "never promote" in row, row


def test_takeover_storage_alert_names_every_event_that_makes_the_storage_fail() -> None:
    """hsb_takeover_storage_ok goes 0 after each of these log events (a batch write's or read's
    failure too, since the walk-through); the description names them all, each is logged by hsbd
    and has its row in operations.md §12, and it does not promise a failover that a standby
    never established cannot give."""
    events = ("takeover_storage_not_responding", "ring_write_failed", "batch_write_failed", "batch_read_failed", "takeover_file_not_writable")
    text = description("HsbTakeoverStorageStalled")
    code = "\n".join(p.read_text() for p in (ROOT / "hsb").rglob("*.py"))
    ops = OPERATIONS_MD.read_text()
    for event in events:
        assert event in text, (event, text)
        assert f'"{event}"' in code, event
        assert f"`{event}`" in ops, event
    assert "a failover still works" not in text and "HsbNoStandby" in text, text


def test_daemon_restarting_counts_restarts_not_starts() -> None:
    """changes(process_start_time_seconds[15m]) is the number of new start times: restarts. The
    walk-through's CP killed and started again 3 times was "started 3 times" (it started 4)."""
    text = RULES.read_text()
    m = re.search(r"- alert: HsbDaemonRestarting\n.*?summary: \"([^\"]+)\"", text, re.DOTALL)
    assert m and "changes(process_start_time_seconds" in text
    assert "started again {{ $value }} times" in m.group(1), m.group(1)


def test_peer_link_down_quotes_the_status_of_a_pair_whose_peer_link_alone_is_down() -> None:
    """HsbPeerLinkDown fires where only the peer link is down (the active serving without it, the
    standby established and registered): hsbctl status then says SERVING, PEER LINK DOWN (exit
    1), not SERVING WITHOUT A STANDBY, which HsbNoStandby quotes and which it does not fire for."""
    active = _host("host-a", "active", state="serving", serving=True, established=False, peer_link={"up": False})
    standby = _host("host-b", "standby", state="established", serving=False, established=True, registered_at_cp=True, peer_link={"up": False})
    st = summarize(_cp(active={"name": "host-a"}, standby={"name": "host-b"}), [active, standby])
    first = headline(st)[0]
    assert st["exit_status"] == 1 and first.startswith("hsb: SERVING, PEER LINK DOWN ("), (st, first)
    text = description("HsbPeerLinkDown")
    assert "(hsbctl status: SERVING, PEER LINK DOWN)" in text and "a failure of the active is still taken over" in text, text
    assert "SERVING WITHOUT A STANDBY" in description("HsbNoStandby")
    assert "no switchover" in first and "a planned switchover is refused" in text, (first, text)
