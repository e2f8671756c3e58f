"""The ledger end to end (SPEC §5.6, §8; docs/ledger.md): real hsbcpd and hsbd from the sandbox
with `service = "ledger"` on PostgreSQL (a throwaway server, tests/support/pg.py) and on SQLite,
200 terminals sending transfers, the active SIGKILLed or SIGSTOPped, hsbcpd SIGKILLed, the
database stopped for a while; after each, `hsbterm`'s books check (hsb.term.books) and the
strict verdict. Also the CP's held_bound reaching the hosts' ledgers, at registration and after
a reload.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.term.load import background_load
from hsb.term.workload import LedgerWorkload
from tests.support import pg as pgsupport
from tests.support.pg import fresh, needs_pg
from tests.support.procs import http_get, log_events, wait_for
from tests.support.sandboxed import active_names, http_of, pid_of, wait_status

pytestmark = pytest.mark.timeout(120)


async def ledger_load(
    info: dict[str, Any],
    action: Any,
    *,
    terminals: int = 200,
    rate: float = 600,
    books: dict[str, Any],
    expect_disconnects: bool | str = False,
    settle: float = 30.0,
) -> Any:
    """Transfers from `terminals` terminals; `action()` once sending started; the report with its books."""
    task, stop = await background_load(
        info["cp"]["terminal"],
        terminals=terminals,
        rate=rate,
        duration=3600,
        settle=settle,
        workload=LedgerWorkload(accounts=40, initial=1_000),  # (transfers up to 500: some are refused, and checked)
        books=books,
        expect_disconnects=expect_disconnects,
    )
    try:
        await action()
        await asyncio.sleep(1.0)  # transfers after the fault too
    finally:
        stop.set()
    report = await task
    assert report.books is not None and "error" not in report.books, report.books
    assert report.ok, report.failures
    b = report.books
    assert b["total"] == b["expected_total"] > 0 and b["transfers_ok"] > 0 and b["entries"] >= b["transfers_ok"], b
    assert b["transfers_refused"] > 0, b  # the refusals' check had some to check
    return report


async def _kill_active(info: dict[str, Any], sig: int = signal.SIGKILL) -> int:
    a = pid_of(info, "host-a")
    await wait_status(info, lambda s: s["cp"]["terminals"]["standby_sessions"] == info["terminal_count"], what="all standby sessions")
    await asyncio.sleep(0.7)  # transfers in flight
    os.kill(a, sig)
    await wait_status(info, lambda s: "host-b" in active_names(s), what="host-b active")
    return a


async def _gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until process `pid` has died (a SIGKILL takes a moment)."""
    deadline = time.monotonic() + timeout
    while sandbox._alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} did not die"
        await asyncio.sleep(0.02)


async def _restart_cp(info: dict[str, Any]) -> None:
    """SIGKILL the sandbox's hsbcpd and start it again at once, until it serves."""
    cp_pid = info["cp"]["pid"]
    os.kill(cp_pid, signal.SIGKILL)
    await _gone(cp_pid)
    sandbox.start_cp(Path(info["dir"]))
    await wait_status(info, lambda s: s["cp"].get("reachable") and s["serving"], what="CP back and serving")


@needs_pg
async def test_sigkill_of_the_active_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)
    info["terminal_count"] = 200
    await ledger_load(info, lambda: _kill_active(info), books={"dsn": dsn})


@needs_pg
async def test_a_reply_lost_with_the_active_is_replayed_not_reapplied_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    """host-a dies after committing a transfer and before its reply left (crash point
    host.before_reply): host-b gets the message marked redelivered and answers with the
    stored reply; the transfer is applied once."""
    dsn = fresh(pg)
    info = await sb(
        terminals=200, service="ledger", dsn=dsn, host_env={"host-a": {"HSB_CRASH_POINTS": "host.before_reply", "HSB_CRASH_AFTER": "400"}}
    )
    a = pid_of(info, "host-a")

    async def crash() -> None:
        await wait_status(info, lambda s: not sandbox._alive(a) and "host-b" in active_names(s), timeout=60, what="host-a crashed, host-b active")

    await ledger_load(info, crash, books={"dsn": dsn})
    st = await wait_status(info, lambda s: any(h.get("service") for h in s["hosts"] if h.get("reachable")), what="host-b status")
    b = next(h for h in st["hosts"] if h.get("name") == "host-b")
    assert b["service"]["replayed"] >= 1, b["service"]  # the stored reply answered the redelivery


@needs_pg
async def test_sigstop_of_the_active_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)
    info["terminal_count"] = 200
    stopped: list[int] = []

    async def stop() -> None:
        stopped.append(await _kill_active(info, signal.SIGSTOP))
        os.kill(stopped[0], signal.SIGCONT)  # woken after the grant: it finds itself fenced

    try:
        await ledger_load(info, stop, books={"dsn": dsn})
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)


@needs_pg
async def test_sigkill_of_the_cp_under_transfers_postgresql(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=200, service="ledger", dsn=dsn)

    async def kill_cp() -> None:
        await asyncio.sleep(1.0)
        await _restart_cp(info)

    await ledger_load(info, kill_cp, books={"dsn": dsn}, expect_disconnects="cp")


