"""The benches' load child, and starting one (start_load); fault_window_failures, what a run
with one fault must also fail on, and run_verdict / run_ok, a fault run's verdict, judge its report.

`python bench/_load.py load --cp HOST:PORT --terminals N --rate R` runs
`hsb.term.load.run_load` in a process of its own (so that the benchmark's loop and 10,000
terminals do not starve each other), with the strict verdict. A `mark` command records an
operation (a kill, a switchover) on the load's own clock: the report then carries, per mark,
the worst pause a terminal saw (hsb.term.timeline). It also tells, on the wall clock, when
every terminal had its `switched` notice or its session back after the mark.

stdout (JSON lines): {"ev": "sending"}, {"ev": "armed"}, {"ev": "marked"}, {"ev": "recovered", ...},
{"ev": "report", ...}.
stdin (JSON lines):  {"cmd": "arm"} just before an operation (from here on, terminals coming
back are counted); {"cmd": "mark", "label": L, "t": WALL} right after it, with the wall-clock
time the operation was carried out (the child's clock if "t" is left out); {"cmd": "stop"} to
end sending (then it settles, logs the terminals off and reports). EOF also stops it.

HSB_LOAD_CPROFILE=FILE in its environment (a profiling aid): cProfile of the child from the first
mark to every terminal back, written to FILE (each call counted: slow, but it says how many of
each a reconnect makes).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # (run as a script: the load child)
    sys.path.insert(0, str(REPO))

from bench._procs import Child, emit, stdin_reader  # noqa: E402


def fault_window_failures(report: dict[str, Any], terminals: int) -> list[str]:
    """What a run with ONE fault (a kill, a cut) made at its mark must also fail on: a terminal
    dropped before the fault (the CP-restart verdict lets a drop pass when another CP process
    welcomes it next: a second, unplanned restart would), or more changes of CP process than one
    per terminal."""
    out = []
    before = (report.get("extras") or {}).get("disconnects_before")
    if before is None:  # a run of tests/netns/loadrun.py: its first marked operation's
        ops = report.get("operations") or []
        before = ops[0].get("disconnects_before") if ops else None
    if before is None:
        out.append("disconnects before the fault: the load's report does not say (no extras, no marked operation)")
    elif before:
        out.append(f"disconnects before the fault: {before} welcomed terminals dropped before it was made")
    again = report.get("cp_reconnects") or 0
    if again > terminals:
        out.append(f"CP processes: {again} changes seen by {terminals} terminals, more than the one the fault explains")
    return out


# a fault run's counts that must be zero whatever the load's verdict said, and what each counts
MUST_BE_ZERO = (("lost", "acknowledged messages lost"), ("duplicates", "duplicate replies"), ("unexpected", "unexpected replies"))


def run_verdict(report: dict[str, Any], extra: list[str]) -> dict[str, Any]:
    """A fault run's `ok` and `failures`: the load's strict verdict, what the run fails on beside
    it (`extra`), and the report's own counts of lost, duplicated and unexpected replies (a
    verdict that passed beside a count that is not zero is not believed)."""
    failures = list(report["failures"]) + extra
    failures += [f"{report[k]} {what} (the load's verdict passed them)" for k, what in MUST_BE_ZERO if report.get(k) and report["ok"]]
    return {"ok": bool(report["ok"]) and not failures, "failures": failures}


def run_ok(r: dict[str, Any]) -> bool:
    """A saved run's verdict (bench/cprestart.py's, bench/cpfailover.py's): its `ok`, and none of
    its counts that must be zero (a results file of older code judged without them)."""
    return bool(r["ok"]) and not any(r.get(k) for k, _ in MUST_BE_ZERO)


def _stats_factory(made: list[Any]) -> Any:
    """What the load child puts in hsb.term.load's LoadStats: its own LoadStats, made with
    whatever run_load gives (positional and keyword: a keyword it did not pass on stopped every
    bench's load), each one kept in `made`."""
    cls = _load_stats_class()

    def factory(*args: Any, **kw: Any) -> Any:
        s = cls(*args, **kw)
        made.append(s)
        return s

    return factory


def _load_stats_class() -> type:
    import hsb.term.load as L

    class FailoverStats(L.LoadStats):  # type: ignore[misc, valid-type]
        """LoadStats that also tells when every terminal is back after the last mark."""

        def __init__(self, *args: Any, **kw: Any) -> None:  # (LoadStats's, whatever they become)
            super().__init__(*args, **kw)
            self.offset = time.time() - time.monotonic()
            self.mark_at: float | None = None  # monotonic
            self.back: set[str] = set()  # switched, or session open again, after the mark
            self.first_back: float | None = None
            self.last_back: float | None = None
            self.switched_after = 0
            self.reopened_after = 0
            self.disc_after = 0
            self.disc_before = 0  # welcomed terminals dropped before the arm: no fault was made yet
            self.recovered_sent = False

        def arm(self) -> float:
            self.mark_at = time.monotonic()
            self.back.clear()
            self.first_back = self.last_back = None
            self.switched_after = self.reopened_after = self.disc_after = 0
            self.recovered_sent = False
            return self.mark_at + self.offset

        def _back(self, c: Any) -> None:
            if self.mark_at is None or c.name in self.back:
                return
            now = time.monotonic()
            self.back.add(c.name)
            if self.first_back is None:
                self.first_back = now
            self.last_back = now
            if not self.recovered_sent and len(self.back) >= self.terminals:
                self.recovered_sent = True
                _profile_stop()
                emit({"ev": "recovered", "t": now + self.offset})

        def on_switched(self, c: Any, epoch: int) -> None:
            super().on_switched(c, epoch)
            if self.mark_at is not None:
                self.switched_after += 1
            self._back(c)

        def on_session(self, c: Any, state: str, epoch: int, reason: str | None, first_open: bool) -> None:
            super().on_session(c, state, epoch, reason, first_open)
            if state == "open" and self.mark_at is not None:
                self.reopened_after += 1
                self._back(c)

        def on_disconnect(self, c: Any, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
            super().on_disconnect(c, exc, retry_in, welcomed)
            if self.mark_at is not None and self.counting and welcomed:
                self.disc_after += 1
            elif self.mark_at is None and self.counting and welcomed:
                self.disc_before += 1

        def extras(self) -> dict[str, Any]:
            def wall(t: float | None) -> float | None:
                return None if t is None else t + self.offset

            return {
                "mark_at": wall(self.mark_at),
                "back": len(self.back),
                "first_back": wall(self.first_back),
                "last_back": wall(self.last_back),
                "switched_after": self.switched_after,
                "reopened_after": self.reopened_after,
                "disconnects_after": self.disc_after,
                "disconnects_before": self.disc_before,
            }

    return FailoverStats


_PROFILER: list[Any] = []


def _profile_start() -> None:
    """HSB_LOAD_CPROFILE=FILE (a profiling aid): cProfile from the mark to every terminal back."""
    import os

    if os.environ.get("HSB_LOAD_CPROFILE") and not _PROFILER:
        import cProfile

        _PROFILER.append(cProfile.Profile())
        _PROFILER[0].enable()


def _profile_stop() -> None:
    import os

    if _PROFILER:
        _PROFILER[0].disable()
        _PROFILER[0].dump_stats(os.environ["HSB_LOAD_CPROFILE"])


async def _load_child(a: Any) -> None:
    import hsb.term.load as L
    from hsb import gcpolicy
    from hsb.term.connector import tls_context

    gcpolicy.apply()  # as hsbterm load does

    made: list[Any] = []
    L.LoadStats = _stats_factory(made)  # type: ignore[assignment, misc]
    sending, stop = asyncio.Event(), asyncio.Event()
    marks: list[tuple[str, float]] = []
    reader = await stdin_reader()

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                stop.set()
                return
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("cmd") == "arm" and made:
                emit({"ev": "armed", "t": made[0].arm()})
            elif m.get("cmd") == "mark" and made:
                t = float(m["t"]) if m.get("t") is not None else time.time()
                if made[0].mark_at is None:
                    made[0].arm()
                marks.append((str(m.get("label", "operation")), t))
                _profile_start()
                emit({"ev": "marked", "t": t})
            elif m.get("cmd") == "stop":
                stop.set()

    async def announce() -> None:
        await sending.wait()
        emit({"ev": "sending", "t": time.time()})

    tasks = [asyncio.ensure_future(commands()), asyncio.ensure_future(announce())]
    workload = books = None
    if a.workload == "ledger":
        from hsb.term.workload import LedgerWorkload

        workload = LedgerWorkload(accounts=a.accounts)
        books = {"dsn": a.books_dsn, "sqlite": a.books_sqlite, "idempotency": not a.no_idempotency} if (a.books_dsn or a.books_sqlite) else None
    try:
        rep = await L.run_load(
            a.cp,
            terminals=a.terminals,
            rate=a.rate,
            duration=a.duration,
            settle=a.settle,
            window=a.window,
            connect_timeout=a.connect_timeout,
            sending=sending,
            stop=stop,
            marks=marks,
            after_s=a.after_s,
            expect_disconnects=a.expect_disconnects,
            closed_loop=a.closed_loop,
            workload=workload,
            books=books,
            ssl=tls_context(a.tls_ca) if a.tls_ca else None,
            source=a.source,
            start=a.start,
            names=None,
            **({"keepalive": a.keepalive} if a.keepalive is not None else {}),
        )
    finally:
        for t in tasks:
            t.cancel()
    out = rep.to_dict()
    out["extras"] = made[0].extras() if made else {}
    emit({"ev": "report", "report": out})


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="bench/_load.py")
    sub = p.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("load", help="(child) run_load with failover bookkeeping; JSON lines on stdout")
    lp.add_argument("--cp", required=True)
    lp.add_argument("--terminals", type=int, required=True)
    lp.add_argument("--rate", type=float, required=True)
    lp.add_argument("--duration", type=float, default=3600.0)
    lp.add_argument("--settle", type=float, default=20.0)
    lp.add_argument("--window", type=int, default=8)
    lp.add_argument("--connect-timeout", type=float, default=120.0)
    lp.add_argument("--after-s", type=float, default=1.0, help="a mark's window: messages sent this long after it count")
    lp.add_argument("--expect-disconnects", action="store_true", help="conventional mode: disconnects do not fail the verdict")
    lp.add_argument(
        "--expect-cp-restart",
        dest="expect_disconnects",
        action="store_const",
        const="cp",
        help="a CP restart or takeover: only disconnects the CP's absence explains, and no session closure, pass the verdict",
    )
    lp.add_argument("--closed-loop", action="store_true", help="each terminal keeps --window outstanding (capacity)")
    lp.add_argument("--workload", default="echo", choices=["echo", "ledger"])
    lp.add_argument("--accounts", type=int, default=50)
    lp.add_argument("--books-dsn")
    lp.add_argument("--books-sqlite")
    lp.add_argument("--no-idempotency", action="store_true", help="ledger without records: check the books without them")
    lp.add_argument("--tls-ca", help="the CP's terminal listener speaks TLS: its CA file")
    lp.add_argument("--source", help="connect from this local address (127.0.0.x): several load children, more ports")
    lp.add_argument("--start", type=int, default=1, help="the first terminal's number (T00001 = 1): children split the table")
    lp.add_argument("--keepalive", type=int, default=None, help="the terminals' TCP keepalive idle seconds (default: hsbterm's; 0: none)")
    a = p.parse_args(argv)
    from hsb import loop

    if a.mode == "load":
        loop.run(_load_child(a))


async def start_load(cp: str, terminals: int, rate: float, log: Path, **kw: Any) -> Child:
    argv = [sys.executable, str(Path(__file__).resolve()), "load", "--cp", cp, "--terminals", str(terminals), "--rate", str(rate)]
    for k, v in kw.items():
        if v is True:
            argv.append(f"--{k.replace('_', '-')}")
        elif v is not False and v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return await Child.start(argv, log)


if __name__ == "__main__":
    main()
