"""TLS on the links (docs/tls.md): what it adds, who it refuses, and that nothing else changes.

Real hsbcpd/hsbd processes, certificates from `hsbctl tls init` (hsb.ctl.tls_cmd):
- a man in the middle (tests/support/proxy.py) writes a forged `reply` into an authenticated
  host link: acted on without TLS (the test proves the attack), never with TLS (the link
  breaks, the host connects again, the true reply arrives);
- a plaintext client, one whose certificate is from another CA, an expired one, and one whose
  certificate names someone else are refused on each port, each with its reason logged;
- a failover under load with TLS on every link, terminals' too: the strict verdict holds;
- new certificates and SIGHUP: new connections get them, established links stay up;
- the config check refuses a key readable by others, a certificate that is not the key's, and
  an expired certificate, each with its fix.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox
from hsb.ctl.tls_cmd import make_ca_and_certs
from hsb.term.connector import tls_context
from hsb.term.load import run_load
from hsb.wire.client import FrameStream, LinkClosed
from hsb.wire.framing import Decoder, encode
from hsb.wire.tls import TLS, TLSFiles
from tests.support.hostclient import FakeHost, FakeTerminal
from tests.support.procs import SECRET, Proc, addr, http_get, log_events, start_cp, until
from tests.support.proxy import Proxy
from tests.support.sandboxed import active_names, pid_of

pytestmark = pytest.mark.timeout(120)

ATTRS = {"protocol": "hsb1"}


def ctx_for(d: Path, name: str) -> ssl.SSLContext:
    return TLS(TLSFiles(str(d / "ca.pem"), str(d / f"{name}.pem"), str(d / f"{name}.key"))).client


def raw_ctx(d: Path, name: str) -> ssl.SSLContext:
    """A client context as any TLS client would make it (no checks of ours: an expired one too)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(str(d / "ca.pem"))
    ctx.load_cert_chain(str(d / f"{name}.pem"), str(d / f"{name}.key"))
    return ctx


def cp_tls(d: Path, terminals: bool = True) -> dict[str, Any]:
    return {"ca_file": str(d / "ca.pem"), "cert_file": str(d / "cp.pem"), "key_file": str(d / "cp.key"), "terminals": terminals}


async def forged_reply_reaches_the_terminal(tmp_path: Path, tls_dir: Path | None) -> tuple[bool, Proc, FakeTerminal, FakeHost]:
    """A CP, an active host through a proxy, a terminal with one message outstanding; the proxy
    injects a reply the host never sent. Whether the terminal got it. The caller stops the CP
    it returns; if anything here fails, the CP is stopped here."""
    cp = start_cp(tmp_path / "cp", terminals=4, host_timeout=0.5, tls=cp_tls(tls_dir, terminals=False) if tls_dir else None)
    try:
        proxy = Proxy(cp.info["host"])
        await proxy.start()
        host_ssl = ctx_for(tls_dir, "host-a") if tls_dir else None
        a = await FakeHost.connect(proxy.addr, "host-a", ssl=host_ssl)
        a.auto_open = ATTRS
        await a.register("active")
        t = await FakeTerminal.connect(cp.info["terminal"], "T00001")
        await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
        t.send({"t": "msg", "id": 1, "data": "real"})
        await a.wait(lambda m: m["t"] == "deliver" and m["id"] == 1)
        proxy.inject(encode({"t": "reply", "terminal": "T00001", "id": 1, "data": "FORGED", "epoch": a.epoch}))
        try:
            await t.wait(lambda m: m["t"] == "reply", timeout=1.0)  # an observation window: the forgery, or nothing
        except TimeoutError:
            pass
        forged = any(m["t"] == "reply" and m["data"] == "FORGED" for m in t.inbox)
        return forged, cp, t, a
    except BaseException:
        cp.stop()
        raise


