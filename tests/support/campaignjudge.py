"""The fault campaign's rules and verdict (tests/support/campaign.py runs the rounds): its
actions and what each allows, a round's record, and the checks that judge the rounds and the
whole run against the invariants:

- never two hosts serving as active: sampled all through the round (campaign.py's status
  polls), and from the records themselves: the CP's log of grants (one host per epoch, epochs
  only rising) and each host's `serving_as_active` events (a host serves only at an epoch the
  CP granted to it);
- no duplicate, unexpected or wrong reply and nothing left unacknowledged, ever (the strict
  verdict of hsb.term, disconnects judged per round);
- no disconnect of a load terminal in a round whose kill came while hot standby was established
  (those terminals all had standby sessions);
- in a round that kills only the CP, the CP-restart verdict of hsb.term.report: no session
  closed, and no terminal dropped while the same CP process was there;
- at the end: nothing acknowledged lost, every acknowledged id in a journal, no (terminal, id)
  processed twice without the redelivered mark, and nothing processed that no terminal sent.

A round armed at a crash point counts under that point only if the point was reached (its
`crash_point` line is in the victim's log); when the path was never taken and the host was
killed instead, the round is a *fallback*, reported apart, and the campaign's verdict fails
(tests/test_campaign.py asserts none).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from hsb.term.books import check_books
from hsb.term.load import terminal_names
from hsb.term.report import cp_restart_failures
from hsb.term.workload import LedgerWorkload
from tests.support.hostjournal import journal_counts, read_host_journal

HOSTS = ("host-a", "host-b")
# action -> (crash point armed in the active, or None), whether load terminals must stay connected
ACTIONS: dict[str, tuple[str | None, bool]] = {
    "kill_active": (None, True),
    "crash_before_reply": ("host.before_reply", True),
    "crash_mid_ring_group": ("host.mid_ring_group", True),
    "crash_new_active_mid_redelivery": ("host.mid_redelivery", True),
    "kill_standby": (None, True),
    "crash_mid_batch_write": ("host.mid_batch_write", False),
    "crash_between_batch_and_notice": ("host.between_batch_and_notice", False),
    # the CP itself (SPEC §5.7): every terminal reconnects and resumes
    "kill_cp": (None, False),
    "crash_cp_after_journal_write": ("cp.after_journal_write", False),
    "crash_cp_mid_journal_group": ("cp.mid_journal_group", False),
    "crash_cp_after_reply_sent": ("cp.after_reply_sent", False),
    "crash_cp_mid_compaction": ("cp.mid_compaction", False),
    "crash_cp_reply_before_durable": ("cp.reply_before_durable", False),
    "crash_cp_between_reply_and_discard": ("cp.between_reply_and_discard", False),
    # the CP crashes in the middle of a failover (the active gone): after its grant, part-way through
    # switching the sessions, part-way through handing the old active's messages to the new one
    "crash_cp_after_grant": ("cp.after_grant", False),
    "crash_cp_mid_switch": ("cp.mid_switch", False),
    "crash_cp_mid_redelivery": ("cp.mid_redelivery", False),
    # a double fault: the same crash, then the active SIGKILLed while the CP is down, so nothing
    # but the terminal's own mark (`resent`) tells the next active that it may have processed
    # the message (docs/cp-journal.md, "Early delivery")
    "crash_cp_reply_before_durable_then_active": ("cp.reply_before_durable", False),
    # a clean stop of the active (SIGTERM: systemctl stop, an upgrade): it hands over (SPEC §5.3);
    # with the CP's journal storage held meanwhile its handover runs out of time and the stop
    # ends as a lost link, failed over once the storage answers: a pause either way
    "stop_active": (None, True),
    "stop_active_journal_stalled": (None, True),
}
# quiet rounds in which both hosts die (the new active crashes too): the terminals keep their
# connections, but with no host left their sessions close, and open again with the next one
BOTH_HOSTS_DIE = {"crash_new_active_mid_redelivery"}
CP_FAILOVER_POINTS = {"cp.after_grant", "cp.mid_switch", "cp.mid_redelivery"}  # armed, then the active goes
# rounds in which only the CP dies: judged as a CP restart (hsb.term.report's "cp" mode, as
# bench/cprestart.py and the demo's act three judge it); not those in which the active dies too
# (after the CP, `_then_active`; before it, the CP's crash points of a failover)
CP_ONLY = frozenset(
    a for a in ACTIONS if a.startswith(("kill_cp", "crash_cp_")) and not a.endswith("_then_active") and ACTIONS[a][0] not in CP_FAILOVER_POINTS
)
# what the load counts, per round (its progress snapshots; the CP-present drops: campaignload)
COUNTED = ("disconnects", "duplicates", "unexpected", "session_closed", "disconnects_cp_present")


@dataclass
class Round:
    round: int
    seed: str
    action: str
    victim: str = ""
    epoch_before: int = 0
    epoch_after: int = 0
    disconnects: int = 0
    session_closed: int = 0  # sessions of load terminals closed (a quiet round's are switched, never closed)
    disconnects_cp_present: int = 0  # drops the CP's absence does not explain (hsb.term.report)
    recovered_by_operator: bool = False
    two_actives: bool = False
    duplicates: int = 0
    unexpected: int = 0
    point_reached: bool | None = None  # armed rounds: did the crash point fire?
    fallback: bool = False  # armed, never reached, SIGKILLed instead
    ms: float = 0.0
    notes: list[str] = field(default_factory=list)


class CampaignError(AssertionError):
    pass


class Judging:
    """Campaign's judging half: the counts and records of its rounds against the rules above.
    Campaign sets these attributes (in __init__ and as it runs)."""

    d: Path
    seed: int
    n: int
    churners: int
    rounds: list[Round]
    snap: dict[str, Any]
    counted: tuple[int, ...] | None
    books_checked: int
    workload: LedgerWorkload | None
    id_base: int

    def count_round(self, r: Round, before: tuple[int, ...], end: tuple[int, ...]) -> None:
        """The load's counts (COUNTED) from before the fault to the round's end are the round's."""
        self.counted = end
        for k, b, e in zip(COUNTED, before, end, strict=True):
            setattr(r, k, e - b)

    def charge_late(self, r: Round, now: tuple[int, ...], *, judge: bool) -> None:
        """What the load counted after round `r` was judged (`self.counted`) up to `now` is `r`'s:
        added to it, and with `judge` failed by its rules, as if it had come before its end."""
        assert self.counted is not None
        late = [b - a for a, b in zip(self.counted, now, strict=True)]
        self.counted = now
        if not any(late):
            return
        for k, n in zip(COUNTED, late, strict=True):
            setattr(r, k, getattr(r, k) + n)
        r.notes.append("late: " + ", ".join(f"{n} {k.replace('_', ' ')}" for n, k in zip(late, COUNTED, strict=True) if n))
        if judge:
            self.judge(r)

    def judge(self, r: Round) -> None:
        """A round's counts against what its action allows (CampaignError: a broken promise)."""
        if r.duplicates:
            raise CampaignError(f"seed {r.seed}: {r.duplicates} duplicate replies")
        if r.unexpected:
            raise CampaignError(f"seed {r.seed}: {r.unexpected} unexpected replies")
        if ACTIONS[r.action][1] and r.disconnects:
            raise CampaignError(f"seed {r.seed} ({r.action}): {r.disconnects} load terminals were disconnected although all had standby sessions")
        if ACTIONS[r.action][1] and r.action not in BOTH_HOSTS_DIE and r.session_closed:
            raise CampaignError(f"seed {r.seed} ({r.action}): {r.session_closed} sessions of load terminals closed although all had standby sessions")
        if r.action in CP_ONLY and (broken := cp_restart_failures(r.disconnects_cp_present, r.session_closed)):
            raise CampaignError(f"seed {r.seed} ({r.action}): " + "; ".join(broken))

    def counts(self) -> tuple[int, ...]:
        """The load's counts (COUNTED: disconnects, duplicates, unexpected replies, closed sessions,
        drops with the CP present) so far: its last snapshot."""
        return tuple(self.snap.get(k, 0) for k in COUNTED)

    def point_reached(self, point: str, pid: int) -> bool:
        """The victim (pid) logged that it died at `point` (hsb.faults writes the line to stderr)."""
        for h in ("cp", *HOSTS):
            p = self.d / f"{h}.log"
            if p.exists():
                for line in p.read_text(errors="replace").splitlines():
                    if '"crash_point"' in line and f'"{point}"' in line and f'"pid": {pid}}}' in line:
                        return True
        return False

    def epoch_violations(self) -> list[str]:
        """Two actives from the records: the CP's grants (epoch -> host) against every host's
        `serving_as_active` events. Empty when each epoch has one host and each host served only
        at epochs granted to it."""
        from tests.support.procs import log_events

        out: list[str] = []
        granted: dict[int, str] = {}
        last = 0
        for e in log_events(self.d / "cp.log"):
            if (e.get("event") == "host_registered" and e.get("role") == "active") or e.get("event") == "switchover_granted":
                ep, host = int(e["epoch"]), str(e["host"])
                if ep in granted and granted[ep] != host:
                    out.append(f"CP granted epoch {ep} to {granted[ep]} and {host}")
                if ep <= last and not (ep in granted and granted[ep] == host):
                    out.append(f"CP epoch went from {last} to {ep}")
                granted[ep] = host
                last = max(last, ep)
        for h in HOSTS:
            for e in log_events(self.d / f"{h}.log"):
                if e.get("event") == "serving_as_active":
                    ep = int(e["epoch"])
                    if granted.get(ep) != h:
                        out.append(f"{h} served as active at epoch {ep}, which the CP granted to {granted.get(ep)}")
        return out

    def summarize(self, d: dict[str, Any], journal_problems: dict[str, int], books: Any = None) -> dict[str, Any]:
        """The campaign's summary from its rounds, the load's report (`d`, its to_dict) and the
        journals' counts (`check_journals`): what the load counted after the last round was
        judged is that round's."""
        if self.rounds and self.counted is not None:
            self.charge_late(self.rounds[-1], tuple(d[k] for k in COUNTED), judge=False)
        return {
            "seed": self.seed,
            "rounds": len(self.rounds),
            "acknowledged": d["acked"],
            "lost": d["lost"],
            "duplicates": d["duplicates"],
            "unexpected": d["unexpected"],
            "unacked": d["unacked"],
            "bad_data": d["bad_data"],
            "failures": d["failures"],
            "processed_twice_without_redelivered_mark": journal_problems["unmarked_repeats"],
            "acknowledged_not_in_any_journal": journal_problems["missing"],
            "processed_more_than_once": journal_problems["processed_more_than_once"],  # (each time but the first marked)
            "processed_never_sent": journal_problems["never_sent"],  # (terminal, id) no terminal sent, in a journal
            "disconnects_in_quiet_rounds": sum(r.disconnects for r in self.rounds if ACTIONS[r.action][1]),
            "sessions_closed_in_quiet_rounds": sum(r.session_closed for r in self.rounds if ACTIONS[r.action][1] and r.action not in BOTH_HOSTS_DIE),
            # rounds that kill only the CP (a CP restart: hsb.term.report's "cp" verdict)
            "sessions_closed_in_cp_rounds": sum(r.session_closed for r in self.rounds if r.action in CP_ONLY),
            "disconnects_cp_present_in_cp_rounds": sum(r.disconnects_cp_present for r in self.rounds if r.action in CP_ONLY),
            "disconnects_total": d["disconnects"],
            "rounds_with_two_actives": sum(r.two_actives for r in self.rounds),
            "epoch_violations": self.epoch_violations(),
            "operator_restarts": sum(r.recovered_by_operator for r in self.rounds),
            # an armed round counts under its action only if its crash point was reached
            "actions": {a: sum(r.action == a and not r.fallback for r in self.rounds) for a in ACTIONS},
            "fallbacks": {a: n for a in ACTIONS if (n := sum(r.action == a and r.fallback for r in self.rounds))},
            "rounds_detail": [asdict(r) for r in self.rounds],
            "books_checked": self.books_checked,
            "books": books,
        }

    async def check_books_now(self, books: dict[str, Any], r: Round) -> None:
        """The books in the middle of the run: balanced, nothing applied twice or not as told."""
        assert self.workload is not None
        clients = [SimpleNamespace(name=n, idx=i, base=self.id_base + i, stride=self.n) for i, n in enumerate(terminal_names(self.n))]
        b = await check_books(books, self.workload, clients, final=False)
        self.books_checked += 1
        if b.failures:
            raise CampaignError(f"seed {r.seed} ({r.action}): the books after the round: {b.failures}")

    def check_journals(self, report: Any) -> dict[str, int]:
        """The load's ids (report.ids) against the hosts' journals: tests.support.hostjournal's
        `counts` (the churners send id 1 at each session open)."""
        j = {h: read_host_journal(self.d / f"journal-{h}.log", h) for h in HOSTS}
        return journal_counts(j, report.ids, self.id_base, {n: {1} for n in self.churner_names()})

    def churner_names(self) -> list[str]:
        """The terminals that log on and off through the run (beside the load's): each sends id 1 at each session open."""
        return [f"T{i:05d}" for i in range(self.n + 1, self.n + 1 + self.churners)]
