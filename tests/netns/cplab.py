"""Two CP machines in network namespaces, with the real keepalived (SPEC §5.8).

The topology of `tests.netns.harness.Lab`, with the CP namespace replaced by two, `cp1` and
`cp2`, each running keepalived (VRRPv3, advertisements every 100 ms, unicast over a link of
their own, `br-vrrp`, so that split brain can be forced by cutting it) and hsbcpd under a
supervisor loop that restarts it (as systemd's `Restart=always` would):

    br-data  10.213.N.0/24   VIP .1 (keepalived), host-a .2, host-b .3, terminals .4, cp1 .11, cp2 .12
    br-vrrp  10.216.N.0/24   cp1 .1, cp2 .2 (VRRP only)
    br-peer  10.215.N.0/24   host-a .1, host-b .2
    br-mgmt  10.214.N.0/24   host-a .2, host-b .3, cp1 .11, cp2 .12, the test process .254

Both hsbcpd read and write one journal directory (namespaces share the filesystem: it stands
in for the NFS export), both with `takeover = "on_wake"`: keepalived's notify script sends
SIGUSR1 when its machine becomes master (or leaves it), `vrrp_track_process` takes a machine
whose hsbcpd is gone out of the election at once, and `track_interface eth0` one whose data leg
is down. Terminals and hosts use the virtual address. Each CP namespace gets the kernel settings
the operations guide sets on a CP machine (configs/sysctl/90-hsbcpd.conf: the accept queue),
and the switch forwards without netfilter, as in `Lab` (`tests.netns.harness.plain_switch`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hsb.ctl.gather import status_all
from hsb.ctl.sandbox import lease_for
from hsb.wire.client import request
from tests.netns.harness import PORT, REPO, Daemon, Lab, NetnsError, _section, ip, run, skip_reason

CPS = ("cp1", "cp2")
DATA = {"vip": 1, "a": 2, "b": 3, "t": 4, "cp1": 11, "cp2": 12}
MGMT = {"a": 2, "b": 3, "cp1": 11, "cp2": 12}
VRRP = {"cp1": 1, "cp2": 2}
SYSCTL_CONF = REPO / "configs" / "sysctl" / "90-hsbcpd.conf"  # what the guide has set on a CP machine


KEEPALIVED = shutil.which("keepalived") or next((p for p in ("/usr/sbin/keepalived", "/sbin/keepalived") if os.access(p, os.X_OK)), None)


def keepalived_reason() -> str | None:
    """Why the two-CP lab cannot run here, or None."""
    why = skip_reason()
    if why is not None:
        return why
    if KEEPALIVED is None:
        return "needs keepalived (Debian's keepalived package; .ci/run installs it: apt-get install -y keepalived)"
    return None


@dataclass
class CPPairLab(Lab):
    """A Lab with two CP machines behind keepalived (see the module docstring)."""

    takeover_stale: float = 0.3
    advert_int: float = 0.1
    priority: int = 254  # both machines', as configs/keepalived/ (nopreempt: the election by address; 254: no skew time)
    tickle_acks: bool = True  # [cp] tickle_acks (hsb.cp.tickle)

    # ------------------------------------------------------------------ addresses
    def data(self, node: str, port: str | None = None) -> str:
        a = f"10.213.{self.net}.{DATA[node]}"
        return f"{a}:{PORT[port]}" if port else a

    def mgmt(self, node: str, port: str | None = None) -> str:
        a = f"10.214.{self.net}.{MGMT[node] if node != 'root' else 254}"
        return f"{a}:{PORT[port]}" if port else a

    def vrrp(self, node: str) -> str:
        return f"10.216.{self.net}.{VRRP[node]}"

    @property
    def vip(self) -> str:
        return self.data("vip")

    @property
    def cp_terminal(self) -> str:
        return self.data("vip", "terminal")

    @property
    def cp_admin(self) -> str:
        return self.mgmt("cp1", "admin")  # the ctl view asks both (cp_statuses)

    @property
    def journal_dir(self) -> Path:
        return self.dir / "cp-journal"

    LINKS = {**Lab.LINKS, "cp1": "d-cp1", "cp2": "d-cp2", "vrrp1": "v-cp1", "vrrp2": "v-cp2"}
    # one-way cuts keep the carrier up (cut_one_way): VRRP adverts lost, the interface still up
    LEGS = {
        **Lab.LEGS,
        "cp1": ("cp1", "eth0", "d-cp1"),
        "cp2": ("cp2", "eth0", "d-cp2"),
        "vrrp1": ("cp1", "vrrp0", "v-cp1"),
        "vrrp2": ("cp2", "vrrp0", "v-cp2"),
    }

    # ------------------------------------------------------------------ the network
    def _build_network(self) -> None:
        from tests.netns.harness import cleanup_stale, new_rid, plain_switch

        cleanup_stale()
        for _ in range(20):
            if not any(n.startswith(f"hsb{self.rid}-") for n in ip("netns", "list").stdout.split()):
                break
            self.rid = new_rid()
        self.net = self._pick_net()
        sw = self.ns("sw")
        for node in ("sw", "cp1", "cp2", "a", "b", "t"):
            ip("netns", "add", self.ns(node))
            self.namespaces.append(self.ns(node))
            ip("-n", self.ns(node), "link", "set", "lo", "up")
        for node in CPS:
            self._tune_cp_machine(node)
        plain_switch(sw)
        for br in ("br-data", "br-peer", "br-mgmt", "br-vrrp"):
            ip("-n", sw, "link", "add", br, "type", "bridge")
            ip("-n", sw, "link", "set", br, "up")

        def leg(node: str, kind: str, bridge: str, ifname: str, addr: str) -> None:
            sw_side = f"{kind}-{node}"
            ip("-n", sw, "link", "add", sw_side, "type", "veth", "peer", "name", ifname, "netns", self.ns(node))
            ip("-n", sw, "link", "set", sw_side, "master", bridge)
            ip("-n", sw, "link", "set", sw_side, "up")
            ip("-n", self.ns(node), "addr", "add", f"{addr}/24", "dev", ifname)
            ip("-n", self.ns(node), "link", "set", ifname, "up")

        for node in ("a", "b", "t", "cp1", "cp2"):
            leg(node, "d", "br-data", "eth0", self.data(node))
        for node in ("a", "b"):
            leg(node, "p", "br-peer", "peer0", self.peer(node).rsplit(":", 1)[0])
        for node in MGMT:
            leg(node, "m", "br-mgmt", "mgmt0", self.mgmt(node))
        for node in CPS:
            leg(node, "v", "br-vrrp", "vrrp0", self.vrrp(node))
        self.root_veth = f"hsb{self.rid}m"
        ip("link", "add", self.root_veth, "type", "veth", "peer", "name", "m-root", "netns", sw)
        ip("-n", sw, "link", "set", "m-root", "master", "br-mgmt")
        ip("-n", sw, "link", "set", "m-root", "up")
        ip("addr", "add", f"{self.mgmt('root')}/24", "dev", self.root_veth)
        ip("link", "set", self.root_veth, "up")
        for node, target in (("t", self.data("cp1")), ("a", self.data("cp2")), ("b", self.data("cp1"))):
            self._probe(node, target)
        for node in MGMT:
            self._probe(None, self.mgmt(node))

    def _tune_cp_machine(self, node: str) -> None:
        """A CP machine's kernel settings as the operations guide has them set
        (configs/sysctl/90-hsbcpd.conf: room in the accept queue for every terminal at once);
        they are per network namespace, and a new one starts at the kernel's defaults."""
        for line in SYSCTL_CONF.read_text().splitlines():
            key, sep, value = line.partition("=")
            if line.lstrip().startswith("#") or not sep:
                continue
            proc = "/proc/sys/" + key.strip().replace(".", "/")
            run(["ip", "netns", "exec", self.ns(node), "sh", "-c", f"echo {value.strip()} > {proc}"])
            now = self.read_in(node, proc).strip()
            if now != value.strip():  # (a lab quietly at the defaults would measure another machine)
                raise NetnsError(f"{key.strip()} is {now} in {self.ns(node)}, not {value.strip()} as {SYSCTL_CONF.name} sets it")

    def read_in(self, node: str, path: str) -> str:
        """A file as read in `node`'s network namespace (/proc/net/netstat, /proc/sys/net/…: its own)."""
        return run(["ip", "netns", "exec", self.ns(node), "cat", path]).stdout

    # ------------------------------------------------------------------ configs
    def _cp_host_addr(self) -> str:
        return self.data("vip", "host")

    def _write_cp_configs(self) -> None:
        d = self.dir
        group = self._terminal_group()
        self.journal_dir.mkdir(parents=True, exist_ok=True)  # made once on the shared storage, as an operator does
        for node in CPS:
            cp = _section(
                "cp",
                {
                    "name": node,
                    "terminal_listen": self.data("vip", "terminal"),
                    "host_listen": self.data("vip", "host"),
                    "admin_listen": self.mgmt(node, "admin"),
                    "http_listen": self.mgmt(node, "http"),
                    "secret_file": str(self.secret_file),
                    "held_bound": 256,
                    "host_timeout": self.host_timeout,
                    "host_lease": lease_for(self.host_timeout),
                    "journal": str(self.journal_dir),
                    "takeover": "on_wake",
                    "takeover_stale": self.takeover_stale,
                    "wake_file": str(self.dir / f"{node}.state"),
                    "tickle_acks": self.tickle_acks,
                },
            ) + _section("[terminal_groups]", {**group, "standby_capable": True, "attrs": {"kind": "till"}})
            (d / f"{node}.toml").write_text("\n".join(cp))
            self._write_keepalived(node)

    def _write_keepalived(self, node: str) -> None:
        """keepalived.conf, the notify script and the supervisor of one CP machine; the same shape
        as configs/keepalived/ (which uses systemd instead of the supervisor's pid file)."""
        d = self.dir
        other = "cp2" if node == "cp1" else "cp1"
        notify = d / f"notify-{node}.sh"
        notify.write_text(
            "#!/bin/bash\n"
            "# keepalived notify: $1 is GROUP|INSTANCE, $2 the instance, $3 MASTER|BACKUP|FAULT|STOP\n"
            f'echo "$(date +%s.%N) $3" >> {d}/notify-{node}.log\n'
            f'echo "$3" > {d}/{node}.state.tmp && mv {d}/{node}.state.tmp {d}/{node}.state\n'
            "exit 0\n"
        )
        notify.chmod(0o755)
        conf = f"""global_defs {{
    router_id hsb-{node}
    vrrp_version 3
    script_user root
    vrrp_garp_master_refresh 1
}}

# configs/keepalived/ uses vrrp_track_process; the kernel's process connector it needs exists
# only in the first network namespace, so here the supervisor says in a file whether hsbcpd runs
track_file hsbcpd_{node} {{
    file "{d}/{node}.down"
    weight 0
}}

vrrp_instance hsb_cp {{
    state BACKUP
    nopreempt
    interface vrrp0
    unicast_src_ip {self.vrrp(node)}
    unicast_peer {{
        {self.vrrp(other)}
    }}
    virtual_router_id 51
    priority {self.priority}
    advert_int {self.advert_int}
    track_interface {{
        eth0
    }}
    track_file {{
        hsbcpd_{node}
    }}
    virtual_ipaddress {{
        {self.vip}/24 dev eth0
    }}
    notify {notify}
}}
"""
        (d / f"keepalived-{node}.conf").write_text(conf)
        sup = d / f"supervise-{node}.sh"
        sup.write_text(
            "#!/bin/bash\n"
            "# hsbcpd restarted whenever it exits, as systemd's Restart=always does\n"
            "while true; do\n"
            f"    {sys.executable} -m hsb.cp --config {d}/{node}.toml &\n"
            f"    echo $! > {d}/{node}.pid\n"
            f"    echo 0 > {d}/{node}.down\n"
            "    wait $!\n"
            "    code=$?\n"
            f"    echo 1 > {d}/{node}.down\n"
            f'    echo "$(date +%s.%N) exit $code" >> {d}/{node}-exits.log\n'
            "    sleep 0.2\n"
            "done\n"
        )
        sup.chmod(0o755)
        (d / f"{node}.down").write_text("1\n")

    # ------------------------------------------------------------------ processes
    def start_cp_machine(self, node: str) -> None:
        self.daemons[node] = self.spawn(node, node, ["bash", str(self.dir / f"supervise-{node}.sh")])
        self.daemons[f"ka-{node}"] = self.spawn(
            f"keepalived-{node}",
            node,
            [
                KEEPALIVED or "keepalived",
                "-f",
                str(self.dir / f"keepalived-{node}.conf"),
                "-P",
                "-n",
                "-l",
                "-D",
                "-p",
                str(self.dir / f"ka-{node}.pid"),
                "-r",
                str(self.dir / f"ka-vrrp-{node}.pid"),
                "-c",
                str(self.dir / f"ka-check-{node}.pid"),
            ],
        )

    def cp_pid(self, node: str) -> int | None:
        try:
            pid = int((self.dir / f"{node}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            return None

    def keepalived_pids(self, node: str) -> list[int]:
        """keepalived's processes on `node`: its parent and its VRRP child (from their pid files)."""
        pids = []
        for f in (f"ka-{node}.pid", f"ka-vrrp-{node}.pid"):
            try:
                pids.append(int((self.dir / f).read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    async def cp_statuses(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for node in CPS:
            h, p = self.mgmt(node, "admin").split(":")
            try:
                out[node] = (await request(h, int(p), self.secret_bytes, {"t": "status"}, timeout=0.5))["data"]
            except Exception as exc:  # noqa: BLE001 - down, restarting, cut: said as such
                out[node] = {"state": "unreachable", "error": f"{type(exc).__name__}: {exc}"}
        return out

    @property
    def secret_bytes(self) -> bytes:
        from hsb.wire.auth import load_secret

        return load_secret(str(self.secret_file))

    async def serving_cp(self) -> str | None:
        sts = await self.cp_statuses()
        serving = [n for n, s in sts.items() if s.get("cp_state") == "serving"]
        return serving[0] if len(serving) == 1 else None

    def holds_vip(self, node: str) -> bool:
        out = run(["ip", "-n", self.ns(node), "-4", "addr", "show", "dev", "eth0"], check=False).stdout
        return f"{self.vip}/" in out

    async def status(self, timeout: float = 1.0) -> dict[str, Any]:
        """The ctl view through whichever CP serves (the first if none does)."""
        node = await self.serving_cp() or "cp1"
        return await status_all(self.mgmt(node, "admin"), self.host_admins, str(self.secret_file), timeout=timeout)

    async def wait(self, pred: Any, timeout: float, what: str, interval: float = 0.05) -> dict[str, Any]:
        import asyncio

        deadline = time.monotonic() + timeout
        while True:
            st = await self.status()
            if pred(st):
                return st
            if time.monotonic() > deadline:
                from tests.netns.harness import brief

                raise TimeoutError(
                    f"timed out after {timeout:.0f}s waiting for {what}: {brief(st)}; cps {await self.cp_statuses()}; logs in {self.dir}"
                )
            await asyncio.sleep(interval)

    async def start(self, timeout: float = 60.0) -> dict[str, Any]:
        """Both CP machines (the first to win the election serves), then host A active and host B
        standby; returns the first established status."""
        import asyncio

        for node in CPS:
            self.start_cp_machine(node)
        deadline = time.monotonic() + 30
        while await self.serving_cp() is None:
            for node in CPS:
                ka = self.daemons[f"ka-{node}"]
                if not ka.alive():
                    raise NetnsError(f"keepalived in {node} exited ({ka.proc.returncode}): {ka.tail()}")
            if time.monotonic() > deadline:
                raise NetnsError(f"no CP took over within 30 s: {await self.cp_statuses()}; logs in {self.dir}")
            await asyncio.sleep(0.05)
        self.start_host("a", "active")
        self.start_host("b", "standby")
        return await self.wait(lambda s: s["established"], timeout, "hot standby established")

    def cp_events(self, node: str, name: str) -> list[dict[str, Any]]:
        from tests.support.procs import log_events

        return [e for e in log_events(self.dir / f"{node}.log") if e.get("event") == name]

    def daemons_alive(self) -> list[Daemon]:
        return [d for d in self.daemons.values() if d.alive()]
