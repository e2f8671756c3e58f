"""The lease rule, measured: over many asymmetric cuts of the active, the margin between the old
active's step-down (its lease running out) and the CP's grant to the standby.

    sudo .venv/bin/python bench/lease.py [--rounds 50] [--sigstop 10] [--json FILE] [--no-write] [--render FILE]

Each round is tests/netns/lease.py in a fresh lab of network namespaces: host A, the active, has
what it sends cut first and what it receives cut 150 ms (even rounds) or 400 ms (odd rounds)
later, under load (50 terminals, 200 msg/s, journal service), with every daemon's status and both
hosts' `/active` sampled every 20 ms over the management network. `--sigstop N` adds N rounds in
which host A is frozen with SIGSTOP and woken just after the grant. Per round: the margin
(grant − host A's `lease_lost.expired_at`, both on the wall clock of one machine), the cut → step
down and cut → grant times, the worst pause the terminals saw, and whether any sample showed two
hosts active with a valid lease or answering 200 on `/active` (the rule says never). Needs root,
iproute2 and tc. Raw results: bench/results/lease.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sandbox import fmt_ms, machine, machine_line, median, pctl, raw_name, result_args, run_or_render, say, table, write_section  # noqa: E402

COMMAND = "sudo .venv/bin/python bench/lease.py"
RESULTS = Path(__file__).resolve().parent / "results" / "lease.json"
SECTION = "The lease rule (`bench/lease.py`)"


def render(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    out = [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds this table).",
        "",
        f"Machine: {machine_line(a.machine)}; each round a fresh lab of network namespaces (hsbcpd, host A, host B,"
        " the terminals), 50 terminals at 200 msg/s, journal service, default timing (heartbeat 100 ms, CP"
        " host_timeout 500 ms, host_lease 350 ms, margin 100 ms). Every daemon's status and both hosts' `/active`"
        " sampled every 20 ms over a management network that is never cut.",
        "",
        "**Margin** = the CP's `switchover_granted` − host A's lease expiry (`lease_lost.expired_at`): how long before"
        " the grant the old active had stopped acting as the active. It must be > 0 in every round.",
        "",
    ]
    body = []
    for label, pred in (
        ("out cut 150 ms before in", lambda r: r["how"] == "asymmetric" and r["lead_ms"] == 150),
        ("out cut 400 ms before in", lambda r: r["how"] == "asymmetric" and r["lead_ms"] == 400),
        ("SIGSTOP, woken after the grant", lambda r: r["how"] == "sigstop"),
    ):
        rs = [r for r in rows if pred(r)]
        if not rs:
            continue
        m = [r["margin_ms"] for r in rs if r.get("margin_ms") is not None]
        sd = [r["cut_to_step_down_ms"] for r in rs if r.get("cut_to_step_down_ms") is not None]
        gr = [r["cut_to_grant_ms"] for r in rs if r.get("cut_to_grant_ms") is not None]
        wp = [r["worst_pause_ms"] for r in rs if r.get("worst_pause_ms") is not None]
        bad = sum(1 for r in rs if r.get("two_lease_actives") or r.get("two_200") or r.get("a_said_active_after_grant"))
        body.append(
            [
                label,
                str(len(rs)),
                f"{fmt_ms(min(m) if m else None, 1)}",
                f"{fmt_ms(median(m), 1)}",
                f"{fmt_ms(max(m) if m else None, 1)}",
                f"{fmt_ms(median(sd), 1)}",
                f"{fmt_ms(median(gr), 1)}",
                f"{fmt_ms(median(wp), 1)} ({fmt_ms(max(wp) if wp else None, 1)})",
                str(sum(r.get("samples", 0) for r in rs)),
                str(bad),
                "all OK" if all(r.get("ok") for r in rs) else f"**{sum(not r.get('ok') for r in rs)} FAILED**",
            ]
        )
    out.append(
        table(
            [
                "run",
                "rounds",
                "margin min (ms)",
                "margin median",
                "margin max",
                "cut → step down (median)",
                "cut → grant (median)",
                "worst pause median (max)",
                "status samples",
                "samples with two actives or two 200s",
                "verdict",
            ],
            body,
            "lrrrrrrrrrl",
        )
    )
    m = [r["margin_ms"] for r in rows if r.get("margin_ms") is not None]
    if m:
        out += [
            "",
            f"Goal: the margin is > 0 in every round: minimum {min(m):.1f} ms over {len(m)} rounds, p1 {pctl(m, 1):.1f} ms"
            f" (**{'met' if min(m) > 0 and len(m) == len(rows) else 'missed'}**).",
        ]
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> int:
    from tests.netns import lease
    from tests.netns.harness import tc_reason

    why = tc_reason()
    if why is not None:
        say(f"cannot run: {why}")
        return 2
    base = Path(tempfile.mkdtemp(prefix="hsb-bench-lease-"))
    rows: list[dict[str, Any]] = []
    plan = [("asymmetric", 0.15 if i % 2 == 0 else 0.4) for i in range(a.rounds)] + [("sigstop", 0.0)] * a.sigstop
    for i, (how, lead) in enumerate(plan):
        try:
            r = await lease.run(base / f"r{i}", how=how, lead=lead)
            try:
                lease.check(r)
                r["ok"] = True
            except AssertionError as exc:
                r["ok"], r["failure"] = False, str(exc)
        except Exception as exc:  # a round that could not run is a failed round, not a crash of the bench
            r = {"how": how, "lead_ms": round(lead * 1000), "ok": False, "failure": repr(exc)}
        r.pop("two_lease_actives", None) if not r.get("two_lease_actives") else None
        rows.append(r)
        say(
            f"   {i + 1}/{len(plan)} {how} lead {r.get('lead_ms')}: margin {fmt_ms(r.get('margin_ms'), 1)} ms,"
            f" step down {fmt_ms(r.get('cut_to_step_down_ms'), 1)}, grant {fmt_ms(r.get('cut_to_grant_ms'), 1)} ms;"
            f" {'OK' if r['ok'] else 'FAILED: ' + r.get('failure', '')}"
        )
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": a.machine, "command": a.command, "results": rows}, indent=1))
    text = render(rows, a)
    print(text)
    if a.write:
        write_section(SECTION, text)
    return 0 if all(r["ok"] for r in rows) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/lease.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50, help="asymmetric cuts (lead 150 and 400 ms alternating)")
    p.add_argument("--sigstop", type=int, default=10, help="SIGSTOP rounds, woken just after the grant")
    result_args(p, RESULTS)
    a = p.parse_args(argv)
    a.command = COMMAND + (" " + " ".join(argv if argv is not None else sys.argv[1:]) if (argv or sys.argv[1:]) else "")
    a.machine = machine()

    def rerender(saved: dict[str, Any]) -> str:
        return render(saved["results"], a)

    return run_or_render(a, SECTION, rerender, amain)


if __name__ == "__main__":
    sys.exit(main())
