"""Real hosts on one machine (issue 7 item 1): network namespaces, veth pairs, bridges.

Topology (one `Lab`, every name unique to the run; `R` is the run id: the owner's pid
in hex and two random hex digits; `N` a /24 number picked so the management subnet is
free in the root namespace):

    hsbR-sw   the "switch": three bridges, and the switch side of every veth pair
              br-data  10.213.N.0/24   cp .1, host-a .2, host-b .3, terminals .4
              br-peer  10.215.N.0/24   host-a .1, host-b .2 (the A–B peer link only)
              br-mgmt  10.214.N.0/24   cp .1, host-a .2, host-b .3, test process .254
    hsbR-cp   hsbcpd: terminal and host listeners on the data net, admin on mgmt
    hsbR-a    host A: host link on the data net, peer link on the peer net, admin on mgmt
    hsbR-b    host B: the same
    hsbR-t    the terminals (`tests.netns.loadrun`): data net only

Each namespace has `eth0` (data), and host A and B `peer0`; the CP and the hosts
`mgmt0`. The switch side of a leg is called `d-<node>`, `p-<node>` or `m-<node>`.
The bridges live in their own namespace, so the root namespace's firewall
(br_netfilter, a FORWARD policy of DROP) never sees their traffic, and that namespace's
bridge-nf-call-* are 0 (`plain_switch`): with br_netfilter loaded a new namespace's
bridges would hand every frame to its (empty) iptables hooks and route it, work no real
switch does, on the cores the daemons share (a CP machine's loss at 10,000 terminals:
every terminal back 143 ms sooner, median of 11 pairs, BENCHMARKS.md "Session 62"); the root
namespace gets one veth (`hsbRm`) into br-mgmt, so the test process can ask every
daemon for its status over the admin link even while its data or peer leg is cut.
The data and peer subnets exist only inside this lab's namespaces.

Links are cut and healed with `ip link set <switch side> down/up`: the namespace
side loses carrier, so traffic is dropped silently in both directions, as with a
pulled cable (no RST, no ICMP): `cut("a")` is A's data leg (A–CP; A–terminals),
`cut("peer")` is the A–B peer link, `isolate("a")` both.

A lab tears itself down (processes, namespaces, veths) on exit, also when a test fails;
the namespaces of a lab whose owner process died (a killed test run) are removed, with
the processes left in them, when the next lab is built (`cleanup_stale`).

The takeover file is a plain local file shared by both hosts (namespaces share the
filesystem; it stands in for NFS). The daemons run as `ip netns exec NS python -m
hsb.cp|hsb.host ...` and log JSON lines to `<dir>/<name>.log`.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self, cast

from hsb.config import toml_section, toml_value
from hsb.ctl.gather import status_all
from hsb.ctl.sandbox import lease_for, records_for
from hsb.takeover.fileio import create_file
from hsb.term.verdict import ids
from tests.support.hostjournal import Line, read_host_journal, unmarked_repeats

REPO = Path(__file__).resolve().parents[2]
PORT = {"terminal": 7000, "host": 7001, "admin": 7002, "http": 7003, "peer": 7100}
HOST_NAMES = {"a": "host-a", "b": "host-b"}
DATA_IP = {"cp": 1, "a": 2, "b": 3, "t": 4}
MGMT_IP = {"cp": 1, "a": 2, "b": 3}
PEER_IP = {"a": 1, "b": 2}
ROOT_MGMT = 254
EXIT_FENCED = 75


class NetnsError(RuntimeError):
    pass


def run(argv: list[str], *, check: bool = True, timeout: float = 15.0) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: {(r.stderr or r.stdout).strip() or f'exit {r.returncode}'}")
    return r


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(["ip", *args], check=check)


BRIDGE_NF = ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables")


def plain_switch(ns: str) -> None:
    """The switch namespace's bridges forward frames as a switch does: not through netfilter.
    With br_netfilter loaded (Docker loads it) a new namespace's bridges hand every frame to
    iptables' hooks and route it (per-netns sysctls, 1 by default): per-packet work no real
    switch does, paid on the two cores the lab's daemons share."""
    for name in BRIDGE_NF:
        proc = f"/proc/sys/net/bridge/{name}"
        now = run(["ip", "netns", "exec", ns, "sh", "-c", f"[ ! -e {proc} ] || {{ echo 0 > {proc}; cat {proc}; }}"]).stdout.strip()
        if now not in ("", "0"):  # (a lab whose switch filters would measure work no deployment does)
            raise NetnsError(f"{name} is {now} in {ns}, not 0")


