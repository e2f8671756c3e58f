"""The files of a `hsbctl sandbox`: its folder and what is written in it.

The folder (refused unless new, empty or an earlier sandbox's), its secret, the configs of
hsbcpd, both hosts and hsbctl (free loopback ports), the takeover file sized for the terminals,
the state file that records the sandbox's processes (`sandbox.json`), and what is read back from
them (`describe`, hsbctl's TLS context). Nothing here starts, waits for or signals a process:
that is hsb.ctl.sandbox.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from hsb.config import toml_section
from hsb.host.cpgen import generation_path
from hsb.ports import PortRangeError, free_port
from hsb.service.api import BUILTIN_NAMES
from hsb.takeover.fileio import create_file
from hsb.takeover.layout import batch_records_for

STATE = "sandbox.json"
MARK = ".hsb-sandbox"  # written first by `up`: a folder with it is a sandbox's, even if a start failed
HOSTS = ("host-a", "host-b")


class SandboxError(Exception):
    pass


def records_for(terminals: int, record_size: int = 4096) -> int:
    """A comfortable file: header, batch, and a ring of 3·B + 64 records (size check needs 2·B)."""
    b = batch_records_for(terminals, record_size)
    return 1 + b + 3 * b + 64


def lease_for(host_timeout: float) -> float:
    """The active's lease for a CP host timeout: the default 0.35 s, shorter when the timeout is,
    below host_timeout - the margin (hsb.cp.config.LEASE_MARGIN) from a host_timeout of 0.12 s;
    below that no lease fits, and the CP refuses the config it is written into."""
    return round(max(0.02, min(0.35, host_timeout * 0.7 - 0.1)), 3) if host_timeout < 0.5 else 0.35


def write_configs(
    d: Path,
    *,
    terminals: int,
    service: str,
    conventional: bool,
    prefix: str = "T",
    host_timeout: float = 0.5,
    heartbeat_interval: float = 0.1,
    heartbeat_timeout: float = 0.5,
    logon_ms: float = 0,
    durability: str = "fsync",
    journal_segment_kib: int = 1024,
    host_options: dict[str, Any] | None = None,
    dsn: str | None = None,
    service_options: dict[str, Any] | None = None,
    tls: bool = False,
    cp_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    d.mkdir(parents=True, exist_ok=True)
    tls_dir = d / "tls"
    if tls:  # every link over TLS, terminals too: a CA and a certificate per daemon (hsbctl tls init)
        from hsb.ctl.tls_cmd import make_ca_and_certs

        if not (tls_dir / "hsbctl.pem").exists():
            make_ca_and_certs(tls_dir, ["cp", "host-a", "host-b", "hsbctl"])

    def tls_section(name: str, terminals: bool = False) -> list[str]:
        if not tls:
            return []
        return toml_section(
            "tls",
            {
                "ca_file": str(tls_dir / "ca.pem"),
                "cert_file": str(tls_dir / f"{name}.pem"),
                "key_file": str(tls_dir / f"{name}.key"),
                **({"terminals": True} if terminals else {}),
            },
        )

    secret = d / "secret"
    try:  # created 0600: never readable by others, not even for a moment
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret.chmod(0o600)
    else:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    try:
        ports = {
            k: f"127.0.0.1:{free_port()}" for k in ("terminal", "host", "admin", "http", "a_peer", "a_admin", "a_http", "b_peer", "b_admin", "b_http")
        }
    except PortRangeError as exc:
        raise SandboxError(str(exc)) from None
    group = {"prefix": prefix, "count": terminals, "width": 5}
    attrs = {"protocol": "hsb1", "codepage": "utf-8", "max_msg": 4096, "profile": "default"}
    cp = (
        toml_section(
            "cp",
            {
                "name": "cp",
                "terminal_listen": ports["terminal"],
                "host_listen": ports["host"],
                "admin_listen": ports["admin"],
                "http_listen": ports["http"],
                "secret_file": "secret",
                "held_bound": 256,
                "host_timeout": host_timeout,
                "host_lease": lease_for(host_timeout),
                "journal": "cp-journal",
                "durability": durability,
                "journal_segment_kib": journal_segment_kib,
                **(cp_options or {}),
            },
        )
        + tls_section("cp", terminals=True)
        + toml_section("[terminal_groups]", {**group, "standby_capable": True, "attrs": {"kind": "till"}})
    )
    (d / "cp.toml").write_text("\n".join(cp))
    takeover = d / "takeover.dat"
    records = records_for(terminals)
    cfgs = {}
    for name, me, other in (("host-a", "a", "b"), ("host-b", "b", "a")):
        # (a service of one's own takes only the options given for it: --service-option)
        opts: dict[str, Any] = {"logon_ms": logon_ms} if service in BUILTIN_NAMES else {}
        if service == "journal":
            opts["journal"] = str(d / f"journal-{name}.log")
        if service == "ledger":  # PostgreSQL if given, else SQLite in this folder (one machine)
            opts.update({"dsn": dsn} if dsn else {"sqlite": str(d / "ledger.sqlite")})
        opts.update(service_options or {})
        text = (
            toml_section(
                "host",
                {
                    "name": name,
                    "peer_listen": ports[f"{me}_peer"],
                    "peer": ports[f"{other}_peer"],
                    "cp": ports["host"],
                    "admin_listen": ports[f"{me}_admin"],
                    "http_listen": ports[f"{me}_http"],
                    "secret_file": "secret",
                    "service": service,
                    "fast_switch": not conventional,
                    "heartbeat_interval": heartbeat_interval,
                    "heartbeat_timeout": heartbeat_timeout,
                    **(host_options or {}),
                },
            )
            + toml_section("takeover", {"path": str(takeover), "records": records, "record_size": 4096})
            + tls_section(name)
            + toml_section("service_options", opts)
            + toml_section("[terminal_groups]", {**group, "attrs": attrs})
        )
        p = d / f"{name}.toml"
        p.write_text("\n".join(text))
        cfgs[name] = str(p.resolve())
    ctl = f'cp = "{ports["admin"]}"\nhosts = ["{ports["a_admin"]}", "{ports["b_admin"]}"]\nsecret_file = "secret"\n'
    if tls:
        ctl += 'tls = { ca_file = "tls/ca.pem", cert_file = "tls/hsbctl.pem", key_file = "tls/hsbctl.key" }\n'
    (d / "ctl.toml").write_text(ctl)
    return {"ports": ports, "configs": cfgs, "takeover": str(takeover), "records": records, "tls": str(tls_dir) if tls else None}


def _pid(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0  # (0: not started)


def _text(v: object) -> bool:
    return isinstance(v, str)


# the shape of each process in the state file that down, up and start-* rely on: (check, what it
# must be); "pid" is required, the others checked when there (an older sandbox's may lack them)
PROC_FIELDS: dict[str, tuple[Any, str]] = {
    "pid": (_pid, "a process id (a whole number, 0 when not started)"),
    "pids": (lambda v: isinstance(v, list) and all(_pid(p) for p in v), "a list of process ids"),
    "config": (_text, "a path"),
    "admin": (_text, "an address"),
    "role": (_text, "a role"),
    "supervise": (lambda v: isinstance(v, bool), "true or false"),
}


def state_problem(state: object) -> str | None:
    """What is wrong with the state file's contents, in a few words; None if it has the shape."""
    if not isinstance(state, dict):
        return f"it holds {type(state).__name__}, not an object"
    missing = [k for k in ("cp", "hosts") if k not in state]
    if missing:
        return f"it has no {' and no '.join(repr(k) for k in missing)}"
    if not isinstance(state["hosts"], dict):
        return f"hosts is {str(state['hosts'])[:40]!r}, not an object of the hosts"
    for where, proc in [("cp", state["cp"]), *((f"hosts.{n}", h) for n, h in state["hosts"].items())]:
        if not isinstance(proc, dict):
            return f"{where} is {str(proc)[:40]!r}, not an object with its process's pid"
        if "pid" not in proc:
            return f"{where} has no pid"
        bad = next((k for k, (ok, _) in PROC_FIELDS.items() if k in proc and not ok(proc[k])), None)
        if bad is not None:
            return f"{where}.{bad} is {str(proc[bad])[:40]!r}, not {PROC_FIELDS[bad][1]}"
    return None


