"""A promote the standby cannot carry out is refused in its answer, not taken and dropped: a
standby the CP has not registered (its CP link down, or refused as the standby because the CP
has another) dropped the request in request_switchover, while its admin answer said "promotion
requested", and hsbctl promote waited its whole timeout for nothing (docs/operations.md §9)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from hsb.host.admin import HostAdminProtocol
from hsb.host.ha import HA


def _promote(**state: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """What host-b's admin link answers a promote with `state`, and the intents it posted."""
    ha = HA.__new__(HA)  # the fields the check reads: no daemon behind them
    posted: list[str] = []
    ha.name, ha.role, ha.stopping, ha.registered = "host-b", "standby", False, True
    ha.post = posted.append  # type: ignore[method-assign,assignment]  # (a recorder of the intents)
    for k, v in state.items():
        setattr(ha, k, v)
    p = HostAdminProtocol.__new__(HostAdminProtocol)
    sent: list[dict[str, Any]] = []
    p.srv = SimpleNamespace(ha=ha)  # type: ignore[assignment]
    p.send = sent.append  # type: ignore[method-assign,assignment]  # (a recorder of the answers)
    p.on_promote({"t": "promote"})
    return sent, posted


def test_a_registered_standby_takes_the_promote() -> None:
    sent, posted = _promote()
    assert sent == [{"t": "result", "ok": True, "msg": "promotion of host-b requested"}] and posted == ["promote"]


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"registered": False}, "promote refused: host-b is not registered at the CP"),
        ({"stopping": True}, "promote refused: host-b is stopping"),
        ({"role": "active"}, "host-b is active, not a standby"),
    ],
)
def test_a_promote_the_standby_cannot_ask_for_is_refused_with_the_reason(state: dict[str, Any], why: str) -> None:
    sent, posted = _promote(**state)
    assert posted == [] and len(sent) == 1 and sent[0]["ok"] is False and sent[0]["msg"].startswith(why), sent
    assert "\n" not in sent[0]["msg"]


def test_a_stop_of_the_active_cut_off_from_the_cp_says_the_cp_may_fail_over() -> None:
    """The active's CP link down (the CP stalled, or its network) as it is stopped: it cannot hand
    over, and the CP, not told, takes the end of its link for the active's loss: a standby
    registered there takes over. Its answer said `stops normally: nobody takes over (no
    established standby)`, which was not so (the alone.py review, session 69)."""
    ha = HA.__new__(HA)
    ha.name, ha.role, ha.stopping, ha.registered = "host-a", "active", False, False
    p = HostAdminProtocol.__new__(HostAdminProtocol)
    sent: list[dict[str, Any]] = []
    stops: list[bool] = []
    p.srv = SimpleNamespace(ha=ha, request_stop=stops.append)  # type: ignore[assignment]
    p.send = sent.append  # type: ignore[method-assign,assignment]
    p.flush = lambda: None  # type: ignore[method-assign]
    p.on_stop({"t": "stop", "takeover": True})
    assert stops == [True] and len(sent) == 1 and sent[0]["ok"] is True, sent
    assert sent[0]["hands_over"] is False and sent[0]["cp_unaware"] is True, sent
    assert "its link to the CP is down" in sent[0]["msg"] and "nobody takes over" not in sent[0]["msg"], sent
