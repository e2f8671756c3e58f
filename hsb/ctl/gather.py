"""Collect the status of the CP and both hosts over their admin links, in parallel.

An unreachable daemon is reported as `{"reachable": false, "error": ...}`,
never as a traceback; one that answered with an error frame (a CP waiting to take over:
`cp_waiting`) has `error_answer` true besides, and is said to have answered, not to be unreachable.

All three are asked at once, so their answers are taken at slightly different moments.
When they disagree on who is the active (hsb.ctl.agree: a host at a newer epoch than the CP's
answer, a host that says it is the active and is not the CP's, the CP's active that says it
is the standby), all three are asked again, a few times within the timeout: the CP records a
switchover in the same step in which it grants it, so a later answer holds the grant a host
reports, and a lease running out ends. Answers that still disagree are a role change under
way (UNKNOWN), never a verdict none of them gave. The verdict is hsb.ctl.verdict's.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from typing import Any

from hsb.config import parse_addr
from hsb.ctl.agree import REASK_PAUSES, disagreement, hosts_refuse
from hsb.ctl.verdict import same_daemon, summarize
from hsb.wire.auth import load_secret
from hsb.wire.client import LinkClosed, ServerNameMismatch, Unanswered, request
from hsb.wire.framing import ProtocolError

# OpenSSL's verify codes for the daemon's certificate as hsbctl checked it: what is wrong, and the fix
_DAEMON_CERT = {
    10: "the daemon's certificate has expired (by this machine's clock): renew it (hsbctl tls init --force, or your CA)"
    " and send the daemon SIGHUP (docs/operations.md §19)",
    9: "the daemon's certificate is not valid yet by this machine's clock: check the clocks, or give it a new certificate",
    7: "the daemon's certificate is not of a CA in the ctl config's ca_file (another CA of the same name?)",
    19: "the daemon's certificate is not of a CA in the ctl config's ca_file (its tls.ca_file and the ctl config's differ)",
    20: "the daemon's certificate is not of a CA in the ctl config's ca_file (its tls.ca_file and the ctl config's differ)",
}


def why_not(exc: BaseException, timeout: float) -> str:
    """Why a daemon could not be asked, in one line with the likely fix (never a traceback)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there (is the daemon running? is the address in the ctl config its admin_listen?)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s (a wrong port, a firewall, the daemon is stuck, or it speaks TLS and the ctl config has no tls)"
    if isinstance(exc, ServerNameMismatch):  # hsbctl's own check of the daemon's certificate
        has = f"names {', '.join(exc.names)}" if exc.names else "names nobody"
        return (
            f"the daemon's TLS certificate does not name it: the daemon says it is {exc.server!r}, its certificate {has}"
            " (give it a certificate that names its [cp] name or [host] name: docs/tls.md §2)"
        )
    if isinstance(exc, LinkClosed):
        code = (exc.error or {}).get("code")
        msg = str((exc.error or {}).get("msg", ""))
        if code == "auth_failed" and msg.startswith("this port serves"):
            return f"a wrong port: {msg} (give the daemon's admin_listen address)"
        if code == "auth_failed":
            return "authentication failed: the secret differs from the daemon's (check secret_file in the ctl config)"
        if code == "version_mismatch" or "version_mismatch" in str(exc):
            return str(exc).removeprefix("version_mismatch: ")
        if code == "tls_name_mismatch":  # the daemon's check of hsbctl's certificate
            return f"the daemon refused hsbctl's TLS certificate: {msg} (the ctl config's tls.cert_file must name 'hsbctl')"
        return f"it closed the connection ({exc}); is this its admin_listen address?"
    if isinstance(exc, ProtocolError):
        return f"it does not speak hsb's admin link ({exc.code}): a wrong port?"
    if isinstance(exc, ssl_module.SSLCertVerificationError) and exc.verify_code in _DAEMON_CERT:
        # (hsbctl's own check of the daemon's certificate failed: which side is wrong is known)
        return f"TLS handshake failed ({exc.verify_message}): {_DAEMON_CERT[exc.verify_code]}"
    if isinstance(exc, ssl_module.SSLError):
        return (
            f"TLS handshake failed ({getattr(exc, 'verify_message', None) or getattr(exc, 'reason', None) or exc}): the daemon has no [tls], or its certificate is not from the"
            " ctl config's ca_file, or it does not accept hsbctl's certificate"
        )
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc} (check the address in the ctl config)"
    return f"{type(exc).__name__}: {exc}"


