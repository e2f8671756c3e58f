"""Shared pieces of bench/hsbd.py and bench/failover.py: sandboxes, their logs and status,
child processes speaking JSON lines, percentiles, and writing a section of BENCHMARKS.md.

Everything here talks to 127.0.0.1 only (the sandbox binds loopback ports). Timestamps are
wall-clock seconds (`time.time()`): the daemons' JSON logs carry ISO UTC timestamps with
microseconds from the same clock, so times taken in different processes can be compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import machine as _common_machine  # noqa: E402
from bench._interrupt import default_signals, exit_status, stop_children, stop_on_signals  # noqa: E402
from hsb.ctl import sandbox  # noqa: E402
from hsb.ctl.gather import status_all  # noqa: E402
from hsb.wire.auth import load_secret  # noqa: E402
from hsb.wire.client import FrameStream  # noqa: E402

BENCHMARKS = REPO / "BENCHMARKS.md"


# --------------------------------------------------------------------------- machine


def machine() -> dict[str, Any]:
    """What the figures were measured on (bench/_common.py), plus load, date and code state."""
    return {
        **_common_machine(),
        "loadavg": os.getloadavg(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "code": _code_version(),
    }


def _code_version() -> str:
    import subprocess

    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "hsb"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return f"{head}{' + uncommitted changes in hsb/' if dirty else ''}"


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cores']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, uvloop {m['uvloop']}; "
        f"load average at start {m['loadavg'][0]:.2f}; code {m.get('code', '?')}; {m['date']}"
    )


# --------------------------------------------------------------------------- numbers


def pctl(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100); with few samples p99 is the maximum."""
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    k = max(1, math.ceil(len(v) * p / 100.0))
    return v[k - 1]


def median(values: list[float]) -> float | None:
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def latencies(rs: list[dict[str, Any]], key: str) -> list[float]:
    """The runs' reply latency figures (`key`), for a median or a goal: a run with a message
    never answered counts as infinite (hsb.term.timeline gives no figure then), never as a run
    without the figure."""
    return [float("inf") if r.get("unanswered") else r[key] for r in rs if r.get("unanswered") or r.get(key) is not None]


