"""hsbctl status's verdict from the daemons' answers as they come: answers of a shape this
hsbctl cannot read are UNKNOWN (3), never a traceback (docs/operations.md §7, §17)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsb.ctl import status as status_mod
from hsb.ctl.gather import summarize
from hsb.ctl.target import Target

pytestmark = pytest.mark.timeout(120)


def _cp(**kw: Any) -> dict[str, Any]:
    return {"reachable": True, "name": "cp", "addr": "cp:1", "role": "cp", "state": "serving", "epoch": 5, **kw}


def _host(who: str, role: str, epoch: int = 5, **kw: Any) -> dict[str, Any]:
    return {
        "reachable": True,
        "name": who,
        "addr": f"{who}:1",
        "pid": 100 + ord(who[-1]),
        "role": role,
        "state": "established",
        "serving": role == "active",
        "epoch": epoch,
        **kw,
    }


@pytest.mark.parametrize(("field", "value"), [("pid", [1]), ("name", {}), ("serving", "yes"), ("addr", ["a"]), ("takeover_file", [])])
def test_a_host_answer_of_a_shape_hsbctl_does_not_know_is_unknown_not_a_traceback(field: str, value: Any) -> None:
    """A pid or name that is a list or a map raised TypeError (unhashable) in summarize: a
    traceback and exit 1, which a monitor reads as a warning."""
    hosts = [_host("host-a", "active", **{field: value}), _host("host-b", "standby")]
    st_ = summarize(_cp(), hosts)
    assert st_["exit_status"] == 3 and not st_["established"], st_
    said = next(u for u in st_["unknown"] if u["name"] in ("host-a", "host1"))
    assert "cannot read" in said["error"] and field in said["error"] and "another version" in said["error"], said


def test_a_cp_answer_of_a_shape_hsbctl_does_not_know_is_unknown() -> None:
    st_ = summarize(_cp(journal=["ok"]), [_host("host-a", "active"), _host("host-b", "standby")])
    assert st_["exit_status"] == 3 and [u["name"] for u in st_["unknown"]] == ["CP"], st_["unknown"]


def test_any_failure_of_status_is_one_unknown_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever goes wrong in making the verdict is UNKNOWN (3) with one line, not a traceback."""

    async def broken(*a: Any, **kw: Any) -> dict[str, Any]:
        raise RuntimeError("something this hsbctl did not expect")

    monkeypatch.setattr(status_mod, "status_all", broken)
    t = Target(cp="cp:1", cps=["cp:1"], hosts=["a:1", "b:1"], secret_file=str(tmp_path / "s"))
    assert status_mod.run_status(t, False, False) == 3
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("hsb: UNKNOWN (") and "RuntimeError" in out[0], out
    assert status_mod.run_status(t, True, False) == 3
    assert '"exit_status": 3' in capsys.readouterr().out


_NESTED = ("ring_read", "ring_write", "generation", "last_seq", "next_seq", "ring_pending_records", "responding", "ring_write_failing")
_NESTED += ("error", "failing_s", "pending", "path", "durability", "state", "seen", "name", "connected", "remaining_ms", "valid", "by")
_HOST_KEYS = ("reachable", "name", "addr", "pid", "role", "state", "serving", "epoch", "registered_at_cp", "standby_view_stale")
_HOST_KEYS += ("takeover_file", "cp_generation", "lease", "error", "switchovers_ended")
_CP_KEYS = ("reachable", "name", "addr", "state", "epoch", "generation", "journal", "active", "standby", "error", "paused")
_TYPICAL = st.sampled_from(["active", "standby", "established", "serving", "fenced", "host-a", "host-b", "cp:1", True, False, 1, 5, 0.5])
_LEAF = st.none() | st.booleans() | st.integers(-3, 10) | st.floats(allow_nan=True) | st.text(max_size=4) | _TYPICAL
_ANY = st.recursive(_LEAF, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(_NESTED), c, max_size=4), max_leaves=8)


def _parts(keys: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), _ANY, max_size=len(keys))


@settings(max_examples=400, deadline=None)
@given(
    cp=_parts(_CP_KEYS),
    hosts=st.lists(_parts(_HOST_KEYS), max_size=3),
    machines=st.none() | st.lists(_parts(("addr", "name", "reachable", "state", "generation", "superseded")), max_size=2),
)
def test_summarize_never_raises_whatever_the_daemons_answer(cp: dict[str, Any], hosts: list[dict[str, Any]], machines: Any) -> None:
    machines = [{**m, "addr": str(m.get("addr"))} for m in machines] if machines is not None else None  # (serving_cp's own: a text address)
    out = summarize(cp, hosts, machines)
    assert out["exit_status"] in (0, 1, 2, 3)
    status_mod.shown(out)  # (and the text: the verdict, or UNKNOWN with the raw status)
