"""`hsbctl status` over the admin links (issue 5 item 4): the pair's verdict and its exit
statuses, unreachable and late daemons, answers hsbctl cannot read; with more than one CP
answering, tests/test_ctl_status_cps.py."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import pytest

from hsb.ctl import sandbox
from tests.support.cli import pair_hosts
from tests.support.procs import wait_for


def ctl(info: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], *args], capture_output=True, text=True, timeout=60)


async def test_status_exit_codes_and_unreachable(tmp_path: Path) -> None:
    d = tmp_path / "sb"
    info = await sandbox.aup(d, terminals=10)
    loop = asyncio.get_running_loop()
    try:
        r = await loop.run_in_executor(None, ctl, info, "status", "--json")
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        assert st["established"] is True
        assert {h["name"]: (h["role"], h["state"], h["reachable"]) for h in st["hosts"]} == {
            "host-a": ("active", "established", True),
            "host-b": ("standby", "established", True),
        }
        for key in ("epoch", "terminals", "held_messages", "last_switchover"):
            assert key in st["cp"]
        r = await loop.run_in_executor(None, ctl, info, "status")
        assert r.returncode == 0 and "ESTABLISHED" in r.stdout and "host-b" in r.stdout
        # standby gone: once the CP has dropped its link it holds no role for it, so it is counted
        # as down (named as host-a knows its peer) and the verdict stands: SERVING WITHOUT A
        # STANDBY, exit 1, not UNKNOWN; no traceback
        b_pid = sandbox.load_state(d)["hosts"]["host-b"]["pid"]
        os.kill(b_pid, signal.SIGKILL)
        wait_for(lambda: not sandbox._alive(b_pid), 10, what="host-b dead")
        said: list[subprocess.CompletedProcess[str]] = []

        def asked() -> bool:
            said.append(ctl(info, "status"))
            return said[-1].returncode == 1

        wait_for(asked, 10, what="status exit 1 once the CP dropped host-b")
        r = said[-1]
        lines = r.stdout.splitlines()
        assert lines[0] == "hsb: SERVING WITHOUT A STANDBY", r.stdout
        assert lines[1].startswith("  host-b at 127.0.0.1:") and lines[1].endswith("counted as down"), r.stdout
        assert "Traceback" not in r.stdout + r.stderr and all(x.returncode in (1, 3) for x in said), [x.stdout for x in said]
        # CP gone too: still UNKNOWN (exit 3)
        cp_pid = sandbox.load_state(d)["cp"]["pid"]
        os.kill(cp_pid, signal.SIGKILL)
        wait_for(lambda: not sandbox._alive(cp_pid), 10, what="hsbcpd dead")
        r = await loop.run_in_executor(None, ctl, info, "status", "--json")
        assert r.returncode == 3
        st = json.loads(r.stdout)
        assert st["cp"]["reachable"] is False and st["established"] is False
        assert "Traceback" not in r.stderr
    finally:
        sandbox.down(d, timeout=0.5)


def test_status_without_a_target_is_a_one_line_error() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hsb.ctl", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("HSBCTL_CONFIG", "HSB_CTL_CONFIG")},
    )
    assert r.returncode == 3  # nothing could be asked: UNKNOWN, as monitoring plugins say for bad arguments
    lines = r.stderr.strip().splitlines()
    # one line per problem, all at once: no daemons named, and no secret file to ask them with
    assert lines and all(ln.startswith("error:") for ln in lines) and len(lines) <= 2, lines
    assert "/etc/hsb/ctl.toml" in lines[0]


async def test_a_grant_a_host_reports_is_in_the_cps_part_too(secret: Path, monkeypatch: Any) -> None:
    """The answers of one status are taken at slightly different moments: a host that
    reports a newer epoch than the CP's answer makes the CP be asked again."""
    from hsb.ctl import gather

    cp_epochs = [3, 4]
    asked: list[str] = []

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        asked.append(addr)
        if addr == "cp:1":
            return {"data": {"role": "cp", "state": "serving", "epoch": cp_epochs.pop(0)}}
        epoch = 4 if addr == "b:1" else 3
        return {"data": {"name": addr, "role": "active" if addr == "b:1" else "standby", "state": "established", "epoch": epoch}}

    monkeypatch.setattr(gather, "ask", ask)
    st = await gather.status_all("cp:1", ["a:1", "b:1"], str(secret))
    assert st["cp"]["epoch"] == 4 and asked.count("cp:1") == 2
    # the same epoch everywhere: asked once
    cp_epochs[:] = [4]
    asked.clear()
    st = await gather.status_all("cp:1", ["b:1"], str(secret))
    assert st["cp"]["epoch"] == 4 and asked.count("cp:1") == 1


