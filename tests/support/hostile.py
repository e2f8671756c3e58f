"""The hostile-input tests' sandbox and tools (tests/test_hostile_*.py): `SB`, a running
sandbox with the address of every listening port and the checks that it is still healthy;
`module_sandbox` (the conftest's `hostile_sb`, one a module) and `up_sandbox`; the fuzzers'
settings (no shrinking against live daemons); a raw stream sender and an HTTP exchange."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

from hsb.ctl import sandbox
from hsb.wire import auth
from tests.support import fuzz as fz
from tests.support.fuzz import Conn, Witness
from tests.support.sandboxed import status, wait_status

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    phases=[Phase.explicit, Phase.reuse, Phase.generate],  # no shrinking against live daemons: bounded time
)


class SB:
    """A running sandbox and the addresses of every listening port."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.dir = Path(info["dir"])
        self.secret = auth.load_secret(info["secret_file"])
        state = sandbox.load_state(self.dir)
        self.pids = {"cp": state["cp"]["pid"], **{n: h["pid"] for n, h in state["hosts"].items()}}
        self.ports: dict[str, tuple[str, str]] = {  # target -> (address, link)
            "cp.terminal": (state["cp"]["terminal"], "terminal"),
            "cp.host": (state["cp"]["host"], "host"),
            "cp.admin": (state["cp"]["admin"], "admin"),
            "cp.http": (state["cp"]["http"], "http"),
        }
        for n, h in state["hosts"].items():
            self.ports[f"{n}.admin"] = (h["admin"], "admin")
            self.ports[f"{n}.peer"] = (h["peer"], "peer")
            self.ports[f"{n}.http"] = (h["http"], "http")

    def addr(self, target: str) -> str:
        return self.ports[target][0]

    def status(self) -> dict[str, Any]:
        return asyncio.run(status(self.info))

    def wait_established(self, timeout: float = 20.0) -> dict[str, Any]:
        return asyncio.run(wait_status(self.info, lambda s: s["established"], timeout=timeout, what="hot standby established"))

    def assert_healthy(self, witness: Witness | None, *, epoch: int | None = 1, where: str = "") -> dict[str, Any]:
        for name, pid in self.pids.items():
            assert fz.alive(pid), f"{where}: {name} (pid {pid}) is not running; log {self.dir}/{'cp' if name == 'cp' else name}.log"
        if witness is not None:
            witness.ping()
        now = self.status()
        unreachable = [h.get("addr") for h in [now["cp"], *now["hosts"]] if not h.get("reachable")]
        assert not unreachable, f"{where}: status unreachable for {unreachable}: {now}"
        assert now["serving"], f"{where}: not serving: {now}"
        if epoch is not None:
            assert now["cp"]["epoch"] == epoch and now["cp"]["counters"]["failovers"] == 0, f"{where}: the CP changed epoch: {now['cp']}"
        return now

    def log_count(self, name: str, event: str) -> int:
        p = self.dir / f"{name}.log"
        return p.read_text(errors="replace").count(f'"event": "{event}"')

    def ha_alive(self, host: str, timeout: float = 3.0) -> bool:
        """Probe a host's HA loop: SIGHUP is only a flag; the loop must log config_reloaded."""
        n0 = self.log_count(host, "config_reloaded")
        os.kill(self.pids[host], signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(host, "config_reloaded") > n0:
                return True
            time.sleep(0.02)
        return False

    def assert_no_secret(self, extra: dict[str, bytes] | None = None) -> None:
        needles = [self.secret, self.secret[: len(self.secret) // 2]]
        blobs = {p.name: p.read_bytes() for p in self.dir.glob("*.log")}
        blobs.update(extra or {})
        for name, blob in blobs.items():
            for n in needles:
                assert n not in blob, f"the secret (or half of it) appears in {name}"


def up_sandbox(d: Path, **kw: Any) -> SB:
    try:
        return SB(sandbox.up(d, terminals=20, service="echo", timeout=30.0, **kw))
    except BaseException:  # also pytest-timeout's interruption: never leave daemons behind
        try:
            sandbox.down(d, timeout=0.5)
        except sandbox.SandboxError:
            pass
        raise


def module_sandbox(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[SB]:
    """One sandbox for a module's hostile tests; at its end, the secret is in none of its logs
    (whatever the module threw at it: fuzzing, stalls, floods), besides the one test that also
    looks at every status and HTTP answer (test_hostile_auth)."""
    d = tmp_path_factory.mktemp(name) / "sb"
    s = up_sandbox(d)
    try:
        yield s
        s.assert_no_secret()
    finally:
        sandbox.down(d, timeout=0.5)


def send_stream(c: Conn, chunks: list[bytes]) -> None:
    for ch in chunks:
        if not c.send_raw(ch):
            return


HTTP_CODES = {200, 400, 404, 405, 408, 431, 503}


def http_exchange(address: str, data: bytes | list[bytes], timeout: float = 8.0, half_close: bool = True) -> tuple[bytes, float]:
    """Send, (half-)close, read until the server closes; return (response, seconds until closed)."""
    h, p = fz.addr(address)
    s = socket.create_connection((h, p), timeout=timeout)
    t0 = time.monotonic()
    try:
        for chunk in [data] if isinstance(data, bytes) else data:
            try:
                s.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        if half_close:
            try:
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        out = b""
        s.settimeout(timeout)
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
        return out, time.monotonic() - t0
    finally:
        s.close()


def http_code(resp: bytes) -> int:
    line = resp.split(b"\r\n", 1)[0]
    assert line.startswith(b"HTTP/1.1 "), f"not an HTTP response: {resp[:80]!r}"
    return int(line.split()[1])
