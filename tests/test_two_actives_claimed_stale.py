"""A peer that claims the active role at an older epoch than this active's is the active of that
epoch, frozen or cut off from the CP and back, not yet told it was fenced: logged as
`peer_claims_older_epoch` (a warning), not counted in hsb_two_actives_claimed_total, so the
alert meant for a broken lease rule (HsbTwoActivesClaimed, "treat it as a bug") does not fire
at an ordinary failover. Found by the on-call walk-through: operations.md §13's freeze test
(`kill -STOP` of the active for 2 s, then `kill -CONT`) made the new active count its peer's
hello (role active, epoch 4, against its own 5) and fired the alert. A claim at this host's own
epoch is still counted. In process, on a hand-moved lease clock (tests/test_lease_mutants.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb.host.server import HostServer
from tests.support.unstarted import unstarted_active
from tests.test_lease_edges import Clock
from tests.test_lease_edges import clock as clock  # noqa: F401  (the fixture)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def active(tmp_path: Path, clock: Clock) -> AsyncIterator[HostServer]:
    """An unstarted HostServer registered as the active at epoch 3 with a valid lease; its CP
    link's drops recorded in `srv.drops`."""
    srv, _ = unstarted_active(tmp_path)
    drops: list[str] = []
    srv.cp.drop = drops.append  # type: ignore[method-assign,assignment]
    srv.drops = drops  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.ha.close()
        srv.delivery.cancel()


def _hello(srv: HostServer, epoch: int) -> list[Any]:
    """What the frozen old active sends on its new peer connection once it runs again."""
    msg = {"t": "peer_hello", "name": "host-b", "role": "active", "state": "established", "instance": "x", "epoch": epoch}
    with structlog.testing.capture_logs() as logs:
        srv.ha.peer_claims_active(msg)
    return logs


async def test_an_older_epochs_active_back_from_a_freeze_is_not_two_actives(active: HostServer, clock: Clock) -> None:
    ha = active.ha
    assert ha.serving and ha.epoch == 3
    logs = _hello(active, 2)
    assert [(e["event"], e["log_level"]) for e in logs] == [("peer_claims_older_epoch", "warning")], logs
    assert logs[0]["epoch"] == 3 and logs[0]["peer_epoch"] == 2 and logs[0]["peer"] == "host-b"
    assert ha.counters["two_actives_claimed"] == 0
    assert active.drops == [] and ha.serving and ha.last_error is None  # type: ignore[attr-defined]


async def test_a_claim_at_this_hosts_own_epoch_is_still_two_actives(active: HostServer, clock: Clock) -> None:
    ha = active.ha
    assert [e["event"] for e in _hello(active, 3)] == ["two_actives_claimed"]
    assert ha.counters["two_actives_claimed"] == 1 and active.drops == []  # type: ignore[attr-defined]


def test_the_alert_and_the_guide_say_what_is_not_counted() -> None:
    from tests.test_alert_status_lines import OPERATIONS_MD, description

    text = description("HsbTwoActivesClaimed")
    assert "peer_claims_older_epoch" in text and "at its own epoch" in text, text
    ops = OPERATIONS_MD.read_text()
    assert "| `peer_claims_older_epoch` (warning;" in ops
    assert "host started as active beside the active; `HsbTwoActivesClaimed`" not in ops  # (it is not counted)
