"""A CP and two real hsbd processes on loopback for tests (issue 4 onwards)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hsb.wire.client import cp_sessions, request
from tests.support.procs import SECRET, Proc, addr, create_takeover_file, free_port, host_config, start_cp, start_host


@dataclass
class Pair:
    dir: Path
    cp: Proc
    cfg: dict[str, Path]
    peer_ports: dict[str, str]
    hosts: dict[str, Proc] = field(default_factory=dict)
    takeover: Path | None = None

    def start(self, name: str, role: str, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
        old = self.hosts.get(name)
        if old is not None:
            old.stop()
        p = start_host(self.dir, name, role, self.cfg[name], env=env, wait=wait)
        self.hosts[name] = p
        return p

    async def status(self, name: str, timeout: float = 3.0) -> dict[str, Any]:
        p = self.hosts[name]
        h, port = addr(p.info["admin"])
        return cast(dict[str, Any], (await request(h, port, SECRET, {"t": "status"}, timeout=timeout))["data"])

    async def admin(self, name: str, msg: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
        p = self.hosts[name]
        h, port = addr(p.info["admin"])
        return await request(h, port, SECRET, msg, timeout=timeout)

    async def cp_status(self) -> dict[str, Any]:
        h, port = addr(self.cp.info["admin"])
        return cast(dict[str, Any], (await request(h, port, SECRET, {"t": "status"}))["data"])

    async def cp_sessions(self) -> dict[str, Any]:
        h, port = addr(self.cp.info["admin"])
        return await cp_sessions(h, port, SECRET)

    async def wait_state(self, name: str, state: str, timeout: float = 15.0, role: str | None = None) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        last: dict[str, Any] = {}
        while True:
            try:
                last = await self.status(name)
                if last["state"] == state and (role is None or last["role"] == role):
                    return last
            except (OSError, ConnectionError, TimeoutError):
                pass
            if self.hosts[name].popen.poll() is not None:
                raise RuntimeError(f"{name} exited {self.hosts[name].popen.returncode}; log tail:\n{self.hosts[name].log.read_text()[-2500:]}")
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(
                    f"{name} not {role or ''} {state} after {timeout}s; last status {last.get('role')}/{last.get('state')} {last.get('last_error')}"
                )
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        for p in self.hosts.values():
            p.stop()
        self.cp.stop()


def make_pair(
    d: Path,
    *,
    cp_terminals: int = 20,
    cp_extra: list[dict[str, Any]] | None = None,
    records: int = 64,
    host_a: dict[str, Any] | None = None,
    host_b: dict[str, Any] | None = None,
    separate_files: bool = False,
    create_file: bool = True,
    **common: Any,
) -> Pair:
    d.mkdir(parents=True, exist_ok=True)
    cp = start_cp(d / "cp", terminals=cp_terminals, extra_terms=cp_extra, host_timeout=0.5)
    try:
        return _configure(d, cp, records, host_a, host_b, separate_files, create_file, common)
    except BaseException:
        cp.stop()  # never leave a daemon behind when the set-up itself fails
        raise


def _configure(
    d: Path,
    cp: Proc,
    records: int,
    host_a: dict[str, Any] | None,
    host_b: dict[str, Any] | None,
    separate_files: bool,
    create_file: bool,
    common: dict[str, Any],
) -> Pair:
    pa, pb = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    files = {"host-a": d / "takeover.dat", "host-b": d / ("takeover-b.dat" if separate_files else "takeover.dat")}
    if create_file:
        for f in set(files.values()):
            create_takeover_file(f, records)
    cfg = {}
    for name, mine, theirs, extra in (("host-a", pa, pb, host_a or {}), ("host-b", pb, pa, host_b or {})):
        opts = dict(common)
        opts.update(extra)
        opts.setdefault("records", records)
        peer = opts.pop("peer", theirs)
        mine = opts.pop("peer_listen", mine)
        cfg[name] = host_config(d, name, cp=cp.info["host"], peer_listen=mine, peer=peer, takeover=files[name], **opts)
    return Pair(d, cp, cfg, {"host-a": pa, "host-b": pb}, takeover=files["host-a"])
