"""hsbcpd and both hsbd in the test's own process and event loop (real loopback sockets, one
real takeover file): for tests and benches that look inside the daemons' objects; and the CP's
core there made to refuse every handover (refuse_handovers_finally)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from hsb.config import load
from hsb.cp.server import CPServer
from hsb.host.config import HostConfig
from hsb.host.server import HostServer
from hsb.takeover.fileio import create_file
from tests.support.procs import SECRET, cp_config, free_port, host_config


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
    if cp.state != "stopping":  # (unless the test stopped it itself)
        await cp.shutdown()


def hot_standby(*hosts: HostServer) -> bool:
    """Each host established, its peer link up."""
    return all(h.ha.state == "established" and h.peer.up for h in hosts)


async def until(cond: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    """Poll `cond` on the event loop until it holds; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def pair_in_hot_standby(
    d: Path, service: Callable[[str], Any], terminals: int = 10, **cp: Any
) -> AsyncIterator[tuple[CPServer, HostServer, HostServer, list[asyncio.Task[Any]]]]:
    """A CP (`cp_config(d, …, **cp)`, host_timeout 0.5 s) and both hosts in this process, in hot
    standby; (cp, host-a, host-b, their tasks as `start_pair` fills them); all torn down after."""
    from hsb.cp.config import CPConfig

    srv = CPServer(load(cp_config(d, terminals=terminals, host_timeout=0.5, **cp), CPConfig), SECRET)
    hosts: dict[str, HostServer] = {}
    tasks: list[asyncio.Task[Any]] = []
    try:
        await start_pair(d, srv, hosts, tasks, records=64, service=service, terminals=terminals)
        a, b = hosts["host-a"], hosts["host-b"]
        await until(lambda: hot_standby(a, b), "hot standby")
        yield srv, a, b, tasks
    finally:
        await stop_pair(srv, hosts, tasks)


def keep_sending(t: Any, every: float = 0.001) -> asyncio.Task[None]:
    """A task sending terminal `t` (a tests.support.hostclient.FakeTerminal) a message every
    `every` seconds, ids 1, 2, …, until cancelled: a steady load."""

    async def send() -> None:
        i = 0
        while True:
            i += 1
            t.send({"t": "msg", "id": i, "data": f"m{i}"})
            await asyncio.sleep(every)  # (pacing the load)

    return asyncio.ensure_future(send())


def refuse_handovers_finally(core: Any) -> Any:
    """The CP refuses every handover for a reason other than a standby missing just then (no
    `code`: a CP of before, say); returns its real handler."""
    real = core.host_handover

    def refuse(host: Any, wait: bool = True) -> None:
        host.released = False
        host.send({"t": "handover_refused", "reason": "refused for the test"})
        for term in core.terms.values():
            if term.active is not None and term.active.host is host:
                core._deliver_pending(term, host)

    core.host_handover = refuse
    return real


def short_hand_over(a: HostServer, monkeypatch: Any, timeout: float) -> None:
    """The stop's limit on its handover (15 s, HostServer.hand_over) cut to `timeout`."""
    real = a.hand_over

    async def short(ask: bool = True) -> bool:
        return await real(timeout=timeout, ask=ask)

    monkeypatch.setattr(a, "hand_over", short)
