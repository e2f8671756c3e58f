"""`scripts/demo`'s acts judged in-process (hsb.demo.scenario, cp_restart, ledger_act): their
sandbox, load, clock and CP log are made up, so that each of an act's own checks is seen to make
it fail (a mutation audit found none of them tested: with any one dropped, or the load's own
verdict ignored, every test passed). The acts' real runs are `scripts/demo`'s; the report's
rendering and the exit status: tests/test_demo_report.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hsb import demo
from hsb.ctl import sandbox

pytestmark = pytest.mark.timeout(30)

T = 4  # terminals
RESTART = ("cp_worker_died", "cp_worker_started", "journal_recovered", "cp_started")  # one restart under --supervise
FAILOVER = ("active_host_link_lost", "switchover_granted", "switchover_complete")


class Rep:
    """What hsb.term.load's report gives an act: `failures` (its strict verdict's reasons)."""

    def __init__(self, failures: tuple[str, ...] = (), *, cut_off: int = 0, cp_reconnects: int = 0, books: Any = None) -> None:
        self.failures = list(failures)
        self.ok = not self.failures
        self.pause = {"worst_ms": 20.0, "p99_ms": 15.0, "all_served_ms": 25.0}
        self.books = books
        counts = dict.fromkeys(("lost", "duplicates", "unexpected", "bad_data", "unacked"), 0)
        self._d = {
            **counts,
            "sent": 10,
            "acked": 10,
            "replied": 10,
            "disconnects": cut_off,
            "switched": T,
            "service_gap": {"ms": 20.0},
            "latency_ms": {},
            "per_terminal_disconnects": {f"T{i}": 1 for i in range(cut_off)},
            "cp_reconnects": cp_reconnects,
        }

    def to_dict(self) -> dict[str, Any]:
        return self._d


def _hosts(active: str) -> list[dict[str, Any]]:
    return [{"name": n, "reachable": True, "role": "active" if n == active else "standby"} for n in ("host-a", "host-b")]


class Clock:
    """The acts' wall clock: 10 s on at each reading, so that a log line stamped between two
    readings (`between`) is after the one and before the next, whatever the machine's speed."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def time(self) -> float:
        self.now += 10
        return self.now

    def stamp(self, offset: float = 1.0) -> str:
        return datetime.fromtimestamp(self.now + offset, UTC).isoformat()


def _line(event: str, stamp: str) -> str:
    return json.dumps({"event": event, "timestamp": stamp}) + "\n"


def act(
    monkeypatch: pytest.MonkeyPatch,
    d: Path,
    rep: Rep,
    statuses: dict[str, Callable[[Clock], dict[str, Any]]],
    logged: tuple[str, ...] = (),
    dead: tuple[str, ...] = (),
    earlier: tuple[str, ...] = (),
) -> tuple[list[int], dict[str, Any]]:
    """An act's sandbox in `d`: its status at each of the act's waits from `statuses` (by what it
    waits for; checked to be what the act waits for), its load's report `rep`, the CP's log
    lines `logged` written at the kill (`earlier`: an earlier run's, in the same log), the
    daemons `dead` at its end. (The pids the act killed, what its load was started with.)"""
    d.mkdir(parents=True, exist_ok=True)
    clock = Clock()
    (d / "cp.log").write_text("".join(_line(e, clock.stamp(-1000)) for e in earlier))
    killed: list[int] = []
    load: dict[str, Any] = {}

    async def aup(d: Path, **kw: Any) -> dict[str, Any]:
        return {"cp": {"terminal": "127.0.0.1:1"}, "ledger": {"sqlite": str(d / "ledger.db")}}

    async def background_load(cp: Any, **kw: Any) -> Any:
        load.update(kw)
        done = asyncio.get_running_loop().create_future()
        done.set_result(rep)
        return done, asyncio.Event(), []

    async def until(d: Path, pred: Any, timeout: float, what: str) -> dict[str, Any]:
        st = statuses[what](clock)
        assert pred(st), (what, st)
        return st

    def kill(pid: int, sig: int) -> None:
        killed.append(pid)
        with (d / "cp.log").open("a") as f:
            f.write("".join(_line(e, clock.stamp()) for e in logged))

    async def no_wait(s: float) -> None:
        pass

    monkeypatch.setattr(sandbox, "aup", aup)
    monkeypatch.setattr(sandbox, "load_state", lambda d: {"hosts": {"host-a": {"pid": 11}}, "cp": {"pid": 12}})
    monkeypatch.setattr(sandbox, "cp_process", lambda st: 13)
    monkeypatch.setattr(sandbox, "start_host", lambda *a, **kw: None)
    monkeypatch.setattr(demo, "_background_load", background_load)
    monkeypatch.setattr(demo, "_until", until)
    monkeypatch.setattr(demo, "_dead", lambda d: list(dead))
    monkeypatch.setattr(demo, "_down", lambda d: None)
    monkeypatch.setattr(demo, "_sleep", no_wait)
    monkeypatch.setattr(demo, "os", SimpleNamespace(kill=kill))
    monkeypatch.setattr(demo, "time", clock)
    return killed, load