async def ask(addr: str, secret: bytes, msg: dict[str, Any], timeout: float = 2.0, ssl: Any = "default") -> dict[str, Any]:
    """The daemon's answer to `msg`; else `reachable` false with why (one line and its fix),
    `unanswered` true when it took the request and gave no answer in time (it may have acted), or
    `error_answer` true (and its `code`) when it answered with an error frame: it did nothing."""
    h, p = parse_addr(addr)
    try:
        ans = await request(h, p, secret, msg, timeout=timeout, ssl=ssl)
    except Unanswered:
        why = f"it authenticated and did not answer the request within {timeout:g} s (it is slow or stuck)"
        return {"reachable": False, "unanswered": True, "addr": addr, "timeout": timeout, "error": why}
    except (OSError, TimeoutError, LinkClosed, ProtocolError, UnicodeError) as exc:  # (a name the resolver cannot encode)
        return {"reachable": False, "addr": addr, "error": why_not(exc, timeout)}
    if ans.get("t") == "error":  # it answered, and not with what was asked: not a network problem
        code, said = str(ans.get("code"))[:40], str(ans.get("msg", ""))[:300]
        return {
            "reachable": False,
            "error_answer": True,
            "addr": addr,
            "code": code,
            "error": f"answered with an error ({code}: {said}): {_fix(code)}",
        }
    return ans


def _fix(code: str) -> str:
    """What to do about a daemon's error answer (hsb.cp.admin, hsb.wire.conn's protocol errors)."""
    if code == "cp_waiting":
        return (
            "this hsbcpd does not serve, it waits to take the journal over (or is taking it over now): nothing was done;"
            " ask the serving CP ('hsbctl status' shows which one serves; with both CP machines in the ctl config's cp hsbctl asks it, §18)"
        )
    if code == "unknown_type":
        return "it does not know this request: a daemon of another hsb version, or another daemon's admin port; check the address in the ctl config and install the same hsb version everywhere"
    return "nothing was done; see the daemon's log (protocol_error) and install the same hsb version everywhere"


def unheard(ans: dict[str, Any]) -> str:
    """Why a daemon gave no answer, in the verdict's words: asked and not answered in time (it
    authenticated: busy or stuck) is not one hsbctl could not ask (`unasked` says the rest)."""
    if ans.get("error_answer"):
        return "answered with an error"
    if ans.get("not_serving"):  # asked and answered: waiting (no machine holds the address), or taking over
        return "does not serve"
    return "did not answer in time" if ans.get("unanswered") else "cannot be asked"


def unasked(who: str, ans: dict[str, Any]) -> str:
    """The line for a daemon that gave no answer: asked and not answered in time (it authenticated:
    busy or stuck, no address or secret to fix) is not one hsbctl could not ask (connect, auth),
    and neither is one that answered with an error (a CP waiting to take over: its code, its
    message and the fix)."""
    if ans.get("error_answer"):
        return f"{who} at {ans.get('addr')} {ans.get('error')}"
    if ans.get("unanswered"):
        return (
            f"asked {who} at {ans.get('addr')}, no answer within {ans.get('timeout', 2.0):g} s: it authenticated and is busy or stuck;"
            " ask again in a moment, and if it persists see its log and whether its process is spinning (top)"
        )
    return f"cannot ask {who} at {ans.get('addr')}: {ans.get('error')}"


