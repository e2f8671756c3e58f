"""`scripts/demo`'s verdict (hsb.demo): an act that fails or never completes makes the whole run
fail (exit 1, FAILED in the report), and the side-by-side ratio is printed only when both
failovers passed. The acts themselves (real sandboxes) are what `scripts/demo` runs; here they
are replaced by their results, so that the report's own logic is checked on its own."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb import demo
from hsb.ctl import sandbox

pytestmark = pytest.mark.timeout(30)

VERDICT = {"sent": 10, "acked": 10, "replied": 10, "lost": 0, "duplicates": 0, "unexpected": 0, "bad_data": 0, "unacked": 0}


def _failover(mode: str, worst: float, failures: list[str] | None = None) -> dict[str, Any]:
    timeline = dict.fromkeys(("killed", "loss_detected", "switch_granted", "sessions_switched", "first_redelivered_answered", "standby_again"), 1.0)
    return {
        "mode": mode,
        "terminals": 4,
        "timeline_ms": timeline,
        "switched": 4 if mode == "fast switch" else 0,
        "reconnected": 0 if mode == "fast switch" else 4,
        "worst_pause_ms": worst,
        "p99_pause_ms": worst,
        "all_served_ms": worst,
        "service_gap_ms": worst,
        "disconnected_terminals": 0 if mode == "fast switch" else 4,
        "verdict": {**VERDICT, "disconnects": 0, "switched": 4},
        "ok": not failures,
        "failures": failures or [],
    }


def _cp(ok: bool) -> dict[str, Any]:
    return {
        "recovered": {"ms": 5, "held": 0, "replies_kept": 0, "terminals": 4, "epoch": 2, "active": "host-a"},
        "listening_ms": 90,
        "resumed": 4,
        "terminals": 4,
        "active_after": ["host-a"],
        "active_before": ["host-a"],
        "worst_pause_ms": 50.0,
        "p99_pause_ms": 40.0,
        "all_served_ms": 60.0,
        "verdict": VERDICT,
        "ok": ok,
        "failures": [] if ok else ["1 of 4 terminals were cut off and resumed"],
    }


def test_the_ratio_is_printed_only_when_both_failovers_passed() -> None:
    good = demo.render([_failover("fast switch", 20.0), _failover("conventional", 200.0)])
    assert "conventional / fast-switch worst pause: 10.0x" in good
    assert "VERDICT: every acknowledged message answered exactly once" in good
    bad = demo.render([_failover("fast switch", 20.0, ["lost: 1"]), _failover("conventional", 200.0)])
    assert "worst pause:" not in bad.split("conventional mode disconnected")[0].split("aggregated service gap")[1]
    assert "VERDICT: FAILED" in bad and "  - fast switch: lost: 1" in bad
    # an act that did not complete proves nothing: the verdict of the one that did is not the report's
    half = demo.render([_failover("fast switch", 20.0)], ["conventional: did not complete: TimeoutError: hot standby"])
    assert "VERDICT: FAILED" in half and "  - conventional: did not complete" in half, half


def test_the_cp_act_says_failed_with_its_reasons() -> None:
    assert "VERDICT: every acknowledged message answered exactly once" in demo.render_cp(_cp(True))
    out = demo.render_cp(_cp(False))
    assert "VERDICT: FAILED: 1 of 4 terminals were cut off and resumed" in out


def test_the_cp_acts_recovery_line_counts_in_words() -> None:
    """One held message is "1 held message", as the demo says it to a person."""
    one = _cp(True)
    one["recovered"] = {**one["recovered"], "held": 1, "replies_kept": 1, "terminals": 1}
    out = demo.render_cp(one)
    assert "1 held message, 1 unconfirmed reply, 1 terminal's acknowledged id," in out, out
    out = demo.render_cp(_cp(True))
    assert "0 held messages, 0 unconfirmed replies, 4 terminals' acknowledged ids," in out, out


def _ledger(ok: bool) -> dict[str, Any]:
    books = {"accounts": 50, "total": 5000, "expected_total": 5000, "transfers_ok": 9, "transfers_refused": 1, "entries": 18}
    failures = [] if ok else ["books: transfer 7 applied twice"]
    return {"database": "sqlite", "active_after": ["host-b"], "worst_pause_ms": 50.0, "books": books, "ok": ok, "failures": failures}


def _run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, acts: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    async def scenario(d: Path, *, conventional: bool, **kw: Any) -> dict[str, Any]:
        got = acts["conventional" if conventional else "fast switch"]
        if isinstance(got, BaseException):
            raise got
        return dict(got)

    async def cp_restart(d: Path, **kw: Any) -> dict[str, Any]:
        got = acts["cp"]
        if isinstance(got, BaseException):
            raise got
        return dict(got)

    async def ledger_act(d: Path, **kw: Any) -> dict[str, Any]:
        got = acts["ledger"]
        if isinstance(got, BaseException):
            raise got
        return dict(got)

    monkeypatch.setattr(demo, "scenario", scenario)
    monkeypatch.setattr(demo, "cp_restart", cp_restart)
    monkeypatch.setattr(demo, "ledger_act", ledger_act)
    args = argparse.Namespace(json=False, terminals=4, rate=10.0, dir=str(tmp_path), fast_only=False, no_cp_restart=False, no_ledger=False, dsn=None)
    rc = asyncio.run(demo.amain(args))
    return rc, capsys.readouterr().out


def test_every_act_passing_exits_0(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    acts = {"fast switch": _failover("fast switch", 20.0), "conventional": _failover("conventional", 200.0), "cp": _cp(True), "ledger": _ledger(True)}
    rc, out = _run(monkeypatch, tmp_path, acts, capsys)
    assert rc == 0, out
    assert "FAILED" not in out


@pytest.mark.parametrize(
    "broken",
    [
        {"fast switch": _failover("fast switch", 20.0, ["not back: 1 terminals"])},
        {"conventional": _failover("conventional", 200.0, ["lost: 2"])},
        {"cp": _cp(False)},
        {"conventional": TimeoutError("hot standby again not reached in 60 s")},
        {"cp": sandbox.SandboxError("hsbcpd exited at start")},
        {"ledger": _ledger(False)},
        {"ledger": TimeoutError("host-b active not reached in 30 s")},
    ],
    ids=["fast-switch-verdict", "conventional-verdict", "cp-verdict", "act-timed-out", "act-did-not-start", "ledger-books", "ledger-timed-out"],
)
def test_any_act_failing_or_not_completing_exits_1(
    broken: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    acts: dict[str, Any] = {
        "fast switch": _failover("fast switch", 20.0),
        "conventional": _failover("conventional", 200.0),
        "cp": _cp(True),
        "ledger": _ledger(True),
        **broken,
    }
    rc, out = _run(monkeypatch, tmp_path, acts, capsys)
    assert rc == 1, out
    assert "FAILED" in out
    if any(isinstance(v, BaseException) for v in broken.values()):
        assert "ACTS THAT DID NOT COMPLETE (FAILED):" in out


def test_the_cp_act_judges_its_load_as_a_cp_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Act three's load passes only the drops a new CP process explains (`"cp"`): with `True`
    a session closed, a drop while the same CP is there or one during a logon would pass."""
    seen: dict[str, Any] = {}

    async def aup(d: Path, **kw: Any) -> dict[str, Any]:
        return {"cp": {"terminal": "127.0.0.1:1"}}

    async def background_load(cp: Any, **kw: Any) -> Any:
        seen.update(kw)
        raise RuntimeError("stop here")

    monkeypatch.setattr(sandbox, "aup", aup)
    monkeypatch.setattr(demo, "_background_load", background_load)
    monkeypatch.setattr(demo, "_down", lambda d: None)
    with pytest.raises(RuntimeError, match="stop here"):
        asyncio.run(demo.cp_restart(tmp_path, terminals=4, rate=10, say=lambda s: None))
    assert seen["expect_disconnects"] == "cp"


