"""hsbctl and a daemon that answers with an error frame instead of an answer: a CP waiting to take
over (`cp_waiting` to pause, resume, history), a daemon of another version that does not know the
request (`unknown_type`). It answered: the line says so, with the error, the daemon's own message
and the fix, never `cannot ask` (a network problem that is not there); exit 3, nothing done
(docs/operations.md §17). Against fake admin ports in-process; a real waiting CP:
tests/test_ctl_errors.py."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather, ops_cmds
from hsb.ctl import switchover as switchover_mod
from tests.support.cli import admin_port_in_thread, closed_port, invoke, one_line_error, pair_status

pytestmark = pytest.mark.timeout(60)

WAITING = "cp-a is waiting to take over (not serving); ask the serving CP"


def ctl(*args: str) -> tuple[int, str, str]:
    """hsbctl in-process, without the fake daemon's own log lines (its `protocol_error`, in this
    process's stderr too)."""
    code, out, err = invoke(*args)
    return code, out, "".join(line for line in err.splitlines(keepends=True) if not line.startswith('{"'))


@contextlib.contextmanager
def erring_admin(secret: Path, name: str, answers: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    """An admin port named `name` that authenticates hsbctl and answers each request of `answers`
    with `cp_waiting`, as a waiting hsbcpd does (hsb.cp.admin), and any other with the link's own
    `unknown_type` error (a daemon that does not know it). (address, what it was asked)"""
    from hsb.wire.authlink import AuthServerProtocol

    asked: list[str] = []

    class Erring(AuthServerProtocol):
        link = "admin"
        server_name = name
        dispatch = {t: "on_request" for t in answers}

        def on_request(self, msg: dict[str, Any]) -> None:
            asked.append(msg["t"])
            self.send({"t": "error", "code": "cp_waiting", "msg": WAITING})

    with admin_port_in_thread(secret, Erring) as addr:
        yield addr, asked


def test_pause_resume_and_history_of_a_waiting_cp_say_it_answered_not_cannot_ask(secret: Path) -> None:
    """The one CP address in the ctl config is a CP waiting to take over: it answers `cp_waiting`.
    hsbctl said `cannot ask the CP at ADDR: cp_waiting: …`, the line of a CP not reached, for one
    that answered. It says the CP answered with an error, names it, the CP's message and the fix
    (ask the serving CP), exit 3 as before: nothing was done."""
    with erring_admin(secret, "cp-a", ("pause", "resume", "history")) as (addr, asked):
        for cmd in ("pause", "resume", "history"):
            line = one_line_error(
                *invoke("--cp", addr, "--secret-file", str(secret), cmd),
                3,
                f"error: the CP at {addr} answered with an error (cp_waiting: {WAITING})",
                "does not serve, it waits to take the journal over",
                "ask the serving CP ('hsbctl status' shows which one serves",
            )
            assert "cannot ask" not in line, line
        assert asked == ["pause", "resume", "history"], asked


def test_a_request_a_host_does_not_know_is_its_error_answer_not_cannot_ask(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The host asked to promote, switch over or stop answers with the link's `unknown_type` (a
    daemon of another version, or another daemon's admin port): it answered, and did nothing.
    hsbctl said `cannot ask host-a at ADDR: unknown_type: …`; it says the host answered with that
    error and what to check, exit 3 (not the pair's refusal, 1)."""
    with erring_admin(secret, "host-a", ()) as (addr, _):
        hosts = ("--host", addr, "--host", "127.0.0.1:2", "--secret-file", str(secret))
        fix = "a daemon of another hsb version, or another daemon's admin port"

        async def active_here(*a: Any, **kw: Any) -> dict[str, Any]:
            return pair_status(addr, "127.0.0.1:2")

        monkeypatch.setattr(switchover_mod, "status_all", active_here)
        line = one_line_error(*ctl(*hosts, "switchover", "--yes"), 3, f"error: host-a at {addr} answered with an error (unknown_type: ", fix)
        assert "'switchover'" in line and "cannot ask" not in line, line
        monkeypatch.setattr(ops_cmds, "status_all", active_here)
        line = one_line_error(*ctl(*hosts, "stop"), 3, f"error: host-a at {addr} answered with an error (unknown_type: ", fix)
        assert "'stop'" in line and "cannot ask" not in line, line

        async def standby_here(*a: Any, **kw: Any) -> dict[str, Any]:
            st = pair_status("127.0.0.1:2", addr)
            st["hosts"][0].update(serving=False, state="stopping")
            return st

        monkeypatch.setattr(gather, "status_all", standby_here)
        line = one_line_error(*ctl(*hosts, "promote"), 3, f"error: host-b at {addr} answered with an error (unknown_type: ", fix)
        assert "'promote'" in line and "cannot ask" not in line, line


def test_status_says_a_daemon_answered_its_status_with_an_error(secret: Path) -> None:
    """A CP machine and a host that answer `status` with an error frame (neither knows it): status
    said both `cannot be asked`. The verdict is still UNKNOWN (3), and each is said to have
    answered with an error, with the error and the fix; one not reached still cannot be asked."""
    gone = closed_port()
    with erring_admin(secret, "old", ()) as (addr, _):
        args = ("--cp", f"{addr},{gone}", "--host", addr, "--host", gone, "--secret-file", str(secret), "status")
        code, out, err = ctl(*args)
        assert code == 3, (code, out, err)
        head = out.splitlines()[0]
        assert head.startswith("hsb: UNKNOWN (") and "CP, host1 answered with an error" in head and "host2 cannot be asked" in head, out
        assert f"  host1 at {addr}: answered with an error (unknown_type: unknown message type 'status'): it does not know this request" in out, out
        assert f"CP machines: {addr} answered with an error (unknown_type: " in out, out
        assert f"{gone} cannot be asked (connection refused" in out, out
        code, out, err = ctl(*args, "--json")
        st = json.loads(out)
        assert code == 3 and st["cp"]["error_answer"] is True and st["cps"][0]["error_answer"] is True, st
        assert any(u["name"] == "host1" and u.get("error_answer") for u in st["unknown"]), st["unknown"]


def test_a_pause_or_resume_the_cp_refuses_is_an_error_on_stderr_exit_1(secret: Path) -> None:
    """A CP that answers a pause or a resume with `ok: false` (today's hsbcpd never refuses one;
    a CP of another version may): hsbctl printed its message on stdout like a success and exited
    1. It is an error line on stderr naming the CP's refusal, exit 1, nothing on stdout."""
    from hsb.wire.authlink import AuthServerProtocol

    class Refusing(AuthServerProtocol):
        link = "admin"
        server_name = "cp-a"
        dispatch = {"pause": "on_request", "resume": "on_request"}

        def on_request(self, msg: dict[str, Any]) -> None:
            self.send({"t": "result", "ok": False, "msg": f"{msg['t']} refused: a switchover is under way"})

    with admin_port_in_thread(secret, Refusing) as addr:
        for cmd in ("pause", "resume"):
            code, out, err = ctl("--cp", addr, "--secret-file", str(secret), cmd)
            assert (code, out) == (1, ""), (code, out, err)
            assert err.strip() == f"error: the CP refused: {cmd} refused: a switchover is under way", err
