"""The long fault campaign: `.venv/bin/python bench/campaign.py --rounds 1000 [--seed S]`.

Same rounds and invariants as tests/test_campaign.py (tests/support/campaign.py
and campaignjudge.py), run 1,000 times against one sandbox; prints every round with its seed and a
summary JSON; exits 1 on the first broken invariant (with the seed to replay), and
when the load's strict verdict (hsb.term: nothing lost, duplicated, unexpected, wrong
or unacknowledged) or any invariant failed at the end, or an armed crash point did not fire in
its round (the process SIGKILLed instead: a round that tested nothing of its point).

The raw results (the summary, without the per-round detail) go to
`bench/results/campaign.json` (`--json FILE` elsewhere; `--out FILE` also writes the
full summary with every round); the section "Fault campaign (`bench/campaign.py`)" of
BENCHMARKS.md is written from them (not with `--no-write`), and `--render FILE`
rebuilds it from such a file alone, without measuring.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import machine, machine_line, raw_name, report, result_args, run_or_render, table, write_json  # noqa: E402

from hsb.ctl import sandbox  # noqa: E402
from tests.support.campaign import Campaign  # noqa: E402
from tests.support.campaignjudge import ACTIONS, CampaignError  # noqa: E402

COMMAND = ".venv/bin/python bench/campaign.py"
RESULTS = Path(__file__).resolve().parent / "results" / "campaign.json"
SECTION = "Fault campaign (`bench/campaign.py`)"
NOT_REACHED = ", crash point not reached"  # round_ms's key for an action's rounds that fell back to SIGKILL

# what each action does, for the table
ACTION_LABELS = {
    "kill_active": "SIGKILL active",
    "crash_before_reply": "crash before reply",
    "crash_mid_ring_group": "crash mid ring group",
    "crash_new_active_mid_redelivery": "new active crashed mid re-delivery (operator restart)",
    "kill_standby": "SIGKILL standby",
    "crash_mid_batch_write": "crash mid batch write",
    "crash_between_batch_and_notice": "crash between batch write and its notice",
    "crash_cp_reply_before_durable_then_active": "CP crashed before a record was durable, then the active SIGKILLed while the CP was down",
    "crash_cp_between_reply_and_discard": "CP crashed between a reply and its record",
    "crash_cp_after_grant": "active SIGKILLed, CP crashed right after granting the standby",
    "crash_cp_mid_switch": "active SIGKILLed, CP crashed while switching the sessions",
    "crash_cp_mid_redelivery": "active crashed before a reply, CP crashed while handing its messages to the new active",
    "stop_active": "SIGTERM active (it hands over)",
    "stop_active_journal_stalled": "SIGTERM active, CP journal storage held: the handover runs out of time, a failover",
}


# the summary's counts that must be zero, and what each counts
CHECKED = (
    ("lost", "acknowledged messages lost"),
    ("duplicates", "duplicate replies"),
    ("unexpected", "unexpected replies"),
    ("unacked", "unacknowledged messages"),
    ("bad_data", "replies with wrong data"),
    ("processed_twice_without_redelivered_mark", "processed twice without the redelivered mark"),
    ("acknowledged_not_in_any_journal", "acknowledged but in no journal"),
    ("disconnects_in_quiet_rounds", "disconnects of terminals that had a standby session"),
    ("sessions_closed_in_quiet_rounds", "sessions closed of terminals that had a standby session"),
    ("rounds_with_two_actives", "rounds with two actives serving"),
    ("processed_never_sent", "processed by a host though no terminal sent them"),
    ("sessions_closed_in_cp_rounds", "sessions closed in rounds where only the CP died"),
    ("disconnects_cp_present_in_cp_rounds", "drops while the same CP process was there, in rounds where only the CP died"),
)
# what else the verdict reads: a results file without one of these (an older campaign's) did not
# measure it, and passes nothing on it
MEASURED = (
    ("failures", "the load's strict verdict"),
    ("epoch_violations", "the epoch records"),
    ("fallbacks", "whether each armed crash point fired"),
)
NOT_MEASURED = "not measured"


def problems(s: dict[str, Any]) -> list[str]:
    """Every broken promise in a campaign summary (empty: the campaign passed)."""
    out = [f"{what}: {NOT_MEASURED}" for key, what in (*CHECKED, *MEASURED) if key not in s]
    out += [f"load: {f}" for f in s.get("failures") or []]
    for key, what in CHECKED:
        if s.get(key):
            out.append(f"{s[key]:,} {what}")
    if s.get("epoch_violations"):
        out.append(f"epoch records: {'; '.join(s['epoch_violations'][:5])}")
    return out + not_reached(s)


def not_reached(s: dict[str, Any]) -> list[str]:
    """The armed crash points that did not fire in some of their rounds (the process SIGKILLed
    instead): such a round tested nothing of its point, so the campaign did not pass it."""
    acts = s.get("actions") or {}
    out = []
    for a, n in sorted((s.get("fallbacks") or {}).items()):
        if n:
            point = ACTIONS[a][0] if a in ACTIONS else None
            how = "never reached" if not acts.get(a) else f"not reached in {n:,} of its {n + acts[a]:,} rounds"
            out.append(f"crash point {point or a} ({ACTION_LABELS.get(a, a)}) {how} (SIGKILLed instead)")
    return out


def compact(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary for the JSON file: per-action round times instead of every round."""
    detail = summary.get("rounds_detail") or []
    res = {k: v for k, v in summary.items() if k != "rounds_detail"}
    by: dict[str, list[float]] = {}
    for r in detail:  # a round whose crash point never fired is not one of its action's
        by.setdefault(r["action"] + (NOT_REACHED if r.get("fallback") else ""), []).append(r["ms"])
    res["round_ms"] = {a: {"rounds": len(v), "median": round(statistics.median(v), 1), "max": max(v)} for a, v in by.items()}
    res["notes"] = [f"round {i} ({r['action']}): {'; '.join(r['notes'])}" for i, r in enumerate(detail) if r.get("notes")][:50]
    return res


