"""The reference keepalived.conf's `vrrp_track_process hsbcpd` and `vrrp_script hsbcpd_health`
against the real keepalived and the real hsbcpd, started as its systemd unit starts it (`hsbcpd
--config … --supervise`, the console script: the kernel names such a process after the script,
`hsbcpd`), with the shipped `hsb-cp-health` (curl on hsbcpd's /health).

The two-CP lab cannot use process tracking (tests/netns/cplab.py: the kernel's process
connector exists only in the first network namespace), so this test runs keepalived in the
root namespace, its VRRP instance on a veth of its own whose other end is in a namespace made
here (the adverts go there and nowhere else; nobody answers, so this machine becomes master).
The stanzas are copied from configs/keepalived/keepalived.conf as it ships: the machine must
leave the election (FAULT, its address removed) when hsbcpd cannot write its journal (/health
503) and when no hsbcpd runs, and come back when it can again, or when one runs again, a CP
waiting to take over (`takeover = "on_wake"`) included (docs/operations.md, "Two CP machines").
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from hsb.ports import free_port
from tests.netns.cplab import KEEPALIVED, keepalived_reason
from tests.netns.harness import cleanup_stale, free_mgmt_net, ip, new_rid
from tests.support.procs import arm_faults, cp_config, wait_for

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "configs" / "keepalived" / "keepalived.conf"
HEALTH = REPO / "configs" / "keepalived" / "hsb-cp-health"
HSBCPD = Path(sys.executable).parent / "hsbcpd"  # the console script, as installed in the venv
WHY = (
    keepalived_reason()
    or (None if HSBCPD.exists() else f"needs the hsbcpd console script at {HSBCPD} (scripts/test installs the project)")
    or (None if shutil.which("curl") else "needs curl, which hsb-cp-health runs (Debian's curl package)")
)
pytestmark = [pytest.mark.timeout(90), pytest.mark.skipif(WHY is not None, reason=WHY or "")]

NO_CONNECTOR = "Failed to set/clear process event listen"


def shipped_stanza(head: str) -> str:
    """The `HEAD { … }` block of the shipped keepalived.conf, verbatim."""
    m = re.search(rf"^{re.escape(head)} \{{\n.*?^\}}\n", SHIPPED.read_text(), re.S | re.M)
    assert m is not None, f"{SHIPPED} has no {head} block"
    return m.group(0)


class Machine:
    """keepalived in the root namespace on a veth into a namespace of this test's own."""

    def __init__(self, d: Path, http: str) -> None:
        cleanup_stale()  # (a killed run's namespace and veth: named as the labs' are)
        self.dir = d
        self.rid = new_rid()
        self.ns = f"hsb{self.rid}-t"
        self.link = f"hsb{self.rid}m"
        self.net = free_mgmt_net()
        self.vip = f"10.214.{self.net}.10"
        self.keepalived: subprocess.Popen[bytes] | None = None
        self.notify_log = d / "notify.log"
        self.http = http  # hsbcpd's http_listen, where the health script asks

    def up(self) -> None:
        ip("netns", "add", self.ns)
        ip("link", "add", self.link, "type", "veth", "peer", "name", "eth0", "netns", self.ns)
        ip("-n", self.ns, "addr", "add", f"10.214.{self.net}.1/24", "dev", "eth0")
        ip("-n", self.ns, "link", "set", "eth0", "up")
        ip("addr", "add", f"10.214.{self.net}.254/24", "dev", self.link)
        ip("link", "set", self.link, "up")
        notify = self.dir / "notify.sh"
        notify.write_text(f'#!/bin/sh\necho "$3" >> {self.notify_log}\nexit 0\n')
        notify.chmod(0o755)
        # the shipped health script, installed here and pointed at this hsbcpd's /health
        scripts = self.dir / "lib"
        scripts.mkdir(mode=0o755)
        health = HEALTH.read_text()
        assert health.count("127.0.0.1:7080") == 1, health
        (scripts / HEALTH.name).write_text(health.replace("127.0.0.1:7080", self.http))
        (scripts / HEALTH.name).chmod(0o755)
        conf = self.dir / "keepalived.conf"
        conf.write_text(
            "global_defs {\n    router_id hsb-track\n    vrrp_version 3\n    script_user root\n    enable_script_security\n}\n\n"
            + shipped_stanza("vrrp_track_process hsbcpd")
            + "\n"
            + shipped_stanza("vrrp_script hsbcpd_health").replace("/usr/local/lib/hsb", str(scripts))
            + f"""
vrrp_instance hsb_cp_track {{
    state BACKUP
    nopreempt
    interface {self.link}
    unicast_src_ip 10.214.{self.net}.254
    unicast_peer {{
        10.214.{self.net}.1
    }}
    virtual_router_id 51
    priority 100
    advert_int 0.1
    track_process {{
        hsbcpd
    }}
    track_script {{
        hsbcpd_health
    }}
    virtual_ipaddress {{
        {self.vip}/24 dev {self.link}
    }}
    notify {notify}
}}
"""
        )
        assert KEEPALIVED is not None
        pid = self.dir / "ka"
        with open(self.dir / "keepalived.log", "ab") as log:
            self.keepalived = subprocess.Popen(
                [KEEPALIVED, "-f", str(conf), "-P", "-n", "-l", "-D", "-p", f"{pid}.pid", "-r", f"{pid}-vrrp.pid", "-c", f"{pid}-check.pid"],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def states(self) -> list[str]:
        try:
            return self.notify_log.read_text().split()
        except FileNotFoundError:
            return []

    def state(self) -> str | None:
        s = self.states()
        return s[-1] if s else None

    def holds_vip(self) -> bool:
        return f"inet {self.vip}/" in ip("-4", "addr", "show", "dev", self.link).stdout

    def log(self) -> str:
        return (self.dir / "keepalived.log").read_text(errors="replace")

    def down(self) -> None:
        if self.keepalived is not None and self.keepalived.poll() is None:
            os.killpg(self.keepalived.pid, signal.SIGTERM)
            try:
                self.keepalived.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.keepalived.pid, signal.SIGKILL)
                self.keepalived.wait(5)
        ip("link", "del", self.link, check=False)
        ip("netns", "del", self.ns, check=False)


