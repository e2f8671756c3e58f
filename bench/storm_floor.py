"""The machine's floor for a reconnect storm, for BENCHMARKS.md.

    .venv/bin/python bench/storm_floor.py [--terminals 10000] [--reps 3] [--json FILE] [--no-write] [--render FILE [--write]]

What N terminals coming back at once cost with nothing of hsb in the way: a bare uvloop server
in a process of its own, a bare uvloop client opening N loopback connections (256 connects in
flight at a time, as hsbterm's connector allows), and on each one a 16-byte frame each way, the
size of a `hello` and its `welcome`. Reported: the time until every connection had its answer,
and each process's CPU per connection. Any CP restart on the same machine spends at least this
in its logon storm, before the CP does any work of its own (a logon, the journal, the traffic
resumed): bench/cprestart.py's figures beside it say how far above the floor hsbcpd is.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import bench_main, save_results, section_head, table  # noqa: E402

from hsb.ctl import sandbox  # noqa: E402

COMMAND = ".venv/bin/python bench/storm_floor.py"
RESULTS = Path(__file__).resolve().parent / "results" / "storm_floor.json"
SECTION = "The machine's floor for a reconnect storm (`bench/storm_floor.py`)"
IN_FLIGHT = 256
HELLO = b"\x00\x00\x00\x0chello-hello!"  # 16 bytes: a length and 12 bytes
WELCOME = b"\x00\x00\x00\x0cwelcome-wel!"


class _Server(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("peername")  # as a CP notes the peer

    def data_received(self, data: bytes) -> None:
        self.transport.write(WELCOME)  # type: ignore[attr-defined]


class _Client(asyncio.Protocol):
    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(HELLO)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if not self.done.done():
            self.done.set_result(None)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def one(n: int) -> dict[str, Any]:
    """One storm of `n` connections against a forked server process."""
    import uvloop

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    r, w = os.pipe()
    tie = sandbox.dies_with(os.getpid())
    pid = os.fork()
    if pid == 0:  # the server
        try:
            tie()  # (it dies with the bench, however the bench dies)

            async def serve() -> None:
                await asyncio.get_running_loop().create_server(_Server, sock=sock, backlog=max(4096, n))
                os.write(w, b"x")
                await asyncio.sleep(3600)

            uvloop.run(serve())
        finally:
            os._exit(0)
    try:
        os.read(r, 1)
        server0 = _cpu_of(pid)

        async def storm() -> tuple[float, float, list[asyncio.BaseTransport]]:
            loop = asyncio.get_running_loop()
            left = n
            kept: list[asyncio.BaseTransport] = []

            async def worker() -> None:
                nonlocal left
                while left > 0:
                    left -= 1
                    done: asyncio.Future[None] = loop.create_future()
                    tr, _ = await loop.create_connection(lambda: _Client(done), "127.0.0.1", port)
                    kept.append(tr)
                    await done

            c0, t0 = _cpu(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
            return time.perf_counter() - t0, _cpu() - c0, kept

        wall, client_cpu, kept = uvloop.run(storm())
        time.sleep(0.2)  # the server's last writes accounted
        server_cpu = _cpu_of(pid) - server0
        assert len(kept) == n
        return {"wall_s": round(wall, 3), "client_us": round(client_cpu / n * 1e6, 1), "server_us": round(server_cpu / n * 1e6, 1)}
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        os.close(w)
        sock.close()


async def amain(a: argparse.Namespace) -> int:
    runs = [await asyncio.to_thread(one, a.terminals) for _ in range(a.reps)]
    res = {"terminals": a.terminals, "in_flight": IN_FLIGHT, "runs": runs}
    save_results(a, SECTION, res, render(res, a))
    return 0


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    runs = res["runs"]
    return "\n".join(
        [
            *section_head(
                a,
                f"{res['terminals']:,} loopback connections, {res['in_flight']} connects in flight, a 16-byte frame each way on each;"
                " a bare uvloop server and client in two processes.",
            ),
            "",
            table(
                ["runs", "every connection answered, s (median)", "runs, s", "client CPU µs per connection", "server CPU µs per connection"],
                [
                    [
                        str(len(runs)),
                        f"{statistics.median(r['wall_s'] for r in runs):.2f}",
                        ", ".join(f"{r['wall_s']:.2f}" for r in runs),
                        f"{statistics.median(r['client_us'] for r in runs):.0f}",
                        f"{statistics.median(r['server_us'] for r in runs):.0f}",
                    ]
                ],
            ),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/storm_floor.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=10000)
    ap.add_argument("--reps", type=int, default=3)
    return bench_main(ap, argv, command=COMMAND, results=RESULTS, section=SECTION, render=render, amain=amain)


if __name__ == "__main__":
    sys.exit(main())
