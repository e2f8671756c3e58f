"""Start real daemons for tests: generated configs, free ports, logs in tmp, kill in teardown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET = b"test-secret-0123456789abcdef"


from hsb.ports import free_port as free_port  # noqa: E402  (re-exported for tests)


def write_secret(d: Path, secret: bytes = SECRET) -> Path:
    p = d / "secret"
    p.write_bytes(secret)
    p.chmod(0o600)
    return p


def wait_for(cond: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def until(cond: Any, timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """`wait_for` for async tests: polls on the event loop instead of blocking it."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def signal_faults(ctl: Path, pid: int, text: str) -> Path:
    """Write a fault control file and SIGUSR2 the process (hsb.faults); the file the process
    writes once it has applied it (CTL.applied, removed first) is returned."""
    applied = Path(str(ctl) + ".applied")
    applied.unlink(missing_ok=True)
    ctl.write_text(text + "\n")
    os.kill(pid, signal.SIGUSR2)
    return applied


async def arm_faults(ctl: Path, pid: int, text: str, timeout: float = 10.0) -> None:
    """`signal_faults`, then wait until the process says it applied the text."""
    want = "\n".join(" ".join(ln.split()) for ln in text.splitlines() if ln.strip())
    applied = signal_faults(ctl, pid, text)
    await until(lambda: applied.exists() and applied.read_text() == want, timeout, what=f"the fault {text!r} applied")


