"""The fault campaign's judging (tests/support/campaignjudge.py) on rounds, reports and logs made up
here: each round's verdict, the summary's counts, the epoch records and the two-actives sample
must fail on what they are there to catch (tests/test_campaign.py runs real rounds, in which
every count is zero: those cannot show that a count would not stay zero)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support import campaign as support
from tests.support.campaign import Campaign
from tests.support.campaignjudge import COUNTED, CampaignError, Round

pytestmark = pytest.mark.timeout(30)


def test_a_round_fails_on_a_duplicate_an_unexpected_reply_or_a_closed_session(tmp_path: Path) -> None:
    c = Campaign(tmp_path, seed=1)
    for action in ("kill_cp", "crash_mid_batch_write", "kill_active"):  # whatever the round allows of drops
        with pytest.raises(CampaignError, match="1 duplicate replies"):
            c.judge(Round(0, "1:0", action, duplicates=1))
        with pytest.raises(CampaignError, match="2 unexpected replies"):
            c.judge(Round(0, "1:0", action, unexpected=2))
    with pytest.raises(CampaignError, match="3 sessions of load terminals closed although all had standby sessions"):
        c.judge(Round(0, "1:0", "kill_standby", session_closed=3))
    c.judge(Round(0, "1:0", "crash_new_active_mid_redelivery", session_closed=3))  # both hosts died: sessions close
    with pytest.raises(CampaignError, match="disconnected"):
        c.judge(Round(0, "1:0", "crash_new_active_mid_redelivery", disconnects=1))  # ... connections do not


def report(**kw: Any) -> dict[str, Any]:
    """The load report's to_dict, every count zero but `kw`."""
    d: dict[str, Any] = {"acked": 100, "lost": 0, "duplicates": 0, "unexpected": 0, "unacked": 0, "bad_data": 0, "failures": []}
    d |= {k: 0 for k in COUNTED}
    return d | kw


JOURNALS_CLEAN = {"missing": 0, "unmarked_repeats": 0, "processed_more_than_once": 0, "never_sent": 0}


def test_the_summary_carries_every_count_the_verdict_reads(tmp_path: Path) -> None:
    c = Campaign(tmp_path, seed=1)
    c.rounds = [
        Round(0, "1:0", "kill_active"),
        Round(1, "1:1", "kill_cp", disconnects=100, session_closed=2, disconnects_cp_present=1),
        Round(2, "1:2", "crash_before_reply", fallback=True, two_actives=True),
        Round(3, "1:3", "kill_standby", disconnects=1),
    ]
    c.counted = (101, 0, 0, 2, 1)  # the counts when round 3 was judged; 4 sessions closed after it
    d = report(lost=1, duplicates=2, unexpected=3, unacked=4, bad_data=5, failures=["x"], disconnects=101, session_closed=6, disconnects_cp_present=1)
    s = c.summarize(d, {"missing": 6, "unmarked_repeats": 7, "processed_more_than_once": 8, "never_sent": 9})
    want = {
        "lost": 1,
        "duplicates": 2,
        "unexpected": 3,
        "unacked": 4,
        "bad_data": 5,
        "failures": ["x"],
        "acknowledged_not_in_any_journal": 6,
        "processed_twice_without_redelivered_mark": 7,
        "processed_never_sent": 9,
        "disconnects_in_quiet_rounds": 1,
        "sessions_closed_in_quiet_rounds": 4,  # the late ones charged to the last round, a quiet one
        "sessions_closed_in_cp_rounds": 2,
        "disconnects_cp_present_in_cp_rounds": 1,
        "rounds_with_two_actives": 1,
        "fallbacks": {"crash_before_reply": 1},
    }
    assert {k: s[k] for k in want} == want
    assert s["actions"]["crash_before_reply"] == 0 and s["actions"]["kill_active"] == 1  # (a fallback is not its action's)
    clean = Campaign(tmp_path, seed=1)
    clean.rounds, clean.counted = [Round(0, "1:0", "kill_active")], (0, 0, 0, 0, 0)
    s = clean.summarize(report(), JOURNALS_CLEAN)
    assert s["fallbacks"] == {} and s["epoch_violations"] == [] and s["disconnects_in_quiet_rounds"] == 0
    log(tmp_path / "host-a.log", {"event": "serving_as_active", "epoch": 3})  # no grant of epoch 3 in cp.log (none at all)
    assert clean.summarize(report(), JOURNALS_CLEAN)["epoch_violations"] == ["host-a served as active at epoch 3, which the CP granted to None"]