def untold(who: str, ans: dict[str, Any], request: str, outcome: str) -> str:
    """The line for a request (not a read) a daemon took and did not answer in time: it may have
    acted on it, so `outcome` says what is known of it and where to look."""
    return f"{who} at {ans.get('addr')} took {request} and gave no answer in time{outcome}"


async def serving_cp(
    cps: list[str], secret: bytes, timeout: float = 2.0, ssl: Any = "default", answers_out: dict[str, dict[str, Any]] | None = None
) -> tuple[str | None, list[dict[str, Any]]]:
    """Of two CP machines' admin addresses, the one whose hsbcpd serves (None: none does), and
    what each said (name, state, generation). `answers_out` receives each one's whole answer
    (status_all shows the serving one's without asking it again). Of several that say they
    serve, the newest generation's (`newest_serving`); the others are marked `superseded`."""
    answers = await asyncio.gather(*(ask(a, secret, {"t": "status"}, timeout, ssl=ssl) for a in cps))
    if answers_out is not None:
        answers_out.update(zip(cps, answers, strict=True))
    seen: list[dict[str, Any]] = []
    for a, ans in zip(cps, answers, strict=True):
        if ans.get("reachable") is False:
            seen.append(
                {
                    "addr": a,
                    "reachable": False,
                    "error": ans.get("error"),
                    "unanswered": ans.get("unanswered") is True,
                    "error_answer": ans.get("error_answer") is True,
                }
            )
            continue
        d: dict[str, Any] = ans["data"] if isinstance(ans.get("data"), dict) else {}
        state = d.get("cp_state") or ("waiting" if d.get("state") == "waiting" else "serving")
        seen.append(
            {
                "addr": a,
                "reachable": True,
                "name": d.get("name"),
                "pid": d.get("pid"),
                "instance": d.get("instance"),  # (per process: two CPs of one name and pid are not one)
                "state": state,
                "generation": d.get("generation") if d.get("generation") is not None else d.get("journal_generation"),
                # (whom it keeps as the active, and at which epoch: two serving CPs each with its own is a split brain)
                "active": d["active"].get("name") if isinstance(d.get("active"), dict) else None,
                "epoch": d.get("epoch"),
                "journal_missing": d.get("journal_missing") is True,
                "journal_unanswered_s": d.get("journal_unanswered_s"),
                "journal_error": d.get("journal_error"),
                # (a waiting CP's: whether its machine holds the virtual address too)
                "holds_address": d.get("holds_address") is True,
            }
        )
    serving = newest_serving(seen)
    return serving, seen


def _generation(m: dict[str, Any]) -> int:
    g = m.get("generation")
    return g if isinstance(g, int) and not isinstance(g, bool) else -1


def newest_serving(seen: list[dict[str, Any]]) -> str | None:
    """The address of the CP machine to believe, of those that say they serve: the highest
    generation's. A CP that took the journal over fenced every older one, and the hosts refuse
    a CP older than one they saw; an older one that still says it serves has not noticed (its
    journal mount hangs, say). Among equal generations, the first in the ctl config. Each other
    one that says it serves is marked `superseded` (hsbctl status: an ERROR line, §18)."""
    claims = [m for m in seen if m.get("reachable") and m.get("state") == "serving"]
    if not claims:
        return None
    best = max(claims, key=_generation)  # (the first of the highest)
    for m in claims:
        if m is best:
            continue
        if same_daemon(m, best) and m.get("generation") == best.get("generation"):
            m["same_as"] = best["addr"]  # (one hsbcpd named by two addresses: its VIP and its own, say)
        else:
            m["superseded"] = {"by": best.get("name") or best["addr"], "generation": best.get("generation")}
    return str(best["addr"])