def python_lines(*lines: str) -> str:
    """Run these lines of Python in a process of its own (for what touches a process's signal
    dispositions or its stderr); its stdout. It must exit 0."""
    r = subprocess.run([sys.executable, "-c", "\n".join(lines) + "\n"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def log_events(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]
    info: dict[str, Any] = field(default_factory=dict)
    mark: int = 0  # events of the log before this process started (a restart appends to it)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        evs = log_events(self.log)[self.mark :]
        return [e for e in evs if name is None or e.get("event") == name]

    def wait_event(self, name: str, timeout: float = 10.0, **match: Any) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            for e in self.events(name):
                if all(e.get(k) == v for k, v in match.items()):
                    return e
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode} before {name}; log:\n{self.log.read_text()[-3000:]}")
            return None

        found: dict[str, Any] = wait_for(find, timeout, what=f"{self.name} event {name} {match or ''}")
        return found

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


def spawn(name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    fh = open(log, "ab")  # noqa: SIM115 - the child's log, closed by its owner
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen(argv, stdout=fh, stderr=fh, stdin=subprocess.DEVNULL, env=e)
    fh.close()
    return Proc(name, argv, log, p)


from hsb.config import toml_value  # noqa: E402  (one writer for generated configs)


def cp_config(
    d: Path, *, terminals: int = 10, prefix: str = "T", extra_terms: list[dict[str, Any]] | None = None, tls: dict[str, Any] | None = None, **cp: Any
) -> Path:
    write_secret(d)
    # fixed free ports, not 0: a restarted hsbcpd (restart_cp) listens where the first one did
    base = {
        "name": "cp",
        "terminal_listen": f"127.0.0.1:{free_port()}",
        "host_listen": f"127.0.0.1:{free_port()}",
        "admin_listen": f"127.0.0.1:{free_port()}",
        "secret_file": "secret",
    }
    base.update(cp)
    lines = ["[cp]"] + [f"{k} = {toml_value(v)}" for k, v in base.items()]
    if tls:
        lines += ["", "[tls]"] + [f"{k} = {toml_value(v)}" for k, v in tls.items()]
    if terminals:
        lines += ["", "[[terminal_groups]]", f'prefix = "{prefix}"', f"count = {terminals}", 'attrs = { kind = "till" }']
    for t in extra_terms or []:
        lines += ["", "[[terminals]]"] + [f"{k} = {toml_value(v)}" for k, v in t.items()]
    p = d / "cp.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def start_cp(d: Path, env: dict[str, str] | None = None, **kw: Any) -> Proc:
    d.mkdir(parents=True, exist_ok=True)
    cfg = cp_config(d, **kw)
    return _run_cp(d, cfg, env)


def restart_cp(old: Proc, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
    """hsbcpd again on the same config (ports, journal) after `old` died or was killed."""
    old.stop()
    cfg = Path(old.argv[-1])
    return _run_cp(cfg.parent, cfg, env, wait)


def _run_cp(d: Path, cfg: Path, env: dict[str, str] | None, wait: bool = True) -> Proc:
    mark = len(log_events(d / "cp.log"))
    proc = spawn("hsbcpd", [sys.executable, "-m", "hsb.cp", "--config", str(cfg)], d / "cp.log", env)
    proc.mark = mark
    if wait:
        try:
            ev = proc.wait_event("cp_started", timeout=15)
        except BaseException:  # never started: nobody else holds it to stop it
            proc.stop()
            raise
        proc.info = {k[: -len("_listen")]: v for k, v in ev.items() if k.endswith("_listen")}
    return proc


def addr(s: str) -> tuple[str, int]:
    h, _, p = s.rpartition(":")
    return h, int(p)


def host_config(
    d: Path,
    name: str,
    *,
    cp: str,
    peer_listen: str,
    peer: str,
    takeover: Path,
    records: int,
    terminals: int = 10,
    prefix: str = "T",
    attrs: dict[str, Any] | None = None,
    extra_terms: list[dict[str, Any]] | None = None,
    service: str = "echo",
    service_options: dict[str, Any] | None = None,
    record_size: int = 4096,
    **host: Any,
) -> Path:
    write_secret(d)
    base = {
        "name": name,
        "peer": peer,
        "peer_listen": peer_listen,
        "cp": cp,
        "admin_listen": "127.0.0.1:0",
        "secret_file": "secret",
        "service": service,
    }
    base.update(host)
    lines = ["[host]"] + [f"{k} = {toml_value(v)}" for k, v in base.items()]
    lines += ["", "[takeover]", f"path = {toml_value(str(takeover))}", f"records = {records}", f"record_size = {record_size}"]
    if service_options:
        lines += ["", "[service_options]"] + [f"{k} = {toml_value(v)}" for k, v in service_options.items()]
    if terminals:
        lines += [
            "",
            "[[terminal_groups]]",
            f'prefix = "{prefix}"',
            f"count = {terminals}",
            f"attrs = {toml_value(attrs if attrs is not None else {'protocol': 'hsb1', 'codepage': 'utf-8'})}",
        ]
    for t in extra_terms or []:
        lines += ["", "[[terminals]]"] + [f"{k} = {toml_value(v)}" for k, v in t.items()]
    p = d / f"{name}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def start_host(d: Path, name: str, role: str, cfg: Path, env: dict[str, str] | None = None, wait: bool = True) -> Proc:
    log = d / f"{name}.log"
    k = 1
    while log.exists():  # a restart gets a log of its own
        log = d / f"{name}.{k}.log"
        k += 1
    proc = spawn(name, [sys.executable, "-m", "hsb.host", "--role", role, "--config", str(cfg)], log, env)
    if wait:
        try:
            ev = proc.wait_event("host_started", timeout=15)
        except BaseException:  # never started: nobody else holds it to stop it
            proc.stop()
            raise
        proc.info = {"admin": ev["admin_listen"], "peer": ev["peer_listen"], "config": str(cfg)}
    return proc


def create_takeover_file(path: Path, records: int, record_size: int = 4096) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hsb.ctl", "file", "create", str(path), "--records", str(records), "--record-size", str(record_size)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(f"hsbctl file create failed: {r.stderr}")


def http_get(addr: str, path: str) -> tuple[int, str]:
    """GET http://addr/path: (status, body); (0, "") if nothing listens (the process is gone)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError:
        return 0, ""
