"""Client side of a framed, authenticated link on asyncio streams.

Used by hsbd (host link to the CP, peer link), hsbctl (admin links) and tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hsb import LINK_PROTOCOL, __version__
from hsb.wire import auth, tls
from hsb.wire.framing import DEFAULT_MAX_FRAME, FLUSH_AT, Decoder, ProtocolError, encode


class LinkClosed(ConnectionError):
    """The other side closed the link (or sent an error frame, kept in `error`)."""

    def __init__(self, msg: str, error: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.error = error


class NoChallenge(LinkClosed):
    """The server's first frame was an error, not the challenge every hsb authenticated link
    opens with: another kind of port (the CP's terminal port closing a connection that sent no
    hello), with that error in `error`."""


class ServerNameMismatch(LinkClosed):
    """Over TLS, the server's certificate does not name the server its challenge says it is: this
    end's own finding (not an error frame of the server's), with the names it has (`names`)."""

    def __init__(self, server: str, names: list[str]) -> None:
        super().__init__(
            f"tls_name_mismatch: the server says it is {server!r} but its certificate is for {names}",
            {"t": "error", "code": "tls_name_mismatch", "msg": f"the server's certificate is for {names}, not {server!r}"},
        )
        self.server, self.names = server, names


class Unanswered(TimeoutError):
    """A request sent on an authenticated link got no answer in time (or the link closed before
    one): the daemon may have acted on it. `request`'s own, so that hsbctl does not call it a
    daemon it could not ask (a TimeoutError still, for callers that do not tell them apart)."""


class FrameStream:
    """Send and receive frames over one TCP connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int = DEFAULT_MAX_FRAME):
        self.reader = reader
        self.writer = writer
        self.decoder = Decoder(max_frame)
        self._bad: ProtocolError | None = None  # a bad frame, raised after the good ones before it
        self._pending: list[dict[str, Any]] = []
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.auth_ok: dict[str, Any] = {}  # the server's auth_ok frame (the CP's generation, for one)
        self.challenged = False  # the server's challenge came (an hsb daemon's authenticated link)

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float = 5.0, max_frame: int = DEFAULT_MAX_FRAME, ssl: Any = "default") -> FrameStream:
        """`ssl`: a client SSLContext, None for a plain connection, or "default": this
        process's own (hsb.wire.tls.set_default_client; plain when it has none)."""
        ctx = tls.default_client() if ssl == "default" else ssl
        # asyncio.timeout, not wait_for: on 3.11 a failed connect under wait_for is a reference cycle
        # (task -> its exception -> traceback -> wait_for's frame -> task), and hsbd retries a peer
        # or CP that is down every 0.05-1 s, holding the exception across the backoff wait: long
        # enough to reach the old generation, which hsb/gcpolicy.py never collects
        async with asyncio.timeout(timeout):
            if ctx is None:
                reader, writer = await asyncio.open_connection(host, port)
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="")
        return cls(reader, writer, max_frame)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_raw(encode(msg))

    def send_raw(self, data: bytes) -> None:
        """Queue a frame; frames queued in one loop iteration go out in one write (or every
        FLUSH_AT frames, see hsb.wire.framing)."""
        # uvloop raises RuntimeError when writing to a closed transport; make it a connection error
        if self.writer.is_closing():
            raise ConnectionResetError("link closed")
        self._out.append(data)
        if len(self._out) >= FLUSH_AT:
            self._flush()
            return
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and not self.writer.is_closing():
            try:
                self.writer.write(out[0] if len(out) == 1 else b"".join(out))
            except RuntimeError:
                pass  # closed meanwhile: the reader sees the end of the link

    async def drain(self) -> None:
        self._flush()
        await self.writer.drain()

    async def recv(self, timeout: float | None = None) -> dict[str, Any]:
        """Next frame; raises LinkClosed on EOF, ProtocolError on a bad frame (once every whole
        frame before it has been returned: a `fenced` right ahead of a bad frame still counts)."""
        while not self._pending:
            if self._bad is not None:
                raise self._bad
            if timeout is None:
                data = await self.reader.read(65536)
            else:
                async with asyncio.timeout(timeout):  # not wait_for: see connect
                    data = await self.reader.read(65536)
            if not data:
                raise LinkClosed("connection closed by the other side")
            try:
                self._pending.extend(self.decoder.feed(data))
            except ProtocolError as exc:
                if not exc.before:
                    raise
                self._pending.extend(exc.before)
                self._bad = exc
        return self._pending.pop(0)

    async def authenticate(self, secret: bytes, link: str, name: str, timeout: float = 5.0) -> str:
        """Answer the server's challenge; return the server's name."""
        ch = await self.recv(timeout)
        if ch.get("t") == "error":
            raise NoChallenge(f"{ch.get('code')}: {ch.get('msg')}", ch)
        if ch.get("t") != "challenge" or not isinstance(ch.get("nonce"), bytes):
            raise ProtocolError("auth_failed", f"expected a challenge, got {ch.get('t')!r}")
        self.challenged = True
        if len(ch["nonce"]) != auth.NONCE_BYTES:
            # of our own length only: a nonce that runs into the role could make our answer the
            # proof a server owes another client (an impostor reflecting it)
            raise ProtocolError(
                "auth_failed", f"the challenge's nonce is {len(ch['nonce'])} bytes, not {auth.NONCE_BYTES}: not an hsb daemon of this version"
            )
        names = tls.peer_names(self.writer.transport)
        server = str(ch.get("server", ""))
        if names is not None and server not in names:  # TLS: the certificate must be the server's it says it is
            raise ServerNameMismatch(server[:64], sorted(names)[:4])
        theirs = ch.get("proto", 1)
        if theirs != LINK_PROTOCOL:
            raise LinkClosed(
                f"version_mismatch: {ch.get('server', 'the daemon')} speaks link protocol {theirs} (hsb {ch.get('version', 'older than 0.4')}),"
                f" this program speaks {LINK_PROTOCOL} (hsb {__version__}): install the same hsb version everywhere",
                {
                    "t": "error",
                    "code": "version_mismatch",
                    "msg": f"the daemon speaks link protocol {theirs}, this program {LINK_PROTOCOL}",
                    "cause": "version",
                },
            )
        mine = auth.new_nonce()  # the server answers it too: a process that merely listens at the address is refused
        self.send(
            {
                "t": "auth",
                "name": name,
                "link": link,
                "mac": auth.answer(secret, ch["nonce"], link, name),
                "nonce": mine,
                "proto": LINK_PROTOCOL,
                "version": __version__,
            }
        )
        ok = await self.recv(timeout)
        if ok.get("t") == "error":
            raise LinkClosed(f"{ok.get('code')}: {ok.get('msg')}", ok)
        if ok.get("t") != "auth_ok":
            raise ProtocolError("auth_failed", f"expected auth_ok, got {ok.get('t')!r}")
        proof = ok.get("mac")
        if not isinstance(proof, bytes) or not auth.verify(secret, mine, auth.server_role(link), server, proof):
            why = f"the server {server[:64]!r} did not prove that it knows the shared secret (another secret, or not an hsb daemon)"
            raise LinkClosed(f"auth_failed: {why}", {"t": "error", "code": "auth_failed", "msg": why, "cause": "secret"})
        self.auth_ok = ok
        return server  # (the name its certificate and its proof were checked for, not auth_ok's word)

    def close(self) -> None:
        if not self.writer.is_closing():
            self._flush()
            self.writer.close()

    async def aclose(self, timeout: float = 1.0) -> None:
        """Close, letting queued frames go out for up to `timeout` seconds, then drop them:
        a close waits for the send buffer to drain, which a cut link or a peer that has
        stopped reading never lets happen (a daemon's teardown would hang there)."""
        self.close()
        try:
            async with asyncio.timeout(timeout):  # not wait_for: see connect
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except (ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            # a concurrent aclose that timed out cancelled the close future we share
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
        exc = self.reader.exception()
        if exc is not None:  # a reset link: reader -> error -> traceback -> frames -> reader,
            exc.__traceback__ = None  # a cycle per reset that full collections would be needed for


async def cp_sessions(host: str, port: int, secret: bytes, **kw: Any) -> dict[str, Any]:
    """The CP's whole session table (`sessions`), page by page."""
    out: dict[str, Any] = {}
    offset: int | None = 0
    while offset is not None:
        ans = await request(host, port, secret, {"t": "sessions", "offset": offset}, **kw)
        if ans.get("t") != "sessions":
            raise LinkClosed(f"the CP answered {ans.get('t')!r} to sessions: {ans.get('msg', '')}")
        out.update(ans["data"])
        offset = ans.get("next")
    return out


async def request(
    host: str,
    port: int,
    secret: bytes,
    msg: dict[str, Any],
    *,
    link: str = "admin",
    name: str = "hsbctl",
    timeout: float = 3.0,
    ssl: Any = "default",
) -> dict[str, Any]:
    """One admin request/answer round trip on a fresh connection: `timeout` for each of its steps
    (the connect, the challenge, the authentication's answer, the answer), and four times it for
    the whole, so that a peer sending a byte now and then, never a whole frame, is cut off too."""
    sent = False
    try:
        async with asyncio.timeout(timeout * 4):
            fs = await FrameStream.connect(host, port, timeout=timeout, ssl=ssl)
            try:
                await fs.authenticate(secret, link, name, timeout)
                fs.send(msg)
                sent = True
                await fs.drain()
                return await fs.recv(timeout)
            finally:
                await fs.aclose()
    except (TimeoutError, LinkClosed, ConnectionError) as exc:
        if not sent or (isinstance(exc, LinkClosed) and exc.error is not None):  # (an error frame: its answer)
            raise
        raise Unanswered(f"sent {msg.get('t')!r}, no answer within {timeout:g} s") from exc
