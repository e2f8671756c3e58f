"""The fault campaign's verdict (bench/campaign.py's `problems` and `render`) on summaries made
up here: what it must not call "all OK"."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import campaign  # noqa: E402

MACHINE = {"cpu": "x", "cores": 2, "kernel": "k", "python": "3", "uvloop": "u", "loadavg": [0.0], "date": "d", "code": "c"}


def passing() -> dict[str, Any]:
    """A summary of a campaign that kept every promise (every figure measured, each zero)."""
    s: dict[str, Any] = {"seed": 1, "rounds": 10, "acknowledged": 500, "failures": [], "epoch_violations": [], "unacked": 0, "bad_data": 0}
    s["processed_more_than_once"] = 3  # (allowed: marked every time after the first)
    s |= {k: 0 for k, _ in campaign.CHECKED}
    s["actions"] = {"kill_active": 5, "crash_cp_mid_compaction": 5}
    s["fallbacks"] = {}
    return s


def rendered(s: dict[str, Any]) -> str:
    a = argparse.Namespace(command="c", machine=MACHINE, json=str(campaign.RESULTS), render=None)
    return cast(str, campaign.render({"machine": MACHINE, "settings": {"rounds": s["rounds"]}, "results": s}, a))


def verdict(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("| verdict"))


def test_a_passing_summary_is_all_ok() -> None:
    s = passing()
    assert campaign.problems(s) == []
    assert verdict(rendered(s)) == "| verdict | all OK |"


def test_a_crash_point_that_never_fired_fails_the_verdict() -> None:
    """An armed round whose point was never reached (the campaign SIGKILLed the process after
    10 s) tested nothing of that point: such rounds, five of five, were reported "all OK"."""
    s = passing() | {"actions": {"kill_active": 5, "crash_cp_mid_compaction": 0}, "fallbacks": {"crash_cp_mid_compaction": 5}}
    bad = campaign.problems(s)
    assert bad and "cp.mid_compaction" in bad[0] and "never reached" in bad[0], bad
    text = rendered(s)
    assert "**FAILED**" in verdict(text) and "cp.mid_compaction" in verdict(text)
    assert "**5** of them armed at a crash point that never fired" in text
    some = passing() | {"actions": {"crash_cp_mid_compaction": 3}, "fallbacks": {"crash_cp_mid_compaction": 1}}
    assert campaign.problems(some) == ["crash point cp.mid_compaction (crash_cp_mid_compaction) not reached in 1 of its 4 rounds (SIGKILLed instead)"]


def test_round_times_keep_the_rounds_that_fell_back_apart() -> None:
    detail = [
        {"action": "crash_cp_mid_compaction", "ms": 1000.0, "fallback": False},
        {"action": "crash_cp_mid_compaction", "ms": 11000.0, "fallback": True},
    ]
    rm = campaign.compact({"rounds_detail": detail})["round_ms"]
    assert rm == {
        "crash_cp_mid_compaction": {"rounds": 1, "median": 1000.0, "max": 1000.0},
        "crash_cp_mid_compaction, crash point not reached": {"rounds": 1, "median": 11000.0, "max": 11000.0},
    }


def test_a_figure_the_run_did_not_measure_is_not_a_zero() -> None:
    """Results saved by an older campaign lack later figures (campaign.json of 2fc39a7 has no
    sessions_closed_in_quiet_rounds): their rows said **0** and the verdict "all OK"."""
    s = passing()
    del s["sessions_closed_in_quiet_rounds"]
    s.pop("processed_more_than_once", None)
    assert campaign.problems(s) == ["sessions closed of terminals that had a standby session: not measured"]
    text = rendered(s)
    assert "| sessions closed of terminals that had a standby session (quiet rounds) | **not measured** |" in text
    assert "| processed more than once (marked redelivered every time after the first) | not measured |" in text
    assert "**FAILED**" in verdict(text) and "not measured" in verdict(text)
    del s["fallbacks"]
    assert "whether each armed crash point fired: not measured" in campaign.problems(s)


def test_old_results_are_not_described_with_what_they_did_not_run() -> None:
    """Rendered again, a results file of older code: the rounds that allow disconnects are the
    ones it ran, and round times that counted the fallbacks with their action say so."""
    s = passing() | {
        "fallbacks": {"crash_cp_mid_compaction": 2},
        "round_ms": {"crash_cp_mid_compaction": {"rounds": 7, "median": 900.0, "max": 11000.0}},
    }
    text = rendered(s)
    row = next(ln for ln in text.splitlines() if ln.startswith("| disconnects in all rounds"))
    assert "crash_cp_mid_compaction" in row and "kill_cp" not in row, row
    assert "crash_cp_mid_compaction (with 2 not reached) 900 (11,000)" in text


def test_what_the_rounds_judge_per_round_fails_the_summary_too() -> None:
    """The campaign's summary counts what a host processed that no terminal sent, and the closed
    sessions and drops of rounds where only the CP died: each fails the verdict (the bench read
    none of them), and a results file without them did not measure them."""
    for key in ("processed_never_sent", "sessions_closed_in_cp_rounds", "disconnects_cp_present_in_cp_rounds"):
        bad = campaign.problems(passing() | {key: 2})
        assert len(bad) == 1 and bad[0].startswith("2 "), (key, bad)
        older = passing()
        del older[key]
        assert campaign.problems(older) == [f"{dict(campaign.CHECKED)[key]}: {campaign.NOT_MEASURED}"]


def test_every_figure_the_verdict_reads_has_its_row() -> None:
    """A count the verdict fails on is shown in the table too: the three counts the rounds
    judge were read by the verdict with no row, so a failed verdict named a figure the table never
    showed."""
    s = passing() | {"processed_never_sent": 7, "sessions_closed_in_cp_rounds": 5, "disconnects_cp_present_in_cp_rounds": 6}
    text = rendered(s)
    assert "| processed by a host though no terminal sent them | **7** |" in text
    assert "(rounds where only the CP died) | **5 / 6** |" in text


# every count the campaign's summary must have at zero, named here (not read from CHECKED: a
# count dropped from it must fail this, not vanish from the test with it)
MUST_BE_ZERO = (
    "lost",
    "duplicates",
    "unexpected",
    "unacked",
    "bad_data",
    "processed_twice_without_redelivered_mark",
    "acknowledged_not_in_any_journal",
    "disconnects_in_quiet_rounds",
    "sessions_closed_in_quiet_rounds",
    "rounds_with_two_actives",
    "processed_never_sent",
    "sessions_closed_in_cp_rounds",
    "disconnects_cp_present_in_cp_rounds",
)


def test_each_broken_promise_fails_the_verdict_on_its_own() -> None:
    """One lost message, one duplicate, one unacknowledged, ... alone fails the verdict, and so do
    the load's own failures and the epoch records: unacknowledged messages and wrong data were
    read only through the load's failures, so a summary whose failures said nothing of them was
    "all OK" beside a row that showed them."""
    for key in MUST_BE_ZERO:
        s = passing() | {key: 1}
        bad = campaign.problems(s)
        assert len(bad) == 1 and bad[0].startswith("1 "), (key, bad)
        assert "**FAILED**" in verdict(rendered(s)), key
    bad = campaign.problems(passing() | {"failures": ["lost: 1 acknowledged messages never answered"]})
    assert bad == ["load: lost: 1 acknowledged messages never answered"]
    bad = campaign.problems(passing() | {"epoch_violations": ["host-b served as active at epoch 7, which the CP granted to host-a"]})
    assert len(bad) == 1 and "epoch 7" in bad[0], bad


class FakeCampaign:
    """bench/campaign.py's Campaign replaced: its run gives a made-up summary, or breaks an invariant."""

    summary: dict[str, Any] = {}
    broken = ""

    def __init__(self, d: Path, **kw: Any) -> None:
        self.rounds: list[Any] = []

    async def run(self, rounds: int) -> dict[str, Any]:
        if self.broken:
            raise campaign.CampaignError(self.broken)
        return self.summary