async def test_an_act_that_does_not_complete_stops_its_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An act whose wait timed out after its load had started tore its sandbox down and left the
    load running: the next act ran beside ~200 terminals still reconnecting. Each act's load is
    stopped when the act ends, however it ends."""
    loads: list[asyncio.Future[None]] = []
    pending_at_start: list[int] = []  # loads of earlier acts still running when an act starts its own

    async def aup(d: Path, **kw: Any) -> dict[str, Any]:
        return {"cp": {"terminal": "127.0.0.1:1"}, "ledger": {"sqlite": str(d / "ledger.db")}}

    async def background_load(cp: Any, **kw: Any) -> Any:
        pending_at_start.append(sum(not t.done() for t in loads))

        async def run_load() -> None:  # (as hsb.term.load's: runs until stopped or cancelled)
            await asyncio.Event().wait()

        loads.append(asyncio.ensure_future(run_load()))
        return loads[-1], asyncio.Event(), []

    async def until(d: Path, pred: Any, timeout: float, what: str) -> Any:
        raise TimeoutError(f"{what} not reached in {timeout:g} s")

    monkeypatch.setattr(sandbox, "aup", aup)
    monkeypatch.setattr(demo, "_background_load", background_load)
    monkeypatch.setattr(demo, "_until", until)
    monkeypatch.setattr(demo, "_down", lambda d: None)
    args = argparse.Namespace(json=True, terminals=4, rate=10.0, dir=str(tmp_path), fast_only=False, no_cp_restart=False, no_ledger=False, dsn=None)
    assert await demo.amain(args) == 1  # (every act did not complete)
    assert len(loads) == 4 and pending_at_start == [0, 0, 0, 0]
    assert all(t.done() for t in loads)  # (checked in the loop: asyncio.run cancels what is left only as it ends)