def start_hsbcpd(d: Path, log: Path) -> subprocess.Popen[bytes]:
    """hsbcpd as its systemd unit starts it, in a session of its own (its master and worker),
    its storage faults armed on SIGUSR2 (hsb.faults)."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [str(HSBCPD), "--config", str(d / "cp.toml"), "--supervise"],
            stdout=fh,
            stderr=fh,
            stdin=subprocess.DEVNULL,
            cwd=d,
            start_new_session=True,
            env={**os.environ, "HSB_CRASH_CONTROL": str(d / "faults")},
        )


def kill_all(p: subprocess.Popen[bytes]) -> None:
    """SIGKILL every process of its session: the master and its worker."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(10)


def named_hsbcpd() -> dict[int, int]:
    """Every process of this machine that the kernel calls `hsbcpd` (what keepalived counts,
    whoever started it), with its session."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "hsbcpd":
                    out[int(entry.name)] = os.getsid(int(entry.name))
            except (OSError, ProcessLookupError):
                pass
    return out


def hsbcpd_processes(p: subprocess.Popen[bytes]) -> list[int]:
    """The processes of its session that the kernel calls `hsbcpd`."""
    return [pid for pid, sid in named_hsbcpd().items() if sid == p.pid]


def others(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """hsbcpd processes not of this test's (an operator's, another checkout's): keepalived counts
    them too, so while one runs, this machine keeps its quorum whatever becomes of the test's."""
    ours = {p.pid for p in procs}
    return sorted(pid for pid, sid in named_hsbcpd().items() if sid not in ours)


def skip_if_others(procs: list[subprocess.Popen[bytes]]) -> None:
    if found := others(procs):
        pytest.skip(f"another process named hsbcpd runs on this machine (pid {found[0]}): keepalived's process tracking counts it too")