async def test_the_campaigns_exit_status_and_saved_verdict_follow_the_problems(tmp_path: Path, monkeypatch: Any) -> None:
    """amain's exit status and the saved `ok` are the verdict's: 1 and false on a summary with one
    lost message or on a broken invariant, 0 and true only on a clean one."""
    import json

    monkeypatch.setattr(campaign, "Campaign", FakeCampaign)
    monkeypatch.setattr(campaign.sandbox, "down", lambda d, timeout: None)
    out = tmp_path / "c.json"
    a = argparse.Namespace(
        seed=1, dir=str(tmp_path), terminals=1, rate=1.0, rounds=10, out="", json=str(out), write=False, command="c", machine=MACHINE
    )
    clean = passing() | {"rounds_detail": [{"action": "kill_active", "ms": 5.0, "fallback": False, "notes": []}]}
    for summary, broken, want in ((clean, "", 0), (clean | {"lost": 1}, "", 1), (clean, "seed 1:3: 2 duplicate replies", 1)):
        monkeypatch.setattr(FakeCampaign, "summary", summary)
        monkeypatch.setattr(FakeCampaign, "broken", broken)
        assert await campaign.amain(a) == want, (summary.get("lost"), broken)
        assert json.loads(out.read_text())["results"]["ok"] is (want == 0)
