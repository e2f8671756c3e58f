"""Collect the status of the CP and both hosts over their admin links, in parallel.

An unreachable daemon is reported as `{"reachable": false, "error": ...}`,
never as a traceback.

All three are asked at once, so their answers are taken at slightly different moments.
When a host reports a newer epoch than the CP's answer (it heard of a grant the CP had not
yet made when it answered), the CP is asked again: the CP records a switchover in the same
step in which it grants it, so its second answer holds the grant the host reports.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hsb.config import parse_addr
from hsb.wire.auth import load_secret
from hsb.wire.client import LinkClosed, request
from hsb.wire.framing import ProtocolError


async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    h, p = parse_addr(addr)
    try:
        ans = await request(h, p, secret, msg, timeout=timeout)
    except (OSError, TimeoutError, LinkClosed, ProtocolError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
        return {"reachable": False, "addr": addr, "error": why}
    if ans.get("t") == "error":
        return {"reachable": False, "addr": addr, "error": f"{ans.get('code')}: {ans.get('msg')}"}
    return ans


async def status_all(cp: str | None, hosts: list[str], secret_file: str, timeout: float = 2.0) -> dict[str, Any]:
    secret = load_secret(secret_file)

    async def one(addr: str) -> dict[str, Any]:
        ans = await ask(addr, secret, {"t": "status"}, timeout)
        if ans.get("reachable") is False:
            return ans
        data = dict(ans.get("data", {}))
        data["reachable"] = True
        data["addr"] = addr
        return data

    results = await asyncio.gather(*(one(a) for a in ([cp] if cp else []) + hosts))
    cps = results[0] if cp else {"reachable": False, "error": "not configured"}
    hs = results[1:] if cp else results
    if cp and cps.get("reachable") and _newest_epoch(hs) > _epoch(cps):
        again = await one(cp)
        if again.get("reachable"):  # else keep the first answer rather than call the CP down
            cps = again
    return summarize(cps, list(hs))


def _epoch(part: dict[str, Any]) -> int:
    e = part.get("epoch")
    return e if isinstance(e, int) else 0


def _newest_epoch(hosts: list[dict[str, Any]]) -> int:
    return max((_epoch(h) for h in hosts if h.get("reachable")), default=0)


def summarize(cp: dict[str, Any], hosts: list[dict[str, Any]]) -> dict[str, Any]:
    for i, h in enumerate(hosts):
        h.setdefault("name", f"host{i + 1}")
        h.setdefault("role", "unknown")
        h.setdefault("state", "unreachable")
    # a host counts as the active only while it serves: made active by the CP, its lease valid
    actives = [h for h in hosts if h.get("reachable") and h.get("role") == "active" and h.get("state") not in ("fenced", "stopping") and h.get("serving", True)]
    standbys = [h for h in hosts if h.get("reachable") and h.get("role") == "standby"]
    cp_ok = bool(cp.get("reachable"))
    serving = cp_ok and cp.get("state") == "serving" and bool(actives)
    established = serving and any(h.get("state") == "established" for h in actives) and any(h.get("state") == "established" for h in standbys)
    # ring lag: what the active wrote minus what the standby has read (same generation)
    for sb in standbys:
        rr = (sb.get("takeover_file") or {}).get("ring_read")
        for a in actives:
            rw = (a.get("takeover_file") or {}).get("ring_write")
            if rr and rw and rr.get("generation") == rw.get("generation"):
                sb["ring_lag"] = max(0, rw["last_seq"] - (rr["next_seq"] - 1))
    return {
        "established": established,
        "serving": serving,
        # two hosts both serving with a valid lease at once: must never happen
        "two_actives": [h["name"] for h in actives] if len(actives) > 1 else [],
        "exit_status": 0 if established else 1 if serving else 2,
        "cp": cp,
        "hosts": hosts,
    }
