"""Running hsbctl's click commands in-process (CliRunner), checking a one-line error, and what
its tests feed it: an address where nothing listens, a pair's status and its hosts' answers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from hsb.ctl.main import main
from hsb.ports import free_port


def invoke(*args: str) -> tuple[int, str, str]:
    """hsbctl with `args`: (exit code, stdout, stderr)."""
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, out: str, err: str, expected_code: int, *fragments: str) -> str:
    """The run exited `expected_code` with exactly one `error: …` line naming every fragment,
    and no traceback; that line."""
    assert code == expected_code, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


def closed_port() -> str:
    """An address where nothing listens: a free port of this worker's own (hsb.ports), never
    handed out again; one the OS gave for port 0 could be given to a listener again at once."""
    return f"127.0.0.1:{free_port()}"


def pair_hosts() -> list[dict[str, Any]]:
    """The hosts' answers for a pair in hot standby (a active, b standby, at epoch 1), as
    gather.summarize takes them."""
    return [
        {"reachable": True, "name": "a", "role": "active", "state": "established", "serving": True, "epoch": 1},
        {"reachable": True, "name": "b", "role": "standby", "state": "established", "epoch": 1},
    ]


def pair_status(active_addr: str, standby_addr: str) -> dict[str, Any]:
    """status_all's answer for a pair in hot standby (host-a active at epoch 3): what promote and
    switchover read before they ask a host."""
    hosts = [
        {"reachable": True, "name": "host-a", "addr": active_addr, "role": "active", "state": "established", "serving": True},
        {"reachable": True, "name": "host-b", "addr": standby_addr, "role": "standby", "state": "established"},
    ]
    return {"hosts": hosts, "unknown": [], "established": True, "cp": {"reachable": True, "epoch": 3}}


@contextlib.contextmanager
def admin_port_in_thread(secret: Path, protocol: Callable[..., asyncio.Protocol]) -> Iterator[str]:
    """A daemon's admin port played by `protocol` (an AuthServerProtocol with this secret) on an
    event loop of its own in a thread, for hsbctl run in the test's thread: its address."""
    from hsb.wire.auth import load_secret

    loop = asyncio.new_event_loop()
    key = load_secret(secret)
    srv = loop.run_until_complete(loop.create_server(lambda: protocol(secret=key, auth_timeout=5.0, idle_timeout=30.0), "127.0.0.1", 0))
    th = threading.Thread(target=loop.run_forever, daemon=True)
    th.start()
    try:
        yield f"127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        th.join(5)
        srv.close()
        loop.run_until_complete(srv.wait_closed())
        loop.close()