_skip: list[str | None] = []


def tc_reason() -> str | None:
    """Why one-way cuts (tc) cannot be made here, or None."""
    if skip_reason() is not None:
        return skip_reason()
    if shutil.which("tc") is None:
        return "needs tc (iproute2) for one-way cuts"
    return None


async def http_status(addr: str, path: str, timeout: float = 0.5) -> int | str:
    """GET http://addr/path: the status code, or why there was none (never raises)."""
    host, _, port = addr.rpartition(":")
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection(host, int(port))
            w.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            line = await r.readline()
            w.close()
        return int(line.split()[1])
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        return type(exc).__name__


def skip_reason() -> str | None:
    """Why the netns tests cannot run here (None: they can). Probes once per process."""
    if _skip:
        return _skip[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "needs root to create network namespaces, veth pairs and bridges (CI runs as root)"
    elif shutil.which("ip") is None:
        reason = "needs iproute2: 'ip' not found (.ci/run installs it: apt-get install -y iproute2)"
    else:
        ns = f"hsbprobe{os.getpid() % 100000}"
        try:
            ip("netns", "add", ns)
            try:
                ip("-n", ns, "link", "add", "br0", "type", "bridge")
                ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
                ip("-n", ns, "link", "set", "v0", "master", "br0")
                run(["ip", "netns", "exec", ns, "true"])
            finally:
                ip("netns", "del", ns, check=False)
        except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
            reason = f"cannot create network namespaces, veth pairs or bridges here: {exc}"
    _skip.append(reason)
    return reason


def new_rid() -> str:
    """A run id: this process's pid in hex and two random hex digits (so a later run can
    tell a lab whose owner died). "hsb" + rid + "m" stays within the 15 characters of an
    interface name."""
    return f"{os.getpid():x}{random.randrange(256):02x}"


_LAB_NS = re.compile(r"^hsb([0-9a-f]{3,10})-(sw|cp[12]?|a|b|t)$")  # (cp1, cp2: the two-CP lab, tests/netns/cplab.py)


def cleanup_stale() -> list[str]:
    """Delete the namespaces (and the processes in them) of labs whose owner process is
    gone, e.g. a test run that was killed before its teardown. Returns their names."""
    gone: list[str] = []
    for name in ip("netns", "list", check=False).stdout.split():
        m = _LAB_NS.match(name)
        if m is None:
            continue
        owner = int(m.group(1)[:-2], 16)
        try:
            os.kill(owner, 0)
            continue  # its owner is alive: not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        for pid in ip("netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        ip("netns", "del", name, check=False)
        ip("link", "del", f"hsb{m.group(1)}m", check=False)
        gone.append(name)
    return gone


def free_mgmt_net() -> int:
    """A 10.214.N.0/24 not used in the root namespace: a lab's management net (the root
    namespace's side of it is this machine's too)."""
    used = ip("-4", "route", "show", "table", "all").stdout + ip("-4", "addr").stdout
    free = [n for n in range(1, 255) if f"10.214.{n}." not in used]
    if not free:
        raise NetnsError("no free 10.214.N.0/24 for the management net")
    return random.choice(free)


_toml = toml_value
_section = toml_section


@dataclass
class Daemon:
    name: str
    node: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


@dataclass
class Lab:
    """One complete system in network namespaces; a context manager that always cleans up."""

    dir: Path
    terminals: int = 200
    host_timeout: float = 0.5
    heartbeat_interval: float = 0.1
    heartbeat_timeout: float = 0.5
    service: str = "journal"
    fast_switch: bool = True
    rid: str = field(default_factory=lambda: new_rid())
    net: int = 0
    daemons: dict[str, Daemon] = field(default_factory=dict)
    retired: list[Daemon] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    root_veth: str | None = None
    cut_links: set[str] = field(default_factory=set)
    one_way: set[tuple[str, str]] = field(default_factory=set)  # (direction, link) cut one way
    events: list[tuple[float, str]] = field(default_factory=list)
    cp_options: dict[str, Any] = field(default_factory=dict)  # more [cp] settings

    # ------------------------------------------------------------------ names and addresses
    def ns(self, node: str) -> str:
        return f"hsb{self.rid}-{node}"

    def data(self, node: str, port: str | None = None) -> str:
        a = f"10.213.{self.net}.{DATA_IP[node]}"
        return f"{a}:{PORT[port]}" if port else a

    def mgmt(self, node: str, port: str | None = None) -> str:
        a = f"10.214.{self.net}.{MGMT_IP[node] if node != 'root' else ROOT_MGMT}"
        return f"{a}:{PORT[port]}" if port else a

    def peer(self, node: str) -> str:
        return f"10.215.{self.net}.{PEER_IP[node]}:{PORT['peer']}"

    @property
    def cp_terminal(self) -> str:
        return self.data("cp", "terminal")

    @property
    def cp_admin(self) -> str:
        return self.mgmt("cp", "admin")

    @property
    def host_admins(self) -> list[str]:
        return [self.mgmt("a", "admin"), self.mgmt("b", "admin")]

    @property
    def secret_file(self) -> Path:
        return self.dir / "secret"

    def journal(self, node: str) -> Path:
        return self.dir / f"journal-{HOST_NAMES[node]}.log"

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.down()

    def up(self) -> None:
        self.dir = self.dir.resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._build_network()
        self._write_configs()

    def _pick_net(self) -> int:
        return free_mgmt_net()

    def _build_network(self) -> None:
        cleanup_stale()
        for _ in range(20):  # a run id not in use (another lab of this process may be up)
            if not any(n.startswith(f"hsb{self.rid}-") for n in ip("netns", "list").stdout.split()):
                break
            self.rid = new_rid()
        self.net = self._pick_net()
        sw = self.ns("sw")
        for node in ("sw", "cp", "a", "b", "t"):
            ip("netns", "add", self.ns(node))
            self.namespaces.append(self.ns(node))
            ip("-n", self.ns(node), "link", "set", "lo", "up")
        plain_switch(sw)
        for br in ("br-data", "br-peer", "br-mgmt"):
            ip("-n", sw, "link", "add", br, "type", "bridge")
            ip("-n", sw, "link", "set", br, "up")

        def leg(node: str, kind: str, bridge: str, ifname: str, addr: str) -> None:
            sw_side = f"{kind}-{node}"
            ip("-n", sw, "link", "add", sw_side, "type", "veth", "peer", "name", ifname, "netns", self.ns(node))
            ip("-n", sw, "link", "set", sw_side, "master", bridge)
            ip("-n", sw, "link", "set", sw_side, "up")
            ip("-n", self.ns(node), "addr", "add", f"{addr}/24", "dev", ifname)
            ip("-n", self.ns(node), "link", "set", ifname, "up")

        for node in DATA_IP:
            leg(node, "d", "br-data", "eth0", self.data(node))
        for node in PEER_IP:
            leg(node, "p", "br-peer", "peer0", self.peer(node).rsplit(":", 1)[0])
        for node in MGMT_IP:
            leg(node, "m", "br-mgmt", "mgmt0", self.mgmt(node))
        # the test process's leg into the management net (never cut)
        self.root_veth = f"hsb{self.rid}m"
        ip("link", "add", self.root_veth, "type", "veth", "peer", "name", "m-root", "netns", sw)
        ip("-n", sw, "link", "set", "m-root", "master", "br-mgmt")
        ip("-n", sw, "link", "set", "m-root", "up")
        ip("addr", "add", f"{self.mgmt('root')}/24", "dev", self.root_veth)
        ip("link", "set", self.root_veth, "up")
        # every leg answers before anything starts (catches a filtering bridge early)
        for node, target in (("t", self.data("cp")), ("a", self.data("cp")), ("b", self.data("cp")), ("a", self.peer("b").rsplit(":", 1)[0])):
            self._probe(node, target)
        for node in MGMT_IP:
            self._probe(None, self.mgmt(node))

    def _probe(self, node: str | None, addr: str) -> None:
        """Reachability without a listener: a TCP connect from `node`'s namespace (None: this
        process) to a closed port of `addr` must be refused (RST) at once."""
        code = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(3)\n"
            "try: s.connect((sys.argv[1], 9))\n"
            "except ConnectionRefusedError: sys.exit(0)\n"
            "except OSError as e: print(e); sys.exit(1)\n"
        )
        prefix = ["ip", "netns", "exec", self.ns(node)] if node else []
        r = run([*prefix, sys.executable, "-c", code, addr], check=False)
        if r.returncode != 0:
            raise NetnsError(f"no path from {node or 'the test process'} to {addr} through the lab's bridges: {r.stdout.strip() or r.stderr.strip()}")

    def _write_configs(self) -> None:
        self.secret_file.write_text(secrets.token_urlsafe(32) + "\n")
        self.secret_file.chmod(0o600)
        self._write_cp_configs()
        self._write_host_configs(self._cp_host_addr())

    def _terminal_group(self) -> dict[str, Any]:
        return {"prefix": "T", "count": self.terminals, "width": 5}

    def _cp_host_addr(self) -> str:
        """Where the hosts reach the CP (a lab with two CP machines: the address keepalived moves)."""
        return self.data("cp", "host")

    def _write_cp_configs(self) -> None:
        group = self._terminal_group()
        cp = _section(
            "cp",
            {
                "name": "cp",
                "terminal_listen": self.data("cp", "terminal"),
                "host_listen": self.data("cp", "host"),
                "admin_listen": self.mgmt("cp", "admin"),
                "http_listen": self.mgmt("cp", "http"),
                "secret_file": str(self.secret_file),
                "held_bound": 256,
                "host_timeout": self.host_timeout,
                "host_lease": lease_for(self.host_timeout),
                **self.cp_options,
            },
        ) + _section("[terminal_groups]", {**group, "standby_capable": True, "attrs": {"kind": "till"}})
        (self.dir / "cp.toml").write_text("\n".join(cp))

    def _write_host_configs(self, cp_addr: str) -> None:
        d = self.dir
        group = self._terminal_group()
        takeover = d / "takeover.dat"
        records = records_for(self.terminals)
        create_file(str(takeover), records, 4096, force=True, replace_used=True)
        attrs = {"protocol": "hsb1", "codepage": "utf-8", "max_msg": 4096, "profile": "default"}
        for me, other in (("a", "b"), ("b", "a")):
            name = HOST_NAMES[me]
            opts: dict[str, Any] = {"logon_ms": 0}
            if self.service == "journal":
                opts["journal"] = str(self.journal(me))
            text = (
                _section(
                    "host",
                    {
                        "name": name,
                        "peer_listen": self.peer(me),
                        "peer": self.peer(other),
                        "cp": cp_addr,
                        "admin_listen": self.mgmt(me, "admin"),
                        "http_listen": self.mgmt(me, "http"),
                        "secret_file": str(self.secret_file),
                        "service": self.service,
                        "fast_switch": self.fast_switch,
                        "heartbeat_interval": self.heartbeat_interval,
                        "heartbeat_timeout": self.heartbeat_timeout,
                    },
                )
                + _section("takeover", {"path": str(takeover), "records": records, "record_size": 4096})
                + _section("service_options", opts)
                + _section("[terminal_groups]", {**group, "attrs": attrs})
            )
            (d / f"{name}.toml").write_text("\n".join(text))

    def spawn(
        self,
        name: str,
        node: str,
        argv: list[str],
        *,
        log: Path | None = None,
        stdin: Any = subprocess.DEVNULL,
        stdout: Any = None,
        env: dict[str, str] | None = None,
    ) -> Daemon:
        """Run argv inside `node`'s namespace (in its own session); stderr (and stdout unless given) to the log."""
        log = log or self.dir / f"{name}.log"
        fh = open(log, "ab")  # noqa: SIM115 - the child's log, closed by its owner
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO) + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
        full_env.update(env or {})
        try:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(node), *argv],
                stdin=stdin,
                stdout=fh if stdout is None else stdout,
                stderr=fh,
                start_new_session=True,
                cwd=self.dir,
                env=full_env,
            )
        finally:
            fh.close()
        return Daemon(name, node, argv, log, proc)

    def start_cp(self) -> Daemon:
        dm = self.spawn("cp", "cp", [sys.executable, "-m", "hsb.cp", "--config", str(self.dir / "cp.toml")])
        self.daemons["cp"] = dm
        return dm

    def start_host(self, node: str, role: str) -> Daemon:
        name = HOST_NAMES[node]
        old = self.daemons.get(node)
        if old is not None:
            try:  # just SIGKILLed: its links are closed a moment before it is gone
                old.proc.wait(3.0)
            except subprocess.TimeoutExpired:
                raise NetnsError(f"{name} is still running (pid {old.pid})") from None
            self.retired.append(old)
        dm = self.spawn(name, node, [sys.executable, "-m", "hsb.host", "--role", role, "--config", str(self.dir / f"{name}.toml")])
        self.daemons[node] = dm
        return dm

    async def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """hsbcpd, host A active, host B standby; returns the first established status."""
        self.start_cp()
        await self.wait(lambda s: s["cp"].get("reachable"), 20, "hsbcpd to answer on its admin link")
        self.start_host("a", "active")
        self.start_host("b", "standby")
        return await self.wait(lambda s: s["established"], timeout, "hot standby established")

    def load(
        self, *, rate: float, settle: float = 20.0, terminals: int | None = None, expect_disconnects: bool | str = False, keepalive: int = 1
    ) -> Load:
        """The terminals' load in a process of its own; `expect_disconnects` True: any disconnect
        may happen; "cp": only the CP's absence may disconnect a terminal (a CP failover)."""
        out = self.dir / f"load-{len([p for p in self.dir.glob('load-*.json')])}.json"
        dm = self.spawn(
            "terminals",
            "t",
            [
                sys.executable,
                "-m",
                "tests.netns.loadrun",
                "--cp",
                self.cp_terminal,
                "--terminals",
                str(terminals or self.terminals),
                "--rate",
                str(rate),
                "--settle",
                str(settle),
                "--out",
                str(out),
                "--keepalive",
                str(keepalive),
                *(["--expect-cp-restart"] if expect_disconnects == "cp" else ["--expect-disconnects"] if expect_disconnects else []),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self.retired.append(dm)
        self.loadrun = Load(dm, out)
        return self.loadrun

    def down(self) -> None:
        """Stop every process this lab started, then delete its namespaces and veths."""
        procs = [d for d in [*self.daemons.values(), *self.retired] if d.alive()]
        for d in procs:
            try:
                os.killpg(d.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 3.0
        for d in procs:
            try:
                d.proc.wait(max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(d.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                d.proc.wait(5)
        for ns in self.namespaces:  # anything left inside was started by this lab
            for pid in ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        if self.root_veth:
            ip("link", "del", self.root_veth, check=False)  # normally gone with hsbR-sw
            self.root_veth = None

    # ------------------------------------------------------------------ faults
    LINKS = {"cp": "d-cp", "a": "d-a", "b": "d-b", "t": "d-t", "peer": "p-a", "peer-b": "p-b"}

    def _set(self, links: tuple[str, ...], state: str) -> float:
        """Set the switch side of every link down or up in one `ip -batch` (a few µs apart);
        returns the wall time when the command began (conservative for "time since the cut")."""
        bad = [link for link in links if link not in self.LINKS]
        if bad:
            raise ValueError(f"unknown link(s) {bad}; one of {sorted(self.LINKS)}")
        script = "".join(f"link set {self.LINKS[link]} {state}\n" for link in links)
        t0 = time.time()
        r = subprocess.run(["ip", "-n", self.ns("sw"), "-batch", "-"], input=script, capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            raise NetnsError(f"ip -batch ({script.strip()!r}): {r.stderr.strip()}")
        self.events.append((t0, f"{'+'.join(links)} {state}"))
        return t0

    def cut(self, *links: str) -> float:
        """Cut these links at once (see module docstring); returns the wall time of the cut."""
        t = self._set(links, "down")
        self.cut_links.update(links)
        return t

    def heal(self, *links: str) -> float:
        """Heal these links (default: every cut link) at once; returns the wall time."""
        links = links or tuple(sorted(self.cut_links))
        t = self._set(links, "up")
        self.cut_links.difference_update(links)
        return t

    # One direction only: a tc class whose queue holds zero packets drops everything sent to it,
    # silently (no RST, no ICMP), so cutting one end of a veth cuts one direction. "out" is what
    # the node sends (its own end), "in" what it receives (the switch's end of its leg).
    LEGS = {
        "cp": ("cp", "eth0", "d-cp"),
        "a": ("a", "eth0", "d-a"),
        "b": ("b", "eth0", "d-b"),
        "t": ("t", "eth0", "d-t"),
        "peer": ("a", "peer0", "p-a"),
        "peer-b": ("b", "peer0", "p-b"),
    }

    def _tc(self, ns: str, script: str) -> None:
        r = subprocess.run(["tc", "-n", ns, "-batch", "-"], input=script, capture_output=True, text=True, timeout=15)
        if r.returncode != 0:
            raise NetnsError(f"tc -n {ns} -batch ({script.strip()!r}): {r.stderr.strip()}")

    def cut_one_way(self, direction: str, *links: str) -> float:
        """Drop what `links`' nodes send (`direction` "out") or receive ("in"); returns the wall time."""
        assert direction in ("out", "in"), direction
        by_ns: dict[str, list[str]] = {}
        for link in links:
            node, own, switch = self.LEGS[link]
            ns, dev = (self.ns(node), own) if direction == "out" else (self.ns("sw"), switch)
            by_ns.setdefault(ns, []).append(dev)
        t0 = time.time()
        for ns, devs in by_ns.items():
            self._tc(
                ns,
                "".join(
                    f"qdisc add dev {d} root handle 1: htb default 10 r2q 100000\n"
                    f"class add dev {d} parent 1: classid 1:10 htb rate 10gbit\n"
                    f"qdisc add dev {d} parent 1:10 handle 10: pfifo limit 0\n"
                    for d in devs
                ),
            )
        self.events.append((t0, f"{'+'.join(links)} {direction} cut"))
        self.one_way.update((direction, link) for link in links)
        return t0

    def heal_one_way(self) -> float:
        """Remove every one-way cut."""
        t0 = time.time()
        for direction, link in sorted(self.one_way):
            node, own, switch = self.LEGS[link]
            ns, dev = (self.ns(node), own) if direction == "out" else (self.ns("sw"), switch)
            subprocess.run(["tc", "-n", ns, "qdisc", "del", "dev", dev, "root"], capture_output=True, timeout=15)
        self.one_way.clear()
        self.events.append((t0, "one-way cuts healed"))
        return t0

    def dropped(self, direction: str, link: str) -> int:
        """Packets the one-way cut of `link` has dropped so far (proof that the cut took)."""
        node, own, switch = self.LEGS[link]
        ns, dev = (self.ns(node), own) if direction == "out" else (self.ns("sw"), switch)
        r = subprocess.run(["tc", "-n", ns, "-s", "qdisc", "show", "dev", dev], capture_output=True, text=True, timeout=15)
        m = re.search(r"pfifo 10:.*?dropped (\d+)", r.stdout, re.S)
        return int(m.group(1)) if m else 0

    def isolate(self, node: str) -> float:
        """Cut a host off from everything: its data leg and the peer link."""
        return self.cut(node, "peer")

    # ------------------------------------------------------------------ status
    async def status(self, timeout: float = 1.0) -> dict[str, Any]:
        return await status_all(self.cp_admin, self.host_admins, str(self.secret_file), timeout=timeout)

    async def wait(self, pred: Any, timeout: float, what: str, interval: float = 0.05) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for key in ("cp",):
                dm = self.daemons.get(key)
                if dm is not None and not dm.alive():
                    raise NetnsError(f"hsbcpd exited ({dm.proc.returncode}) while waiting for {what}; log ends:\n{dm.tail()}")
            st = await self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}: {brief(st)}; logs in {self.dir}")
            await asyncio.sleep(interval)


def brief(st: dict[str, Any]) -> str:
    cp = st.get("cp", {})
    hosts = "; ".join(
        f"{h.get('name')}: {h.get('role')}/{h.get('state')} cp_link={h.get('cp_link')} peer={'up' if (h.get('peer_link') or {}).get('up') else 'down'}"
        + (f" ({h.get('last_error')})" if h.get("last_error") else "")
        + ("" if h.get("reachable") else f" unreachable: {h.get('error')}")
        for h in st.get("hosts", [])
    )
    return f"cp {cp.get('state')} epoch {cp.get('epoch')} active={(cp.get('active') or {}).get('name')} standby={(cp.get('standby') or {}).get('name')}; {hosts}"


# ---------------------------------------------------------------------- the terminals
@dataclass
class Load:
    """A running `tests.netns.loadrun` in the terminals' namespace."""

    dm: Daemon
    out: Path
    started_at: float | None = None

    async def sending(self, timeout: float = 60.0) -> float:
        """Wait until every terminal has a session and sending has begun; returns its wall time."""
        assert self.dm.proc.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.dm.proc.stdout.readline), timeout)
        text = line.decode().strip()
        if not text.startswith("sending"):
            raise NetnsError(f"the load generator did not start sending ({text!r}); log ends:\n{self.dm.tail()}")
        self.started_at = float(text.split()[1])
        return self.started_at

    def mark(self, label: str, at: float) -> None:
        """An operation (a cut) happened at wall time `at`: the report measures its pause."""
        assert self.dm.proc.stdin is not None
        self.dm.proc.stdin.write(f"mark {label} {at:.6f}\n".encode())
        self.dm.proc.stdin.flush()

    async def finish(self, timeout: float = 60.0) -> dict[str, Any]:
        """End the sending phase, wait for the settle phase; returns the report (with ids)."""
        assert self.dm.proc.stdin is not None
        try:
            self.dm.proc.stdin.write(b"stop\n")
            self.dm.proc.stdin.flush()
        except BrokenPipeError:
            pass
        loop = asyncio.get_running_loop()
        code = await asyncio.wait_for(loop.run_in_executor(None, self.dm.proc.wait), timeout)
        if code != 0 or not self.out.exists():
            raise NetnsError(f"the load generator exited {code}; log ends:\n{self.dm.tail()}")
        return cast(dict[str, Any], json.loads(self.out.read_text()))


# ---------------------------------------------------------------------- the checks
def acked_ids(report: dict[str, Any]) -> set[tuple[str, int]]:
    return {(t, i) for t, rec in (report.get("ids") or {}).items() for i in ids(rec["acked"], rec["step"])}


def read_journal(path: Path) -> dict[tuple[str, int], list[Line]]:
    """{(terminal, id): [each line's redelivered mark and epoch]} of a host's `journal` service file."""
    return read_host_journal(path, path.stem.removeprefix("journal-"))


def read_journal_tail(path: Path, skip: int) -> list[tuple[str, int]]:
    """(terminal, id) of the lines of a journal after its first `skip` lines."""
    if not path.exists():
        return []
    return [(t, int(i)) for _, t, i, *_ in (line.split() for line in path.read_text().splitlines()[skip:])]


def check_delivery(lab: Lab, report: dict[str, Any], order: list[str], *, unacked_allowed: bool = False) -> dict[str, int]:
    """SPEC §5.6 from outside, as check_journals (tests/support/sandboxed.py) checks it: no
    acknowledged message lost, no duplicate reply, every acknowledged id in some journal, and an
    id processed by one host and again by the next (in `order`) marked redelivered there.
    `unacked_allowed`: the strict verdict but for messages never acknowledged (only the lasting
    split brain's test: seen once under the full suite, not explained yet; every other failure
    counts, and nothing acknowledged may be lost)."""
    assert report["acked"] > 0, "the load acknowledged nothing"
    failures = [f for f in report["failures"] if not (unacked_allowed and f.startswith("unacknowledged:"))]
    assert report["ok"] or not failures, report["failures"]  # the strict verdict of hsb.term
    assert report["lost"] == 0, f"{report['lost']} acknowledged messages got no reply, e.g. {report['lost_ids'][:5]}"
    assert report["duplicates"] == 0, f"{report['duplicates']} duplicate replies, e.g. {report['duplicate_ids'][:5]}"
    assert report["unexpected"] == 0, report
    assert report["replied"] == report["acked"], (report["replied"], report["acked"])
    j = {name: read_journal(lab.journal(node)) for node, name in HOST_NAMES.items()}
    acked = acked_ids(report)
    seen = set().union(*(set(e) for e in j.values()))
    missing = acked - seen
    assert not missing, f"{len(missing)} acknowledged ids are in no journal, e.g. {sorted(missing)[:5]}"
    for host in j:
        if host not in order:
            assert not j[host], f"{host} processed {len(j[host])} messages but was never active"
    # an id processed again, on the same host or the next, is marked every time after its first
    bad = unmarked_repeats(j)
    assert not bad, f"ids processed again without the redelivered mark: {bad[:5]}"
    redelivered = 0
    for earlier, later in zip(order, order[1:], strict=False):
        redelivered += len(set(j.get(earlier, {})) & set(j.get(later, {})))
    return {"acked": len(acked), "journal_lines": sum(len(v) for e in j.values() for v in e.values()), "processed_twice": redelivered}


def check_connections(report: dict[str, Any], *, switched: int | None = None) -> None:
    """No terminal disconnected and no session closed (every terminal is standby-capable)."""
    assert report["disconnects"] == 0, f"{report['disconnects']} terminal disconnects: {dict(list(report['per_terminal_disconnects'].items())[:5])}"
    assert report["session_closed"] == 0, f"{report['session_closed']} sessions closed"
    assert report["connect_failures"] == 0, report["connect_failures"]
    if switched is not None:
        assert report["switched"] == switched, f"switched notices: {report['switched']}, expected {switched}"


def claims_active(h: dict[str, Any]) -> bool:
    """The host says it is the active and serving: role active, not fenced or stopping (nor
    otherwise saying it serves nothing), and the host is up (an exited host does not count)."""
    return (
        bool(h.get("reachable"))
        and h.get("role") == "active"
        and h.get("state") not in ("fenced", "stopping")
        and h.get("serving", True) is not False
    )


def lease_active(h: dict[str, Any]) -> bool:
    """The host says it is the active with a valid lease (what the lease rule allows one of)."""
    return bool(h.get("reachable")) and h.get("role") == "active" and bool((h.get("lease") or {}).get("valid")) and bool(h.get("serving"))


def serving_active(h: dict[str, Any]) -> bool:
    """...and it is registered at the CP over a live host link: it could be given work.

    A host cut off from the CP can be given none (the CP refuses its stale epoch and fences
    it when it is back), so this is the rule the partitions must never break. Whether a
    cut-off host still *says* it is the active is `claims_active`, checked with a grace
    of one heartbeat timeout in test_cut_off_active_stops_reporting_itself_active."""
    return claims_active(h) and h.get("cp_link") == "up" and bool(h.get("registered_at_cp"))


@dataclass
class Sample:
    t: float
    st: dict[str, Any]
    active_200: list[str] = field(default_factory=list)  # hosts whose /active answered 200 (probe_active)

    def hosts(self, pred: Any) -> list[str]:
        return [h["name"] for h in self.st["hosts"] if pred(h)]


class Watch:
    """Samples the status of all three daemons over the management net while a test runs."""

    def __init__(self, lab: Lab, interval: float = 0.1, probe_active: bool = False) -> None:
        self.lab = lab
        self.interval = interval
        self.probe_active = probe_active  # also ask each host's /active, at the same moment
        self.samples: list[Sample] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watch:
        self.task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        nodes = ("a", "b")
        while True:
            t = time.time()
            if self.probe_active:
                st, *codes = await asyncio.gather(self.lab.status(timeout=0.5), *(http_status(self.lab.mgmt(n, "http"), "/active") for n in nodes))
                self.samples.append(Sample(t, st, [f"host-{n}" for n, c in zip(nodes, codes, strict=False) if c == 200]))
            else:
                self.samples.append(Sample(t, await self.lab.status(timeout=0.5)))
            await asyncio.sleep(max(0.0, self.interval - (time.time() - t)))

    def first(self, pred: Any, after: float = 0.0) -> Sample | None:
        return next((s for s in self.samples if s.t >= after and pred(s)), None)

    def overlaps(self, pred: Any) -> list[tuple[float, float, list[str]]]:
        """Spans (first, last sample time, hosts) where two hosts satisfy `pred` at once."""
        spans: list[tuple[float, float, list[str]]] = []
        cur: list[Any] | None = None
        for s in self.samples:
            names = s.hosts(pred)
            if len(names) > 1:
                if cur is None:
                    cur = [s.t, s.t, names]
                else:
                    cur[1] = s.t
            elif cur is not None:
                spans.append((cur[0], cur[1], cur[2]))
                cur = None
        if cur is not None:
            spans.append((cur[0], cur[1], cur[2]))
        return spans

    def check_one_active(self) -> None:
        """At most one host serving at any sample; the CP names at most one active."""
        assert self.samples, "no status samples"
        both = self.overlaps(serving_active)
        assert not both, f"two hosts registered at the CP as serving actives at once: {both[:3]}"
