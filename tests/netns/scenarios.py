"""The partitions of issue 7 item 2, each under load with the journal service, shared by
tests/netns/test_partitions.py (once each) and bench/partitions.py (N times each).

Every scenario starts a fresh `Lab` (hsbcpd, host A active, host B standby, the
terminals, each in its own network namespace), starts the load, waits until every
terminal has its standby session, samples the status of all three daemons every
100 ms over the management net, cuts, holds the cut, heals, lets the load run on,
ends it and checks:

- the delivery guarantee (SPEC §5.6): no acknowledged message lost, no duplicate
  reply, every acknowledged id in a journal, an id processed twice marked redelivered;
- at most one active: never two hosts registered at the CP as serving actives in one
  sample, and whatever a host that lost the switch still processed after the grant
  (stragglers it had received before the cut) was redone by the new active, marked
  redelivered (so its late work never stood in for the new active's);
- the terminals' connections: no disconnect and no session closed (all are
  standby-capable, so even a failover keeps them);
- what the scenario promises (below).

`run(name, dir)` returns a dict of timings (ms, from the cut unless named otherwise)
and facts; a broken promise raises AssertionError.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, cast

from tests.netns.harness import Lab, Watch, check_connections, check_delivery, claims_active, read_journal, read_journal_tail

HOLD = 2.0  # seconds a cut lasts once its effect is seen (four heartbeat timeouts)


def _active(st: dict[str, Any]) -> str | None:
    return (st["cp"].get("active") or {}).get("name") if st["cp"].get("reachable") else None


def _host(st: dict[str, Any], node: str) -> dict[str, Any]:
    """Host A's or B's status (status_all keeps the order of `lab.host_admins`)."""
    return cast(dict[str, Any], st["hosts"][0 if node == "a" else 1])


def _lines(path: Path) -> int:
    """Complete lines in a journal now (a group commit may be half written)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((b - a) * 1000.0, 1)


async def _wait_exit(lab: Lab, node: str, timeout: float) -> tuple[int | None, float | None]:
    dm = lab.daemons[node]
    deadline = time.monotonic() + timeout
    while dm.alive():
        if time.monotonic() > deadline:
            return None, None
        await asyncio.sleep(0.02)
    return dm.proc.returncode, time.time()


def _takeover_times(out: dict[str, Any], st: dict[str, Any], t_cut: float) -> None:
    """Cut → the standby asks, → the CP grants, → the new active's first reply, → every switched terminal served."""
    sw = st["cp"].get("last_switchover") or {}
    grant = sw["at"] - sw["switch_ms"] / 1000.0 if sw.get("at") is not None else None
    b = _host(st, "b")
    req = (b.get("last_takeover") or {}).get("requested_at")
    out["cut_to_request_ms"] = _ms(t_cut, req)
    out["cut_to_grant_ms"] = _ms(t_cut, grant)
    out["cut_to_first_reply_ms"] = _ms(t_cut, grant + sw["first_reply_ms"] / 1000.0) if grant and sw.get("first_reply_ms") is not None else None
    out["cut_to_all_served_ms"] = _ms(t_cut, grant + sw["all_served_ms"] / 1000.0) if grant and sw.get("all_served_ms") is not None else None
    out["switched"] = sw.get("switched")
    out["why"] = sw.get("why")