def _say(s: str) -> None:
    pass


# -- acts one and two: the host failover, fast switch and conventional ------------------------


def _failover_statuses(**rec: Any) -> dict[str, Callable[[Clock], dict[str, Any]]]:
    def again(clock: Clock) -> dict[str, Any]:
        last = {"kind": "failover", "from": "host-a", "to": "host-b", "at": clock.now, "switched": T, "classic": 0, "requested": 0}
        last |= {k: (v(clock) if callable(v) else v) for k, v in rec.items()}
        return {"established": True, "hosts": _hosts("host-b"), "cp": {"last_switchover": last}}

    return {
        "standby sessions": lambda c: {"hosts": _hosts("host-a"), "cp": {"terminals": {"standby_sessions": T}}},
        "host-a the active": lambda c: {"hosts": _hosts("host-a")},
        "host-b active": lambda c: {"hosts": _hosts("host-b")},
        "hot standby again": again,
    }


def _failover(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conventional: bool, rep: Rep, dead: tuple[str, ...] = (), **rec: Any
) -> dict[str, Any]:
    killed, load = act(monkeypatch, tmp_path / "act", rep, _failover_statuses(**rec), FAILOVER, dead)
    r = asyncio.run(demo.scenario(tmp_path / "act", conventional=conventional, terminals=T, rate=10.0, say=_say))
    assert killed == [11], killed  # (host-a's pid)
    assert load["expect_disconnects"] is conventional, load  # (a fast switch disconnects no terminal)
    return r


@pytest.mark.parametrize("conventional", [False, True], ids=["fast-switch", "conventional"])
def test_a_failover_act_with_nothing_wrong_passes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conventional: bool) -> None:
    counts: dict[str, Any] = {"switched": 0, "classic": T} if conventional else {}
    r = _failover(monkeypatch, tmp_path, conventional, Rep(cut_off=T if conventional else 0), **counts)
    assert r["ok"] and r["failures"] == [], r
    assert r["timeline_ms"]["killed"] == 0.0 and r["timeline_ms"]["switch_granted"] is not None, r["timeline_ms"]


@pytest.mark.parametrize(
    ("conventional", "rep", "dead", "rec", "said"),
    [
        (False, Rep(("lost: 1 acknowledged messages never answered",)), (), {}, "lost: 1 acknowledged"),
        (False, Rep(), ("hsbcpd",), {}, "daemons not running at the end: hsbcpd"),
        (False, Rep(), (), {"to": "host-a"}, "the CP's last switch is not this failover to host-b"),
        (False, Rep(), (), {"kind": "switchover"}, "the CP's last switch is not this failover to host-b"),
        (False, Rep(), (), {"at": lambda c: c.now - 100}, "the CP's last switch is not this failover to host-b"),  # an earlier one
        (False, Rep(), (), {"switched": T - 1, "classic": 1}, f"sessions switched / reconnected {T - 1} / 1, not {T} / 0"),
        (True, Rep(cut_off=T), (), {}, f"sessions switched / reconnected {T} / 0, not 0 / {T}"),  # fast switch's counts
    ],
    ids=["load-verdict", "daemon-dead", "to-another-host", "not-a-failover", "an-earlier-failover", "sessions-not-switched", "conventional-switched"],
)
def test_a_failover_act_fails_on_each_of_its_checks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, conventional: bool, rep: Rep, dead: tuple[str, ...], rec: dict[str, Any], said: str
) -> None:
    r = _failover(monkeypatch, tmp_path, conventional, rep, dead, **rec)
    assert not r["ok"] and any(said in f for f in r["failures"]), r["failures"]
    assert "VERDICT: FAILED" in demo.render([r])


# -- act three: the CP killed and forked again -------------------------------------------------


def _cp_statuses(after: str = "host-a") -> dict[str, Callable[[Clock], dict[str, Any]]]:
    back = {"established": True, "hosts": _hosts(after), "cp": {"terminals": {"active_sessions": T, "connected": T}}}
    return {
        "standby sessions": lambda c: {"hosts": _hosts("host-a"), "cp": {"terminals": {"standby_sessions": T}}},
        "host-a the active": lambda c: {"hosts": _hosts("host-a")},
        "every terminal served again": lambda c: back,
    }


def _cp_act(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    rep: Rep,
    logged: tuple[str, ...] = RESTART,
    after: str = "host-a",
    dead: tuple[str, ...] = (),
    earlier: tuple[str, ...] = (),
) -> dict[str, Any]:
    killed, _ = act(monkeypatch, tmp_path / "act", rep, _cp_statuses(after), logged, dead, earlier)
    r = asyncio.run(demo.cp_restart(tmp_path / "act", terminals=T, rate=10.0, say=_say))
    assert killed == [13], killed  # (the CP's worker)
    return r


