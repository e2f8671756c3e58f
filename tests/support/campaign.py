"""Driving the seeded fault campaign against a real sandbox (issue 7 item 3); its rules and
verdict are tests/support/campaignjudge.py's.

One sandbox, continuous load from `hsb.term`, a few churning terminals (so the
active keeps writing ring groups), and N rounds. Each round, from its own seed,
kills the active (SIGKILL, or an armed crash point), sometimes the standby, or
the new active in the middle of its takeover, or the CP (alone, or in the middle
of a failover: after its grant, switching the sessions, handing messages over);
then recovers the pair the way an operator would (restart the dead host as
standby; start one as active if both died), and has the round judged.

Replay one round: the printed seed is the campaign seed; the round's choices
come from Random(f"{seed}:{round}").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from hsb.ctl import sandbox
from hsb.ctl.gather import status_all
from hsb.term.net import new_id_base
from hsb.term.workload import LedgerWorkload
from tests.support.campaignjudge import ACTIONS, CP_FAILOVER_POINTS, HOSTS, CampaignError, Judging, Round
from tests.support.campaignload import start_load
from tests.support.massterm import Fleet
from tests.support.procs import arm_faults, log_events, signal_faults

# how often a round draws each action (when Campaign is not given `actions`)
WEIGHTS = {
    "kill_active": 4,
    "crash_before_reply": 3,
    "crash_mid_ring_group": 2,
    "crash_new_active_mid_redelivery": 2,
    "kill_standby": 2,
    "crash_mid_batch_write": 1,
    "crash_between_batch_and_notice": 1,
    "kill_cp": 2,
    "crash_cp_after_journal_write": 1,
    "crash_cp_mid_journal_group": 1,
    "crash_cp_after_reply_sent": 1,
    "crash_cp_mid_compaction": 1,
    "crash_cp_reply_before_durable": 1,
    "crash_cp_reply_before_durable_then_active": 1,
    "crash_cp_between_reply_and_discard": 1,
    "crash_cp_after_grant": 1,
    "crash_cp_mid_switch": 1,
    "crash_cp_mid_redelivery": 1,
    "stop_active": 2,
    "stop_active_journal_stalled": 1,  # (its stop waits out the handover's 15 s)
}
CP_SEGMENT_KIB = 64  # small journal segments, so that compaction (and its crash point) happens in a campaign


class Campaign(Judging):
    def __init__(
        self,
        d: Path,
        *,
        seed: int,
        terminals: int = 100,
        rate: float = 300.0,
        churners: int = 8,
        say: Any = print,
        ledger: dict[str, Any] | None = None,
        actions: tuple[str, ...] = (),
        mark_resent: bool = True,
    ) -> None:
        """`ledger` ({"dsn": …} or {} for SQLite in the sandbox): the ledger service under a
        transfer load, its books checked after every round, instead of the journal service."""
        self.d = d
        self.actions = actions  # only these (a test of one crash point); () every action, weighted
        self.mark_resent = mark_resent  # False: terminals that do not mark what they send again (the hosts' memory alone)
        self.ledger = ledger
        self.workload = LedgerWorkload(accounts=40, initial=1_000, seed=seed) if ledger is not None else None
        self.id_base = new_id_base()
        self.books_checked = 0
        self.seed = seed
        self.n = terminals
        self.rate = rate
        self.churners = churners
        self.say = say
        self.rounds: list[Round] = []
        self.snap: dict[str, Any] = {}
        self.snaps = 0  # snapshots of the load taken so far
        self.counted: tuple[int, ...] | None = None  # the counts (COUNTED) at the end of the last round
        self.two_actives = False

    # ------------------------------------------------------------------ plumbing
    def state(self) -> dict[str, Any]:
        return sandbox.load_state(self.d)

    async def status(self) -> dict[str, Any]:
        st = self.state()
        s = await status_all(st["cp"]["admin"], [h["admin"] for h in st["hosts"].values()], str(self.d / "secret"), timeout=1.0)
        serving = [
            h["name"]
            for h in s["hosts"]
            if h.get("reachable") and h.get("role") == "active" and h.get("state") not in ("fenced", "stopping", "starting")
        ]
        if len(serving) > 1:
            self.two_actives = True
        return s

    async def until(self, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            s = await self.status()
            if pred(s):
                return s
            if time.monotonic() > deadline:
                brief = [(h.get("name"), h.get("role"), h.get("state")) for h in s["hosts"]]
                raise TimeoutError(f"{what}: {brief}")
            await asyncio.sleep(0.05)

    async def until_true(self, cond: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(what)
            await asyncio.sleep(0.02)

    def alive(self, name: str) -> bool:
        return sandbox._alive(self.pid(name))

    def env(self, name: str) -> dict[str, str]:
        return {"HSB_CRASH_CONTROL": str(self.d / f"crash-{name}")}

    def pid(self, name: str) -> int:
        st = self.state()
        return int(st["cp"]["pid"] if name == "cp" else st["hosts"][name]["pid"])

    def arm(self, name: str, point: str, skip: int = 0) -> None:
        # not waited for: a crash point in a writer thread may fire before the handler says so
        signal_faults(self.d / f"crash-{name}", self.pid(name), f"{point} {skip}")

    def start(self, name: str, role: str) -> None:
        (self.d / f"crash-{name}").write_text("")
        sandbox.start_host(self.d, name, role, self.env(name))

    @staticmethod
    def actives(s: dict[str, Any]) -> list[str]:
        return [h["name"] for h in s["hosts"] if h.get("reachable") and h.get("role") == "active"]

    # ------------------------------------------------------------------ recovery
    async def recover(self, r: Round) -> dict[str, Any]:
        """Bring the pair back to hot standby as an operator would."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a surviving standby takes over by itself
            s = await self.status()
            if self.actives(s) or not any(self.alive(h) for h in HOSTS):
                break
            await asyncio.sleep(0.05)
        s = await self.status()
        if not self.actives(s):
            # nobody serves (both died): the operator starts one host as active
            for h in HOSTS:
                if self.alive(h):
                    os.kill(self.state()["hosts"][h]["pid"], signal.SIGKILL)
                    await self._wait_dead(h)
            self.start("host-a", "active")
            r.recovered_by_operator = True
            await self.until(lambda s: self.actives(s) == ["host-a"], 20, "operator start of host-a")
        for h in HOSTS:
            if not self.alive(h):
                self.start(h, "standby")
        return await self.until(lambda s: s["established"], 40, f"round {r.round}: hot standby again")

    async def _wait_dead(self, name: str) -> None:
        if not await self._dead_within(name, 10):
            raise TimeoutError(f"{name} did not die")

    # ------------------------------------------------------------------ one round
    async def round(self, i: int) -> Round:
        rng = random.Random(f"{self.seed}:{i}")
        action = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0] if not self.actions else rng.choice(self.actions)
        r = Round(i, f"{self.seed}:{i}", action)
        t0 = time.monotonic()
        s = await self.until(lambda s: s["established"] and s["cp"]["terminals"]["standby_sessions"] >= self.n, 40, f"round {i}: quiet point")
        await self.until_load_terminals_have_standby(i)
        r.epoch_before = s["cp"]["epoch"]
        active = self.actives(s)[0]
        standby = next(h for h in HOSTS if h != active)
        # what came since the last round's counts ended (a late disconnect of its recovery) is
        # that round's, judged by its rules, not this one's: counted from a snapshot taken now
        seen = self.snaps
        await self.until_true(lambda: self.snaps > seen, 5, f"round {i}: a snapshot of the load before the fault")
        if self.rounds:
            self.charge_late(self.rounds[-1], self.counts(), judge=True)
        before = self.counted = self.counts()
        point, _ = ACTIONS[action]
        victim_pid = 0
        if action == "kill_active":
            await asyncio.sleep(rng.uniform(0, 0.3))
            r.victim = active
            os.kill(self.state()["hosts"][active]["pid"], signal.SIGKILL)
        elif action.endswith("_cp") or "_cp_" in action:
            r.victim = "cp"
            victim_pid = self.pid("cp")
            if point is None:
                await asyncio.sleep(rng.uniform(0, 0.3))
                os.kill(victim_pid, signal.SIGKILL)
            else:
                skip = rng.randrange(0, 50) if point not in ("cp.mid_compaction", "cp.after_grant", "cp.mid_redelivery") else 0
                if point in CP_FAILOVER_POINTS:
                    await arm_faults(self.d / "crash-cp", victim_pid, f"{point} {skip}")
                    r.victim = f"{active}+cp"
                    if point == "cp.mid_redelivery":  # it dies holding a message processed, not answered: one to hand over again
                        self.arm(active, "host.before_reply", 0)
                        await self._wait_dead_or_kill(active, 10, r)
                    else:
                        os.kill(self.state()["hosts"][active]["pid"], signal.SIGKILL)
                else:
                    self.arm("cp", point, skip)
                    if skip and not await self._dead_within("cp", 10):
                        # fewer than `skip` visits in 10 s (a slow machine: the ledger's early
                        # replies came seldom): armed again for its next visit, so the round still
                        # dies there; a fallback (the round's failure) only if that never comes
                        r.notes.append(f"cp: {point} visited fewer than {skip} times in 10 s; armed again for its next visit")
                        with contextlib.suppress(ProcessLookupError):  # (it died there meanwhile)
                            self.arm("cp", point, 0)
                await self._wait_dead_or_kill("cp", 10, r)
            await self._wait_dead("cp")
            if action.endswith("_then_active"):
                r.victim = f"cp+{active}"
                os.kill(self.state()["hosts"][active]["pid"], signal.SIGKILL)
                await self._wait_dead(active)
            (self.d / "crash-cp").write_text("")
            sandbox.start_cp(self.d, self.env("cp"))  # at once, as systemd's Restart=always does
        elif action in ("stop_active", "stop_active_journal_stalled"):
            r.victim = active
            await self.stop_active(active, action == "stop_active_journal_stalled", rng, r)
        elif action == "kill_standby":
            r.victim = standby
            os.kill(self.state()["hosts"][standby]["pid"], signal.SIGKILL)
        elif action in ("crash_before_reply", "crash_mid_ring_group"):
            r.victim = active
            victim_pid = self.state()["hosts"][active]["pid"]
            self.arm(active, point, rng.randrange(0, 20) if action == "crash_before_reply" else rng.randrange(0, 3))  # type: ignore[arg-type]
            await self._wait_dead_or_kill(active, 10, r)
        elif action == "crash_new_active_mid_redelivery":
            r.victim = f"{active}+{standby}"
            victim_pid = self.state()["hosts"][standby]["pid"]
            await arm_faults(self.d / f"crash-{standby}", victim_pid, f"{point} 0")
            # the active dies holding a message it processed and did not answer (a SIGKILL may
            # find none in flight, and then there is nothing to re-deliver): one to hand over again
            self.arm(active, "host.before_reply", 0)
            await self._wait_dead_or_kill(active, 10, r)
            await self._wait_dead_or_kill(standby, 10, r)
        else:  # a crash of the active while it batch-writes for a restarting standby
            r.victim = active
            self.arm(active, point, 0)  # type: ignore[arg-type]
            os.kill(self.state()["hosts"][standby]["pid"], signal.SIGKILL)
            await self._wait_dead(standby)
            self.start(standby, "standby")
            victim_pid = self.state()["hosts"][active]["pid"]
            await self._wait_dead_or_kill(active, 10, r)
        if point is not None:
            r.point_reached = self.point_reached(point, victim_pid)
            if not r.point_reached and not r.fallback:
                raise CampaignError(f"seed {r.seed}: {r.victim} died at no crash point and was not killed by the campaign")
        for h in HOSTS:
            if not self.alive(h):
                await self._wait_dead(h)
        s = await self.recover(r)
        await asyncio.sleep(0.3)  # traffic under the recovered pair before judging
        r.epoch_after = s["cp"]["epoch"]
        seen = self.snaps
        await self.until_true(lambda: self.snaps > seen, 5, f"round {i}: a snapshot of the load taken now")
        self.count_round(r, before, self.counts())
        r.two_actives = self.two_actives or bool(self.epoch_violations())
        r.ms = round((time.monotonic() - t0) * 1000, 1)
        if r.two_actives:
            raise CampaignError(f"seed {r.seed}: two hosts served as active: {self.epoch_violations() or 'seen in a status poll'}")
        self.judge(r)
        return r

    async def stop_active(self, active: str, stalled: bool, rng: random.Random, r: Round) -> None:
        """SIGTERM to the active under load (`stalled`: with the CP's journal storage held from
        before it until the host has gone): it must end within the stop's limits with exit 0 (no
        `host_exit`), having handed over (`stopped_after_handover`) or, stalled, having ended as
        a lost link (`stop_handover_failed` with `then: failover`); never the normal termination."""
        pid = self.pid(active)
        log = self.d / f"{active}.log"
        seen = len(log_events(log))
        if stalled:
            await arm_faults(self.d / "crash-cp", self.pid("cp"), "storage hold")
        try:
            await asyncio.sleep(rng.uniform(0, 0.3))
            os.kill(pid, signal.SIGTERM)
            if not await self._dead_within(active, 40):  # (the stop's handover: 15 s, and 5 s for its answer)
                raise CampaignError(f"seed {r.seed}: {active} did not end within 40 s of its SIGTERM")
        finally:
            if stalled:
                await arm_faults(self.d / "crash-cp", self.pid("cp"), "storage clear")
        events = log_events(log)[seen:]
        names = [e.get("event") for e in events]
        failed = [e.get("then") for e in events if e.get("event") == "stop_handover_failed"]
        ended = failed == ["failover"] if stalled else "stopped_after_handover" in names
        if "host_exit" in names or not ended:
            last = [n for n in names if n and ("stop" in n or "exit" in n or "handover" in n)]
            raise CampaignError(f"seed {r.seed}: {active}'s stop ({'CP stalled' if stalled else 'clean'}) ended otherwise: {last}")
        r.notes.append("stop: ended as a lost link, failed over" if stalled else "stop: handed over")

    async def until_load_terminals_have_standby(self, i: int, timeout: float = 30.0) -> None:
        from hsb.config import parse_addr
        from hsb.wire.auth import load_secret
        from hsb.wire.client import cp_sessions

        h, p = parse_addr(self.state()["cp"]["admin"])
        secret = load_secret(self.d / "secret")
        want = [f"T{k:05d}" for k in range(1, self.n + 1)]
        deadline = time.monotonic() + timeout
        while True:
            sessions = await cp_sessions(h, p, secret)
            if all(sessions.get(n, {}).get("standby") for n in want):
                return
            if time.monotonic() > deadline:
                missing = [n for n in want if not sessions.get(n, {}).get("standby")]
                raise TimeoutError(
                    f"round {i}: load terminals without a standby session: {missing[:5]}; at the CP: "
                    f"{ {n: sessions.get(n) for n in missing[:3]} }; logged about them:\n" + self.log_lines_about(missing[:3])
                )
            await asyncio.sleep(0.05)

    def log_lines_about(self, names: list[str], limit: int = 40) -> str:
        """The daemons' log lines naming these terminals (the evidence a failed wait needs)."""
        out = []
        for h in ("cp", *HOSTS):
            p = self.d / f"{h}.log"
            if p.exists():
                for line in p.read_text(errors="replace").splitlines():
                    if any(f'"{n}"' in line for n in names):
                        out.append(f"{h}: {line[:300]}")
        return "\n".join(out[-limit:]) or "(nothing)"

    async def _dead_within(self, name: str, timeout: float) -> bool:
        """Whether `name` died (its armed crash point fired) within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.alive(name):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def _wait_dead_or_kill(self, name: str, timeout: float, r: Round) -> None:
        """Wait for an armed crash point to fire; if the path was never taken, kill instead."""
        if await self._dead_within(name, timeout):
            return
        r.fallback = True
        r.notes.append(f"{name}: crash point not reached in {timeout:.0f}s; SIGKILL instead")
        os.kill(self.pid(name), signal.SIGKILL)
        await self._wait_dead(name)

    # ------------------------------------------------------------------ churn
    async def churn(self, stop: asyncio.Event) -> None:
        st = self.state()
        names = self.churner_names()
        fleet = Fleet(st["cp"]["terminal"])
        rng = random.Random(self.seed)
        try:
            while not stop.is_set():
                on = [n for n in names if n not in fleet.on and rng.random() < 0.5]
                off = [n for n in names if n in fleet.on and rng.random() < 0.5]
                try:
                    await asyncio.wait_for(asyncio.gather(fleet.logon(on, timeout=3), fleet.logoff(off, timeout=3), return_exceptions=True), 5)
                except TimeoutError:
                    pass
                for n in list(fleet.on):  # connections cut by a failover are gone
                    pr = fleet.on[n]
                    if pr.closed.done():
                        del fleet.on[n]
                await asyncio.sleep(0.05)
        finally:
            await fleet.close()

    # ------------------------------------------------------------------ the campaign
    async def run(self, rounds: int) -> dict[str, Any]:
        self.say(f"campaign seed {self.seed}: {rounds} rounds, {self.n} terminals at {self.rate:.0f} msg/s")
        info = await sandbox.aup(
            self.d,
            terminals=self.n + self.churners,
            service="ledger" if self.ledger is not None else "journal",
            dsn=(self.ledger or {}).get("dsn"),
            host_env={h: self.env(h) for h in HOSTS},
            cp_env=self.env("cp"),
            journal_segment_kib=CP_SEGMENT_KIB,
            timeout=60,
        )
        books = info["ledger"]
        for h in ("cp", *HOSTS):
            (self.d / f"crash-{h}").write_text("")
        sending, stop, churn_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()

        def progress(snap: dict[str, Any]) -> None:
            self.snap = snap
            self.snaps += 1

        load = await start_load(
            # disconnects are judged per round (allowed only where a terminal could lack a standby
            # session; in a round that kills only the CP, only those its absence explains)
            self.state()["cp"]["terminal"],
            terminals=self.n,
            rate=self.rate,
            duration=86400,
            settle=30,
            record_ids=True,
            sending=sending,
            stop=stop,
            progress=progress,
            progress_interval=0.1,
            expect_disconnects=True,
            id_base=self.id_base,
            workload=self.workload,
            books=books,
            mark_resent=self.mark_resent,
        )
        churn = asyncio.ensure_future(self.churn(churn_stop))
        try:
            await asyncio.wait_for(sending.wait(), 60)
            for i in range(rounds):
                r = await self.round(i)
                if self.workload is not None:
                    await self.check_books_now(books, r)
                self.rounds.append(r)
                self.say(
                    f"  round {i:4d} seed {r.seed:>16} {r.action:<32} epoch {r.epoch_before}->{r.epoch_after} {r.ms:7.0f} ms"
                    + (" (operator restart)" if r.recovered_by_operator else "")
                    + ("; " + "; ".join(r.notes) if r.notes else "")
                )
        finally:
            churn_stop.set()
            stop.set()
            report = await load
            await churn
        journal_problems = (
            self.check_journals(report)
            if self.workload is None
            else {"missing": 0, "unmarked_repeats": 0, "processed_more_than_once": 0, "never_sent": 0}
        )
        return self.summarize(report.to_dict(), journal_problems, report.books)


async def run_campaign(d: Path, rounds: int, **kw: Any) -> dict[str, Any]:
    """`rounds` rounds of a Campaign in `d` (its seed from HSB_CAMPAIGN_SEED, else random, and
    printed for a replay); the sandbox is taken down afterwards whatever happened."""
    seed = int(os.environ.get("HSB_CAMPAIGN_SEED", "0") or 0) or int.from_bytes(os.urandom(4), "big")
    print(f"campaign seed {seed} (replay: HSB_CAMPAIGN_SEED={seed})")
    c = Campaign(d, seed=seed, **kw)
    try:
        return await c.run(rounds)
    finally:
        try:
            sandbox.down(d, timeout=2.0)
        except sandbox.SandboxError:
            pass