def test_a_restart_waits_out_a_process_that_is_still_exiting() -> None:
    """CI once restarted a host right after SIGKILL: the CP had seen its links close, but the
    process was not gone yet, and start_host refused. A dying process is waited out; one that
    keeps running is still refused."""
    slow = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), exit(0)))\nprint(flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert slow.stdout is not None and slow.stdout.readline() == b"\n"
        slow.terminate()  # it exits 0.5 s later
        steady = subprocess.Popen([sys.executable, "-c", "import os, time\nwhile True:\n  time.sleep(1)"])  # stays running
        try:
            import threading

            threading.Thread(target=slow.wait, daemon=True).start()  # reap it, as a sandbox's parent does
            assert not sandbox._running(slow.pid, grace=5.0)
            assert sandbox._running(steady.pid, grace=0.2)
        finally:
            steady.kill()
            steady.wait()
    finally:
        slow.kill()
        slow.wait()


def test_a_standby_cut_off_from_the_cp_is_not_hot_standby() -> None:
    """It follows the ring (state established) but is not registered at the CP: it could not ask
    for the active role, so hsbctl says serving without a standby (exit 1), not established."""
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1}

    def hosts(registered: bool) -> list[dict[str, Any]]:
        return [
            {"reachable": True, "name": "a", "role": "active", "state": "established", "serving": True, "epoch": 1},
            {"reachable": True, "name": "b", "role": "standby", "state": "established", "epoch": 1, "registered_at_cp": registered},
        ]

    assert summarize(cp, hosts(True))["exit_status"] == 0
    cut = summarize(cp, hosts(False))
    assert not cut["established"] and cut["exit_status"] == 1


def test_a_standby_whose_takeover_storage_does_not_answer_is_not_hot_standby() -> None:
    """Its mount hangs: every ring read fails, its state stays established, its sessions go
    stale. hsbctl said hot standby ready (exit 0); it says serving without a standby (1)."""
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1}
    pair = pair_hosts()
    pair[1]["takeover_file"] = {"responding": True, "storage": "ok"}
    assert summarize(dict(cp), pair)["exit_status"] == 0
    pair[1]["takeover_file"] = {"responding": False, "storage": "takeover storage not responding"}
    hung = summarize(dict(cp), pair)
    assert not hung["established"] and hung["exit_status"] == 1


def test_the_verdict_says_what_it_cannot_know_and_what_is_critical() -> None:
    """Exit statuses as a monitoring plugin reads them: hosts never asked make the verdict unknown
    (3), not "not serving"; two actives at once are critical (2), not a warning; a CP whose journal
    cannot be written acknowledges nothing, so nothing new is served (2), not "established"."""
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1, "journal": {"durability": "fsync", "state": "ok"}}
    assert summarize(dict(cp), pair_hosts())["exit_status"] == 0
    only_cp = summarize(dict(cp), [])
    assert only_cp["exit_status"] == 3 and [u["name"] for u in only_cp["unknown"]] == ["hosts"]
    two = pair_hosts()
    two[1].update(role="active", serving=True)
    assert summarize(dict(cp), two)["exit_status"] == 2
    for state in ("failing", "stalled"):
        stuck = summarize({**cp, "journal": {"durability": "fsync", "state": state}}, pair_hosts())
        assert not stuck["serving"] and stuck["exit_status"] == 2
    assert summarize({**cp, "journal": {"durability": "none"}}, pair_hosts())["exit_status"] == 0
    # one host named, or the same one twice (the same address, or two addresses at which the same
    # process answers): the pair's state is not known (3), with a line naming the one named twice,
    # and one host named twice is not two actives
    one = summarize(dict(cp), pair_hosts()[:1])
    assert one["exit_status"] == 3 and [u["name"] for u in one["unknown"]] == ["hosts"], one["unknown"]
    twice = [{**pair_hosts()[0], "addr": "10.0.0.1:7112"}, {**pair_hosts()[0], "addr": "10.0.0.1:7112"}]
    dup = summarize(dict(cp), twice)
    assert dup["exit_status"] == 3 and not dup["two_actives"], dup
    # the same process named by two addresses (localhost and 127.0.0.1): one active, not two
    aliases = [{**pair_hosts()[0], "addr": a, "pid": 41, "instance": "a41"} for a in ("localhost:7112", "127.0.0.1:7112")]
    assert not summarize(dict(cp), aliases)["two_actives"]