async def run(name: str, d: Path, *, terminals: int = 200, rate: float = 400.0, hold: float = HOLD, log: Any = None) -> dict[str, Any]:
    """Run one scenario in a fresh lab under `d`; returns its timings and facts."""
    body = SCENARIOS[name]
    out: dict[str, Any] = {"scenario": name, "terminals": terminals, "rate": rate}
    with Lab(d, terminals=terminals) as lab:
        await lab.start()
        load = lab.load(rate=rate)
        await load.sending()
        await lab.wait(lambda s: s["cp"]["terminals"]["standby_sessions"] == terminals, 30, "every terminal's standby session")
        try:
            async with Watch(lab) as watch:
                await asyncio.sleep(0.5)  # steady state under load
                order = await body(lab, watch, out, hold)
                await asyncio.sleep(0.5)  # the load runs on after the heal
        except BaseException:
            load.dm.proc.kill()
            raise
        report = await load.finish()
        st = await lab.status()
        if out.get("t_cut") and st["cp"].get("last_switchover"):
            _takeover_times(out, st, out["t_cut"])
        out["service_gap_ms"] = report["service_gap"]["ms"]
        pause = (report.get("operations") or [{}])[0]
        out["worst_pause_ms"] = pause.get("worst_ms")
        out["all_served_ms"] = pause.get("all_served_ms")
        out["acked"] = report["acked"]
        # the checks every scenario shares
        out.update(check_delivery(lab, report, order))
        check_connections(report, switched=terminals if len(order) > 1 else 0)
        watch.check_one_active()
        out["samples"] = len(watch.samples)
        spans = watch.overlaps(claims_active)
        out["two_claim_active_ms"] = round(sum(b - a for a, b, _ in spans) * 1000.0, 1) if spans else 0.0
        if "journal_at_grant" in out:
            # What the old active processed after the grant (a straggler it received before the
            # cut) was never answered by it (a reply follows its journal line, and the host link
            # was cut), so the new active must have processed it again, marked redelivered.
            late = read_journal_tail(lab.journal("a"), out["journal_at_grant"])
            b = read_journal(lab.journal("b"))
            redone = [k for k in late if k in b and b[k][0].redelivered == 1]
            assert len(redone) == len(late), (
                f"host-a processed {len(late) - len(redone)} messages after the grant that host-b did not redo as redelivered: {sorted(set(late) - set(redone))[:5]}"
            )
            out["a_processed_after_grant"] = len(late)
        out.pop("t_cut", None)
        if log is not None:
            log(out)
    return out


# ---------------------------------------------------------------------- the four partitions
async def peer_link_cut(lab: Lab, watch: Watch, out: dict[str, Any], hold: float) -> list[str]:
    """The A–B peer link cut while both reach the CP: no switchover; status shows the peer
    link down on both; healed: hot standby established again."""
    st0 = await lab.status()
    epoch = st0["cp"]["epoch"]
    t_cut = lab.cut("peer")
    st = await lab.wait(lambda s: not any((h.get("peer_link") or {}).get("up") for h in s["hosts"]), 5, "both hosts to report the peer link down")
    out["cut_to_peer_down_ms"] = _ms(t_cut, time.time())
    await asyncio.sleep(hold)
    st = await lab.status()
    a, b = _host(st, "a"), _host(st, "b")
    assert (a["role"], b["role"]) == ("active", "standby"), (a["role"], b["role"])
    assert not a["peer_link"]["up"] and not b["peer_link"]["up"]
    assert a["state"] == "serving" and not st["established"], f"host-a should serve without a standby: {a['state']}"
    assert "refused" in (b.get("last_error") or ""), f"host-b should have asked and been refused: {b.get('last_error')}"
    assert st["cp"]["epoch"] == epoch and _active(st) == "host-a", "the CP switched over on a lost peer link alone"
    t_heal = lab.heal("peer")
    st = await lab.wait(
        lambda s: s["established"] and all((h.get("peer_link") or {}).get("up") for h in s["hosts"]), 15, "established again after the heal"
    )
    out["heal_to_established_ms"] = _ms(t_heal, time.time())
    assert st["cp"]["epoch"] == epoch and st["cp"]["switchovers"] == 0
    assert all(s.st["cp"].get("epoch") in (epoch, None) for s in watch.samples), "the epoch moved during a peer-link cut"
    assert not [s for s in watch.samples if _active(s.st) not in ("host-a", None)], "the CP named another active"
    return ["host-a"]