@needs_pg
async def test_the_database_away_for_a_while_messages_wait_nothing_lost(sb: Any, pg: pgsupport.PgServer) -> None:
    dsn = fresh(pg)
    info = await sb(terminals=50, service="ledger", dsn=dsn)
    seen: dict[str, Any] = {}

    async def outage() -> None:
        await asyncio.sleep(1.0)
        pg.stop()
        try:
            st = await wait_status(
                info,
                lambda s: any((h.get("service") or {}).get("state") == "failing" for h in s["hosts"] if h.get("reachable")),
                timeout=15,
                what="the service shown failing",
            )
            seen["status"] = next(h["service"] for h in st["hosts"] if (h.get("service") or {}).get("state") == "failing")
            _, text = await asyncio.get_running_loop().run_in_executor(None, http_get, http_of(info, "host-a"), "/metrics")
            seen["metric"] = [ln for ln in text.splitlines() if ln.startswith("hsb_service_healthy")]
            t = time.monotonic()
            while time.monotonic() - t < 2.0:  # the outage lasts: messages keep arriving and wait
                await asyncio.sleep(0.1)
        finally:
            pg.start()
        await wait_status(
            info,
            lambda s: all((h.get("service") or {}).get("state", "ok") == "ok" for h in s["hosts"] if h.get("reachable")),
            timeout=30,
            what="the service answering again",
        )

    await ledger_load(info, outage, terminals=50, rate=200, books={"dsn": dsn}, settle=40)
    assert "database" in seen["status"]["error"] and seen["status"]["waiting_terminals"] >= 1, seen
    assert seen["metric"] == ["hsb_service_healthy 0.0"], seen


async def test_sqlite_sandbox_sigkill_active_and_cp(sb: Any) -> None:
    """The embedded default on one machine: both hosts on one SQLite file in the sandbox."""
    info = await sb(terminals=200, service="ledger")
    info["terminal_count"] = 200
    d = Path(info["dir"])
    assert info["ledger"] == {"sqlite": str(d / "ledger.sqlite")}

    async def both() -> None:
        await _kill_active(info)
        await asyncio.sleep(0.5)
        await _restart_cp(info)

    await ledger_load(info, both, books={"sqlite": str(d / "ledger.sqlite")}, rate=400, expect_disconnects=True)


async def test_sqlite_sandbox_sigstop_active(sb: Any) -> None:
    info = await sb(terminals=200, service="ledger")
    info["terminal_count"] = 200
    stopped: list[int] = []

    async def stop() -> None:
        stopped.append(await _kill_active(info, signal.SIGSTOP))
        os.kill(stopped[0], signal.SIGCONT)

    try:
        await ledger_load(info, stop, books={"sqlite": str(Path(info["dir"]) / "ledger.sqlite")}, rate=400)
    finally:
        for p in stopped:
            os.kill(p, signal.SIGCONT)


async def test_a_host_says_when_its_ledger_keeps_fewer_records_than_the_cp_holds(sb: Any) -> None:
    """Real processes: the CP's held_bound (256) reaches the host at its registration; a ledger
    with keep_last 8 says so in the host's log (both hosts: each registers)."""
    info = await sb(terminals=2, service="ledger", service_options={"keep_last": 8})
    d = Path(info["dir"])

    def said() -> list[dict[str, Any]]:
        return [e for e in log_events(d / "host-a.log") if e.get("event") == "idempotency_keep_last_below_held_bound"]

    wait_for(lambda: said(), 10, what="the host's error")
    e = said()[0]
    assert e["keep_last"] == 8 and e["held_bound"] == 256 and "keep_last to at least 256" in e["msg"], e


async def test_a_held_bound_raised_by_a_reload_reaches_the_hosts_ledgers(sb: Any) -> None:
    """Real processes: keep_last 300 covers the CP's 256; a SIGHUP of the CP raising held_bound
    to 512 reaches both hosts in a heartbeat's answer (not only at their next registration),
    and each one's ledger says that its records no longer cover it."""
    info = await sb(terminals=2, service="ledger", service_options={"keep_last": 300})
    d = Path(info["dir"])
    st = sandbox.load_state(d)

    def said(host: str) -> list[dict[str, Any]]:
        return [e for e in log_events(d / f"{host}.log") if e.get("event") == "idempotency_keep_last_below_held_bound"]

    cp_toml = d / "cp.toml"
    assert "held_bound = 256" in cp_toml.read_text()
    assert not said("host-a") and not said("host-b")
    cp_toml.write_text(cp_toml.read_text().replace("held_bound = 256", "held_bound = 512"))
    os.kill(st["cp"]["pid"], signal.SIGHUP)
    for host in ("host-a", "host-b"):
        wait_for(lambda host=host: said(host), 10, what=f"{host}'s ledger told of the new bound")
        e = said(host)[0]
        assert e["keep_last"] == 300 and e["held_bound"] == 512, e
    await asyncio.sleep(0.5)  # an observation window: a heartbeat's answer telling it again would show in it
    assert len(said("host-a")) == 1 and len(said("host-b")) == 1  # told once, not at every heartbeat
