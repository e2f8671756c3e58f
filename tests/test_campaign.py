"""The seeded fault campaign, 20 rounds (issue 7 item 3); `bench/campaign.py` runs 1,000."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hsb.ctl import sandbox
from tests.support.campaign import Campaign, run_campaign


@pytest.mark.timeout(600)
async def test_campaign_20_rounds(tmp_path: Path) -> None:
    summary = await run_campaign(tmp_path / "campaign", 20, terminals=100, rate=300)
    assert summary["rounds"] == 20
    assert summary["acknowledged"] > 0
    assert summary["lost"] == 0, summary
    assert summary["duplicates"] == 0, summary
    assert summary["failures"] == [], summary  # the strict verdict: unexpected, unacked, bad data, ...
    assert summary["processed_twice_without_redelivered_mark"] == 0, summary
    assert summary["acknowledged_not_in_any_journal"] == 0, summary
    assert summary["processed_never_sent"] == 0, summary
    assert summary["disconnects_in_quiet_rounds"] == 0, summary
    assert summary["sessions_closed_in_quiet_rounds"] == 0, summary
    assert summary["sessions_closed_in_cp_rounds"] == 0, summary
    assert summary["disconnects_cp_present_in_cp_rounds"] == 0, summary
    assert summary["rounds_with_two_actives"] == 0, summary
    assert summary["epoch_violations"] == [], summary
    # every armed crash point fired in its round (none SIGKILLed instead: that round tested nothing of it)
    assert summary["fallbacks"] == {}, summary["fallbacks"]
    assert sum(summary["actions"].values()) == 20, summary["actions"]


@pytest.mark.timeout(600)
async def test_campaign_20_rounds_ledger_on_postgresql(tmp_path: Path) -> None:
    """The same campaign with the ledger service on PostgreSQL under transfers; the books are
    checked after every round and at the end."""
    from tests.support import pg as pgsupport

    why = pgsupport.missing()
    if why is not None:
        pytest.skip(why)
    server = pgsupport.PgServer()
    try:  # (a failure between here and the run must not leave a server behind)
        seed = int(os.environ.get("HSB_CAMPAIGN_SEED", "0") or 0) or int.from_bytes(os.urandom(4), "big")
        print(f"campaign seed {seed} (replay: HSB_CAMPAIGN_SEED={seed})")
        c = Campaign(tmp_path / "campaign", seed=seed, terminals=100, rate=300, ledger={"dsn": server.createdb("campaign")})
    except BaseException:
        server.close()
        raise
    try:
        summary = await c.run(20)
    finally:
        try:
            sandbox.down(tmp_path / "campaign", timeout=0.5)
        except sandbox.SandboxError:
            pass
        server.close()
    assert summary["rounds"] == 20 and summary["books_checked"] == 20
    assert summary["acknowledged"] > 0
    assert summary["failures"] == [], summary  # the strict verdict and the final books
    books = summary["books"]
    assert books and books["total"] == books["expected_total"] and books["transfers_ok"] > 0, books
    assert summary["disconnects_in_quiet_rounds"] == 0, summary
    assert summary["sessions_closed_in_quiet_rounds"] == 0, summary
    assert summary["rounds_with_two_actives"] == 0, summary
    assert summary["epoch_violations"] == [], summary
    assert summary["fallbacks"] == {}, summary["fallbacks"]
    assert sum(summary["actions"].values()) == 20, summary["actions"]


def test_a_late_disconnect_is_charged_to_the_round_it_came_after(tmp_path: Path) -> None:
    """A disconnect the load counts after a quiet round was judged (its recovery's, late) is that
    round's, and fails it; it is not forgiven by a next round that allows disconnects, nor lost
    after the last round."""
    from tests.support.campaignjudge import CampaignError, Round

    c = Campaign(tmp_path, seed=1)
    quiet = Round(0, "1:0", "kill_active")
    c.counted = (5, 0, 0, 0, 0)
    with pytest.raises(CampaignError, match="disconnected although all had standby sessions"):
        c.charge_late(quiet, (6, 0, 0, 0, 0), judge=True)
    assert quiet.disconnects == 1 and c.counted == (6, 0, 0, 0, 0)
    loud = Round(1, "1:1", "kill_cp")
    c.charge_late(loud, (9, 0, 0, 0, 0), judge=True)  # allowed there: no error
    assert loud.disconnects == 3 and loud.notes == ["late: 3 disconnects"]
    closed = Round(2, "1:2", "kill_active")
    c.charge_late(closed, (9, 0, 0, 2, 0), judge=False)  # after the last round: counted, judged by the summary
    assert closed.session_closed == 2
    again = Round(3, "1:3", "kill_cp")
    with pytest.raises(CampaignError, match="welcomed again by the same CP process"):  # a CP round's late drop with the CP there
        c.charge_late(again, (10, 0, 0, 2, 1), judge=True)


def test_a_round_that_kills_only_the_cp_is_judged_as_a_cp_restart(tmp_path: Path) -> None:
    """A CP round ran under the campaign's conventional-mode load, and judge() looked at closed
    sessions and drops only in quiet rounds: a CP restart that closed sessions, or dropped a
    terminal that the same CP process then welcomed again, passed (bench/cprestart.py and the
    demo's act three fail it). Now such a round is judged as hsb.term.report's "cp" mode does."""
    from tests.support.campaignjudge import CP_ONLY, CampaignError, Round

    c = Campaign(tmp_path, seed=1)
    assert {"kill_cp", "crash_cp_after_journal_write", "crash_cp_reply_before_durable"} <= CP_ONLY
    assert "crash_cp_reply_before_durable_then_active" not in CP_ONLY
    # the CP crashed in the middle of a failover: the active died first
    assert not {"crash_cp_after_grant", "crash_cp_mid_switch", "crash_cp_mid_redelivery"} & CP_ONLY
    with pytest.raises(CampaignError, match=r"kill_cp\): session closed: 7 session closures"):
        c.judge(Round(0, "1:0", "kill_cp", session_closed=7))
    with pytest.raises(CampaignError, match="disconnects with the CP present: 2 "):
        c.judge(Round(0, "1:0", "crash_cp_after_journal_write", disconnects=100, disconnects_cp_present=2))
    c.judge(Round(0, "1:0", "kill_cp", disconnects=100))  # every terminal dropped by the CP's death: its absence explains them
    # the active dies too (while the CP is down): its terminals' sessions may close
    c.judge(Round(0, "1:0", "crash_cp_reply_before_durable_then_active", disconnects=100, session_closed=7))
    c.judge(Round(0, "1:0", "crash_mid_batch_write", disconnects=5, session_closed=7, disconnects_cp_present=5))  # a host's crash


async def test_the_campaigns_load_counts_drops_with_the_cp_present() -> None:
    """The campaign's load (campaignload.start_load) is run_load with CountingStats, whose
    snapshots carry each terminal's drops with the CP present, summed."""
    import asyncio

    from tests.support.campaignload import CountingStats, start_load

    snaps: list[dict[str, object]] = []
    load = await start_load("127.0.0.1:1", terminals=2, rate=1.0, duration=1, connect_timeout=0.2, progress=snaps.append, progress_interval=0.01)
    await asyncio.wait_for(load, 10)
    assert snaps and snaps[-1]["disconnects_cp_present"] == 0
    s = CountingStats(2, "x")
    a, b = (type("C", (), {"cp_present_drops": n})() for n in (1, 2))
    s.on_welcome(a, True)
    s.on_welcome(b, True)
    assert s.snapshot("send", 0.0)["disconnects_cp_present"] == 3