def load_state(d: Path) -> dict[str, Any]:
    """The state file of the sandbox in `d`, its shape checked (`state_problem`): a SandboxError
    naming the file, what is wrong and the fix, never a traceback further on."""
    try:
        state: dict[str, Any] = json.loads((d / STATE).read_text())
        why = state_problem(state)
    except FileNotFoundError:
        raise SandboxError(f"{d} holds no sandbox ({STATE} missing); start one with 'hsbctl sandbox up --dir {d}'") from None
    except (OSError, ValueError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    if why is not None:
        raise SandboxError(
            f"{d / STATE} cannot be read ({why}); stop the sandbox's processes by hand (pgrep -af {d}) and start a new one in an empty folder"
        )
    return state


def process(d: Path, st: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of `name` (hsbcpd, or a host) in the state file, with the config and admin
    address that starting it and waiting for it need; else a SandboxError naming the file."""
    proc = st["cp"] if name == "hsbcpd" else st["hosts"].get(name)
    if not isinstance(proc, dict) or "config" not in proc or "admin" not in proc:
        raise SandboxError(
            f"{d / STATE} has no {name} with its config and admin address; stop the sandbox's processes by hand"
            f" (pgrep -af {d}) and start a new one in an empty folder"
        )
    return proc


def check_folder(d: Path) -> None:
    """`up` replaces the takeover file, CP journal, ledger and configs of the folder it is given:
    only a new or empty folder, or an earlier sandbox's, is that safe for."""
    try:
        entries = sorted(p.name for p in d.iterdir()) if d.exists() else []
    except OSError as exc:
        raise SandboxError(f"cannot read {d}: {exc.strerror}; give a folder you can write") from None
    if entries and STATE not in entries and MARK not in entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise SandboxError(f"{d} is not empty and holds no sandbox ({shown}); up would replace files in it: give a new or empty folder")


def save_state(d: Path, st: dict[str, Any]) -> None:
    tmp = d / (STATE + ".tmp")
    tmp.write_text(json.dumps(st, indent=2))
    tmp.replace(d / STATE)


def prepare(d: Path, *, tls: bool, service: str, dsn: str | None, **configs: Any) -> dict[str, Any]:
    """A new sandbox's files in `d` (checked by `check_folder`, its daemons not started): the mark,
    configs (`write_configs`, with `configs`), a new takeover file, and no CP journal, ledger,
    hosts' CP generation files or certificates left from an earlier sandbox there. Returns the plan of `write_configs`."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / MARK).touch()
    except OSError as exc:
        raise SandboxError(f"cannot make {d}: {exc.strerror}; give a folder you can write") from None
    plan = write_configs(d, service=service, dsn=dsn, tls=tls, **configs)
    if not tls:
        shutil.rmtree(d / "tls", ignore_errors=True)
    if service == "ledger" and not dsn:
        for suffix in ("", "-wal", "-shm"):  # a new sandbox: new books
            (d / f"ledger.sqlite{suffix}").unlink(missing_ok=True)
    create_file(plan["takeover"], plan["records"], 4096, force=True, replace_used=True)  # (the sandbox's own, its daemons not started yet)
    shutil.rmtree(d / "cp-journal", ignore_errors=True)  # a new sandbox: the CP starts empty
    for name in HOSTS:  # ... at generation 1, which hosts that kept an earlier sandbox's higher one would refuse
        generation_path(plan["takeover"], name).unlink(missing_ok=True)
    for mark in d.glob("*.run"):  # new daemons: none follows an earlier one (hsb.ops.runmark)
        mark.unlink(missing_ok=True)
    return plan


def new_state(
    d: Path, cp_pid: int, plan: dict[str, Any], *, service: str, conventional: bool, terminals: int, dsn: str | None, supervise: bool
) -> dict[str, Any]:
    """The state file's contents for a sandbox just prepared (`plan`) whose hsbcpd is `cp_pid`
    (its hosts not started yet: pid 0)."""
    ports = plan["ports"]
    return {
        "dir": str(d),
        "cp": {
            "pid": cp_pid,
            "pids": [cp_pid],
            "terminal": ports["terminal"],
            "host": ports["host"],
            "admin": ports["admin"],
            "http": ports["http"],
            "config": str(d / "cp.toml"),
            "supervise": supervise,
        },
        "hosts": {
            "host-a": {
                "name": "host-a",
                "role": "active",
                "pid": 0,
                "config": plan["configs"]["host-a"],
                "admin": ports["a_admin"],
                "peer": ports["a_peer"],
                "http": ports["a_http"],
            },
            "host-b": {
                "name": "host-b",
                "role": "standby",
                "pid": 0,
                "config": plan["configs"]["host-b"],
                "admin": ports["b_admin"],
                "peer": ports["b_peer"],
                "http": ports["b_http"],
            },
        },
        "service": service,
        "conventional": conventional,
        "terminal_count": terminals,
        "takeover": plan["takeover"],
        "journals": [str(d / f"journal-{n}.log") for n in HOSTS] if service == "journal" else [],
        "ledger": ({"dsn": dsn} if dsn else {"sqlite": str(d / "ledger.sqlite")}) if service == "ledger" else None,
        "tls": plan["tls"],
    }


def client_ssl(d: Path) -> Any:
    """hsbctl's client context for a sandbox made with --tls (None: plain links)."""
    if not (d / "tls" / "hsbctl.pem").exists():
        return None
    from hsb.wire.tls import TLS, TLSFiles

    t = d / "tls"
    return TLS(TLSFiles(str(t / "ca.pem"), str(t / "hsbctl.pem"), str(t / "hsbctl.key"))).client


def describe(d: Path) -> dict[str, Any]:
    st = load_state(d)
    prefix_n = st["terminal_count"]
    return {
        "dir": st["dir"],
        "cp": {k: st["cp"][k] for k in ("pid", "terminal", "admin", "host", "http", "config")},
        "hosts": [{k: h[k] for k in ("name", "role", "pid", "config", "admin", "http")} for h in st["hosts"].values()],
        "terminals": [f"T{i:05d}" for i in range(1, prefix_n + 1)],
        "ctl": ["--config", str(Path(st["dir"]) / "ctl.toml")],
        "service": st["service"],
        "conventional": st["conventional"],
        "journals": st["journals"],
        "ledger": st.get("ledger"),
        "tls": st.get("tls"),
        "takeover": st["takeover"],
        "secret_file": str(Path(st["dir"]) / "secret"),
    }
