"""bench/cp.py's report: its section of BENCHMARKS.md (render), from the raw results alone, with
the goals it judges them by.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._report import machine_line, raw_name  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "cp.json"
GOAL_RATIO = 0.5
GOAL_SWITCH_MS = 50.0
GOAL_KIB = 10.0


def verdict(runs: list[dict[str, Any]]) -> str:
    nf = sum(1 for r in runs if not r.get("ok", True))
    return "all OK" if not nf else f"**{nf} FAILED**"


def disk_line(fs: dict[str, Any]) -> str:
    return (
        f"This machine's disk, measured in the same run: one 200-byte append + `fdatasync` takes p50 {fs['p50_ms']:.3f} ms,"
        f" p99 {fs['p99_ms']:.3f} ms ({fs['n']} calls in the benchmark's work directory)."
    )


def render(res: dict[str, Any], a: argparse.Namespace) -> str:
    """The BENCHMARKS.md section, from the raw results alone (`res` = the JSON's "results")."""
    L: list[str] = []
    L.append(f"Command: `{a.command}`")
    L.append(f"Raw results: `bench/results/{raw_name(a, RESULTS)}` (`--render` rebuilds these tables).")
    L.append("")
    L.append(f"Machine: {machine_line(a.machine)}. hsbcpd, the host, the load generator and the benchmark share the machine's cores.")
    L.append(f"Run: {res['when']}, {res['settings']}.")
    L.append("")
    if res.get("throughput"):
        L.append(
            "Round trips, closed loop (each terminal keeps `window` messages outstanding and sends "
            "the next on each reply), host answers at once; median of the repetitions; CPU is the "
            "share of one core each process used while sending, (other) what the rest of the machine "
            "used meanwhile:"
        )
        L.append("")
        L.append(
            "| terminals | window | via hsbcpd msg/s | p50 ms | p99 ms | direct msg/s | p50 ms | p99 ms | CP / direct | CPU via CP: load / hsbcpd / host (other) | CPU direct: load / echo (other) | verdict |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
        disturbed = total = 0
        failed: list[str] = []
        for t in res["throughput"]:
            c, dr = t["cp"], t["direct"]
            mem = t.get("memory_only") or {"runs": []}
            cc, dc = c["cpu"], dr["cpu"]
            disturbed += sum(r.get("disturbed", False) for r in c["runs"] + dr["runs"] + mem["runs"])
            total += len(c["runs"]) + len(dr["runs"]) + len(mem["runs"])
            for mode, side in (("via hsbcpd", c), ("direct", dr), ("memory-only hsbcpd", mem)):
                failed += [
                    f"{t['terminals']:,} terminals, window {t['window']}, {mode}: {'; '.join(r.get('failures') or [])}"
                    for r in side["runs"]
                    if not r.get("ok", True)
                ]
            L.append(
                f"| {t['terminals']:,} | {t['window']} | {c['rate']:,.0f} | {c['p50']:.2f} | {c['p99']:.2f} | {dr['rate']:,.0f} | "
                f"{dr['p50']:.2f} | {dr['p99']:.2f} | {100 * t['ratio']:.0f} % | "
                f"{cc.get('load', 0):.0%} / {cc.get('hsbcpd', 0):.0%} / {cc.get('host', 0):.0%} "
                f"({cc.get('other', 0):.0%}) | "
                f"{dc.get('load', 0):.0%} / {dc.get('echo', 0):.0%} ({dc.get('other', 0):.0%}) | "
                f"{verdict(c['runs'] + dr['runs'])} |"
            )
        if failed:
            L.append("")
            L.append(
                f"**{len(failed)} load run{'s' if len(failed) != 1 else ''} failed the strict verdict** (their figures are in the medians above):"
            )
            L.append("")
            L += [f"- {f}" for f in failed]
        L.append("")
        L.append("Capacity (each side at the window that gave it the most msg/s; goal: through hsbcpd >= 50 % of direct):")
        L.append("")
        L.append("| terminals | via hsbcpd msg/s (window) | direct msg/s (window) | CP / direct | goal >= 50 % |")
        L.append("|---:|---:|---:|---:|:---:|")
        for n in sorted({t["terminals"] for t in res["throughput"]}):
            rows = [t for t in res["throughput"] if t["terminals"] == n]
            bc = max(rows, key=lambda t: t["cp"]["rate"])
            bd = max(rows, key=lambda t: t["direct"]["rate"])
            ratio = bc["cp"]["rate"] / bd["direct"]["rate"] if bd["direct"]["rate"] else 0.0
            clean = all(r.get("ok", True) for t in rows for side in ("cp", "direct") for r in t[side].get("runs", []))
            ok = "met" if ratio >= GOAL_RATIO and clean else "**missed**"
            L.append(
                f"| {n:,} | {bc['cp']['rate']:,.0f} ({bc['window']}) | {bd['direct']['rate']:,.0f} ({bd['window']}) | {100 * ratio:.0f} % | {ok} |"
            )
        L.append("")
        dur = [t for t in res["throughput"] if t.get("memory_only")]
        if dur:
            L.append(
                'The journal\'s cost: the same CP with `durability = "fsync"` (the default: every ack and reply waits for'
                ' its record\'s group commit) beside `durability = "none"` (memory only), same terminals, interleaved in'
                " one run; ack latency is send → ack at the terminal (goal: durable ≥ 80 % of memory-only msg/s, and"
                " ≤ 2 ms more p99 ack latency):"
            )
            L.append("")
            L.append(
                "| terminals | window | fsync msg/s | none msg/s | fsync / none | ack p50 fsync / none ms | ack p99 fsync / none ms | p99 ack added | goals | verdict |"
            )
            L.append("|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|")
            for t in dur:
                c, m = t["cp"], t["memory_only"]
                added = c["ack_p99"] - m["ack_p99"]
                clean = all(r.get("ok", True) for r in c["runs"] + m["runs"])
                ok = "met" if (t["durable_ratio"] or 0) >= 0.8 and added <= 2.0 and clean else "**missed**"
                L.append(
                    f"| {t['terminals']:,} | {t['window']} | {c['rate']:,.0f} | {m['rate']:,.0f} | {100 * (t['durable_ratio'] or 0):.0f} % | "
                    f"{c['ack_p50']:.2f} / {m['ack_p50']:.2f} | {c['ack_p99']:.2f} / {m['ack_p99']:.2f} | {added:+.2f} ms | {ok} | "
                    f"{verdict(c['runs'] + m['runs'])} |"
                )
            fs = res.get("fdatasync")
            if fs:
                L.append("")
                L.append(disk_line(fs))
            L.extend(loop_lines(dur))
            L.append("")
        if disturbed:
            L.append(
                f"{disturbed} of {total} load runs kept were disturbed by other load on the machine (more than --max-other cores) even after retries."
            )
            L.append("")
        L.append(
            "CPU time per round trip (µs of CPU per message answered; median of the runs; less sensitive than msg/s to other load on the machine):"
        )
        L.append("")
        L.append("| terminals | window | via hsbcpd: load | hsbcpd | host | total | direct: load | echo | total | hsbcpd / echo |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for t in res["throughput"]:
            cu, du = t["cp"]["us_per_msg"], t["direct"]["us_per_msg"]
            ct, dt = sum(cu.values()), sum(du.values())
            rel = f"{cu.get('hsbcpd', 0) / du['echo']:.1f}x" if du.get("echo") else "-"
            L.append(
                f"| {t['terminals']:,} | {t['window']} | {cu.get('load', 0):.1f} | {cu.get('hsbcpd', 0):.1f} | "
                f"{cu.get('host', 0):.1f} | {ct:.1f} | {du.get('load', 0):.1f} | {du.get('echo', 0):.1f} | "
                f"{dt:.1f} | {rel} |"
            )
        L.append("")
    if res.get("ack"):
        L.append(
            "Ack latency at a fixed offered rate (open loop: each terminal sends on its own schedule, whatever the"
            ' replies do, so no queue builds up as it does at capacity), `durability = "fsync"` beside `"none"`,'
            " interleaved in one run; send → ack at the terminal, median of the repetitions (goal: ≤ 2 ms more p99):"
        )
        L.append("")
        L.append(
            "| terminals | offered msg/s | replied msg/s fsync / none | ack p50 fsync / none ms | ack p99 fsync / none ms | p99 ack added | goal | verdict |"
        )
        L.append("|---:|---:|---:|---:|---:|---:|:---:|---|")
        for t in res["ack"]:
            c, m = t["cp"], t["memory_only"]
            added = c["ack_p99"] - m["ack_p99"]
            clean = all(r.get("ok", True) for r in c["runs"] + m["runs"])
            ok = "met" if added <= 2.0 and clean else "**missed**"
            L.append(
                f"| {t['terminals']:,} | {t['offered']:,.0f} | {c['rate']:,.0f} / {m['rate']:,.0f} | {c['ack_p50']:.2f} / {m['ack_p50']:.2f} | "
                f"{c['ack_p99']:.2f} / {m['ack_p99']:.2f} | {added:+.2f} ms | {ok} | {verdict(c['runs'] + m['runs'])} |"
            )
        fs = res.get("fdatasync")
        if fs and not res.get("throughput"):
            L.append("")
            L.append(disk_line(fs))
        L.append("")
    if res.get("switch"):
        L.append("Switchover of N sessions inside hsbcpd (active host link closed, standby asks, granted); median (max) of the rounds:")
        L.append("")
        L.append(
            "| sessions | hsbcpd `switch_ms`: sessions flipped, held re-delivered | `notices_sent_ms`: grant → last `switched` written | goal (10,000 ≤ 50 ms) | terminal side: grant received → last `switched` received | floor: bare uvloop, one write per socket | kernel floor: `socket.send` per socket, nobody reading | other CPU before the rounds |"
        )
        L.append("|---:|---:|---:|:---:|---:|---:|---:|---:|")
        for s in res["switch"]:
            if "switch_ms" not in s:
                continue
            goal = ("met" if s["notices_sent_ms"] <= GOAL_SWITCH_MS else "**missed**") if s["terminals"] >= 10000 else "-"
            fl, kf = s.get("floor"), s.get("kernel_floor")
            floor = f"{fl['write_ms']:.1f} ms" if fl else "-"
            kfloor = f"{kf['send_ms']:.1f} ms ({kf['us_per_send']:.1f} µs each)" if kf else "-"
            L.append(
                f"| {s['terminals']:,} | {s['switch_ms']:.1f} ({s['switch_ms_max']:.1f}) ms | "
                f"{s['notices_sent_ms']:.1f} ({s['notices_sent_ms_max']:.1f}) ms | {goal} | "
                f"{s['grant_to_last_switched_ms']:.1f} ms | {floor} | {kfloor} | {s['background_cpu']:.0%} |"
            )
        L.append("")
    mem = next((s["memory"] for s in res.get("switch", []) if "memory" in s), None)
    if mem:
        n = mem["terminals"]
        L.append(f"Resident memory of hsbcpd (VmRSS), {n:,} terminals defined:")
        L.append("")
        L.append("| state | VmRSS | per connected terminal | goal <= 10 KiB |")
        L.append("|---|---:|---:|:---:|")
        L.append(f"| none connected (active and standby hosts registered) | {mem['idle_kib'] / 1024:.1f} MiB | - | |")
        for k, label in (
            ("active", f"{n:,} connected, active sessions"),
            ("standby", "+ a standby session each"),
            ("after_ping", "+ one round trip each"),
        ):
            per = mem[f"{k}_per_terminal_kib"]
            ok = "met" if per <= GOAL_KIB else "**missed**"
            L.append(f"| {label} | {mem[f'{k}_kib'] / 1024:.1f} MiB | {per:.2f} KiB | {ok} |")
        L.append("")
    return "\n".join(L)


def loop_lines(dur: list[dict[str, Any]]) -> list[str]:
    """hsbcpd's CPU per message, durable beside memory-only, and its event loop's thread's share
    (runs from before the bench measured it: nothing)."""
    out = []
    for t in dur:
        c, m = t["cp"], t["memory_only"]
        cl, ml = c.get("loop_us_per_msg", {}).get("hsbcpd"), m.get("loop_us_per_msg", {}).get("hsbcpd")
        if cl is None or ml is None:
            continue
        cu, mu = c["us_per_msg"].get("hsbcpd", float("nan")), m["us_per_msg"].get("hsbcpd", float("nan"))
        out.append(
            f"hsbcpd's CPU per message at {t['terminals']:,} terminal{'s' if t['terminals'] != 1 else ''}, window {t['window']}, durable / memory-only: {cu:.1f} / {mu:.1f} µs,"
            f" of which its event loop's thread {cl:.1f} / {ml:.1f} µs (the rest: the kernel's io_uring workers writing the"
            " journal's groups durably, and hsbcpd's other threads)."
        )
    return ["", *out] if out else []