async def _a_loses(lab: Lab, watch: Watch, out: dict[str, Any], hold: float, links: tuple[str, ...]) -> list[str]:
    """Shared by the two scenarios in which host A loses the switch to host B."""
    epoch = (await lab.status())["cp"]["epoch"]
    t_cut = lab.cut(*links)
    lab.loadrun.mark("cut", t_cut)
    out["t_cut"] = t_cut
    st = await lab.wait(lambda s: _active(s) == "host-b" and _host(s, "b").get("role") == "active", 10, "host-b granted the switch")
    out["journal_at_grant"] = _lines(lab.journal("a"))
    out["cut_to_b_active_seen_ms"] = _ms(t_cut, time.time())
    assert st["cp"]["epoch"] == epoch + 1
    await asyncio.sleep(hold)
    a = _host(await lab.status(), "a")
    out["a_while_cut"] = f"{a.get('role')}/{a.get('state')} cp_link={a.get('cp_link')}"
    assert lab.daemons["a"].alive(), "host-a exited while it could reach nobody"
    t_heal = lab.heal(*links)
    code, t_exit = await _wait_exit(lab, "a", 15)
    assert code == 75, f"host-a should find itself fenced and exit 75, not {code}: {lab.daemons['a'].tail(800)}"
    out["heal_to_fenced_exit_ms"] = _ms(t_heal, t_exit)
    text = lab.daemons["a"].log.read_text()
    assert '"event": "fenced"' in text, "host-a's log has no fenced event"
    st = await lab.status()
    b = _host(st, "b")
    assert _active(st) == "host-b" and b["role"] == "active" and b["state"] == "serving", (b.get("role"), b.get("state"))
    assert not _host(st, "a").get("reachable"), "host-a still answers after it exited"
    # host-a exited: it cannot be asked, and holds no role at the CP, so it counts as down and
    # the verdict stands: serving without a standby (1)
    assert st["serving"] and st["exit_status"] == 1 and not st["unknown"] and len(st["absent"]) == 1, (st.get("unknown"), st.get("absent"))
    return ["host-a", "host-b"]


async def active_isolated(lab: Lab, watch: Watch, out: dict[str, Any], hold: float) -> list[str]:
    """Host A cut off from everything (its data leg and the peer link): the CP's host-link
    timeout passes and host B is granted the switch; healed, host A finds itself fenced
    and stops serving (exit 75)."""
    order = await _a_loses(lab, watch, out, hold, ("a", "peer"))
    return order


async def active_cp_link_cut(lab: Lab, watch: Watch, out: dict[str, Any], hold: float) -> list[str]:
    """Only the A–CP link cut (host A's data leg) while the A–B peer link is up: the CP's
    view decides; host A is fenced, host B serves."""
    order = await _a_loses(lab, watch, out, hold, ("a",))
    granted = watch.first(lambda s: _active(s.st) == "host-b")
    assert granted is not None
    assert (_host(granted.st, "b").get("peer_link") or {}).get("up"), "the peer link should have been up when the CP decided"
    return order


async def standby_isolated(lab: Lab, watch: Watch, out: dict[str, Any], hold: float) -> list[str]:
    """Host B cut off from everything: host A keeps serving, status shows no standby;
    healed: hot standby established again."""
    epoch = (await lab.status())["cp"]["epoch"]
    t_cut = lab.isolate("b")
    st = await lab.wait(lambda s: _host(s, "a").get("state") == "serving" and not s["established"], 5, "host-a serving without a standby")
    out["cut_to_no_standby_ms"] = _ms(t_cut, time.time())
    assert st["exit_status"] == 1, st["exit_status"]
    await asyncio.sleep(hold)
    st = await lab.status()
    a = _host(st, "a")
    assert a["role"] == "active" and a["state"] == "serving" and not a["peer_link"]["up"], (a["role"], a["state"])
    assert st["cp"]["epoch"] == epoch and _active(st) == "host-a" and st["cp"]["switchovers"] == 0
    out["cp_standby_while_cut"] = (st["cp"].get("standby") or {}).get("name")
    t_heal = lab.heal("b", "peer")
    st = await lab.wait(lambda s: s["established"], 20, "established again after the heal")
    out["heal_to_established_ms"] = _ms(t_heal, time.time())
    assert st["cp"]["epoch"] == epoch and _active(st) == "host-a"
    assert all(s.st["cp"].get("epoch") in (epoch, None) for s in watch.samples), "the epoch moved while the standby was cut off"
    return ["host-a"]


SCENARIOS = {
    "peer_link_cut": peer_link_cut,
    "active_isolated": active_isolated,
    "active_cp_link_cut": active_cp_link_cut,
    "standby_isolated": standby_isolated,
}
