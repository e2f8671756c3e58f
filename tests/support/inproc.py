"""hsbcpd and both hsbd in the test's own process and event loop (real loopback sockets, one
real takeover file): for tests and benches that look inside the daemons' objects."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hsb.config import load
from hsb.cp.server import CPServer
from hsb.host.config import HostConfig
from hsb.host.server import HostServer
from hsb.takeover.fileio import create_file
from tests.support.procs import SECRET, free_port, host_config


async def start_pair(
    d: Path,
    cp: CPServer,
    hosts: dict[str, HostServer],
    tasks: list[asyncio.Task[Any]],
    *,
    records: int,
    service: Callable[[str], Any],
    terminals: int = 10,
) -> None:
    """Start `cp`, then host-a (active) and host-b (standby) into `hosts`, as `serve()` drives
    them minus signal handlers and gcpolicy. Their tasks (the CP's tick loop first, then each
    HA loop) go into `tasks`, filled as they start so that a caller can tear down a failed start."""
    await cp.startup()
    tasks.append(asyncio.ensure_future(cp.tick_loop()))
    create_file(str(d / "takeover.dat"), records, 4096)
    # peer ports are named in both configs before either host listens: they cannot be 0
    ports = {"host-a": f"127.0.0.1:{free_port()}", "host-b": f"127.0.0.1:{free_port()}"}
    for name, role, other in (("host-a", "active", "host-b"), ("host-b", "standby", "host-a")):
        p = host_config(
            d,
            name,
            cp=cp.bound["host"],
            peer_listen=ports[name],
            peer=ports[other],
            takeover=d / "takeover.dat",
            records=records,
            terminals=terminals,
        )
        h = hosts[name] = HostServer(load(p, HostConfig), role, SECRET, service(name))
        await h.startup()
        tasks.append(asyncio.ensure_future(h.ha.run()))


async def stop_pair(cp: CPServer, hosts: dict[str, HostServer], tasks: list[asyncio.Task[Any]], keep: tuple[str, ...] = ()) -> None:
    """Tear down what `start_pair` started (however far it got): the HA loops, the hosts (but
    those named in `keep`, already closed by the caller), then the CP."""
    for t in tasks[1:]:
        t.cancel()
    await asyncio.gather(*tasks[1:], return_exceptions=True)
    for name, h in hosts.items():
        if name not in keep:
            await h.close()
            h.delivery.cancel()
    cp.should_exit.set()
    if tasks:
        await tasks[0]
    await cp.shutdown()