@pytest.mark.parametrize("role", ["standby", "active"])
def test_one_host_named_by_two_addresses_is_one_host_and_said(role: str) -> None:
    """The ctl config names host-a twice (hosts = ["10.0.0.1:7103", "hosta:7103"]): its two answers
    were judged as two hosts. As the standby: no active among them, `NOT SERVING` (2), while the CP
    serves with host-b; as the active: `SERVING WITHOUT A STANDBY` (1). One daemon, judged once:
    the pair is not known (3), and a line says host-a is named twice and how to fix the config."""
    from hsb.ctl.status import headline
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1, "journal": {"durability": "fsync", "state": "ok"}}
    cp.update(active={"name": "host-b" if role == "standby" else "host-a"}, standby={"name": "host-a" if role == "standby" else "host-b"})
    a = {
        "reachable": True,
        "name": "host-a",
        "role": role,
        "state": "established",
        "serving": role == "active",
        "epoch": 1,
        "pid": 41,
        "instance": "a41",
    }
    st = summarize(dict(cp), [{**a, "addr": "10.0.0.1:7103"}, {**a, "addr": "hosta:7103"}])
    assert st["exit_status"] == 3 and [h["name"] for h in st["hosts"]] == ["host-a"], st
    why = [u["error"] for u in st["unknown"]]
    assert why == [
        "host-a is named twice (10.0.0.1:7103 and hosta:7103: the same process, pid 41); name each of the pair's two hosts once in the ctl config's hosts"
    ], why
    assert headline(st)[0].startswith("hsb: UNKNOWN ("), headline(st)
    # another process of the same name (a restart between the two answers) is not the same daemon
    st = summarize(dict(cp), [{**a, "addr": "10.0.0.1:7103"}, {**a, "addr": "hosta:7103", "pid": 42}])
    assert len(st["hosts"]) == 2 and not any("named twice" in u["error"] for u in st["unknown"]), st
    # nor is one of the same name and pid on another machine (its own process: another instance)
    st = summarize(dict(cp), [{**a, "addr": "10.0.0.1:7103"}, {**a, "addr": "10.0.0.2:7103", "instance": "b41"}])
    assert len(st["hosts"]) == 2 and not any("named twice" in u["error"] for u in st["unknown"]), st


def test_the_actives_service_failing_is_critical_and_the_first_line_says_so() -> None:
    """The ledger's database down: the active's service fails and every message waits at the CP.
    hsbctl said `ESTABLISHED (hot standby ready)`, exit 0 (nothing to do), the SERVICE FAILING
    line further down. It is critical (2) and the first line names it; a standby's does not count."""
    from hsb.ctl.status import headline
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1, "journal": {"durability": "fsync", "state": "ok"}}
    down = {"state": "failing", "name": "ledger", "error": "database unavailable: ConnectionRefusedError", "waiting_terminals": 3, "retries": 9}
    pair = pair_hosts()
    pair[0]["service"] = down
    st = summarize(dict(cp), pair)
    assert st["exit_status"] == 2, st
    lines = headline(st)
    assert lines[0].startswith("hsb: SERVICE FAILING on the active") and "ESTABLISHED" in lines[0], lines
    assert "a's service ledger is failing (database unavailable: ConnectionRefusedError)" in lines[1], lines
    # the standby's service is asked nothing: its state is not the verdict's
    pair[0]["service"], pair[1]["service"] = {"state": "ok"}, down
    st = summarize(dict(cp), pair)
    assert st["exit_status"] == 0 and headline(st)[0] == "hsb: ESTABLISHED (hot standby ready)", st