async def test_an_injected_frame_is_acted_on_without_tls_and_never_with_it(tmp_path: Path) -> None:
    forged, cp, t, a = await forged_reply_reaches_the_terminal(tmp_path / "plain", None)
    try:
        assert forged, "without TLS the forged reply should have reached the terminal (the attack the test guards against)"
    finally:
        cp.stop()
    tls_dir = tmp_path / "tls"
    make_ca_and_certs(tls_dir, ["cp", "host-a", "hsbctl"])
    forged, cp, t, a = await forged_reply_reaches_the_terminal(tmp_path / "tls-run", tls_dir)
    try:
        assert not forged, "with TLS the forged reply was acted on"
        # the injected bytes broke that TLS connection only, with the reason logged
        await until(lambda: a.closed, 5, what="the host link closed by the CP")
        ev = cp.wait_event("tls_refused")
        assert ev["link"] == "host" and "injected or damaged" in ev["reason"], ev
        assert not t.closed  # the terminal's own connection is untouched
        # the host connects again and answers: the true reply arrives, once
        a2 = await FakeHost.connect(cp.info["host"], "host-a", ssl=ctx_for(tls_dir, "host-a"))
        a2.auto_open = ATTRS
        assert (await a2.register("active"))["t"] == "registered"
        d = await a2.wait(lambda m: m["t"] == "deliver" and m["id"] == 1)
        a2.send({"t": "reply", "terminal": "T00001", "id": 1, "data": "real", "epoch": a2.epoch})
        got = await t.wait(lambda m: m["t"] == "reply")
        assert got["data"] == "real" and d["redelivered"], (got, d)
    finally:
        cp.stop()


def raw_plain(addr_: str, data: bytes) -> bytes:
    h, p = addr(addr_)
    with socket.create_connection((h, p), timeout=5) as s:
        s.sendall(data)
        try:
            return s.recv(4096)
        except (TimeoutError, OSError):
            return b""


async def tls_attempt(addr_: str, ctx: ssl.SSLContext, name: str, link: str) -> str:
    """Connect with `ctx` and authenticate as `name`: "ok", or why it failed."""
    h, p = addr(addr_)
    try:
        fs = await FrameStream.connect(h, p, ssl=ctx, timeout=5)
    except (OSError, ssl.SSLError, TimeoutError) as exc:
        return f"refused: {type(exc).__name__}"
    try:
        await fs.authenticate(SECRET, link, name, timeout=5)
        return "ok"
    except (LinkClosed, OSError, ssl.SSLError, TimeoutError) as exc:
        return f"refused: {exc}"
    finally:
        await fs.aclose()