def worker(p: subprocess.Popen[bytes]) -> int:
    """The master's worker: the hsbcpd that serves (its child)."""
    for pid in hsbcpd_processes(p):
        if pid != p.pid and Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1] == str(p.pid):
            return pid
    raise AssertionError("no worker")


def test_the_shipped_checks_follow_a_real_hsbcpd(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)  # (enable_script_security: the scripts' paths writable by root only)
    journal = tmp_path / "journal"
    journal.mkdir()
    # fixed addresses: the CP started again below answers where the health script asks
    where: dict[str, Any] = {k: f"127.0.0.1:{free_port()}" for k in ("terminal_listen", "host_listen", "admin_listen", "http_listen")}
    cp_config(tmp_path, terminals=2, journal=str(journal), **where)
    m = Machine(tmp_path, where["http_listen"])
    procs: list[subprocess.Popen[bytes]] = []
    try:
        skip_if_others(procs)
        cp = start_hsbcpd(tmp_path, tmp_path / "cp.log")
        procs.append(cp)
        # the master and its worker, both named after the console script
        wait_for(lambda: len(hsbcpd_processes(cp)) >= 2, 20, what="hsbcpd's master and worker, named hsbcpd")
        m.up()
        wait_for(lambda: m.state() == "MASTER" or NO_CONNECTOR in m.log(), 20, what="keepalived to become master with hsbcpd running")
        if NO_CONNECTOR in m.log():
            pytest.skip("keepalived cannot track processes here: the kernel's process connector refused it (CONFIG_PROC_EVENTS)")
        assert "FAULT" not in m.states(), m.log()[-3000:]
        wait_for(m.holds_vip, 10, what="the virtual address on this machine")

        # its journal's storage hung: /health says 503 after journal_timeout, the script fails
        # twice (fall 2), and the machine gives the address up though hsbcpd runs
        asyncio.run(arm_faults(tmp_path / "faults", worker(cp), "storage hold"))
        wait_for(lambda: m.state() == "FAULT", 20, what="keepalived to leave the election (FAULT) with hsbcpd's journal hung")
        wait_for(lambda: not m.holds_vip(), 10, what="the virtual address removed")
        assert "VRRP_Script(hsbcpd_health) failed" in m.log(), m.log()[-3000:]
        assert "Quorum lost" not in m.log() and len(hsbcpd_processes(cp)) >= 2, m.log()[-3000:]
        # the storage back: the next check passes (rise 1) and the machine stands again
        asyncio.run(arm_faults(tmp_path / "faults", worker(cp), "storage clear"))
        wait_for(lambda: m.state() in ("BACKUP", "MASTER"), 20, what="keepalived back in the election once the journal is written again")

        # every hsbcpd gone (not only the worker: its master would fork it again at once)
        t0 = time.monotonic()
        kill_all(cp)
        try:
            wait_for(lambda: "Quorum lost for tracked process hsbcpd" in m.log(), 10, what="keepalived to see no hsbcpd left")
        except TimeoutError:
            skip_if_others(procs)  # (one started meanwhile, elsewhere: it keeps the quorum)
            raise
        wait_for(lambda: m.state() == "FAULT", 10, what="keepalived to leave the election (FAULT) with no hsbcpd")
        took = time.monotonic() - t0
        wait_for(lambda: not m.holds_vip(), 10, what="the virtual address removed")

        # a CP waiting to take over counts as running: this machine stands for election again
        cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake", wake_file=str(tmp_path / "cp.state"), **where)
        (tmp_path / "cp.state").write_text("BACKUP\n")
        waiting = start_hsbcpd(tmp_path, tmp_path / "cp-waiting.log")
        procs.append(waiting)
        wait_for(lambda: m.state() in ("BACKUP", "MASTER"), 20, what="keepalived back in the election with a waiting hsbcpd")
        assert waiting.poll() is None, (tmp_path / "cp-waiting.log").read_text()[-2000:]
        assert m.states().count("FAULT") == 2, (m.states(), took)
    finally:
        for p in procs:
            if p.poll() is None:
                kill_all(p)
        m.down()