def test_a_stalled_call_of_the_actives_service_is_a_warning_that_says_the_others_are_served() -> None:
    """One call of the active's service hangs (a hung disk): that terminal's later messages wait
    behind it, the other terminals are served. hsbctl said `SERVICE FAILING on the active: no
    message is answered`, exit 2, which is false. It is a warning (1) of its own, naming the call's
    age and terminal; it does not hide a worse verdict, and a standby's stall does not count."""
    from hsb.ctl.status import headline
    from hsb.ctl.verdict import summarize

    cp = {"reachable": True, "role": "cp", "state": "serving", "epoch": 1, "journal": {"durability": "fsync", "state": "ok"}}
    stalled = {"state": "stalled", "name": "ledger", "oldest_call_s": 42.4, "oldest_call_terminal": "T1", "calls_in_progress": 1}
    pair = pair_hosts()
    pair[0]["service"] = stalled
    st = summarize(dict(cp), pair)
    lines = headline(st)
    assert st["exit_status"] == 1 and not st["service_failing"], st
    assert lines[0] == (
        "hsb: SERVICE STALLED on the active: a call has not returned for 42 s (terminal T1's later messages wait; others are served)"
        " (the pair: ESTABLISHED (hot standby ready))"
    ), lines
    assert "no message is answered" not in "\n".join(lines)
    assert lines[1].startswith("  a's service ledger: a call for T1 has not returned in 42 s: that terminal's later messages wait"), lines
    # without a standby it stays a warning; the CP's journal stalled (nothing served) stays critical
    st = summarize(dict(cp), pair[:1] + [{**pair[1], "state": "starting"}])
    assert st["exit_status"] == 1 and headline(st)[0].endswith("(the pair: SERVING WITHOUT A STANDBY)"), headline(st)
    st = summarize({**cp, "journal": {"durability": "fsync", "state": "stalled"}}, pair)
    assert st["exit_status"] == 2 and headline(st)[0] == "hsb: NOT SERVING", headline(st)
    # failing as well: critical, the failing verdict
    st = summarize(dict(cp), [{**pair[0], "service": {**stalled, "state": "failing", "error": "database unavailable"}}, pair[1]])
    assert st["exit_status"] == 2 and headline(st)[0].startswith("hsb: SERVICE FAILING on the active"), headline(st)
    # the standby's calls are not the verdict's
    st = summarize(dict(cp), [{**pair[0], "service": {"state": "ok"}}, {**pair[1], "service": stalled}])
    assert st["exit_status"] == 0 and headline(st)[0] == "hsb: ESTABLISHED (hot standby ready)", headline(st)


