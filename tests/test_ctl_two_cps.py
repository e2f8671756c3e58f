"""hsbctl with two CP machines (docs/operations.md §18): a CP split brain, two serving CPs each
keeping an active of its own, is critical and says what to do (not a role change under way);
and pause, resume and history with neither CP machine serving say so and ask neither."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import gather, ops_cmds
from hsb.ctl.status import headline, render
from hsb.ctl.target import Target
from tests.support.procs import write_secret

pytestmark = pytest.mark.timeout(60)

_JOURNAL = {"durability": "fsync", "state": "ok"}


def _cp(name: str, generation: int, epoch: int, active: str | None, state: str = "serving") -> dict[str, Any]:
    return {
        "name": name,
        "role": "cp",
        "cp_state": state,
        "state": "serving" if active else "no_active",
        "generation": generation,
        "epoch": epoch,
        "journal": _JOURNAL,
        "active": {"name": active, "connected": True} if active else None,
        "standby": None,
        "pid": generation,
        "instance": name,
    }


def _host(name: str, epoch: int, seen: int, role: str = "active") -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "state": "serving" if role == "active" else "established",
        "serving": role == "active",
        "epoch": epoch,
        "pid": ord(name[-1]),
        "cp_generation": {"seen": seen, "refusals": 0},
    }


def _asking(monkeypatch: pytest.MonkeyPatch, answers: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """gather.ask and ops_cmds.ask answering each address's status from `answers` (a CP that waits
    answers every other request cp_waiting, as hsbcpd does); what was asked, in order."""
    asked: list[tuple[str, str]] = []

    async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, **_: Any) -> dict[str, Any]:
        asked.append((addr, msg["t"]))
        data = answers.get(addr)
        if data is None:
            return {"reachable": False, "addr": addr, "error": "connection refused: nothing listens there"}
        if msg["t"] == "status":
            return {"t": "status", "data": data}
        if data.get("cp_state") == "waiting":
            return {"reachable": False, "error_answer": True, "addr": addr, "code": "cp_waiting", "error": "answered with an error (cp_waiting)"}
        return {"t": "history", "data": []} if msg["t"] == "history" else {"t": "result", "ok": True, "msg": f"done at {addr}"}

    monkeypatch.setattr(gather, "ask", ask)
    monkeypatch.setattr(ops_cmds, "ask", ask)
    return asked


def _status(tmp_path: Path, cps: list[str]) -> dict[str, Any]:
    secret = write_secret(tmp_path)
    return asyncio.run(gather.status_all(cps[0], ["host-a:1", "host-b:1"], str(secret), cp_machines=cps))


# cp-a's journal mount hangs: cp-b took the journal over (generation 7) and made host-b the active
# at epoch 5, and cp-a, not knowing, still serves and keeps host-a the active at epoch 4
_SPLIT = {
    "cp-a:1": _cp("cp-a", 6, 4, "host-a"),
    "cp-b:1": _cp("cp-b", 7, 5, "host-b"),
    "host-a:1": _host("host-a", 4, 6),
    "host-b:1": _host("host-b", 5, 7),
}


@pytest.mark.parametrize("machines", [["cp-a:1", "cp-b:1"], ["cp-b:1"]])
def test_two_serving_cps_each_with_its_active_are_critical_not_a_role_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machines: list[str]
) -> None:
    """Two actives at different epochs, each kept by its own serving CP: hsbctl status said
    UNKNOWN (a role change is under way, 3), as for an old active answering before its lease
    ran out, and asking again never changes it. It is two actives (2), in one line naming both
    hosts and their epochs, the newer one, and the CP to stop. With one CP address in the ctl
    config (the newer CP's), the older active's CP generation (6, below cp-b's 7) tells it."""
    _asking(monkeypatch, _SPLIT)
    st = _status(tmp_path, machines)
    assert st["exit_status"] == 2 and not st["changing"] and st["two_actives"] == ["host-a", "host-b"], st
    first, *rest = headline(st)
    assert first.startswith("hsb: TWO ACTIVES: two CPs serve, each with its own active (a CP split brain): "), first
    assert "host-a at epoch 4 (" in first and "host-b at epoch 5 (" in first, first
    assert "host-b's epoch is the newer: host-a will be fenced once its CP stops" in first, first
    assert "'systemctl stop hsbcpd' on its machine" in first and "§18, After a split brain" in first, first
    if len(machines) == 2:
        assert "(cp-a's active, CP generation 6)" in first and "stop the hsbcpd on cp-a: " in first, first
    else:
        assert "(CP generation 6)" in first and "stop the hsbcpd that keeps host-a (generation 6): " in first, first
    text = render({**st, "cp": {"reachable": False}, "hosts": []})
    assert "two hosts serve as the active" not in text and "role change" not in text, text  # (said once, by the first line)


def test_a_role_change_at_one_cp_is_still_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same two actives, both kept by the one CP that serves (host-a's answer taken before
    its lease ran out, the CP's grant made host-b the active): a role change under way, as
    before (3), asked again."""
    answers = {**_SPLIT, "cp-a:1": _cp("cp-a", 7, 5, None, state="waiting"), "host-a:1": _host("host-a", 4, 7)}
    _asking(monkeypatch, answers)
    st = _status(tmp_path, ["cp-a:1", "cp-b:1"])
    assert st["exit_status"] == 3 and not st["two_actives"] and not st["split_brain"], st
    assert headline(st)[0] == "hsb: UNKNOWN (a role change is under way)", headline(st)


def _target(tmp_path: Path) -> Target:
    return Target(cp="cp-a:1", cps=["cp-a:1", "cp-b:1"], hosts=["host-a:1", "host-b:1"], secret_file=str(write_secret(tmp_path)))


@pytest.mark.parametrize("second", ["waiting", "stopping", "unreachable"])
@pytest.mark.parametrize("command", ["pause", "resume", "history"])
def test_with_neither_cp_machine_serving_pause_and_history_say_so_and_ask_neither(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, second: str
) -> None:
    """Both CP machines in the ctl config and neither serves: pause, resume and history asked
    the first one all the same (a CP that stops would have taken a pause; one that waits
    answered cp_waiting, as if only it had been asked). They say no CP machine serves, each
    one's state, and the fix, in one line, exit 3, and send the request to neither."""
    answers: dict[str, dict[str, Any]] = {"cp-a:1": _cp("cp-a", 7, 5, None, state="waiting")}
    if second != "unreachable":
        answers["cp-b:1"] = _cp("cp-b", 7, 5, None, state=second)
    asked = _asking(monkeypatch, answers)
    t = _target(tmp_path)
    code = ops_cmds.run_history(t, False) if command == "history" else ops_cmds.run_pause(t, command == "pause")
    out, err = capsys.readouterr()
    assert code == 3 and out == "", (out, err)
    lines = err.splitlines()
    lead = "no CP machine hsbctl could ask serves" if second == "unreachable" else "neither CP machine serves"
    assert len(lines) == 1 and lines[0].startswith(f"error: {lead}: cp-a at cp-a:1 waiting, "), lines
    said = "cp-b:1 cannot be asked (connection refused" if second == "unreachable" else f"cp-b at cp-b:1 {second}"
    assert said in err, err
    assert "nothing was done" in err and "keepalived" in err and "§18" in err, err
    assert [t for _, t in asked] == ["status", "status"], asked


def test_with_one_cp_machine_serving_pause_and_history_ask_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked = _asking(monkeypatch, {"cp-a:1": _cp("cp-a", 7, 5, None, state="waiting"), "cp-b:1": _cp("cp-b", 7, 5, "host-b")})
    t = _target(tmp_path)
    assert ops_cmds.run_pause(t, True) == 0 and ops_cmds.run_history(t, False) == 0
    assert ("cp-b:1", "pause") in asked and ("cp-b:1", "history") in asked and not any(a == "cp-a:1" and k != "status" for a, k in asked), asked