def test_a_round_counts_what_the_load_counted_from_its_fault_to_its_end(tmp_path: Path) -> None:
    c = Campaign(tmp_path, seed=1)
    r = Round(0, "1:0", "kill_active")
    c.count_round(r, (5, 1, 2, 3, 4), (7, 2, 2, 6, 4))
    assert (r.disconnects, r.duplicates, r.unexpected, r.session_closed, r.disconnects_cp_present) == (2, 1, 0, 3, 0)
    assert c.counted == (7, 2, 2, 6, 4)  # (what comes after is charged late, from here)


def log(path: Path, *events: dict[str, Any]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def test_the_epoch_records_show_two_actives(tmp_path: Path) -> None:
    c = Campaign(tmp_path, seed=1)
    grants = [
        {"event": "host_registered", "role": "active", "epoch": 1, "host": "host-a"},
        {"event": "switchover_granted", "epoch": 2, "host": "host-b"},
    ]
    log(tmp_path / "cp.log", *grants)
    log(tmp_path / "host-a.log", {"event": "serving_as_active", "epoch": 1})
    log(tmp_path / "host-b.log", {"event": "serving_as_active", "epoch": 2})
    assert c.epoch_violations() == []
    log(tmp_path / "host-a.log", {"event": "serving_as_active", "epoch": 1}, {"event": "serving_as_active", "epoch": 2})
    assert c.epoch_violations() == ["host-a served as active at epoch 2, which the CP granted to host-b"]
    log(tmp_path / "host-a.log")
    log(tmp_path / "cp.log", *grants, {"event": "switchover_granted", "epoch": 2, "host": "host-a"})
    assert "CP granted epoch 2 to host-b and host-a" in c.epoch_violations()
    log(tmp_path / "cp.log", *grants, {"event": "switchover_granted", "epoch": 1, "host": "host-b"})
    assert "CP epoch went from 2 to 1" in c.epoch_violations()


async def test_a_status_with_two_hosts_serving_marks_the_campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Campaign(tmp_path, seed=1)
    monkeypatch.setattr(c, "state", lambda: {"cp": {"admin": "x"}, "hosts": {"host-a": {"admin": "a"}, "host-b": {"admin": "b"}}})
    hosts: list[dict[str, Any]] = []

    async def status_all(*args: Any, **kw: Any) -> dict[str, Any]:
        return {"hosts": hosts}

    monkeypatch.setattr(support, "status_all", status_all)
    active = {"name": "host-a", "reachable": True, "role": "active", "state": "serving"}
    hosts[:] = [active, {"name": "host-b", "reachable": True, "role": "standby", "state": "hot"}]
    await c.status()
    assert not c.two_actives
    hosts[:] = [active, {"name": "host-b", "reachable": True, "role": "active", "state": "fenced"}]  # fenced: not serving
    await c.status()
    assert not c.two_actives
    hosts[:] = [active, {"name": "host-b", "reachable": True, "role": "active", "state": "serving"}]
    await c.status()
    assert c.two_actives


def test_a_crash_point_counts_as_reached_only_by_the_victims_own_line(tmp_path: Path) -> None:
    """The `crash_point` line of an earlier round's process (same point, another pid) does not
    make this round's point reached."""
    c = Campaign(tmp_path, seed=1)
    log(tmp_path / "cp.log", {"event": "crash_point", "point": "cp.mid_switch", "pid": 41})
    assert c.point_reached("cp.mid_switch", 41)
    assert not c.point_reached("cp.mid_switch", 42)
    assert not c.point_reached("cp.after_grant", 41)