def test_status_of_a_shape_hsbctl_cannot_read_is_unknown_not_a_traceback(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    """A daemon (of another version, say) that answers a status without the fields hsbctl shows,
    or without a status at all, gives UNKNOWN (exit 3) and a line saying so, never a traceback
    (exit 1, which a monitor reads as a warning); an unreadable secret file is an error naming it."""
    from click.testing import CliRunner

    from hsb.ctl import gather, status, verdict
    from hsb.ctl.main import main as cli

    async def half(*a: Any, **kw: Any) -> dict[str, Any]:
        return verdict.summarize({"reachable": True, "state": "serving", "journal": {"state": "ok"}}, pair_hosts())

    monkeypatch.setattr(status, "status_all", half)
    r = CliRunner().invoke(cli, ["--cp", "127.0.0.1:1", "--host", "127.0.0.1:2", "--host", "127.0.0.1:3", "--secret-file", str(secret), "status"])
    assert r.exit_code == 3 and "cannot read" in r.output and "Traceback" not in r.output, r.output

    async def no_status(*a: Any, **kw: Any) -> dict[str, Any]:
        return {"t": "ok", "data": ["not", "a", "map"]}

    monkeypatch.setattr(gather, "ask", no_status)
    st = asyncio.run(gather.status_all("127.0.0.1:1", ["127.0.0.1:2", "127.0.0.1:3"], str(secret)))
    assert st["exit_status"] == 3 and all("without a status" in u["error"] for u in st["unknown"])

    monkeypatch.setattr(Path, "read_bytes", lambda self: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    r = CliRunner().invoke(cli, ["--cp", "127.0.0.1:1", "--secret-file", str(secret), "status"])
    assert r.exit_code == 3 and "cannot be read" in r.output and str(secret) in r.output, r.output


def test_hsbctl_at_another_links_port_says_so_not_that_the_secret_differs() -> None:
    from hsb.ctl.gather import why_not
    from hsb.wire.client import LinkClosed

    told = {"t": "error", "code": "auth_failed", "msg": "this port serves the host link, not 'admin'"}
    said = why_not(LinkClosed("auth_failed", told), 2.0)
    assert "wrong port" in said and "admin_listen" in said and "secret" not in said
    assert "secret differs" in why_not(LinkClosed("auth_failed", {"code": "auth_failed", "msg": "wrong answer to the challenge"}), 2.0)


def test_hsbctl_stop_waits_for_the_host_to_be_gone_not_merely_slow(monkeypatch: pytest.MonkeyPatch, secret: Path) -> None:
    """A host that does not answer within a second (busy handing over) has not stopped: hsbctl
    stop reports it stopped only once nothing listens at its admin address."""
    from hsb.ctl import ops_cmds
    from hsb.ctl.target import Target

    a = {"reachable": True, "name": "a", "addr": "127.0.0.1:2", "role": "active", "state": "established", "serving": True}
    b = {"reachable": True, "name": "b", "addr": "127.0.0.1:3", "role": "standby", "state": "established"}
    polls: list[int] = []

    def slow(why: str) -> dict[str, Any]:
        return {
            "hosts": [{"reachable": False, "name": "a", "addr": a["addr"]}, {**b, "role": "active", "serving": True}],
            "unknown": [{"name": "a", "addr": a["addr"], "error": why}],
        }

    async def status_all(*args: Any, **kw: Any) -> dict[str, Any]:
        polls.append(1)
        if len(polls) == 1:
            return {"hosts": [dict(a), dict(b)], "unknown": []}
        return slow("no answer within 1 s (a wrong port, ...)") if len(polls) < 4 else slow("connection refused: nothing listens there")

    async def ask(*args: Any, **kw: Any) -> dict[str, Any]:
        return {"ok": True, "msg": "stopping a"}

    monkeypatch.setattr(ops_cmds, "status_all", status_all)
    monkeypatch.setattr(ops_cmds, "ask", ask)
    t = Target()
    t.secret_file = str(secret)
    assert ops_cmds.run_stop(t, None, True, 10.0) == 0
    assert len(polls) == 4  # not taken as stopped while it only did not answer
    polls.clear()
    monkeypatch.setattr(ops_cmds, "status_all", lambda *a, **k: _slow_forever(polls, slow))
    assert ops_cmds.run_stop(t, "a", True, 0.5) == 1
    assert not ops_cmds._gone("Connect call failed ('10.0.0.9', 7002)")  # not reachable: not known to have stopped


async def _slow_forever(polls: list[int], slow: Any) -> dict[str, Any]:
    polls.append(1)
    a = {"reachable": True, "name": "a", "addr": "127.0.0.1:2", "role": "active", "state": "established", "serving": True}
    return {"hosts": [a], "unknown": []} if len(polls) == 1 else slow("no answer within 1 s")


def test_a_switch_whose_record_ended_with_terminals_not_served_is_shown_not_unknown() -> None:
    """A failover after which a terminal's message in flight got no reply before the record's
    deadline (its terminal gone, the service failing): the record has a worst pause and no
    all-served time. hsbctl status says how many were not served; it said UNKNOWN (exit 3,
    "another version?") about a healthy pair until the next switch."""
    from types import SimpleNamespace

    from hsb.cp.state import Term
    from hsb.cp.switchrec import DEADLINE_S, AfterSwitch
    from hsb.ctl.status import _pause

    rec: dict[str, Any] = {"epoch": 4}
    after = AfterSwitch(0.0, rec)
    term = SimpleNamespace(flight_epoch=4, flight=1)
    after.reply(cast(Term, term), -0.5, True, 0.2)  # ... one of the two terminals in flight is served
    after.counted(2)
    assert after.expired(DEADLINE_S + 1)
    assert rec["all_served_ms"] is None and rec["worst_pause_ms"] is not None and rec["not_served"] == 1
    line = _pause({**rec, "in_flight_terminals": 2})
    assert "1 not served when the record ended" in line and "worst pause 700.0 ms" in line, line


def test_with_the_cp_unreachable_the_first_line_says_what_the_hosts_say_not_a_verdict() -> None:
    """The CP decides who serves: without its answer the first line said "from the others: NOT
    SERVING" though host-a reported itself the active, established. It gives no verdict then,
    only what each host said of itself."""
    from hsb.ctl.status import headline

    a = {"reachable": True, "name": "host-a", "role": "active", "state": "established"}
    st: dict[str, Any] = {
        "established": False,
        "serving": False,
        "hosts": [a, {"reachable": False, "name": "host-b", "addr": "10.0.0.2:7003"}],
        "cp": {"reachable": False, "addr": "10.0.0.11:7002"},
        "unknown": [
            {"name": "CP", "addr": "10.0.0.11:7002", "error": "refused"},
            {"name": "host-b", "addr": "10.0.0.2:7003", "error": "refused"},
        ],
    }
    first = headline(st)[0]
    assert first == "hsb: UNKNOWN (CP, host-b cannot be asked); the hosts say: host-a ACTIVE (established)", first
    a["serving"] = False  # (cut off from the CP too, most likely: its lease gone)
    assert "host-a NOT-SERVING (established)" in headline(st)[0], headline(st)[0]
    st["hosts"], st["unknown"] = [], st["unknown"][:1]
    assert headline(st)[0].endswith("the hosts say: nothing (none answered)")


def test_a_daemon_that_answered_late_is_said_to_have_not_answered_in_time(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CP authenticated hsbctl and its status came past the deadline (its loop busy): the
    first line said "hsb: UNKNOWN (CP cannot be asked)", the words of a wrong address or secret,
    for a daemon that was asked. It now says the CP did not answer in time (as hsbctl's other
    commands tell the two apart), apart from a host that could not be asked at all."""
    from hsb.ctl import gather
    from hsb.ctl.status import headline, render
    from hsb.wire.client import Unanswered

    late = {1}  # the ports whose daemon is asked and answers late (1: the CP's)

    async def request(host: str, port: int, secret: bytes, msg: dict[str, Any], **_: Any) -> dict[str, Any]:
        if port in late:
            raise Unanswered("no answer")
        if port == 3:
            raise ConnectionRefusedError
        return {"data": {"name": "host-a", "role": "active", "state": "established", "serving": True, "epoch": 5, "pid": 40}}

    monkeypatch.setattr(gather, "request", request)
    st = asyncio.run(gather.status_all("cp:1", ["a:2", "b:3"], str(secret)))
    first = headline(st)[0]
    assert first == "hsb: UNKNOWN (CP did not answer in time; host2 cannot be asked); the hosts say: host-a ACTIVE (established)", first
    assert st["exit_status"] == 3, st
    late.add(2)  # (host-a late too: the rest of the view, of daemons that gave no answer)
    text = render(asyncio.run(gather.status_all("cp:1", ["a:2", "b:3"], str(secret))))
    assert text.startswith("hsb: UNKNOWN (CP, host1 did not answer in time; host2 cannot be asked); the hosts say: nothing"), text
    assert "  CP        did not answer in time (cp:1)" in text and "  host1     did not answer in time (a:2)" in text, text
    assert "  host2     cannot be asked (b:3)" in text, text


def test_a_host_that_cannot_be_asked_is_named_as_the_other_host_knows_its_peer(secret: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """host-a answers, its peer link naming host-b, and the other address of the ctl config
    refuses: that host is host-b, not "host2" (its place in the config), in the first line, its
    own line and the line saying why. Not so when the answer names no peer, or names itself, nor
    when the ctl config names three hosts (which of the other two is the peer?)."""
    from hsb.ctl import gather
    from hsb.ctl.status import headline

    peer: dict[str, Any] = {"up": False, "peer": "host-b", "heartbeat_age_ms": 900.0}

    async def request(host: str, port: int, secret: bytes, msg: dict[str, Any], **_: Any) -> dict[str, Any]:
        if port != 2:
            raise ConnectionRefusedError
        return {"data": {"name": "host-a", "role": "active", "state": "serving", "serving": True, "epoch": 5, "pid": 40, "peer_link": peer}}

    monkeypatch.setattr(gather, "request", request)
    st = asyncio.run(gather.status_all(None, ["a:2", "b:3"], str(secret)))
    lines = headline(st)
    assert lines[0].startswith("hsb: UNKNOWN (CP, host-b cannot be asked)"), lines
    assert any(x.startswith("  host-b at b:3: connection refused") for x in lines) and "host2" not in str(lines), lines
    assert [u["name"] for u in st["unknown"]] == ["CP", "host-b"], st["unknown"]
    st = asyncio.run(gather.status_all(None, ["b:3", "a:2"], str(secret)))  # (its place in the config does not matter)
    assert [h["name"] for h in st["hosts"]] == ["host-b", "host-a"], st["hosts"]
    for said in ({**peer, "peer": None}, {**peer, "peer": "host-a"}, None):
        peer.clear()
        peer.update(said or {})
        first = headline(asyncio.run(gather.status_all(None, ["a:2", "b:3"], str(secret))))[0]
        assert first.startswith("hsb: UNKNOWN (CP, host2 cannot be asked)"), (said, first)
    peer.update(peer="host-b")
    st = asyncio.run(gather.status_all(None, ["a:2", "b:3", "c:4"], str(secret)))
    assert [h["name"] for h in st["hosts"]] == ["host-a", "host2", "host3"], st["hosts"]
