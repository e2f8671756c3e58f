"""The open-files reserve (hsb.ops.limits.fd_room) in a real hsbcpd: idle connections opened on its
terminal port until it has no descriptor to give them leave its journal writing, so a terminal
logged on before them is still acknowledged (each new journal segment is a file opened), and the
CP says in one line that it refuses connections. Before the reserve the journal failed (EMFILE,
journal_failing) and every acknowledgement stopped until the idle connections timed out. The
in-process cases: tests/test_fd_reserve.py.
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import urllib.request
from pathlib import Path

import pytest

from hsb.ops.limits import FD_RESERVE
from hsb.ports import free_port
from tests.support import fuzz as fz
from tests.support.fuzz import Conn
from tests.support.hostclient import cp_status, host_came
from tests.support.procs import start_cp, wait_for

pytestmark = pytest.mark.timeout(60)

MESSAGES = 30
DATA = b"d" * 2048  # 30 of them: about 60 KiB, four journal segments of 16 KiB


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_up_to_the_limit_leave_the_journal_writing(tmp_path: Path) -> None:
    # (auth_timeout: the idle connections are not dropped for want of a hello meanwhile)
    cp = start_cp(tmp_path / "cp", terminals=2, auth_timeout=60, held_bound=64, journal="journal", durability="fsync", journal_segment_kib=16)
    pid = cp.popen.pid
    idle: list[socket.socket] = []
    t = None
    try:
        asyncio.run(host_came(cp))  # (else nothing is acknowledged: hsb.cp.first_host)
        t = Conn(cp.info["terminal"])
        t.send({"t": "hello", "terminal": "T00001"})
        assert t.wait_for(lambda m: m.get("t") == "welcome", 5.0), t.frames
        soft = fds(pid) + FD_RESERVE + 40
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(FD_RESERVE + 80):  # more than the CP has descriptors left for
            idle.append(socket.create_connection(fz.addr(cp.info["terminal"]), timeout=5.0))
        # taken up to the reserve (and the rest refused), or, without one, up to the limit itself
        wait_for(lambda: cp.events("connection_refused") or fds(pid) >= soft - 1, 15.0, what="the CP's descriptors taken")
        for i in range(1, MESSAGES + 1):
            t.send({"t": "msg", "id": i, "data": DATA})
        acked: set[int] = set()

        def all_acked() -> bool:
            m = t.recv(0.2) if t is not None else None
            if m is not None and m.get("t") == "ack":
                acked.add(m["id"])
            return len(acked) == MESSAGES

        wait_for(all_acked, 20.0, interval=0.0, what=f"acks of all {MESSAGES} messages (got {len(acked)})")
        assert not cp.events("journal_failing"), cp.events("journal_failing")
        [first, *_] = cp.events("connection_refused")
        assert first["link"] == "terminal" and f"of the {soft} open files" in first["reason"]
        assert cp.popen.poll() is None
    finally:
        for s in idle:
            s.close()
        if t is not None:
            t.close()
        cp.stop()


def test_terminals_up_to_the_limit_leave_room_for_the_hosts_hsbctl_and_the_health_check(tmp_path: Path) -> None:
    """Found by the capacity walk-through: under too low an open-files limit, terminals took
    every descriptor down to the reserve, and the same reserve refused the hosts' links, hsbctl
    and /health (hsbcpd restarted with 2,000 terminals under 256: no host registered, every
    acknowledgement waited, status could not be asked; under 1,024 the standby registered first
    and took over, and the old active was fenced). Terminals must now leave the whole reserve
    free, the pair's own links only a quarter of it."""
    http = f"127.0.0.1:{free_port()}"
    cp = start_cp(tmp_path / "cp", terminals=2, auth_timeout=60, journal="journal", durability="fsync", http_listen=http)
    pid = cp.popen.pid
    idle: list[socket.socket] = []
    try:
        asyncio.run(host_came(cp))
        soft = 4 * FD_RESERVE  # (the whole reserve: a quarter of the limit at most)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        for _ in range(soft):  # more than the CP lets terminals have
            idle.append(socket.create_connection(fz.addr(cp.info["terminal"]), timeout=5.0))
        wait_for(lambda: cp.events("connection_refused"), 15.0, what="terminal connections refused")
        wait_for(lambda: fds(pid) <= soft - FD_RESERVE, 15.0, what="the refused ones closed")  # (terminals stopped at the reserve)
        # the pair's own links still get in: a host registers (and its status polls on the admin port)
        asyncio.run(host_came(cp))
        st = asyncio.run(cp_status(cp))
        assert st["standby"] is None and st["journal"]["state"] == "ok", st
        with urllib.request.urlopen(f"http://{http}/health", timeout=5.0) as r:
            assert r.status == 200, r.status
        assert all(e["link"] == "terminal" for e in cp.events("connection_refused")), cp.events("connection_refused")
        assert cp.popen.poll() is None
    finally:
        for s in idle:
            s.close()
        cp.stop()