def label(key: str) -> str:
    """An action's words for the table (a `round_ms` key: its rounds that fell back say so)."""
    a = key.removesuffix(NOT_REACHED)
    return ACTION_LABELS.get(a, a) + (NOT_REACHED if a != key else "")


def render(saved: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (the whole saved JSON)."""
    s = saved["results"]
    st = saved.get("settings") or {}
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this table).",
        "",
        f"Machine: {machine_line(a.machine)}.",
        "",
        f"One sandbox, {st.get('terminals', 0):,} load terminals at {st.get('rate', 0):,.0f} msg/s with the `journal`"
        " service and the strict verdict of hsb.term (disconnects judged per round), 8 terminals logging on and off"
        f" all the time (so the active keeps writing ring groups), and {st.get('rounds', 0):,} seeded rounds; each round"
        " kills the active (SIGKILL or an armed crash point), sometimes the standby, or the new active in the middle"
        " of its takeover, then recovers the pair as an operator would and checks every invariant."
        " `tests/test_campaign.py` runs the same for 20 rounds.",
        "",
    ]
    if s.get("error"):
        out += [
            f"**INVARIANT BROKEN** in round {s.get('rounds_done', 0) + 1} of {st.get('rounds', 0):,} (seed {s['seed']};"
            f' a round replays from `Random("{s["seed"]}:<round>")`): {s["error"]}',
        ]
        return "\n".join(out)
    bad = problems(s)

    def n(key: str) -> str:  # a figure the run did not measure (an older results file) is not a 0
        return f"{s[key]:,}" if key in s else NOT_MEASURED

    def b(key: str) -> str:
        return f"**{n(key)}**"

    acts = ", ".join(f"{ACTION_LABELS.get(k, k)} {v:,}" for k, v in sorted(s["actions"].items(), key=lambda kv: -kv[1]) if v)
    fb = s.get("fallbacks") or {}
    if fb:
        acts += "; armed but the crash point never reached (SIGKILLed instead): " + ", ".join(
            f"{ACTION_LABELS.get(k, k)} {v:,}" for k, v in fb.items()
        )
    ran = s["actions"].keys() | fb.keys()  # (a results file of older code had fewer actions)
    classic = [k for k, (_, has_standby) in ACTIONS.items() if not has_standby and k in ran]
    fell = sum(fb.values())
    rows = [
        [
            "rounds",
            f'{s["rounds"]:,} (seed {s["seed"]}; a round replays from `Random("{s["seed"]}:<round>")`)'
            + (f"; **{fell:,}** of them armed at a crash point that never fired, so no fault round" if fell else ""),
        ],
        ["messages acknowledged", f"{s['acknowledged']:,}"],
        ["lost", b("lost")],
        ["duplicated replies", b("duplicates")],
        ["unexpected replies", b("unexpected")],
        ["unacknowledged / wrong data", f"**{n('unacked')} / {n('bad_data')}**"],
        ["processed twice without the redelivered mark", b("processed_twice_without_redelivered_mark")],
        ["acknowledged but in no journal", b("acknowledged_not_in_any_journal")],
        ["processed more than once (marked redelivered every time after the first)", n("processed_more_than_once")],
        ["disconnects of terminals that had a standby session (quiet rounds)", b("disconnects_in_quiet_rounds")],
        ["sessions closed of terminals that had a standby session (quiet rounds)", b("sessions_closed_in_quiet_rounds")],
        [
            "sessions closed / drops while the same CP process was there (rounds where only the CP died)",
            f"**{n('sessions_closed_in_cp_rounds')} / {n('disconnects_cp_present_in_cp_rounds')}**",
        ],
        ["processed by a host though no terminal sent them", b("processed_never_sent")],
        [
            "rounds with two actives serving",
            b("rounds_with_two_actives") + (f" ({len(s['epoch_violations'])} epoch-record violations)" if s.get("epoch_violations") else ""),
        ],
        ["rounds by action", acts],
        ["operator restarts", f"{s.get('operator_restarts', 0):,}"],
        [
            "disconnects in all rounds",
            f"{s.get('disconnects_total', 0):,} (allowed only in the rounds where the active died"
            f" before the standby was established: {', '.join(ACTION_LABELS.get(k, k) for k in classic)}; there the terminals"
            " have no standby session yet and take the classic path)",
        ],
        ["verdict", "all OK" if not bad else f"**FAILED**: {'; '.join(bad)}"],
    ]
    out.append(table(["total", "value"], rows, "ll"))
    rm = s.get("round_ms") or {}

    def lumped(k: str) -> str:  # older results counted the rounds that fell back under their action
        return f" (with {fb[k]:,} not reached)" if fb.get(k) and k + NOT_REACHED not in rm else ""

    if rm:
        out += [
            "",
            "Round time (kill → pair recovered and checked), ms, median (max): "
            + ", ".join(f"{label(k)}{lumped(k)} {v['median']:,.0f} ({v['max']:,.0f})" for k, v in rm.items())
            + ".",
        ]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    seed = a.seed or int.from_bytes(os.urandom(4), "big")
    d = Path(a.dir or tempfile.mkdtemp(prefix="hsb-campaign-")) / "sb"
    c = Campaign(d, seed=seed, terminals=a.terminals, rate=a.rate, say=lambda s: print(s, flush=True))
    settings = {"rounds": a.rounds, "seed": seed, "terminals": a.terminals, "rate": a.rate}
    broken: str | None = None
    summary: dict[str, Any] = {}
    try:
        summary = await c.run(a.rounds)
    except CampaignError as exc:
        print(f"INVARIANT BROKEN: {exc}", flush=True)
        broken = str(exc)
    finally:
        try:
            sandbox.down(d, timeout=3.0)
        except sandbox.SandboxError:
            pass
    if broken is not None:
        res: dict[str, Any] = {"seed": seed, "rounds_done": len(c.rounds), "error": broken, "ok": False}
    else:
        res = compact(summary)
        res["problems"] = problems(summary)
        res["ok"] = not res["problems"]
        print(json.dumps({k: v for k, v in res.items() if k not in ("notes",)}, indent=2))
        if a.out:
            Path(a.out).write_text(json.dumps(summary, indent=2))
    saved = {"machine": a.machine, "command": a.command, "settings": settings, "results": res}
    write_json(a, saved)
    text = render(saved, a)
    report(a, SECTION, text)
    return 0 if res["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/campaign.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terminals", type=int, default=100)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--dir", default="")
    ap.add_argument("--out", default="", help="also write the full summary JSON (every round's detail) here")
    result_args(ap, RESULTS)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, SECTION, lambda saved: render(saved, a), amain)


if __name__ == "__main__":
    sys.exit(main())
