"""Why terminals' connections ended (hsb.cp.drops, hsb.wire.lost): a real hsbcpd loses four
terminals four ways (the terminal closes, resets, goes silent past terminal_idle_timeout, says
bye) and says each cause in status, /metrics, its log (one line a second at most) and
`hsbctl status`; hsbterm's report gives its own side's causes. Units for the words and the
window beside them."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb.cp.drops import RECENT_S, Drops
from hsb.term.client import TerminalClient
from hsb.term.listener import Listener
from hsb.term.loadstats import LoadStats
from hsb.term.logon import WELCOMED
from hsb.term.report import LoadReport, format_table
from hsb.wire.lost import lost_why
from tests.support.hostclient import cp_status, host_came, logged_on, until_cp_status
from tests.support.procs import free_port, http_get, start_cp

pytestmark = pytest.mark.timeout(60)


def test_the_words_for_how_a_connection_ended() -> None:
    assert lost_why(None) == "closed"
    assert lost_why(ConnectionResetError(104, "reset")) == "reset"
    assert lost_why(BrokenPipeError(32, "pipe")) == "reset"
    assert lost_why(TimeoutError(110, "Connection timed out")) == "timed_out"  # keepalive gave up
    assert lost_why(ssl.SSLError("bad record mac")) == "tls_error"
    assert lost_why(OSError(113, "No route to host")) == "ehostunreach"
    assert lost_why(RuntimeError("?")) == "runtimeerror"


def test_drops_count_by_cause_keep_a_minute_and_leave_logoffs_out_of_the_recent() -> None:
    d = Drops()
    for why in ("reset", "reset", "timed_out", "logoff"):
        d.add(why, now=100.0)
    d.add("closed", now=100.0 + RECENT_S - 1)
    assert d.total == {"reset": 2, "timed_out": 1, "logoff": 1, "closed": 1}
    assert d.recent(now=100.0 + RECENT_S - 0.5) == {"reset": 2, "timed_out": 1, "closed": 1}
    assert d.recent(now=100.0 + RECENT_S + 0.5) == {"closed": 1}  # a minute on: only the last
    assert d.status(now=100.0 + RECENT_S + 0.5)["total"]["logoff"] == 1


def test_drops_say_one_line_a_second_at_most() -> None:
    d = Drops()
    with structlog.testing.capture_logs() as logs:
        d.add("timed_out", now=10.0)
        d.add("timed_out", now=10.0)
        d.tick(10.0, connected=8)
        d.add("reset", now=10.2)
        d.tick(10.5, connected=7)  # (within the second: kept for the next line)
        d.add("logoff", now=10.6)
        d.tick(11.1, connected=6)
        d.tick(12.5, connected=6)  # nothing new: no line
    lines = [e for e in logs if e["event"] == "terminals_disconnected"]
    assert [(e["n"], e["why"], e["connected"]) for e in lines] == [(2, {"timed_out": 2}, 8), (1, {"reset": 1}, 6)]
    assert "keepalive" in lines[0]["msg"] and "terminal_keepalive" in lines[0]["msg"]


async def test_a_cp_says_why_each_terminal_left(tmp_path: Path) -> None:
    http = f"127.0.0.1:{free_port()}"
    cp = start_cp(tmp_path / "cp", terminals=4, terminal_idle_timeout=1.0, http_listen=http)
    try:
        await host_came(cp)
        closes, resets, silent, leaves = [await logged_on(cp, f"T0000{i}") for i in range(1, 5)]
        await until_cp_status(cp, lambda st: st["terminals"]["connected"] == 4)
        for t in (closes, resets):
            t._reader.cancel()
        closes.fs.writer.close()  # its FIN
        sock = resets.fs.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        resets.fs.writer.transport.abort()  # its RST (linger 0)
        leaves.send({"t": "bye"})
        await leaves.wait_closed()  # (the CP closes a terminal that logged off holding nothing)
        await silent.wait_closed(timeout=5.0)  # terminal_idle_timeout: the CP closes it, saying so
        assert any(m.get("code") == "idle_timeout" for m in silent.inbox), silent.inbox
        st = await until_cp_status(cp, lambda st: st["terminals"]["connected"] == 0)
        d = st["terminals"]["disconnects"]
        assert d["total"] == {"closed": 1, "reset": 1, "idle_timeout": 1, "logoff": 1}, d
        assert d["recent"] == {"closed": 1, "reset": 1, "idle_timeout": 1}, d  # (a logoff is no fault)

        code, body = await asyncio.to_thread(http_get, http, "/metrics")
        assert code == 200
        for cause in ("closed", "reset", "idle_timeout", "logoff"):
            assert f'hsb_terminal_disconnects_total{{cause="{cause}"}} 1.0' in body, [x for x in body.splitlines() if "disconnects" in x]

        def said() -> list[dict[str, Any]]:
            return cp.events("terminals_disconnected")

        deadline = asyncio.get_running_loop().time() + 5
        while sum(e["n"] for e in said()) < 3 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        lines = said()
        assert sum(e["n"] for e in lines) == 3, lines
        got: dict[str, int] = {}
        for e in lines:
            for k, n in e["why"].items():
                got[k] = got.get(k, 0) + n
        assert got == {"closed": 1, "reset": 1, "idle_timeout": 1}, lines

        secret = tmp_path / "cp" / "secret"
        r = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "hsb.ctl", "--cp", cp.info["admin"], "--secret-file", str(secret), "status"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "3 terminal connections lost in the last 60 s:" in r.stdout, r.stdout + r.stderr
        assert "reset 1" in r.stdout and "idle_timeout 1" in r.stdout and "logoff" not in r.stdout, r.stdout
        assert (await cp_status(cp))["terminals"]["disconnects"]["total"]["reset"] == 1
    finally:
        cp.stop()


class _Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def write(self, b: bytes) -> None:
        self.out.append(b)

    def close(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


def _welcomed(stats: Listener) -> TerminalClient:
    c = TerminalClient("T00001", stats, keepalive=0)
    c.connection_made(_Transport())  # type: ignore[arg-type]
    c.state = WELCOMED  # (as its welcome leaves it)
    return c


def test_hsbterm_counts_its_own_side_of_each_drop() -> None:
    stats = LoadStats(terminals=3)
    for exc in (ConnectionResetError(104, "reset"), TimeoutError(110, "timed out"), None):
        _welcomed(stats).connection_lost(exc)
    told = _welcomed(stats)
    told._handle({"t": "error", "code": "idle_timeout", "msg": "nothing received for 1s"})
    told.connection_lost(None)
    assert stats.disconnects == 4
    assert dict(stats.disconnect_causes) == {"reset": 1, "timed_out": 1, "closed": 1, "idle_timeout": 1}
    r = LoadReport(terminals=3, disconnects=4, disconnects_standby_capable=4, disconnect_causes=dict(stats.disconnect_causes))
    assert any("why: " in f and "timed_out 1" in f for f in r.failures), r.failures
    assert "why: reset 1, " in format_table(r)