async def status_all(
    cp: str | None, hosts: list[str], secret_file: str, timeout: float = 2.0, cp_machines: list[str] | None = None, ssl: Any = "default"
) -> dict[str, Any]:
    """Everything hsbctl status shows. `cp_machines`: both CP machines' admin addresses (the
    serving one is asked; each one's state is shown)."""
    secret = load_secret(secret_file)
    machines: list[dict[str, Any]] | None = None
    asked: dict[str, dict[str, Any]] = {}
    if cp_machines and len(cp_machines) > 1:
        chosen, machines = await serving_cp(cp_machines, secret, timeout, ssl=ssl, answers_out=asked)
        cp = chosen or cp

    async def one(addr: str, wait: float) -> dict[str, Any]:
        ans = asked.pop(addr, None) if addr == cp else None  # the serving CP's answer is in hand
        if ans is None or ans.get("reachable") is False:
            ans = await ask(addr, secret, {"t": "status"}, wait, ssl=ssl)
        if ans.get("reachable") is False:
            return ans
        if not isinstance(ans.get("data"), dict) or not isinstance(ans["data"].get("state"), str):
            return {
                "reachable": False,
                "addr": addr,
                "error": f"answered without a status ({str(ans)[:80]}): is that an hsb daemon's admin port, of this version?",
            }
        data = dict(ans["data"])
        data["reachable"] = True
        data["addr"] = addr
        return data

    async def ask_all(wait: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        results = await asyncio.gather(*(one(a, wait) for a in ([cp] if cp else []) + hosts))
        hs = list(results[1:] if cp else results)
        for i, h in enumerate(hs):
            if not h.get("reachable"):
                h.setdefault("name", _named_by_peer(hs, h) or f"host{i + 1}")
        return (results[0] if cp else {"reachable": False, "error": "not configured"}), hs

    end = time.monotonic() + timeout
    cps, hs = await ask_all(timeout)
    # answers that disagree on who is the active (taken at different moments of a role change):
    # all three asked again, a few times within the timeout; summarize judges what is left
    for pause in REASK_PAUSES:
        left = end - time.monotonic() - pause
        if not cp or not cps.get("reachable") or disagreement(cps, hs) is None or hosts_refuse(cps, hs) or left < 0.05:
            break
        await asyncio.sleep(pause)
        cps2, hs2 = await ask_all(left)
        if not cps2.get("reachable") or any(h.get("reachable") and not h2.get("reachable") for h, h2 in zip(hs, hs2, strict=True)):
            break  # one that answered before and not now: keep the answers it gave rather than call it down
        cps, hs = cps2, hs2
    if cps.get("reachable") and cps.get("state") == "waiting":  # no CP serves: waiting, or taking the journal over
        said = machines
        if said is None:  # one CP address: the one asked (a waiting CP of two CP machines, or one still taking over)
            said = [{"addr": cp, "reachable": True, "name": cps.get("name"), "state": cps.get("cp_state") or "waiting"}]
        why = "no CP serves: " + ", ".join(machine_state(m) for m in said)
        if machines is None and cps.get("takeover") == "on_wake" and cps.get("cp_state") == "waiting":
            why += " (it waits for keepalived to make its machine master; name both CP machines in the ctl config's cp to find the serving one)"
        cps = {"reachable": False, "addr": cp, "error": why, "not_serving": True}  # (it answered: not "cannot be asked")
    return summarize(cps, list(hs), machines)


def _named_by_peer(hosts: list[dict[str, Any]], unasked: dict[str, Any]) -> str | None:
    """The name of a host that could not be asked, as the pair's other host knows its peer, when
    the ctl config names two hosts and that other one answered; else None (it is named by its
    place in the config)."""
    if len(hosts) != 2:
        return None
    other = hosts[1] if hosts[0] is unasked else hosts[0]
    link = other.get("peer_link") if other.get("reachable") else None
    peer = link.get("peer") if isinstance(link, dict) else None
    return peer if isinstance(peer, str) and peer and peer != other.get("name") else None


def machine_state(m: dict[str, Any]) -> str:
    """A CP machine as `no CP serves` names it: its name, address and state."""
    if not m.get("reachable"):
        return f"{m['addr']} unreachable"
    return f"{m['name']} at {m['addr']} {m.get('state')}" if m.get("name") else f"{m['addr']} {m.get('state')}"
