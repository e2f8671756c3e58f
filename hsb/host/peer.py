"""The peer link between the two hosts: inter-system communication and monitoring
(101/102/201/401, 202/402; fault detection 103).

Both daemons listen and connect. Each side *sends* on the connection it opened
and *receives* on the one it accepted, so the link is symmetric and either
host may start first. Heartbeats flow every `heartbeat_interval`; the peer is
declared lost after `heartbeat_timeout` of silence on the receiving connection,
or at once on EOF. A notice sent while the sending connection is down is lost,
as in the patent [0056]: nothing is queued.

Only the peer may take the receiving side: a host that authenticates under another name (a
third host whose `host.peer` names this host's `peer_listen` by mistake) is refused with
`wrong_peer` while this host knows who its peer is, so two senders never knock each other off.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog

from hsb.backoff import Backoff
from hsb.config import parse_addr
from hsb.host.states import STOPPING
from hsb.ops.listen import listening
from hsb.ops.refusals import RefusalLog, not_hsb, refusal_hint, silent_where_answered, tls_refused_hint
from hsb.waits import event_within
from hsb.wire.authlink import AuthServerProtocol
from hsb.wire.client import FrameStream, LinkClosed, NoChallenge
from hsb.wire.conn import require
from hsb.wire.framing import ProtocolError

log = structlog.get_logger("hsb.host")
AUTH_TIMEOUT_S = 2.0  # s: for the connect, and again for the challenge and for the answer to the auth

PEER_TYPES = (
    "peer_hello",
    "hb",
    "active_startup",
    "standby_startup",
    "batch_write_complete",
    "file_mismatch",
    "standby_ready",
    "resync_request",
    "active_stopping",
)


_NONE = type(None)
# field -> (types, required), docs/protocol.md §5; a wrong type is a bad_fields protocol error
PEER_FIELDS: dict[str, dict[str, tuple[Any, bool]]] = {
    "peer_hello": {
        "name": (str, True),
        "role": (str, True),
        "state": (str, False),
        "instance": (str, True),
        "partner": ((str, _NONE), False),
        "startup_id": ((int, _NONE), False),
        "ring_next": ((int, _NONE), False),
        "epoch": (int, False),
        "ring_write_failing": ((str, _NONE), False),
    },
    "hb": {
        "role": (str, False),
        "state": (str, False),
        "instance": (str, False),
        "ring_next": ((int, _NONE), False),
        "ring_write_failing": ((str, _NONE), False),
    },
    "active_startup": {"name": (str, True), "instance": (str, True), "epoch": (int, False)},
    "standby_startup": {"startup_id": (int, True), "name": (str, False)},
    "batch_write_complete": {"startup_id": (int, True), "generation": (int, True)},
    "file_mismatch": {"startup_id": (int, True), "found": ((int, _NONE), False), "path": (str, False)},
    "standby_ready": {"startup_id": (int, True), "instance": (str, False)},
    "resync_request": {"startup_id": (int, True), "reason": (str, False), "record": (int, False)},
    "active_stopping": {"name": (str, True), "cp_confirmed": (bool, False)},
}


def _user_timeout(fs: FrameStream, seconds: float) -> None:
    """TCP_USER_TIMEOUT: the kernel drops the connection once data sent stays unacknowledged this
    long (a peer machine gone), instead of retransmitting for many minutes."""
    sock = fs.writer.get_extra_info("socket")
    if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))
        except OSError:  # not TCP (a test's socket pair), or not Linux
            pass


class PeerInbound(AuthServerProtocol):
    link = "peer"
    dispatch = {t: "on_frame" for t in PEER_TYPES}

    def __init__(self, owner: PeerLink, **kw: Any) -> None:
        super().__init__(**kw)
        self.owner = owner
        self.server_name = owner.name

    def on_open(self) -> None:
        if self.owner.closed:
            self.close()
            return
        self.owner.accepted.add(self)
        super().on_open()

    def refusal(self, name: str) -> tuple[str, str] | None:
        why = self.owner._stranger(name, self.peer.rsplit(":", 1)[0])  # (the address, not the port: one line per host)
        return None if why is None else ("wrong_peer", why)

    def authenticated(self) -> None:
        self.owner._inbound_up(self)

    def on_frame(self, msg: dict[str, Any]) -> None:
        for key, (typ, required) in PEER_FIELDS[msg["t"]].items():
            if required or key in msg:
                require(msg, key, typ)  # ProtocolError bad_fields: error frame, close, nothing reaches the HA loop
        self.owner._frame(self, msg)

    def on_lost(self, exc: Exception | None) -> None:
        self.owner.accepted.discard(self)
        if self.authed:
            self.owner._inbound_lost(self)


class PeerLink:
    """Owns both directions of the peer link and reports to the HA loop through callbacks."""

    def __init__(
        self,
        *,
        name: str,
        listen: str,
        peer: str,
        secret: bytes,
        interval: float,
        timeout: float,
        max_frame: int,
        on_frame: Callable[[dict[str, Any]], None],
        on_down: Callable[[str], None],
        on_up: Callable[[], None],
        hello: Callable[[], dict[str, Any]],
        on_problem: Callable[[str | None], None] = lambda _: None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.peer_addr = peer
        self.secret = secret
        self.interval = interval
        self.timeout = timeout
        self.max_frame = max_frame
        self.on_frame = on_frame
        self.on_down = on_down
        self.on_up = on_up
        self.hello = hello
        # why the sending connection cannot be made, as logged (a refusal, a wrong port), for the status; None once it is
        self.on_problem = on_problem
        self.inbound: PeerInbound | None = None
        self.outbound: FrameStream | None = None
        self.last_rx: float | None = None
        self.peer_name: str | None = None  # the name the receiving connection authenticated with
        self.peer_proved: str | None = None  # the name the host at `peer` proved on our sending connection (while it is up)
        self.peer_last_proved: str | None = None  # the name proved on the connection before (for the log)
        self.peer_hello: dict[str, Any] | None = None
        self.up = False
        self.server: asyncio.base_events.Server | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.bound = ""
        self.sent = 0
        self.lost_notices = 0
        self.wake_connect = asyncio.Event()
        self.closed = False
        self.said_stopping = False  # the link's last end came after the peer's heartbeat said `stopping`
        # when the peer's end closed the receiving connection (EOF, a reset: its process gone,
        # most likely), not a silence nor this host's own close: told to the CP with a request for
        # the active role (`closed_by_peer`), which then need not wait out the old active's lease
        self.closed_by_peer_at: float | None = None
        self.accepted: set[PeerInbound] = set()  # inbound connections, authenticated or not yet
        self.strangers = RefusalLog(
            "peer_host_refused", "only that connection was closed; refused again at each attempt (logged once a minute)", listen=listen
        )

    async def start(self, ssl: Any = None) -> None:
        """Listen (with TLS when `ssl` is a server context) and start connecting to the peer."""
        h, p = parse_addr(self.listen)
        loop = asyncio.get_running_loop()
        self.server = await listening(
            "host.peer_listen",
            self.listen,
            lambda: loop.create_server(
                lambda: PeerInbound(self, secret=self.secret, auth_timeout=max(self.timeout * 4, 2.0), max_frame=self.max_frame, tls=ssl),
                h,
                p,
                reuse_address=True,
            ),
        )
        s = self.server.sockets[0].getsockname()
        self.bound = f"{s[0]}:{s[1]}"
        self.tasks.append(loop.create_task(self._connect_loop()))
        self.tasks.append(loop.create_task(self._monitor()))

    # -- sending side -------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> bool:
        """Send a notice now if the sending connection is up; otherwise it is lost."""
        fs = self.outbound
        if fs is None:
            if msg.get("t") != "hb":
                self.lost_notices += 1
                log.info("peer_notice_lost", notice=msg.get("t"), reason="peer link down")
            return False
        try:
            fs.send(msg)
            self.sent += 1
            return True
        except (ConnectionError, OSError, RuntimeError):
            return False

    async def _connect_loop(self) -> None:
        while True:  # this task must never die: a dead sender would leave the peer link half up forever
            try:
                await self._connect_loop_inner()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("peer_sender_error", error=repr(exc))
                self.outbound = None
                await asyncio.sleep(0.1)

    async def _connect_loop_inner(self) -> None:
        h, p = parse_addr(self.peer_addr)
        backoff = Backoff(0.05, 0.5)
        said = self.on_problem
        refusals = RefusalLog("peer_auth_failed", on_said=said, peer=self.peer_addr)
        tls_refusals = RefusalLog(
            "peer_link_refused",
            "tried again every 5 s; check both hosts' certificates (their names, expiry, and CA in ca_file)",
            on_said=said,
            peer=self.peer_addr,
        )
        not_peer = RefusalLog(
            "peer_link_refused",
            "tried again every 5 s; check host.peer in this host's config: the peer_listen of this host's own peer",
            on_said=said,
            peer=self.peer_addr,
        )
        unresolved = RefusalLog(
            "peer_address_unresolved",
            "tried again; check host.peer in this host's config (a name the resolver knows, or an IP)",
            on_said=said,
            peer=self.peer_addr,
        )
        # a port that answers but is no hsb link (the CP's terminal port): said once, not retried in silence
        answered_before = False  # an hsb link at that address was authenticated by this process
        # (and then, no challenge within AUTH_TIMEOUT_S: a stuck daemon or a stalling network, not a wrong port)
        no_challenge = RefusalLog("peer_link_no_challenge", level="warning", on_said=said, peer=self.peer_addr)
        wrong_port = RefusalLog("peer_link_wrong_port", level="warning", on_said=said, peer=self.peer_addr)
        while True:
            fs: FrameStream | None = None
            try:
                fs = await FrameStream.connect(h, p, timeout=AUTH_TIMEOUT_S, max_frame=self.max_frame)
                try:
                    proved = await fs.authenticate(self.secret, "peer", self.name, timeout=AUTH_TIMEOUT_S)
                except BaseException:
                    await fs.aclose()
                    raise
            except (OSError, LinkClosed, ProtocolError, TimeoutError) as exc:
                code = exc.error.get("code") if isinstance(exc, LinkClosed) and exc.error else None
                foreign = not_hsb(exc, fs, AUTH_TIMEOUT_S, "host.peer", "the other host's peer_listen", answered_before)
                refused = code in ("auth_failed", "version_mismatch", "tls_name_mismatch", "wrong_peer")
                if code == "wrong_peer":  # that host has another peer: our host.peer names the wrong one
                    not_peer.seen(str(exc.error.get("msg")))  # type: ignore[union-attr]
                elif foreign is not None:  # no answer, or not hsb's: most likely the wrong port
                    (no_challenge if silent_where_answered(exc, fs, answered_before) else wrong_port).seen(*foreign)
                    refused = isinstance(exc, (NoChallenge, ProtocolError))
                elif code == "tls_name_mismatch":  # the peer's certificate names another host, or the peer says so of ours
                    tls_refusals.seen(f"tls: {exc}")
                elif refused:
                    err = exc.error  # type: ignore[union-attr]
                    refusals.seen(str(err.get("msg")), refusal_hint(err, "host.peer", "peer", "the other host's peer_listen"))
                elif isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    # we refused the peer's certificate (expired, another CA), it refused ours (its
                    # alert), or it is no TLS server
                    refused = True
                    tls_refusals.seen(
                        f"tls: {getattr(exc, 'verify_message', None) or exc.reason or exc}", tls_refused_hint(exc, f"the peer at {self.peer_addr}")
                    )
                elif isinstance(exc, socket.gaierror):  # (a name not known: else retried in silence)
                    unresolved.seen(f"cannot resolve {h!r}: {exc.strerror}")
                self.wake_connect.clear()
                # the peer connecting to us means it is up: try at once
                await event_within(self.wake_connect, backoff.next() if not refused else 5.0)
                continue
            backoff.reset()
            refusals.clear()
            tls_refusals.clear()
            unresolved.clear()
            not_peer.clear()
            wrong_port.clear()
            no_challenge.clear()
            answered_before = True  # (a later silence there is no wrong port: refusals.not_hsb)
            if proved != self.peer_last_proved:  # (said the first time, and when another name answers)
                log.info("peer_host_known", peer=self.peer_addr, name=proved, was=self.peer_last_proved)
            self.peer_proved = self.peer_last_proved = proved
            _user_timeout(fs, max(4 * self.timeout, 2.0))
            self.outbound = fs
            log.debug("peer_sending_link_up", peer=self.peer_addr)
            try:  # (the hello and on_up too: one that raises still closes this connection, below)
                fs.send(self.hello())
                self.on_up()
                while True:
                    fs.send({"t": "hb", **self.hello_brief()})
                    async with asyncio.timeout(self.timeout):  # not wait_for (FrameStream.connect says why)
                        await fs.drain()
                    # the peer sends us nothing on this connection; reading detects EOF
                    try:
                        async with asyncio.timeout(self.interval):
                            data = await fs.reader.read(4096)
                        if not data:
                            break
                    except TimeoutError:
                        pass
            except (ConnectionError, OSError, TimeoutError, RuntimeError):
                pass
            finally:
                self.outbound = None
                # the host at host.peer proves its name again on the next connection (it may be
                # another host now, put in place of the one before at that address)
                self.peer_proved = None
                await fs.aclose()
                log.debug("peer_sending_link_down", peer=self.peer_addr)

    def hello_brief(self) -> dict[str, Any]:
        h = self.hello()
        return {k: h[k] for k in ("role", "state", "instance", "ring_next", "ring_write_failing") if k in h}

    # -- receiving side -----------------------------------------------------
    def _stranger(self, name: str, remote: str) -> str | None:
        """Why a receiving connection authenticated as `name` is not our peer's, or None.

        The config names the peer by address only. Its name is the one the host at that address
        proved on our sending connection; before that (or if it never answers), the name of the
        receiving connection that is up. A connection under that name (the peer restarted, or a
        second connection of it) replaces the current one, as does any name when none is known
        and none is up."""
        cur = self.inbound
        if self.peer_proved is not None and name != self.peer_proved:
            why = (
                f"{name} (from {remote}) connected to {self.name}'s peer port, but {self.name}'s peer is {self.peer_proved}"
                f" (at host.peer {self.peer_addr}): check host.peer in {name}'s config, it must be its own peer's peer_listen"
            )
        elif self.peer_proved is None and cur is not None and name != cur.name:
            why = (
                f"{name} (from {remote}) connected to {self.name}'s peer port while its peer link with {cur.name} is up:"
                f" check host.peer in {name}'s config, it must be its own peer's peer_listen"
            )
        else:
            if self.peer_name is not None and name != self.peer_name:
                log.warning("peer_host_changed", was=self.peer_name, name=name, remote=remote)
            return None
        self.strangers.seen(why)
        return why

    def _inbound_up(self, proto: PeerInbound) -> None:
        old = self.inbound
        self.inbound = proto
        if old is not None and old is not proto:
            old.close()
        self.last_rx = time.monotonic()
        self.peer_name = proto.name
        self.wake_connect.set()

    def _frame(self, proto: PeerInbound, msg: dict[str, Any]) -> None:
        if proto is not self.inbound:
            return
        self.last_rx = time.monotonic()
        if msg["t"] == "peer_hello":
            self.peer_hello = msg
        elif msg["t"] == "hb" and self.peer_hello is not None:
            self.peer_hello = {**self.peer_hello, **{k: msg[k] for k in ("role", "state", "instance") if k in msg}}
        if not self.up and msg["t"] in ("peer_hello", "hb"):
            self.up = True
            self.said_stopping = False
            log.info("peer_link_up", peer=self.peer_name)
            self.on_up()
        self.on_frame(msg)

    def _inbound_lost(self, proto: PeerInbound) -> None:
        if proto is self.inbound:
            self.inbound = None
            if not proto.closed_here:
                self.closed_by_peer_at = time.monotonic()
            self._down("eof")

    def closed_by_peer(self, within: float = 1.0) -> bool:
        """Whether the link is down because the peer's end closed it, less than `within` seconds
        ago (an older close says nothing of now)."""
        t = self.closed_by_peer_at
        return not self.up and t is not None and time.monotonic() - t < within

    def _down(self, why: str) -> None:
        """The receiving connection's loss. A warning, but where this host knows it is no fault:
        it stops itself (it closed the link), or the peer closed it after its last heartbeat said
        `stopping` (its planned stop, or its stop after a handover: `said_stopping`, which the HA
        loop reads too). An end without that word, or a silence, is a warning as ever."""
        if self.up:
            self.up = False
            self.said_stopping = why == "eof" and self.peer_hello is not None and self.peer_hello.get("state") == STOPPING
            if self.closed:
                log.info("peer_link_down", peer=self.peer_name, reason=f"{why}: this host is stopping")
            elif self.said_stopping:
                log.info("peer_link_down", peer=self.peer_name, reason=f"{why}: {self.peer_name} said it is stopping")
            else:
                log.warning("peer_link_down", peer=self.peer_name, reason=why)
            self.on_down(why)

    async def _monitor(self) -> None:
        while True:
            await asyncio.sleep(min(self.interval, self.timeout / 5))  # (read each time: a reload may change them)
            if self.up and self.last_rx is not None and time.monotonic() - self.last_rx > self.timeout:
                if self.inbound is not None:
                    self.inbound.close()
                    self.inbound = None
                self._down(f"no heartbeat for {time.monotonic() - self.last_rx:.3f}s")

    def heartbeat_age(self) -> float | None:
        return None if self.last_rx is None else time.monotonic() - self.last_rx

    async def close(self) -> None:
        self.closed = True
        # a last heartbeat, with this host's state as the close finds it (`stopping` at a stop):
        # the peer then takes the end of the link that follows for this host's stop, not a fault
        if self.outbound is not None:
            try:
                self.send({"t": "hb", **self.hello_brief()})
            except Exception:  # noqa: BLE001,S110 - a hello that cannot be built (a bug, said by the sender): the close goes on
                pass
        if self.server is not None:
            self.server.close()
        for t in self.tasks:
            t.cancel()
        for proto in list(self.accepted):  # the inbound link and any still authenticating
            proto.close()
        if self.outbound is not None:
            await self.outbound.aclose()
