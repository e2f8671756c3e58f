"""The long fault campaign: `.venv/bin/python bench/campaign.py --rounds 1000 [--seed S]`.

Same rounds and invariants as tests/test_campaign.py (tests/support/campaign.py),
run 1,000 times against one sandbox; prints every round with its seed and a
summary JSON; exits 1 on the first broken invariant (with the seed to replay).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hsb.ctl import sandbox  # noqa: E402
from tests.support.campaign import Campaign, CampaignError  # noqa: E402


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--terminals", type=int, default=100)
    ap.add_argument("--rate", type=float, default=300.0)
    ap.add_argument("--dir", default="")
    ap.add_argument("--out", default="", help="write the summary JSON here too")
    a = ap.parse_args()
    seed = a.seed or int.from_bytes(os.urandom(4), "big")
    d = Path(a.dir or tempfile.mkdtemp(prefix="hsb-campaign-")) / "sb"
    c = Campaign(d, seed=seed, terminals=a.terminals, rate=a.rate, say=lambda s: print(s, flush=True))
    try:
        summary = await c.run(a.rounds)
    except CampaignError as exc:
        print(f"INVARIANT BROKEN: {exc}", flush=True)
        return 1
    finally:
        try:
            sandbox.down(d, timeout=3.0)
        except sandbox.SandboxError:
            pass
    brief = {k: v for k, v in summary.items() if k != "rounds_detail"}
    print(json.dumps(brief, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(summary, indent=2))
    bad = summary["lost"] or summary["duplicates"] or summary["processed_twice_without_redelivered_mark"] or summary["acknowledged_not_in_any_journal"] or summary["disconnects_in_quiet_rounds"] or summary["rounds_with_two_actives"]
    return 1 if bad else 0


if __name__ == "__main__":
    from hsb import logs

    logs.setup("warning")
    sys.exit(asyncio.run(main()))
