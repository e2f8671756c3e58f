"""The run-time fault control (hsb.faults, HSB_CRASH_CONTROL + SIGUSR2): what it applies, what
it says it applied (CTL.applied, what tests wait on), and a control file it cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb import faults
from hsb.takeover.faults import Faults


@pytest.fixture
def control(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    ctl = tmp_path / "ctl"
    monkeypatch.setattr(faults, "_control", str(ctl))
    monkeypatch.setattr(faults, "_storage", Faults())
    monkeypatch.setattr(faults, "_points", frozenset())
    monkeypatch.setattr(faults, "_skip", 0)
    return ctl


def applied(ctl: Path) -> str | None:
    p = Path(str(ctl) + ".applied")
    return p.read_text() if p.exists() else None


def test_crash_points_are_armed_and_said_to_be(control: Path) -> None:
    control.write_text("cp.mid_switch,host.before_reply   3\n")
    faults._rearm()
    assert faults._points == {"cp.mid_switch", "host.before_reply"} and faults._skip == 3
    assert applied(control) == "cp.mid_switch,host.before_reply 3"


def test_a_name_that_is_no_crash_point_is_not_said_to_be_applied(control: Path) -> None:
    control.write_text("cp.mid_swtich 0\n")  # a typo: a test waiting on it must not go on as if armed
    faults._rearm()
    assert faults._points == frozenset() and applied(control) is None


def test_a_storage_fault_is_applied_and_a_bad_one_raises_nothing(control: Path) -> None:
    control.write_text("storage eio\n")
    faults._rearm()
    assert faults._storage.error is not None and applied(control) == "storage eio"
    control.write_text("storage delay soon\n")  # not a number: nothing applied, nothing raised into the daemon
    faults._rearm()
    assert applied(control) == "storage eio" and faults._storage.delay == 0