def fmt_ms(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "–"
    if v == float("inf"):
        return "∞"
    return f"{v:,.{digits}f}"


# --------------------------------------------------------------------------- logs


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class LogTail:
    """The JSON-lines log of one daemon, read incrementally (the sandbox appends across restarts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def mark(self) -> int:
        """Forget what was read; later `read()`s return only lines written from now on."""
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.events = []
        return self.offset

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return self.events
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read()
        end = data.rfind(b"\n")
        if end < 0:
            return self.events
        chunk, self.offset = data[: end + 1], self.offset + end + 1
        for line in chunk.splitlines():
            if not line.startswith(b"{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if "timestamp" in e:
                e["_t"] = ts(e["timestamp"])
            self.events.append(e)
        return self.events

    def find(self, name: str, after: float = 0.0, last: bool = False, **match: Any) -> dict[str, Any] | None:
        hits = [e for e in self.read() if e.get("event") == name and e.get("_t", 0) >= after and all(e.get(k) == v for k, v in match.items())]
        if not hits:
            return None
        return hits[-1] if last else hits[0]


class Logs:
    def __init__(self, d: Path) -> None:
        self.cp = LogTail(d / "cp.log")
        self.hosts = {n: LogTail(d / f"{n}.log") for n in sandbox.HOSTS}

    def __getitem__(self, name: str) -> LogTail:
        return self.cp if name == "cp" else self.hosts[name]

    def mark(self) -> None:
        self.cp.mark()
        for h in self.hosts.values():
            h.mark()


# --------------------------------------------------------------------------- status


async def status(d: Path, timeout: float = 2.0) -> dict[str, Any]:
    st = sandbox.load_state(d)
    return await status_all(
        st["cp"]["admin"], [h["admin"] for h in st["hosts"].values()], str(d / "secret"), timeout=timeout, ssl=sandbox.client_ssl(d)
    )


async def until(probe: Callable[[], Any], pred: Callable[[Any], bool], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Call the async `probe()` until `pred(result)`; TimeoutError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = await probe()
        if pred(last):
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


def host_by_role(st: dict[str, Any], role: str) -> str | None:
    for h in st["hosts"]:
        if h.get("reachable") and h.get("role") == role and h.get("state") not in ("fenced", "stopping"):
            return str(h["name"])
    return None


class Admin:
    """One authenticated admin connection kept open for many requests (cheap to poll)."""

    def __init__(self, addr: str, secret_file: str) -> None:
        h, _, p = addr.rpartition(":")
        self.host, self.port = h, int(p)
        self.secret = load_secret(secret_file)
        self.fs: FrameStream | None = None

    async def open(self) -> None:
        self.fs = await FrameStream.connect(self.host, self.port, timeout=5.0, max_frame=64 << 20)
        await self.fs.authenticate(self.secret, "admin", "bench", timeout=5.0)

    async def ask(self, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        if self.fs is None:
            await self.open()
        assert self.fs is not None
        self.fs.send(msg)
        await self.fs.drain()
        return await self.fs.recv(timeout)

    async def close(self) -> None:
        if self.fs is not None:
            await self.fs.aclose()
            self.fs = None


# --------------------------------------------------------------------------- processes


_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_by_pid() -> dict[int, float]:
    out: dict[int, float] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        f = raw[raw.rindex(b")") + 2 :].split()
        out[int(e)] = (int(f[11]) + int(f[12])) / _TCK
    return out


def proc_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) used so far by these processes together (gone ones: 0)."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
            f = raw[raw.rindex(b")") + 2 :].split()
            total += (int(f[11]) + int(f[12])) / _TCK
        except (OSError, ValueError, IndexError):
            pass
    return total


def _ancestry(pid: int) -> list[int]:
    chain = []
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                raw = fh.read()
            pid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError):
            break
    return chain


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) of `root` and every process below it, so far."""
    return sum(t for pid, t in _cpu_by_pid().items() if root in _ancestry(pid))


async def others_cpu(window: float = 1.0) -> float:
    """Cores used by processes that are not this benchmark or its descendants, over `window` s."""
    me = os.getpid()
    a = _cpu_by_pid()
    await asyncio.sleep(window)
    b = _cpu_by_pid()
    used = 0.0
    for pid, t in b.items():
        if pid == me or me in _ancestry(pid):
            continue
        used += max(0.0, t - a.get(pid, t))
    return used / window


async def wait_quiet(max_other: float, max_wait: float, window: float = 1.0) -> float:
    """Wait (up to `max_wait` s) until other processes use less than `max_other` cores; returns the last figure."""
    deadline = time.monotonic() + max_wait
    while True:
        o = await others_cpu(window)
        if o <= max_other or time.monotonic() > deadline:
            return o


def alive(pid: int) -> bool:
    return sandbox._alive(pid)


async def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def reap(pids: list[int]) -> None:
    """Collect these exited children (the sandbox spawns the daemons as our children);
    only these pids, so the exit status of other children (asyncio subprocesses) is not stolen."""
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except (ChildProcessError, OSError):
            pass


def sandbox_down(d: Path) -> None:
    """`sandbox.down`, then make sure that nothing it ever started is left (SIGKILL stragglers)."""
    try:
        st = sandbox.load_state(d)
    except Exception:
        return
    pids = [p for proc in [st["cp"], *st["hosts"].values()] for p in proc.get("pids", [proc.get("pid")]) if p]
    try:
        for pid in pids:  # a SIGSTOPped daemon must be able to act on SIGTERM
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        sandbox.down(d)
    finally:
        for pid in pids:
            if alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        reap(pids)


class Child:
    """A child process of this benchmark speaking JSON lines (commands on stdin, events on stdout)."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path, fh: Any) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.log = log
        self._fh = fh

    @classmethod
    async def start(cls, argv: list[str], log: Path) -> Child:
        fh = open(log, "ab")  # noqa: SIM115 - the child's log, closed by its owner
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=fh,
            limit=1 << 26,
            start_new_session=True,
            preexec_fn=sandbox.dies_with(os.getpid()),  # (a killed bench's too)
        )
        return cls(proc, log, fh)

    async def read(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            await asyncio.wait_for(self.proc.wait(), 5)
            raise RuntimeError(f"child {self.pid} exited ({self.proc.returncode}); log {self.log}:\n{self.log.read_text()[-3000:]}")
        return json.loads(line)

    async def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(msg) + "\n").encode())
        await self.proc.stdin.drain()

    async def stop(self, timeout: float = 30.0) -> None:
        if self.proc.returncode is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (TimeoutError, OSError):
                pass
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await self.proc.wait()
        self._fh.close()


def say(*a: Any) -> None:
    """Progress for the person running a bench: stderr, so stdout stays the report."""
    print(*a, file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


# --------------------------------------------------------------------------- BENCHMARKS.md


def write_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    """Put `## title` + body into BENCHMARKS.md: replace our own earlier section of that title,
    else append at the end. Other sections are left byte for byte as they are."""
    head = f"## {title}"
    text = path.read_text() if path.exists() else ""
    section = f"{head}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip("\n") == head), None)
    if start is None:
        sep = "" if not text else ("\n" if text.endswith("\n") else "\n\n")
        if text and not text.endswith("\n\n"):
            sep = "\n" if text.endswith("\n") else "\n\n"
        path.write_text(text + sep + section)
        return
    end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))


def result_args(ap: Any, results: Path) -> None:
    """The options every bench shares: where its raw results go, re-rendering them, BENCHMARKS.md."""
    ap.add_argument("--json", default=str(results), help="write the raw results to this file (default: %(default)s)")
    ap.add_argument("--render", metavar="JSON", help="do not measure: render the results saved with --json")
    ap.add_argument("--no-write", dest="write", action="store_false", help="do not update BENCHMARKS.md")
    ap.add_argument("--write", dest="write", action="store_true", help="update BENCHMARKS.md (the default)")


def save_results(a: Any, section: str, res: Any, text: str) -> None:
    """Write a run's raw results (with the machine and the command) to --json, print its report,
    and put it into BENCHMARKS.md as `## section` unless --no-write."""
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": a.machine, "command": a.command, "results": res}, indent=1) + "\n")
    print(text)
    if a.write:
        write_section(section, text)


def raw_name(a: Any, default: Path) -> str:
    """The raw results' file a section cites: the one rendered (--render), else the one written
    (--json), else the bench's default."""
    return Path(getattr(a, "render", None) or getattr(a, "json", None) or default).name


def section_head(a: Any, setup: str) -> list[str]:
    """The first lines of a bench_main bench's section: its command, its raw results, and the
    machine followed by `setup` (what was run, how)."""
    return [
        f"Command: `{a.command}`",
        f"Raw results: `bench/results/{raw_name(a, Path(a.json))}` (`--render` rebuilds this section).",
        "",
        f"Machine: {machine_line(a.machine)}. {setup}",
    ]


def bench_main(
    ap: Any, argv: list[str] | None, *, command: str, results: Path, section: str, render: Callable[[Any, Any], str], amain: Callable[[Any], Any]
) -> int:
    """The entry of an in-process bench whose --json holds {"machine", "command", "results"}
    (save_results): parse, note the command and the machine, measure or re-render."""
    result_args(ap, results)
    argv = sys.argv[1:] if argv is None else argv
    a = ap.parse_args(argv)
    a.command = command + (" " + " ".join(argv) if argv else "")
    a.machine = machine()
    return run_or_render(a, section, lambda saved: render(saved["results"], a), amain, daemon_loop=True)


# ---------------------------------------------------------------- benches run in child processes


def run_child(script: str, mode: str, n: int) -> dict[str, Any]:
    """`script --child MODE --terminals N` in a process of its own (a fresh heap each run): what it printed last, as JSON."""
    out = subprocess.run(
        [sys.executable, script, "--child", mode, "--terminals", str(n)], check=True, capture_output=True, text=True, timeout=900
    ).stdout
    r: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return r


async def run_modes(
    script: str, modes: tuple[str, ...], n: int, reps: int, check: Callable[[str, dict[str, Any]], None], alternate: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Each mode's `run_child` run `reps` times, the modes in turn (their order reversed every
    other repetition with `alternate`), each result passed to `check(mode, result)` (it asserts)."""
    tag = Path(script).stem
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(reps):
        for mode in modes if rep % 2 == 0 or not alternate else modes[::-1]:
            r = await asyncio.to_thread(run_child, script, mode, n)
            check(mode, r)
            runs[mode].append(r)
            print(f"[{tag}] rep {rep + 1} {mode}: {r['flip_ms']} ms", file=sys.stderr, flush=True)
    return runs


def child_main(argv: list[str], modes: tuple[str, ...], child: Callable[[str, int], Coroutine[Any, Any, dict[str, Any]]]) -> int:
    """The child's side of `run_child`: `child(mode, terminals)` on the daemons' event loop."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=modes)
    ap.add_argument("--terminals", type=int)
    c = ap.parse_args(argv)
    from hsb.loop import run

    print(json.dumps(run(child(c.child, c.terminals))))
    return 0


def bench_args(prog: str, doc: str | None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    ap.add_argument("--terminals", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=5)
    return ap


def run_or_render(a: Any, section: str, rerender: Callable[[dict[str, Any]], str], amain: Callable[[Any], Any], daemon_loop: bool = False) -> int:
    """A bench's entry: with `--render FILE`, print the report of a saved run (and with
    `--write` put it into BENCHMARKS.md as `## section`) instead of measuring; else measure.
    `daemon_loop`: measure on the daemons' own event loop (uvloop, hsb.loop), for a bench that
    runs daemon code in-process. A SIGTERM or SIGINT while measuring stops every sandbox and
    child the bench started (bench/_interrupt.py) and returns 128 + the signal's number; the
    daemons it starts die with it if it is killed (sandbox.die_with_this_process)."""
    if a.render:
        saved = json.loads(Path(a.render).read_text())
        a.machine = saved["machine"]
        a.command = saved.get("command", a.command)
        text = rerender(saved)
        print(f"{a.command}\n\n{text}")
        if a.write:
            write_section(section, text)
        return 0
    print(a.command, flush=True)
    stop_on_signals()  # SIGTERM, SIGINT: unwind through every `finally`, which stop the sandboxes
    sandbox.die_with_this_process()  # SIGKILL, which unwinds nothing: the daemons get it too
    try:
        byte_compile()
        from hsb import logs

        logs.setup("warning")
        if daemon_loop:
            from hsb.loop import run

            return int(run(amain(a)))
        return int(asyncio.run(amain(a)))
    except KeyboardInterrupt as exc:
        code = exit_status(exc)
        left = stop_children()  # (the net under the `finally` blocks: none should be left)
        say(f"{sys.argv[0]}: stopped by {signal.Signals(code - 128).name}; its sandboxes stopped" + (f", and children {left}" if left else ""))
        return code
    finally:
        default_signals()  # (a signal after the measuring, while results are written, ends it as before)


def byte_compile() -> None:
    """Byte-compile the hsb package the daemons will import (the tree on PYTHONPATH in a side by
    side run), as pip does at install: with PYTHONDONTWRITEBYTECODE set, as on the machines these
    figures come from, an editable checkout would otherwise compile every module at every daemon
    start, about 70 ms that a deployed daemon does not spend (a CP restart's figures include its start)."""
    import compileall

    import hsb

    compileall.compile_dir(str(Path(hsb.__file__).parent), quiet=1)


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------- the load child
#
# `python bench/_sandbox.py load --cp HOST:PORT --terminals N --rate R` runs
# `hsb.term.load.run_load` in a process of its own (so that the benchmark's loop and 10,000
# terminals do not starve each other), with the strict verdict. A `mark` command records an
# operation (a kill, a switchover) on the load's own clock: the report then carries, per mark,
# the worst pause a terminal saw (hsb.term.timeline). It also tells, on the wall clock, when
# every terminal had its `switched` notice or its session back after the mark.
#
# stdout (JSON lines): {"ev": "sending"}, {"ev": "armed"}, {"ev": "marked"}, {"ev": "recovered", ...},
# {"ev": "report", ...}.
# stdin (JSON lines):  {"cmd": "arm"} just before an operation (from here on, terminals coming
# back are counted); {"cmd": "mark", "label": L, "t": WALL} right after it, with the wall-clock
# time the operation was carried out (the child's clock if "t" is left out); {"cmd": "stop"} to
# end sending (then it settles, logs the terminals off and reports). EOF also stops it.


def fault_window_failures(report: dict[str, Any], terminals: int) -> list[str]:
    """What a run with ONE fault (a kill, a cut) made at its mark must also fail on: a terminal
    dropped before the fault (the CP-restart verdict lets a drop pass when another CP process
    welcomes it next: a second, unplanned restart would), or more changes of CP process than one
    per terminal."""
    out = []
    before = (report.get("extras") or {}).get("disconnects_before")
    if before is None:  # a run of tests/netns/loadrun.py: its first marked operation's
        ops = report.get("operations") or []
        before = ops[0].get("disconnects_before") if ops else None
    if before is None:
        out.append("disconnects before the fault: the load's report does not say (no extras, no marked operation)")
    elif before:
        out.append(f"disconnects before the fault: {before} welcomed terminals dropped before it was made")
    again = report.get("cp_reconnects") or 0
    if again > terminals:
        out.append(f"CP processes: {again} changes seen by {terminals} terminals, more than the one the fault explains")
    return out


def _stats_factory(made: list[Any]) -> Any:
    """What the load child puts in hsb.term.load's LoadStats: its own LoadStats, made with
    whatever run_load gives (positional and keyword: a keyword it did not pass on stopped every
    bench's load), each one kept in `made`."""
    cls = _load_stats_class()

    def factory(*args: Any, **kw: Any) -> Any:
        s = cls(*args, **kw)
        made.append(s)
        return s

    return factory


def _load_stats_class() -> type:
    import hsb.term.load as L

    class FailoverStats(L.LoadStats):  # type: ignore[misc, valid-type]
        """LoadStats that also tells when every terminal is back after the last mark."""

        def __init__(self, *args: Any, **kw: Any) -> None:  # (LoadStats's, whatever they become)
            super().__init__(*args, **kw)
            self.offset = time.time() - time.monotonic()
            self.mark_at: float | None = None  # monotonic
            self.back: set[str] = set()  # switched, or session open again, after the mark
            self.first_back: float | None = None
            self.last_back: float | None = None
            self.switched_after = 0
            self.reopened_after = 0
            self.disc_after = 0
            self.disc_before = 0  # welcomed terminals dropped before the arm: no fault was made yet
            self.recovered_sent = False

        def arm(self) -> float:
            self.mark_at = time.monotonic()
            self.back.clear()
            self.first_back = self.last_back = None
            self.switched_after = self.reopened_after = self.disc_after = 0
            self.recovered_sent = False
            return self.mark_at + self.offset

        def _back(self, c: Any) -> None:
            if self.mark_at is None or c.name in self.back:
                return
            now = time.monotonic()
            self.back.add(c.name)
            if self.first_back is None:
                self.first_back = now
            self.last_back = now
            if not self.recovered_sent and len(self.back) >= self.terminals:
                self.recovered_sent = True
                emit({"ev": "recovered", "t": now + self.offset})

        def on_switched(self, c: Any, epoch: int) -> None:
            super().on_switched(c, epoch)
            if self.mark_at is not None:
                self.switched_after += 1
            self._back(c)

        def on_session(self, c: Any, state: str, epoch: int, reason: str | None, first_open: bool) -> None:
            super().on_session(c, state, epoch, reason, first_open)
            if state == "open" and self.mark_at is not None:
                self.reopened_after += 1
                self._back(c)

        def on_disconnect(self, c: Any, exc: Exception | None, retry_in: float, welcomed: bool) -> None:
            super().on_disconnect(c, exc, retry_in, welcomed)
            if self.mark_at is not None and self.counting and welcomed:
                self.disc_after += 1
            elif self.mark_at is None and self.counting and welcomed:
                self.disc_before += 1

        def extras(self) -> dict[str, Any]:
            def wall(t: float | None) -> float | None:
                return None if t is None else t + self.offset

            return {
                "mark_at": wall(self.mark_at),
                "back": len(self.back),
                "first_back": wall(self.first_back),
                "last_back": wall(self.last_back),
                "switched_after": self.switched_after,
                "reopened_after": self.reopened_after,
                "disconnects_after": self.disc_after,
                "disconnects_before": self.disc_before,
            }

    return FailoverStats


async def _load_child(a: Any) -> None:
    import hsb.term.load as L
    from hsb import gcpolicy
    from hsb.term.connector import tls_context

    gcpolicy.apply()  # as hsbterm load does

    made: list[Any] = []
    L.LoadStats = _stats_factory(made)  # type: ignore[assignment, misc]
    sending, stop = asyncio.Event(), asyncio.Event()
    marks: list[tuple[str, float]] = []
    reader = await stdin_reader()

    async def commands() -> None:
        while True:
            line = await reader.readline()
            if not line:
                stop.set()
                return
            try:
                m = json.loads(line)
            except ValueError:
                continue
            if m.get("cmd") == "arm" and made:
                emit({"ev": "armed", "t": made[0].arm()})
            elif m.get("cmd") == "mark" and made:
                t = float(m["t"]) if m.get("t") is not None else time.time()
                if made[0].mark_at is None:
                    made[0].arm()
                marks.append((str(m.get("label", "operation")), t))
                emit({"ev": "marked", "t": t})
            elif m.get("cmd") == "stop":
                stop.set()

    async def announce() -> None:
        await sending.wait()
        emit({"ev": "sending", "t": time.time()})

    tasks = [asyncio.ensure_future(commands()), asyncio.ensure_future(announce())]
    workload = books = None
    if a.workload == "ledger":
        from hsb.term.workload import LedgerWorkload

        workload = LedgerWorkload(accounts=a.accounts)
        books = {"dsn": a.books_dsn, "sqlite": a.books_sqlite, "idempotency": not a.no_idempotency} if (a.books_dsn or a.books_sqlite) else None
    try:
        rep = await L.run_load(
            a.cp,
            terminals=a.terminals,
            rate=a.rate,
            duration=a.duration,
            settle=a.settle,
            window=a.window,
            connect_timeout=a.connect_timeout,
            sending=sending,
            stop=stop,
            marks=marks,
            after_s=a.after_s,
            expect_disconnects=a.expect_disconnects,
            closed_loop=a.closed_loop,
            workload=workload,
            books=books,
            ssl=tls_context(a.tls_ca) if a.tls_ca else None,
            source=a.source,
            start=a.start,
            names=None,
            **({"keepalive": a.keepalive} if a.keepalive is not None else {}),
        )
    finally:
        for t in tasks:
            t.cancel()
    out = rep.to_dict()
    out["extras"] = made[0].extras() if made else {}
    emit({"ev": "report", "report": out})


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="bench/_sandbox.py")
    sub = p.add_subparsers(dest="mode", required=True)
    lp = sub.add_parser("load", help="(child) run_load with failover bookkeeping; JSON lines on stdout")
    lp.add_argument("--cp", required=True)
    lp.add_argument("--terminals", type=int, required=True)
    lp.add_argument("--rate", type=float, required=True)
    lp.add_argument("--duration", type=float, default=3600.0)
    lp.add_argument("--settle", type=float, default=20.0)
    lp.add_argument("--window", type=int, default=8)
    lp.add_argument("--connect-timeout", type=float, default=120.0)
    lp.add_argument("--after-s", type=float, default=1.0, help="a mark's window: messages sent this long after it count")
    lp.add_argument("--expect-disconnects", action="store_true", help="conventional mode: disconnects do not fail the verdict")
    lp.add_argument(
        "--expect-cp-restart",
        dest="expect_disconnects",
        action="store_const",
        const="cp",
        help="a CP restart or takeover: only disconnects the CP's absence explains, and no session closure, pass the verdict",
    )
    lp.add_argument("--closed-loop", action="store_true", help="each terminal keeps --window outstanding (capacity)")
    lp.add_argument("--workload", default="echo", choices=["echo", "ledger"])
    lp.add_argument("--accounts", type=int, default=50)
    lp.add_argument("--books-dsn")
    lp.add_argument("--books-sqlite")
    lp.add_argument("--no-idempotency", action="store_true", help="ledger without records: check the books without them")
    lp.add_argument("--tls-ca", help="the CP's terminal listener speaks TLS: its CA file")
    lp.add_argument("--source", help="connect from this local address (127.0.0.x): several load children, more ports")
    lp.add_argument("--start", type=int, default=1, help="the first terminal's number (T00001 = 1): children split the table")
    lp.add_argument("--keepalive", type=int, default=None, help="the terminals' TCP keepalive idle seconds (default: hsbterm's; 0: none)")
    a = p.parse_args(argv)
    from hsb import loop

    if a.mode == "load":
        loop.run(_load_child(a))


async def start_load(cp: str, terminals: int, rate: float, log: Path, **kw: Any) -> Child:
    argv = [sys.executable, str(Path(__file__).resolve()), "load", "--cp", cp, "--terminals", str(terminals), "--rate", str(rate)]
    for k, v in kw.items():
        if v is True:
            argv.append(f"--{k.replace('_', '-')}")
        elif v is not False and v is not None:
            argv += [f"--{k.replace('_', '-')}", str(v)]
    return await Child.start(argv, log)


if __name__ == "__main__":
    main()
