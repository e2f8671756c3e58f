"""At most one host says "active", ever (the lease rule): one run, shared by the tests in
tests/netns/test_lease.py and the measurement in bench/lease.py.

Host A, the active, loses the network one direction first: what it sends (data leg and
peer link) is cut, and `lead` seconds later what it receives. Or it is frozen with SIGSTOP
and woken just after the CP granted host B. All the while, the status of every daemon and
both hosts' `/active` are sampled every 20 ms over the management network, which is never
cut. The checks:

- in no sample do two hosts report the active role with a valid lease, or answer 200 on
  `/active`;
- from the logs, host A's lease ran out (`lease_lost` with its `expired_at`) before the CP's
  `switchover_granted`: the margin between the two is the figure of the lease rule;
- the delivery guarantee holds (the strict verdict of hsb.term, the journals).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.netns.harness import Lab, Watch, check_delivery, lease_active


def _events(path: Path, name: str) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == name:
                out.append(e)
    return out


def _ts(e: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


async def run(d: Path, *, how: str, lead: float = 0.15, terminals: int = 50, rate: float = 200.0) -> dict[str, Any]:
    """`how`: "asymmetric" (outgoing cut `lead` s before incoming) or "sigstop"."""
    out: dict[str, Any] = {"how": how, "lead_ms": round(lead * 1000) if how == "asymmetric" else None}
    with Lab(d, terminals=terminals) as lab:
        await lab.start()
        load = lab.load(rate=rate)
        await load.sending()
        await lab.wait(lambda s: s["cp"]["terminals"]["standby_sessions"] == terminals and s["established"], 30, "hot standby")
        a = lab.daemons["a"]
        try:
            async with Watch(lab, interval=0.02, probe_active=True) as watch:
                await asyncio.sleep(0.3)
                if how == "asymmetric":
                    t0 = lab.cut_one_way("out", "a", "peer")
                    load.mark("cut", t0)
                    await asyncio.sleep(lead)
                    lab.cut_one_way("in", "a", "peer")
                else:
                    t0 = time.time()
                    os.kill(a.pid, signal.SIGSTOP)
                    load.mark("sigstop", t0)
                st = await lab.wait(lambda s: (s["cp"].get("active") or {}).get("name") == "host-b", 10, "host-b granted")
                if how == "sigstop":
                    os.kill(a.pid, signal.SIGCONT)  # just after the grant
                out["grant_seen_ms"] = round((time.time() - t0) * 1000, 1)
                await asyncio.sleep(0.5)  # samples after the grant, host A still cut off or just woken
            if how == "asymmetric":
                out["dropped"] = {k: lab.dropped(*k.split(":")) for k in ("out:a", "in:a", "out:peer", "in:peer")}
                lab.heal_one_way()
            deadline = time.monotonic() + 15
            while a.alive() and time.monotonic() < deadline:  # host A finds itself fenced
                await asyncio.sleep(0.05)
            out["a_exit"] = a.proc.poll()
        except BaseException:
            load.dm.proc.kill()
            raise
        report = await load.finish()
        out.update(check_delivery(lab, report, ["host-a", "host-b"]))
        out["samples"] = len(watch.samples)
        out["two_lease_actives"] = [(s.t, s.hosts(lease_active)) for s in watch.samples if len(s.hosts(lease_active)) > 1]
        out["two_200"] = [(s.t, s.active_200) for s in watch.samples if len(s.active_200) > 1]
        out["a_said_active_after_grant"] = False
        lost = _events(a.log, "lease_lost")
        granted = _events(lab.daemons["cp"].log, "switchover_granted")
        out["lease_expired_at"] = lost[0]["expired_at"] if lost else None
        out["granted_at"] = _ts(granted[-1]) if granted else None
        if lost and granted:
            out["margin_ms"] = round((out["granted_at"] - out["lease_expired_at"]) * 1000, 1)
        else:
            out["margin_ms"] = None
        if out["granted_at"] is not None:
            out["a_said_active_after_grant"] = any(
                s.t >= out["granted_at"] and ("host-a" in s.hosts(lease_active) or "host-a" in s.active_200) for s in watch.samples
            )
        # the host A sample closest before the grant and the first sample with host B active
        out["cut_to_step_down_ms"] = None if not lost else round((out["lease_expired_at"] - t0) * 1000, 1)
        out["cut_to_grant_ms"] = None if out["granted_at"] is None else round((out["granted_at"] - t0) * 1000, 1)
        out["worst_pause_ms"] = (report.get("operations") or [{}])[0].get("worst_ms")
        out["acked"] = report["acked"]
        out["st_cp_epoch"] = st["cp"]["epoch"]
    return out


def check(out: dict[str, Any]) -> None:
    """The lease rule held in one run (see the module docstring)."""
    assert out["samples"] > 20, out["samples"]
    assert not out["two_lease_actives"], f"two hosts reported the active role with a valid lease: {out['two_lease_actives'][:3]}"
    assert not out["two_200"], f"two hosts answered 200 on /active: {out['two_200'][:3]}"
    assert not out["a_said_active_after_grant"], "host A said it was the active after the CP granted host B"
    assert out["lease_expired_at"] is not None, "host A never logged that its lease ran out"
    assert out["margin_ms"] is not None and out["margin_ms"] > 0, f"host A's lease ran out {-(out['margin_ms'] or 0)} ms after the grant"
    assert out["a_exit"] == 75, f"host A should find itself fenced and exit 75, not {out['a_exit']}"
    if out["how"] == "asymmetric":
        assert all(n > 0 for n in out["dropped"].values()), f"a one-way cut did not take: {out['dropped']}"