async def test_plaintext_wrong_ca_expired_and_someone_elses_certificate_are_refused(tmp_path: Path) -> None:
    good, other, old = tmp_path / "tls", tmp_path / "other-ca", tmp_path / "old"
    make_ca_and_certs(good, ["cp", "host-a", "hsbctl", "intruder", "T00002"])
    make_ca_and_certs(other, ["host-a"])
    # an expired certificate from the right CA: copy the CA in, issue one that ended yesterday
    old.mkdir()
    for f in ("ca.pem", "ca.key"):
        (old / f).write_bytes((good / f).read_bytes())
    make_ca_and_certs(old, ["host-a"], days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    cp = start_cp(tmp_path / "cp", terminals=4, host_timeout=0.5, tls=cp_tls(good, terminals=True))
    try:
        for port, link in ((cp.info["host"], "host"), (cp.info["admin"], "admin")):
            mark = len(log_events(tmp_path / "cp" / "cp.log"))
            assert raw_plain(port, encode({"t": "auth", "name": "host-a"})) == b""  # plaintext: closed, not answered
            assert await tls_attempt(port, ctx_for(other, "host-a"), "host-a", link) != "ok"
            # refused with the alert: the client's own error names its expired certificate
            expired = await tls_attempt(port, raw_ctx(old, "host-a"), "host-a", link)
            assert "certificate expired" in expired, expired
            name = "host-a" if link == "host" else "hsbctl"
            mismatch = await tls_attempt(port, ctx_for(good, "intruder"), name, link)
            assert "tls_name_mismatch" in mismatch, mismatch
            assert await tls_attempt(port, ctx_for(good, name), name, link) == "ok"

            def reasons(mark: int = mark, link: str = link) -> list[str]:
                evs = log_events(tmp_path / "cp" / "cp.log")[mark:]
                return [e.get("reason", "") for e in evs if e.get("event") in ("tls_refused", "auth_failed") and e.get("link") == link]

            got = await until(lambda: len(reasons()) >= 4 and reasons(), 10, what=f"four refusals logged on the {link} port")
            text = " | ".join(got)
            # (a client of another CA refuses our certificate first: the server sees it give up)
            assert "not TLS" in text and "another CA" in text and "expired" in text and "certificate is for" in text, text
        # the terminal port: TLS, certificates optional; one that is presented must be the terminal's
        term = cp.info["terminal"]
        # plaintext: answered in plaintext, so that the terminal knows to use TLS (not a restart to wait out)
        refused = Decoder().feed(raw_plain(term, encode({"t": "hello", "terminal": "T00001"})))
        assert [(f["t"], f["code"]) for f in refused] == [("error", "tls_required")] and "--tls" in refused[0]["msg"], refused
        ok = await FakeTerminal.connect(term, "T00001", ssl=tls_context(str(good / "ca.pem")))
        assert (await ok.wait(lambda m: m["t"] in ("welcome", "error")))["t"] == "welcome"
        wrong = await FakeTerminal.connect(term, "T00001", ssl=tls_context(str(good / "ca.pem"), str(good / "T00002.pem"), str(good / "T00002.key")))
        err = await wrong.wait(lambda m: m["t"] == "error")
        assert err["code"] == "tls_name_mismatch", err
        with pytest.raises((ssl.SSLError, OSError)):
            bad = tls_context(str(other / "ca.pem"))  # a terminal that does not trust our CA refuses the CP
            await FakeTerminal.connect(term, "T00003", ssl=bad)
        await ok.close()
    finally:
        cp.stop()


async def test_failover_under_load_with_tls_on_every_link(sb: Any) -> None:
    info = await sb(terminals=200, service="journal", tls=True)
    d = Path(info["dir"])
    ca = str(d / "tls" / "ca.pem")
    a_pid = pid_of(info, "host-a")
    sending, stop = asyncio.Event(), asyncio.Event()
    marks: list[tuple[str, float]] = []
    task = asyncio.ensure_future(
        run_load(
            info["cp"]["terminal"], terminals=200, rate=500, duration=3600, settle=20, sending=sending, stop=stop, marks=marks, ssl=tls_context(ca)
        )
    )
    await asyncio.wait_for(sending.wait(), 60)
    ssl_ctl = sandbox.client_ssl(d)
    st = await wait_status_tls(d, lambda s: s["cp"]["terminals"]["standby_sessions"] == 200, ssl_ctl)
    assert st["cp"]["tls"]["enabled"] and all(h["tls"]["enabled"] for h in st["hosts"])
    await asyncio.sleep(0.5)  # pacing, not synchronisation: let the load run in hot standby for a while before the kill
    import time

    marks.append(("SIGKILL", time.time()))
    os.kill(a_pid, signal.SIGKILL)
    await wait_status_tls(d, lambda s: "host-b" in active_names(s), ssl_ctl)
    await asyncio.sleep(1.0)  # pacing: the load goes on against the new active for a while before it stops
    stop.set()
    report = await task
    assert report.ok, report.failures
    assert report.switched == 200 and report.lost == 0 and report.duplicates == 0


async def wait_status_tls(d: Path, pred: Any, ssl_ctx: Any, timeout: float = 30.0) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        st = await sandbox.status(d, timeout=1.0)
        if pred(st):
            return st
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting for the status"
        await asyncio.sleep(0.05)


async def admin_cert_serial(admin: str, tls_dir: Path) -> int:
    """The serial number of the certificate a CP's admin link presents now."""
    from cryptography import x509

    h, p = addr(admin)
    fs = await FrameStream.connect(h, p, ssl=ctx_for(tls_dir, "hsbctl"))
    try:
        der = fs.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        await fs.aclose()
    return int(x509.load_der_x509_certificate(der).serial_number)


async def test_new_certificates_and_sighup_new_connections_get_them_links_stay(sb: Any) -> None:
    info = await sb(terminals=10, tls=True)
    d = Path(info["dir"])
    tls_dir = d / "tls"

    async def cp_serial() -> int:
        return await admin_cert_serial(info["cp"]["admin"], tls_dir)

    before = await cp_serial()
    links_before = [e for e in log_events(d / "cp.log") if e.get("event") == "link_authenticated" and e.get("link") == "host"]
    assert links_before, "no host link authenticated before the reload: nothing to compare"
    make_ca_and_certs(tls_dir, ["cp", "host-a", "host-b", "hsbctl"])  # the same CA, new certificates
    os.kill(info["cp"]["pid"], signal.SIGHUP)
    ev = await until(lambda: [e for e in log_events(d / "cp.log") if e.get("event") == "tls_reloaded"], 10, what="tls_reloaded")
    assert ev
    after = await cp_serial()
    assert after != before
    await asyncio.sleep(0.5)  # established links: no reconnect in this window
    links_after = [e for e in log_events(d / "cp.log") if e.get("event") == "link_authenticated" and e.get("link") == "host"]
    assert len(links_after) == len(links_before), "a host link was re-established: the reload dropped it"
    st = await sandbox.status(d)
    assert st["established"] and st["cp"]["tls"]["not_after"]


def check(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hsb.cp", "--config", str(cfg), "--check-config"], capture_output=True, text=True, timeout=60)


def test_the_config_check_refuses_unusable_certificates(tmp_path: Path) -> None:
    from tests.support.procs import cp_config

    good = tmp_path / "tls"
    make_ca_and_certs(good, ["cp", "host-a"])
    cfg = cp_config(tmp_path, terminals=2, tls=cp_tls(good))
    r = check(cfg)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    # a usable certificate of another name: the start accepts it, the check warns (peers refuse it)
    r = check(cp_config(tmp_path, terminals=2, tls={**cp_tls(good), "cert_file": str(good / "host-a.pem"), "key_file": str(good / "host-a.key")}))
    assert r.returncode == 0 and "names host-a, not this daemon's name 'cp'" in r.stderr and "--names cp" in r.stderr, r.stderr
    cfg = cp_config(tmp_path, terminals=2, tls=cp_tls(good))  # the same file again, with cp's own certificate
    (good / "cp.key").chmod(0o644)
    r = check(cfg)
    assert r.returncode == 78 and "accessible by group or others" in r.stderr and "chmod 600" in r.stderr, r.stderr
    (good / "cp.key").chmod(0o600)
    cfg = cp_config(tmp_path, terminals=2, tls={**cp_tls(good), "key_file": str(good / "host-a.key")})
    r = check(cfg)
    assert r.returncode == 78 and "does not go with" in r.stderr, r.stderr
    old = tmp_path / "old"
    old.mkdir()
    for f in ("ca.pem", "ca.key"):
        (old / f).write_bytes((good / f).read_bytes())
    make_ca_and_certs(old, ["cp"], days=1, not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
    cfg = cp_config(tmp_path, terminals=2, tls={"ca_file": str(old / "ca.pem"), "cert_file": str(old / "cp.pem"), "key_file": str(old / "cp.key")})
    r = check(cfg)
    assert r.returncode == 78 and "expired" in r.stderr and "SIGHUP" in r.stderr, r.stderr


async def test_hsbctl_status_shows_tls_and_the_expiry(sb: Any) -> None:
    info = await sb(terminals=10, tls=True)
    r = subprocess.run([sys.executable, "-m", "hsb.ctl", *info["ctl"], "status"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "TLS" in r.stdout and "expires" in r.stdout, r.stdout
    _, text = await asyncio.get_running_loop().run_in_executor(None, http_get, info["cp"]["http"], "/metrics")
    days = [ln for ln in text.splitlines() if ln.startswith("hsb_tls_cert_expiry_days")]
    assert days and 800 < float(days[0].split()[-1]) <= 825, days


async def test_a_host_that_does_not_trust_the_cps_certificate_says_so(tmp_path: Path) -> None:
    """The host's side of a refused handshake: one cp_link_refused line naming TLS and the cause,
    not a silent 'CP link down'."""
    from hsb.ports import free_port

    good, other = tmp_path / "tls", tmp_path / "other-ca"
    make_ca_and_certs(good, ["cp", "host-a"])
    make_ca_and_certs(other, ["host-a"])  # host-a's CA file names another CA: it cannot trust the CP
    cp = start_cp(tmp_path / "cp", terminals=2, tls=cp_tls(good, terminals=False))
    host = None
    try:
        host = _host_a(tmp_path, cp, other, f"127.0.0.1:{free_port()}")
        host.wait_event("host_started", timeout=15)

        def refused() -> list[str]:
            return [e.get("reason", "") for e in log_events(host.log) if e.get("event") == "cp_link_refused"]

        got = await until(refused, 15, what="cp_link_refused in the host's log")
        assert got[0].startswith("tls: ") and "certificate" in got[0], got  # the verify message (the hint is a field of its own)
        assert not [e for e in log_events(host.log) if e.get("event") == "registered_at_cp"]
    finally:
        if host is not None:
            host.stop()
        cp.stop()


async def test_a_cp_waiting_to_take_over_serves_new_certificates_after_sighup(tmp_path: Path) -> None:
    """A second CP machine's hsbcpd waits (`takeover = "on_wake"`) with its admin link and /health
    up, for months maybe: new certificates and SIGHUP must reach those links while it waits."""
    import tomllib

    from tests.support.procs import _run_cp, cp_config

    tls_dir = tmp_path / "tls"
    make_ca_and_certs(tls_dir, ["cp", "hsbctl"])
    d = tmp_path / "cp"
    d.mkdir()
    # its address is on no interface here: it waits for good
    cfg = cp_config(d, terminals=2, takeover="on_wake", terminal_listen="192.0.2.1:7000", tls=cp_tls(tls_dir, terminals=False))
    cp = _run_cp(d, cfg, None, wait=False)
    try:
        cp.wait_event("cp_waiting", timeout=15)
        admin = str(tomllib.loads(cfg.read_text())["cp"]["admin_listen"])

        async def serial() -> int:
            return await admin_cert_serial(admin, tls_dir)

        before = await serial()
        make_ca_and_certs(tls_dir, ["cp", "hsbctl"])  # the same CA, new certificates
        cp.popen.send_signal(signal.SIGHUP)
        await until(lambda: cp.events("tls_reloaded"), 10, what="tls_reloaded while waiting")
        assert await serial() != before
        assert not cp.events("journal_recovered")  # still waiting
    finally:
        cp.stop()


async def test_a_host_that_does_not_trust_the_peers_certificate_says_so(tmp_path: Path) -> None:
    """The connecting side of the peer link: one peer_link_refused line naming TLS and the
    cause (it logged nothing and retried every 0.5 s)."""

    good, other = tmp_path / "tls", tmp_path / "other-ca"
    make_ca_and_certs(good, ["cp", "host-a"])
    make_ca_and_certs(other, ["host-b"])  # a "peer" whose certificate is of another CA
    impostor = TLS(TLSFiles(str(other / "ca.pem"), str(other / "host-b.pem"), str(other / "host-b.key")))
    srv = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=impostor.server)
    cp = start_cp(tmp_path / "cp", terminals=2, tls=cp_tls(good, terminals=False))
    host = None
    try:
        host = _host_a(tmp_path, cp, good, f"127.0.0.1:{srv.sockets[0].getsockname()[1]}")

        def refused() -> list[str]:
            return [e.get("reason", "") for e in log_events(host.log) if e.get("event") == "peer_link_refused"]

        got = await until(refused, 15, what="peer_link_refused in the host's log")
        assert got[0].startswith("tls: ") and "certificate" in got[0], got
    finally:
        if host is not None:
            host.stop()
        cp.stop()
        srv.close()


def _host_a(tmp_path: Path, cp: Proc, tls_dir: Path, peer: str) -> Proc:
    """host-a, active, on `cp` with the CA and certificate of `tls_dir`, its peer at `peer`."""
    from hsb.ports import free_port
    from tests.support.procs import create_takeover_file, host_config, start_host

    d = tmp_path / "a"
    d.mkdir()
    create_takeover_file(d / "takeover.dat", records=16)
    cfg = host_config(
        d, "host-a", cp=cp.info["host"], peer_listen=f"127.0.0.1:{free_port()}", peer=peer, takeover=d / "takeover.dat", records=16, terminals=2
    )
    with cfg.open("a") as f:
        f.write(f'\n[tls]\nca_file = "{tls_dir / "ca.pem"}"\ncert_file = "{tls_dir / "host-a.pem"}"\nkey_file = "{tls_dir / "host-a.key"}"\n')
    return start_host(d, "host-a", "active", cfg, wait=False)
