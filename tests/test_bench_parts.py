"""The in-process parts of the benchmarks run small here, so that a change to the code they drive
cannot leave a benchmark broken until someone measures (bench/scale_core.py's recovery stopped
at `Superseded` for a day: the journal's open began checking its generation, the bench took none)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

pytestmark = pytest.mark.timeout(120)


def test_scale_core_recovery_reads_back_what_it_wrote() -> None:
    import scale_core

    r = scale_core.recovery(6000)  # past one group record (4,096): the snapshot is several
    assert r["total_s"] > 0 and r["snapshot_s"] > 0 and r["snapshot_read_s"] > 0
    assert r["start_s"] == pytest.approx(r["total_s"] + r["snapshot_s"], abs=0.002)


def test_a_restart_figure_is_service_and_a_missing_one_is_the_worst() -> None:
    """bench/cprestart.py judged "served again ≤ 1 s" on sessions reopened alone (a session back
    at 0.8 s, held messages answered at 3 s, was "met"), and a run without a figure fell out of
    its median and worst; a drop before the kill (a second, unplanned restart) passed the verdict."""
    import cprestart
    from _sandbox import fault_window_failures

    run = {"kill_to_all_back_ms": 800.0, "worst_ms": 3000.0, "all_served_ms": 2500.0, "unanswered": 0}
    assert cprestart.served_again_ms(run) == 3000.0
    assert cprestart.served_again_ms({**run, "worst_ms": None}) == float("inf")  # a message never answered
    assert cprestart.served_again_ms({**run, "kill_to_all_back_ms": None}) == float("inf")
    assert cprestart.served_again_ms({**run, "all_served_ms": None}) == 3000.0  # (nothing in flight at the kill)
    assert fault_window_failures({"extras": {"disconnects_before": 2}, "cp_reconnects": 10}, 10) == [
        "disconnects before the fault: 2 welcomed terminals dropped before it was made"
    ]
    assert fault_window_failures({"extras": {}, "cp_reconnects": 11}, 10)
    assert fault_window_failures({"extras": {"disconnects_before": 0}, "cp_reconnects": 10}, 10) == []
    # a netns lab's load (no extras): its first marked operation says; a report that says nothing fails
    assert fault_window_failures({"operations": [{"disconnects_before": 3}], "cp_reconnects": 10}, 10) == [
        "disconnects before the fault: 3 welcomed terminals dropped before it was made"
    ]
    assert fault_window_failures({"operations": [{"disconnects_before": 0}], "cp_reconnects": 10}, 10) == []
    assert fault_window_failures({"cp_reconnects": 10}, 10)
    # the new process's first line under --supervise is a worker's, not its master's
    assert cprestart.master_line({"event": "cp_worker_started"}) and cprestart.master_line({"event": "cp_worker_died"})
    assert not cprestart.master_line({"event": "journal_recovered"})


async def test_the_load_childs_stats_take_what_run_load_gives_them() -> None:
    """The benches' load child puts its own LoadStats in hsbterm's place: it must take the
    arguments run_load makes it with (a second, the target, was added and every bench's load
    died with a TypeError while the suite stayed green)."""
    import inspect

    import _load

    from hsb.term import load

    src = inspect.getsource(load.run_load)
    call = next(line for line in src.splitlines() if "LoadStats(" in line)
    assert call.count(",") == 2, call  # (the three arguments given below, if this fails: update both)
    made: list[Any] = []
    stats = _load._stats_factory(made)(3, "127.0.0.1:1", cert="t.pem")  # (the load child's, as run_load calls it)
    assert made == [stats] and stats.terminals == 3 and stats.extras()["back"] == 0


def test_a_second_death_of_the_cp_after_the_kill_fails_the_restart_run(tmp_path: Path) -> None:
    """bench/cprestart.py's only check against a second death was more changes of CP process than
    terminals: a new worker that died before it welcomed anyone (in its journal's recovery, say)
    added none, its master forked a third, and the run was OK. The CP's log from the kill on
    must show one restart: under --supervise one worker dead and one forked."""
    import json
    from datetime import UTC, datetime

    import cprestart
    from _sandbox import LogTail

    t_kill = 1_700_000_000.0

    def line(event: str, at: float) -> str:
        iso = datetime.fromtimestamp(t_kill + at, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps({"event": event, "timestamp": iso}) + "\n"

    def judged(events: list[tuple[str, float]], mode: str) -> list[str]:
        log = tmp_path / f"cp-{len(list(tmp_path.iterdir()))}.log"
        log.write_text("".join(line(e, at) for e, at in events))
        report = {"extras": {"disconnects_before": 0}, "cp_reconnects": 10}  # each of the 10 terminals saw one new CP
        return cast(list[str], cprestart.run_failures(report, 10, LogTail(log).read(), t_kill, mode))

    before = [("cp_worker_started", -9.0), ("journal_recovered", -8.9), ("cp_started", -8.8)]  # the first worker's start
    once = [("cp_worker_died", 0.01), ("cp_worker_started", 0.02), ("journal_recovered", 0.05), ("cp_started", 0.06)]
    assert judged(before + once, "supervise") == []
    # the next worker dies in its recovery and a third one is forked: the terminals see one new CP
    twice = [("cp_worker_died", 0.01), ("cp_worker_started", 0.02), ("cp_worker_died", 0.04), ("cp_worker_started", 0.05)] + once[2:]
    assert judged(before + twice, "supervise") == [
        "not one restart of the CP on its journal: 2 worker deaths, 2 workers forked, 1 starts, 1 journal recoveries"
    ]
    crash_loop = [*once, ("cp_worker_crash_loop", 0.5), ("cp_worker_started", 1.5), ("journal_recovered", 1.6), ("cp_started", 1.7)]
    assert judged(before + crash_loop, "supervise")
    # a plain hsbcpd started again by hand: its start and recovery, no master's lines
    assert judged([("journal_recovered", -8.9), ("cp_started", -8.8), ("journal_recovered", 0.3), ("cp_started", 0.4)], "plain") == []
    assert judged([("journal_recovered", 0.3), ("cp_started", 0.4), ("journal_recovered", 0.9), ("cp_started", 1.0)], "plain")


MACHINE = {"cpu": "x", "cores": 2, "kernel": "k", "python": "3", "uvloop": "u", "loadavg": [0.0], "date": "d", "code": "c"}


def test_a_fault_runs_verdict_fails_on_what_the_load_or_the_fault_window_says() -> None:
    """bench/cprestart.py's and bench/cpfailover.py's runs: more changes of CP process than
    terminals, a second restart in the CP's log, a failure beside the load's verdict, and a count
    of lost or duplicated replies that the load's verdict passed, each fail the run."""
    import cprestart
    from _sandbox import fault_window_failures, run_ok, run_verdict

    from hsb.demo import one_restart_failures

    assert fault_window_failures({"extras": {"disconnects_before": 0}, "cp_reconnects": 11}, 10) == [
        "CP processes: 11 changes seen by 10 terminals, more than the one the fault explains"
    ]
    once = [{"event": "journal_recovered"}, {"event": "cp_started"}]
    assert one_restart_failures(once, supervised=False) == []
    assert one_restart_failures([*once, {"event": "journal_recovered"}], supervised=False)  # a second recovery, no second start
    assert one_restart_failures([*once, {"event": "cp_started"}], supervised=False)
    assert one_restart_failures(once, supervised=True)  # no worker died nor was forked
    # cprestart's run judges its fault window beside the restart in the CP's log
    assert cprestart.run_failures({"extras": {"disconnects_before": 2}, "cp_reconnects": 10}, 10, once, 0.0, "plain") == [
        "disconnects before the fault: 2 welcomed terminals dropped before it was made"
    ]
    ok = {"ok": True, "failures": [], "lost": 0, "duplicates": 0, "unexpected": 0}
    assert run_verdict(ok, []) == {"ok": True, "failures": []}
    assert run_verdict(ok, ["not one restart"]) == {"ok": False, "failures": ["not one restart"]}
    assert run_verdict({**ok, "ok": False, "failures": ["lost: 1"], "lost": 1}, []) == {"ok": False, "failures": ["lost: 1"]}
    for key in ("lost", "duplicates", "unexpected"):
        v = run_verdict({**ok, key: 2}, [])
        assert not v["ok"] and v["failures"][0].startswith("2 "), (key, v)
        assert not run_ok({**ok, key: 2}) and run_ok(ok)  # (a saved run of older code: its ok alone)


def restart_run(**kw: Any) -> dict[str, Any]:
    """One run of bench/cprestart.py, as its results file saves it."""
    r: dict[str, Any] = {"terminals": 10, "rep": 1, "mode": "plain", "ok": True, "failures": [], "lost": 0, "duplicates": 0, "unexpected": 0}
    r |= {"kill_to_all_back_ms": 500.0, "worst_ms": 600.0, "all_served_ms": 550.0, "unanswered": 0}
    return r | kw


def test_the_restart_benches_tables_fail_a_run_that_failed() -> None:
    """bench/cprestart.py's row said "all OK" on its runs' `ok` alone (a saved run with a lost
    message and ok true passed), and bench/cpfailover.py's row reads the restart runs beside it."""
    import argparse

    import cpfailover
    import cprestart

    a = argparse.Namespace(command="c", machine=MACHINE, json="x.json", render=None, rate=100.0)

    def row(text: str, start: str) -> str:
        return next(ln for ln in text.splitlines() if ln.startswith(start))

    assert row(cprestart.render({"results": [restart_run()]}, a), "| 10 ").endswith("| all OK |")
    for bad in (restart_run(ok=False, failures=["x"]), restart_run(lost=1), restart_run(duplicates=1)):
        assert "**FAILED**" in row(cprestart.render({"results": [restart_run(), bad]}, a), "| 10 "), bad
    lab = {"terminals": 10, "rep": 1, "tickle_acks": True, "ok": True, "failures": [], "lost": 0, "duplicates": 0, "in_flight": 0}
    lab |= {"terminals_all_back_ms": 500.0, "worst_ms": 600.0, "all_served_ms": None, "unanswered": 0}
    assert row(cpfailover.render({"results": [lab], "restart": [restart_run()]}, a), "| 10 ").endswith("| all OK |")
    for data in ({"results": [lab], "restart": [restart_run(ok=False)]}, {"results": [lab | {"duplicates": 1}], "restart": []}):
        assert "**FAILED**" in row(cpfailover.render(data, a), "| 10 "), data


def test_a_restart_run_with_nothing_in_flight_has_no_all_served_figure() -> None:
    """bench/cprestart.py's "all served" column showed ∞ as its worst run when one run had no
    message in flight at the kill (no figure to give, as bench/cpfailover.py already said):
    such a run is left out of that column, while a run whose in-flight messages were never
    answered still counts as infinite."""
    import argparse

    import cprestart

    a = argparse.Namespace(command="c", machine=MACHINE, json="x.json", render=None, rate=100.0)

    def served(runs: list[dict[str, Any]]) -> str:
        text = cprestart.render({"results": runs}, a)
        return cast(str, next(ln for ln in text.splitlines() if ln.startswith("| 10 ")).split(" | ")[9])

    quiet = restart_run(all_served_ms=None, in_flight=0)
    assert served([restart_run(in_flight=3), quiet]) == "550.0 (550.0)"
    assert served([quiet]) == "–"
    assert "∞" in served([restart_run(in_flight=3), restart_run(all_served_ms=None, in_flight=2)])


def test_the_tcp_counters_are_read_from_netstat() -> None:
    """The accept-queue overflows and SYN retransmissions a restart bench records: the TcpExt
    lines of /proc/net/netstat (a header line of names, then one of values)."""
    from bench._common import counters_delta, tcp_counters

    text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPSynRetrans\nTcpExt: 0 7 9 11\nIpExt: InNoRoutes ListenOverflows\nIpExt: 1 99\n"
    assert tcp_counters(text) == {"ListenOverflows": 7, "ListenDrops": 9, "TCPSynRetrans": 11}
    assert tcp_counters("") == {}
    assert counters_delta({"ListenOverflows": 7, "TCPSynRetrans": 1}, {"ListenOverflows": 10, "TCPSynRetrans": 1, "X": 5}) == {
        "ListenOverflows": 3,
        "TCPSynRetrans": 0,
    }
    assert set(tcp_counters()) <= {"ListenOverflows", "ListenDrops", "TCPSynRetrans"}  # this machine's, readable


def test_the_cps_event_loop_thread_is_measured_apart() -> None:
    """bench/cp.py splits hsbcpd's CPU per message into its event loop's thread and the rest (the
    kernel's io_uring workers that write the journal's groups run as threads of hsbcpd): the
    loop's thread is read on its own from /proc, and the report gives both, durable beside
    memory-only; runs saved before the split have none to give."""
    import os

    from bench._common import cpu_seconds, loop_cpu_seconds
    from bench._cp_render import loop_lines
    from bench._cp_runs import summarize

    x = 0
    for i in range(300_000):  # some CPU of this thread
        x += i
    assert 0 < loop_cpu_seconds(os.getpid()) <= cpu_seconds(os.getpid())
    assert loop_cpu_seconds(2**22 + 1) != loop_cpu_seconds(2**22 + 1)  # (NaN: no such process)

    def run(rate: float, total: float, loop: float) -> dict[str, Any]:
        return {"rate": rate, "p50": 1.0, "p99": 2.0, "cpu": {"hsbcpd": total, "load": 0.1}, "loop_cpu": {"hsbcpd": loop}}

    cp, mem = summarize([run(10_000, 0.5, 0.4), run(10_000, 0.7, 0.6)]), summarize([run(20_000, 0.6, 0.6)])
    assert cp["us_per_msg"]["hsbcpd"] == 60.0 and cp["loop_us_per_msg"] == {"hsbcpd": 50.0}
    assert mem["loop_us_per_msg"] == {"hsbcpd": 30.0}
    line = loop_lines([{"terminals": 1, "window": 8, "cp": cp, "memory_only": mem}])[-1]
    assert "durable / memory-only: 60.0 / 30.0 µs" in line and "event loop's thread 50.0 / 30.0 µs" in line, line
    old = {"terminals": 1, "window": 8, "cp": {**cp, "loop_us_per_msg": {}}, "memory_only": mem}
    assert loop_lines([old]) == []
