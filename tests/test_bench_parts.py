"""The in-process parts of the benchmarks run small here, so that a change to the code they drive
cannot leave a benchmark broken until someone measures (bench/scale_core.py's recovery stopped
at `Superseded` for a day: the journal's open began checking its generation, the bench took none)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

pytestmark = pytest.mark.timeout(120)


def test_scale_core_recovery_reads_back_what_it_wrote() -> None:
    import scale_core

    r = scale_core.recovery(6000)  # past one group record (4,096): the snapshot is several
    assert r["total_s"] > 0 and r["snapshot_s"] > 0 and r["snapshot_read_s"] > 0
    assert r["start_s"] == pytest.approx(r["total_s"] + r["snapshot_s"], abs=0.002)
