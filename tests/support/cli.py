"""Running hsbctl's click commands in-process (CliRunner), checking a one-line error, and what
its tests feed it: an address where nothing listens, a pair's status and its hosts' answers, and
`hsbctl stop` run against made-up answers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hsb.ctl import ops_cmds
from hsb.ctl.main import main
from hsb.ctl.target import Target
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
    verdict.summarize takes them."""
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


def cp_answer(**kw: Any) -> dict[str, Any]:
    """A CP's status answer as verdict.summarize reads it (serving at epoch 5), with `kw` on top."""
    return {"reachable": True, "name": "cp", "addr": "cp:1", "state": "serving", "epoch": 5, **kw}


def host_answer(who: str, role: str, epoch: int = 5, **kw: Any) -> dict[str, Any]:
    """A host's status answer as verdict.summarize reads it (`role`, established, at `epoch`), with `kw` on top."""
    return {
        "reachable": True,
        "name": who,
        "addr": f"{who}:1",
        "role": role,
        "state": "established",
        "serving": role == "active",
        "epoch": epoch,
        **kw,
    }


def shown_cp(**kw: Any) -> dict[str, Any]:
    """`cp_answer` with what hsbctl status renders of it too (its terminal counts, held messages)."""
    t = {"connected": 0, "defined": 0, "active_sessions": 0, "standby_sessions": 0}
    return cp_answer(terminals=t, held_messages=0, **kw)


def shown_host(who: str, role: str, epoch: int = 5, **kw: Any) -> dict[str, Any]:
    """`host_answer` with what hsbctl status renders of it too."""
    return host_answer(
        who,
        role,
        epoch,
        **{
            "pid": 1,
            "sentence": "-",
            "peer_link": {"up": True},
            "cp_link": "up",
            "takeover_file": {"path": "/t", "records": 1, "storage": "ok"},
            "batch_records": {"own": 1},
            "startup_id": {"own": None, "partner": None},
            "terminals": {"defined": 0, "linked": 0, "active_sessions": 0, "standby_sessions": 0},
            **kw,
        },
    )


PAIR_A, PAIR_B = "127.0.0.1:1", "127.0.0.1:2"  # the pair's admin addresses in stop_faked
Asked = list[tuple[str, dict[str, Any]]]


def stop_faked(
    monkeypatch: pytest.MonkeyPatch,
    secret: Path,
    capsys: pytest.CaptureFixture[str],
    answer: dict[str, Any],
    after: Callable[[dict[str, Any], int, str], None],
    before: Callable[[dict[str, Any]], None] = lambda st: None,
    host: str | None = None,
    takeover: bool = True,
    timeout: float = 5.0,
) -> tuple[int, str, str, Asked, int]:
    """`hsbctl stop` (ops_cmds.run_stop) of `host` (None: the active) in a pair in hot standby
    (pair_status at PAIR_A and PAIR_B, host-a the active; made over by `before` at every poll)
    whose host asked answers `answer`; from the stop on, each poll's status is made over by
    `after(status, n, address asked)`, n counting those polls from 1. (exit status, stdout,
    stderr, what was asked where, every poll of the status)"""
    asked: Asked = []
    polls = since = 0

    async def status_all(*a: Any, **kw: Any) -> dict[str, Any]:
        nonlocal polls, since
        polls += 1
        st = pair_status(PAIR_A, PAIR_B)
        before(st)
        if asked:
            since += 1
            after(st, since, asked[0][0])
        return st

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], **kw: Any) -> dict[str, Any]:
        asked.append((addr, msg))
        return answer

    monkeypatch.setattr(ops_cmds, "status_all", status_all)
    monkeypatch.setattr(ops_cmds, "ask", ask)
    code = ops_cmds.run_stop(Target(cp="cp:1", cps=["cp:1"], hosts=[PAIR_A, PAIR_B], secret_file=str(secret)), host, takeover, timeout)
    out, err = capsys.readouterr()
    return code, out, err, asked, polls


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
