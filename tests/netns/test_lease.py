"""At most one host says "active", ever: the active's lease runs out before the CP can grant
(tests/netns/lease.py). Real processes in network namespaces; needs root, iproute2 and tc."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.netns import lease
from tests.netns.harness import tc_reason

pytestmark = [
    pytest.mark.skipif(tc_reason() is not None, reason=f"netns lease: {tc_reason()}"),
]


def _show(capsys: Any, out: dict[str, Any]) -> None:
    keys = ("how", "lead_ms", "cut_to_step_down_ms", "cut_to_grant_ms", "margin_ms", "worst_pause_ms", "samples", "a_exit")
    with capsys.disabled():
        print("\n[lease] " + json.dumps({k: out.get(k) for k in keys}))


@pytest.mark.parametrize("lead", [0.15, 0.4], ids=["out_first_150ms", "out_first_400ms"])
async def test_asymmetric_cut_never_two_actives(lead: float, tmp_path: Path, capsys: Any) -> None:
    out = await lease.run(tmp_path / "lab", how="asymmetric", lead=lead)
    _show(capsys, out)
    lease.check(out)


async def test_sigstop_woken_after_the_grant_never_two_actives(tmp_path: Path, capsys: Any) -> None:
    out = await lease.run(tmp_path / "lab", how="sigstop")
    _show(capsys, out)
    lease.check(out)