def test_a_cp_act_with_nothing_wrong_passes_whatever_an_earlier_run_logged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The sandbox's cp.log may hold an earlier run's lines (a --dir used again): only the lines
    from the kill on are the act's restart."""
    r = _cp_act(monkeypatch, tmp_path, Rep(cut_off=T, cp_reconnects=T), earlier=RESTART)
    assert r["ok"] and r["failures"] == [] and r["listening_ms"] is not None, r
    assert "VERDICT: every acknowledged message answered exactly once" in demo.render_cp(r)


@pytest.mark.parametrize(
    ("rep", "kw", "said"),
    [
        (Rep(("duplicates: 2",), cut_off=T, cp_reconnects=T), {}, "duplicates: 2"),
        (Rep(cut_off=T - 1, cp_reconnects=T), {}, f"{T - 1} of {T} terminals were cut off and resumed"),
        (Rep(cut_off=T, cp_reconnects=T + 1), {}, f"{T + 1} changes of CP process seen by {T} terminals"),
        (Rep(cut_off=T, cp_reconnects=T), {"after": "host-b"}, "the active changed across the CP's restart"),
        (Rep(cut_off=T, cp_reconnects=T), {"logged": RESTART + RESTART}, "not one restart of the CP on its journal: 2 worker deaths"),
        (Rep(cut_off=T, cp_reconnects=T), {"dead": ("host-b",)}, "daemons not running at the end: host-b"),
    ],
    ids=["load-verdict", "not-every-terminal-cut-off", "more-cp-changes", "active-changed", "two-restarts", "daemon-dead"],
)
def test_a_cp_act_fails_on_each_of_its_checks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rep: Rep, kw: dict[str, Any], said: str) -> None:
    r = _cp_act(monkeypatch, tmp_path, rep, **kw)
    assert not r["ok"] and any(said in f for f in r["failures"]), r["failures"]
    assert "VERDICT: FAILED: " in demo.render_cp(r) and said in demo.render_cp(r)


# -- act four: the ledger ----------------------------------------------------------------------

BOOKS = {"accounts": 50, "total": 5000, "expected_total": 5000, "transfers_ok": 9, "transfers_refused": 1, "entries": 18}


def _ledger(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rep: Rep, dead: tuple[str, ...] = ()) -> dict[str, Any]:
    statuses = {k: v for k, v in _failover_statuses().items() if k != "hot standby again"}
    _, load = act(monkeypatch, tmp_path / "act", rep, statuses, (), dead)
    r = asyncio.run(demo.ledger_act(tmp_path / "act", terminals=T, rate=10.0, dsn=None, say=_say))
    assert not load.get("expect_disconnects") and load["books"] == {"sqlite": str(tmp_path / "act" / "ledger.db")}, load  # (the books checked)
    return r


def test_the_ledger_act_passes_with_host_a_left_down(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """host-a was killed and stays down in this act: not one of its failures."""
    r = _ledger(monkeypatch, tmp_path, Rep(books=BOOKS), dead=("host-a",))
    assert r["ok"] and r["failures"] == [], r
    assert "VERDICT: the books balance" in demo.render_ledger(r)


@pytest.mark.parametrize(
    ("rep", "dead", "said"),
    [
        (Rep(("books: transfer 7 applied twice",), books=BOOKS), (), "books: transfer 7 applied twice"),
        (Rep(books=BOOKS), ("host-a", "host-b"), "daemons not running at the end: host-b"),
        (Rep(books=None), (), "the books were not checked: the load was given no ledger database to check"),
    ],
    ids=["books", "new-active-dead", "books-not-checked"],
)
def test_the_ledger_act_fails_on_its_books_or_a_daemon_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, rep: Rep, dead: tuple[str, ...], said: str
) -> None:
    r = _ledger(monkeypatch, tmp_path, rep, dead)
    assert not r["ok"] and r["failures"] == [said], r["failures"]  # (host-a, killed, is not one)
    out = demo.render_ledger(r)
    assert "VERDICT: FAILED: " in out and said in out and "the books balance" not in out, out


def test_a_demo_stopped_by_a_signal_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM or Ctrl-C cancels the run: its acts did not all complete, so it proved nothing."""
    from hsb import logs, loop

    def cancelled(main: Any) -> Any:
        main.close()
        raise asyncio.CancelledError

    monkeypatch.setattr(loop, "run", cancelled)
    monkeypatch.setattr(logs, "setup", lambda *a, **kw: None)
    assert demo.main(["--fast-only"]) == 1
    assert "FAILED" in capsys.readouterr().err


def test_the_daemons_not_running_are_the_sandboxes_dead_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each act's "daemons not running at the end" (hsb.demo._dead): its CP and each host as last started."""
    state = {"cp": {"pid": 1}, "hosts": {"host-a": {"pid": 2}, "host-b": {"pid": 3}}}
    monkeypatch.setattr(sandbox, "load_state", lambda d: state)
    monkeypatch.setattr(sandbox, "_alive", lambda pid: pid != 2)
    assert demo._dead(tmp_path) == ["host-a"]
    monkeypatch.setattr(sandbox, "_alive", lambda pid: pid == 2)
    assert demo._dead(tmp_path) == ["hsbcpd", "host-b"]
