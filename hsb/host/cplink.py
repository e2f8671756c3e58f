"""The host link from hsbd to the CP: connect, authenticate, heartbeats, reconnect.

Frames from the CP are handed to the HA loop's callback in arrival order; the
HA loop decides what to do with them. Reconnects with a short backoff.
Heartbeats are numbered; the CP's answer to one renews the active's lease
(hsb.host.lease) from the moment that heartbeat was sent.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import structlog

from hsb import faults
from hsb.backoff import Backoff
from hsb.config import parse_addr
from hsb.host.cpgen import GenerationFile
from hsb.host.lease import Lease
from hsb.ops.refusals import RefusalLog, not_hsb, refusal_hint, silent_where_answered, tls_refused_hint
from hsb.wire.client import FrameStream, LinkClosed
from hsb.wire.framing import ProtocolError, encode

CP_RETRY_CAP = 0.25  # s: the longest wait between two tries to reach the CP (before jitter)
AUTH_TIMEOUT_S = 2.0  # s: for the connect, and again for the challenge and for the answer to the auth
# A link that ends for a protocol error (a frame from the CP this host cannot take), a bug of
# ours, or the CP's error (it closes the link after one: a registration refused, a frame of ours
# it cannot take) is made again only after a backoff from BAD_LINK_FIRST doubling up to
# BAD_LINK_CAP: a CP that sends the same bad frame, or refuses the same registration, each time
# made a tight loop of links and registrations (an epoch journalled at the CP each, every
# delivery cancelled and made again). It starts again from the first once a link has stayed up
# LINK_SETTLED_S.
BAD_LINK_FIRST = 0.25
BAD_LINK_CAP = 5.0
LINK_SETTLED_S = 2.0
# The CP's errors this host acts on by registering otherwise (hsb.host.rejoin: started as the
# active, it rejoins as the standby; handed_over: demoted, it registers as the standby): the next
# link is made at once. The same one again on the next link is the same registration refused.
ACTED_ON = frozenset({"active_exists", "handed_over"})
# a CP not reached for this long is said (cp_unreachable), then once every UNREACHABLE_EVERY_S:
# its link's loss is said once (cp_link_down), and tries that fail in silence (nothing listens, a
# connection closed before its challenge, no answer) left the log quiet for as long as it was
# away; a CP restart takes about a second, and says nothing
UNREACHABLE_AFTER_S = 10.0
REFUSED_RETRY_S = 5.0  # a CP that refused this host (its secret, version, certificate): tried again this often
UNREACHABLE_EVERY_S = 60.0


class Unreachable:
    """Since when the CP has not been reached, said once that is UNREACHABLE_AFTER_S."""

    def __init__(self, addr: str, on_said: Callable[[str | None], None]) -> None:
        self.addr = addr
        self.on_said = on_said
        self.since: float | None = None  # the first try that failed since the link was last up
        self.said_at: float | None = None
        self.tries = 0

    def failed(self, why: str) -> None:
        now = time.monotonic()
        self.since = now if self.since is None else self.since
        self.tries += 1
        if now - self.since < UNREACHABLE_AFTER_S or (self.said_at is not None and now - self.said_at < UNREACHABLE_EVERY_S):
            return
        self.said_at = now
        line = f"the CP at {self.addr} not reached for {now - self.since:.0f} s ({self.tries} tries): {why}"
        fix = "tried again every 0.25 s or so; is hsbcpd running there (systemctl status hsbcpd), and host.cp its host_listen?"
        log.warning("cp_unreachable", cp=self.addr, for_s=round(now - self.since, 1), tries=self.tries, reason=why, msg=fix)
        self.on_said(f"{line} ({fix})")

    def answered(self) -> None:
        """The CP answered (registered, or refused for a reason of its own, said by its own
        line): not away. The status's last error is left to the registration (which clears it)
        or to that refusal's line."""
        if self.said_at is not None and self.since is not None:
            log.info("cp_reachable_again", cp=self.addr, after_s=round(time.monotonic() - self.since, 1), tries=self.tries)
        self.since = self.said_at = None
        self.tries = 0


def _silent_failure(exc: BaseException) -> str:
    """Why a try to reach the CP failed, in the words of cp_unreachable."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused: nothing listens there"
    if isinstance(exc, (LinkClosed, ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError)):  # (under TLS: a reset, an EOF)
        return "the connection was closed before the CP's challenge (its log says why: connection_refused when it is out of open files)"
    if isinstance(exc, TimeoutError):
        return f"no answer within {AUTH_TIMEOUT_S:g} s (the machine down or cut off, a firewall)"
    return str(exc) or type(exc).__name__


# After the CP's errors this host exits on (`fenced`: 75; `active_exists` past its start: 75, or
# at its start with --no-rejoin: 76) the link is neither backed off nor made again: the process
# ends (HA.fail, which `exiting` reads, took the error before the link's end), and a link made
# while it closes would register a fenced host again.

log = structlog.get_logger("hsb.host")


def journal_fix(kept: object | None) -> str:
    """The fix for a CP on another journal; `kept`: this host's file (HOST.cp-generation), if any."""
    return (
        "two CPs on different journals: the journal must be one directory both CP machines share (§18); if it was replaced on"
        f" purpose, stop each hsbd, remove its HOST.cp-generation beside the takeover file{f' (this one: {kept})' if kept else ''},"
        " and start it again"
    )


def journal_of(auth_ok: dict[str, Any]) -> str | None:
    """The CP journal's id the CP said at the auth (None: it said none, memory-only or an older hsbcpd)."""
    j = auth_ok.get("journal")
    return j if isinstance(j, str) and 0 < len(j) <= 64 else None


LEASE_UNKNOWN_BEAT_S = 0.05  # the beat while no registration has told the lease yet


class CPLink:
    def __init__(
        self,
        *,
        name: str,
        addr: str,
        secret: bytes,
        interval: float,
        timeout: float,
        max_frame: int,
        on_up: Callable[[], None],
        on_frame: Callable[[dict[str, Any]], None],
        on_down: Callable[[str], None],
        lease: Lease,
        on_answer: Callable[[int], None],
        on_bounds: Callable[[Any], None] = lambda _: None,
        on_problem: Callable[[str | None], None] = lambda _: None,
        memory: GenerationFile | None = None,
        exiting: Callable[[], bool] = lambda: False,
    ) -> None:
        self.name = name
        self.addr = addr
        self.secret = secret
        self.interval = interval
        self.timeout = timeout
        self.max_frame = max_frame
        self.on_up = on_up
        self.on_frame = on_frame
        self.on_down = on_down
        self.lease = lease  # heartbeats are numbered; the CP's answers renew the active's lease
        self.on_answer = on_answer
        self.on_bounds = on_bounds  # the CP's held_bound changed (a reload): said in a heartbeat's answer
        # why the link cannot be made, as logged (a refusal, a wrong port), for the status; None once it is
        self.on_problem = on_problem
        self.fs: FrameStream | None = None
        self.last_rx: float | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopped = False
        # why `drop()` closed the live link (its loss said there already); None from each link's start
        self.dropping: str | None = None
        self.connects = 0
        # the highest CP journal generation seen (SPEC §5.8): a CP with a lower one was
        # superseded by another CP machine and is refused; kept across restarts in `memory`
        # (hsb.host.cpgen), which the start reads it from
        self.cp_generation = 0
        self.generation_refusals = 0  # (a CP on another journal counted too)
        # the identity of the CP journal this host follows (hsb.cp.journal.generation): a CP on
        # another one is refused whatever its generation (generations of two journals are
        # unrelated); the first said is taken, kept in `memory` with the generation. None: none yet
        self.cp_journal: str | None = None
        self.journal_refusals = 0
        # the takeover that made that generation (its random id, hsb.cp.journal.generation): a CP
        # saying the same generation of another takeover is on a copy of the journal (a backup
        # restored, a directory copied aside) and is refused. None: not said (an older hsbcpd)
        self.cp_takeover: str | None = None
        self.memory = memory
        self.exiting = exiting  # the process ends (fenced, say): no new link is made

    def generation_status(self) -> dict[str, Any]:
        """The CP generations of this host's status (hsbctl status --json, the metrics)."""
        st: dict[str, Any] = {
            "seen": self.cp_generation,
            "refusals": self.generation_refusals,
            "journal": self.cp_journal,
            "journal_refusals": self.journal_refusals,
            "takeover": self.cp_takeover,
        }
        if self.memory is not None:
            st.update(self.memory.status())
        return st

    @property
    def up(self) -> bool:
        return self.fs is not None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    def send(self, msg: dict[str, Any]) -> bool:
        return self.send_raw(encode(msg)) if self.fs is not None else False

    def send_raw(self, frame: bytes) -> bool:
        """A frame encoded already (hsb.wire.framing.encode)."""
        fs = self.fs
        if fs is None:
            return False
        try:
            fs.send_raw(frame)
            return True
        except (ConnectionError, OSError, RuntimeError):
            return False

    async def drain(self) -> None:
        if self.fs is not None:
            try:
                await self.fs.drain()
            except (ConnectionError, OSError):
                pass

    async def _run(self) -> None:
        while not self.stopped and not self.exiting():  # this task must never die (but as the process ends): without it the host never reconnects
            try:
                await self._run_inner()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("cp_link_error", error=repr(exc))
                self.fs = None
                await asyncio.sleep(0.1)

    async def _run_inner(self) -> None:
        h, p = parse_addr(self.addr)
        # capped low: after a CP restart nothing is served until the active registers again, and
        # one link trying four times a second costs the CP nothing
        backoff = Backoff(0.05, CP_RETRY_CAP)
        bad_links = Backoff(BAD_LINK_FIRST, BAD_LINK_CAP)  # links ended by a bad frame, in a row
        said = self.on_problem
        refusals = RefusalLog("cp_link_refused", on_said=said, cp=self.addr)
        tls_refusals = RefusalLog(
            "cp_link_refused",
            "tried again every 5 s; check the CP's certificate (its expiry, its CA in this host's ca_file)",
            on_said=said,
            cp=self.addr,
        )
        gen_refusals = RefusalLog(
            "cp_generation_refused", "tried again; the serving CP holds the address soon (keepalived)", on_said=said, cp=self.addr
        )
        journal_refusals = RefusalLog("cp_journal_refused", on_said=said, cp=self.addr)
        copy_refusals = RefusalLog("cp_journal_copy_refused", on_said=said, cp=self.addr)
        unresolved = RefusalLog(
            "cp_address_unresolved",
            "tried again; check host.cp in this host's config (a name the resolver knows, or an IP)",
            on_said=said,
            cp=self.addr,
        )
        # a port that answers but is no hsb link (the CP's terminal port): said once, not retried in silence
        answered_before = False  # an hsb link at that address was authenticated by this process
        # (and then, no challenge within AUTH_TIMEOUT_S: a stuck daemon or a stalling network, not a wrong port)
        no_challenge = RefusalLog("cp_link_no_challenge", level="warning", on_said=said, cp=self.addr)
        wrong_port = RefusalLog("cp_link_wrong_port", level="warning", on_said=said, cp=self.addr)
        away = Unreachable(self.addr, said)
        acted: str | None = None  # the last link ended with this error of ACTED_ON's
        while not self.stopped and not self.exiting():
            fs: FrameStream | None = None
            try:
                fs = await FrameStream.connect(h, p, timeout=AUTH_TIMEOUT_S, max_frame=self.max_frame)
                try:
                    await fs.authenticate(self.secret, "host", self.name, timeout=AUTH_TIMEOUT_S)
                except BaseException:
                    await fs.aclose()
                    raise
            except (OSError, LinkClosed, ProtocolError, TimeoutError) as exc:
                foreign = not_hsb(exc, fs, AUTH_TIMEOUT_S, "host.cp", "the CP's host_listen", answered_before)
                refused = isinstance(exc, LinkClosed) and exc.error is not None
                if foreign is not None:  # no answer, or not hsb's: most likely the wrong port
                    (no_challenge if silent_where_answered(exc, fs, answered_before) else wrong_port).seen(*foreign)
                    refused = refused or isinstance(exc, ProtocolError)
                elif refused:  # a wrong secret or version, another link's port: said once (then once a minute), tried slowly
                    away.answered()
                    err = exc.error  # type: ignore[union-attr]
                    refusals.seen(f"{err.get('code')}: {err.get('msg')}", refusal_hint(err, "host.cp", "host", "the CP's host_listen"))
                elif isinstance(exc, ssl.SSLError) and not isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
                    # we refused the CP's certificate (expired, another CA), it refused ours
                    # (its alert: expired, unknown CA), or it is no TLS server
                    refused = True
                    away.answered()  # (a TLS peer answered: said by its own line)
                    why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
                    tls_refusals.seen(f"tls: {why}", tls_refused_hint(exc, f"the CP at {self.addr}"))
                elif isinstance(exc, socket.gaierror):  # (a name not known: else retried in silence)
                    unresolved.seen(f"cannot resolve {h!r}: {exc.strerror}")
                else:
                    away.failed(_silent_failure(exc))
                await asyncio.sleep(backoff.next() if not refused else REFUSED_RETRY_S)
                continue
            away.answered()  # (reached: whether it is then taken is said by the refusals below)
            gen = fs.auth_ok.get("generation")
            took = fs.auth_ok.get("takeover")
            took = took[:64] if isinstance(took, str) and took else None
            # another journal first: its generation is no measure of this one's (a lower one would be
            # said as a superseded CP, of a CP that was never on this journal)
            journal = journal_of(fs.auth_ok)
            refusal: tuple[RefusalLog, str, str | None] | None = None
            if journal is not None and self.cp_journal is not None and journal != self.cp_journal:
                self.journal_refusals += 1
                refusal = (
                    journal_refusals,
                    f"the CP at {self.addr} serves journal {journal} (generation {gen}), not journal {self.cp_journal} which this"
                    f" host has followed; not registering with it",
                    journal_fix(self.memory.path if self.memory is not None else None),
                )
            elif isinstance(gen, int) and gen < self.cp_generation:
                refusal = (
                    gen_refusals,
                    f"the CP at {self.addr} has journal generation {gen}, below {self.cp_generation} seen before"
                    f"{f' (kept in {self.memory.path})' if self.memory is not None else ''}:"
                    " a superseded CP (two CP machines, another one serves); not registering with it",
                    None,
                )
            elif gen == self.cp_generation and took is not None and self.cp_takeover is not None and took != self.cp_takeover:
                refusal = (
                    copy_refusals,
                    f"the CP at {self.addr} has journal generation {gen} of takeover {took}, but this host has seen generation {gen}"
                    f" of takeover {self.cp_takeover}: two CPs took generation {gen} of this journal, each in its own directory, one of"
                    " them a CP on a copy of the journal (a backup restored, its directory copied aside); not registering with it",
                    "stop the CP whose journal directory is the copy, and start the CP on the directory the serving CP had"
                    " (what the copy's CP wrote is in no other journal); if this host met the copy's CP first, restart"
                    " the real one (a new generation) once the copy's is stopped (docs/operations.md §11)",
                )
            if refusal is not None:
                self.generation_refusals += 1  # (a CP on another journal counted too)
                refusal[0].seen(refusal[1], refusal[2])
                await fs.aclose()
                await asyncio.sleep(backoff.next())
                continue
            if journal is not None and self.cp_journal is None:
                log.info("cp_journal_taken", cp=self.addr, journal=journal, generation=gen)
                self.cp_journal = journal
            if isinstance(gen, int) and gen > self.cp_generation:
                if self.cp_generation:
                    log.info("cp_generation_raised", cp=self.addr, generation=gen, was=self.cp_generation)
                self.cp_generation = gen
                self.cp_takeover = took
            elif gen == self.cp_generation and self.cp_takeover is None:
                self.cp_takeover = took  # (the first said of this generation: a file of an older hsbd keeps none)
            if self.memory is not None and (
                self.cp_generation > self.memory.saved
                or self.cp_journal != self.memory.saved_journal
                or self.cp_takeover != self.memory.saved_takeover
            ):
                # durable before this host registers with it: restarted, it refuses an older CP,
                # and one on another journal, too
                try:
                    await self.memory.save(self.cp_generation, self.cp_journal, self.cp_takeover)
                except BaseException:
                    fs.close()
                    raise
            backoff.reset()
            refusals.clear()
            tls_refusals.clear()
            gen_refusals.clear()
            journal_refusals.clear()
            copy_refusals.clear()
            unresolved.clear()
            wrong_port.clear()
            no_challenge.clear()
            answered_before = True  # (a later silence there is no wrong port: refusals.not_hsb)
            self.fs = fs
            self.dropping = None
            self.connects += 1
            self.last_rx = up_at = time.monotonic()
            log.info("cp_link_up", cp=self.addr)
            hb = asyncio.get_running_loop().create_task(self._beat(fs))
            why = "eof"
            down = True  # (false: a cancel, a stop, went through)
            bad = False  # ended by a protocol error, or a bug: made again only after a backoff
            ended: str | None = None  # the CP's error, after which it closes the link: backed off too
            code: str | None = None  # (its code)
            try:
                self.on_up()
                while True:
                    # a CP silent past the timeout is dropped: this host stops serving on its own
                    # (unless a test switched self-fencing off, hsb.faults)
                    msg = await fs.recv(timeout=self.timeout if faults.SELF_FENCING else None)
                    if self.dropping is not None:  # (frames read before the drop: a lost link's, not taken)
                        raise LinkClosed("dropped")
                    self.last_rx = time.monotonic()
                    if msg["t"] == "error":
                        code = str(msg.get("code"))[:40]
                        ended = f"the CP ended the link: {code}: {str(msg.get('msg', ''))[:160]}"
                    if msg["t"] != "hb":
                        try:
                            self.on_frame(msg)
                        except Exception as exc:  # a field missing or of the wrong type (another version, a bug)
                            raise ProtocolError(
                                "bad_fields", f"a {str(msg['t'])[:32]!r} frame this host cannot take: {type(exc).__name__}: {str(exc)[:200]}"
                            ) from exc
                    elif isinstance(msg.get("ack"), int):
                        self.on_answer(msg["ack"])
                        if "held_bound" in msg:
                            self.on_bounds(msg["held_bound"])
            except TimeoutError:
                why = f"CP silent for {self.timeout}s"
            except LinkClosed:
                why = self.dropping or "eof"
            except ProtocolError as exc:
                why = f"protocol error from CP: {exc}"
                bad = True
                try:  # said to the CP too, if it can be (then the link closes, and is made again)
                    fs.send(exc.frame())
                except Exception:  # noqa: BLE001,S110 - the link is going anyway
                    pass
            except (ConnectionError, OSError, RuntimeError) as exc:
                why = f"{type(exc).__name__}"
            except Exception as exc:  # anything else (a bug): the link is gone all the same, and said
                why = f"{type(exc).__name__}: {str(exc)[:200]}"
                bad = True
            except BaseException:
                down = False
                raise
            finally:
                hb.cancel()
                self.fs = None
                try:
                    if down and not self.stopped and self.dropping is None:  # (else said by `drop()` already)
                        # before the close, which may wait a second: this host stops serving at
                        # once (deliveries cancelled, the lease dropped), as the protocol promises.
                        # A link the CP ended after an error this host acts on by registering
                        # otherwise (ACTED_ON, the first time: a restarted hsbd@active rejoining
                        # as the standby) was not lost: said as info, with the CP's word. What the
                        # host does about the error (rejoin, or exit) the HA loop says itself
                        answered = ended if ended is not None and code in ACTED_ON and code != acted and not bad else None
                        self._went_down(why, answered)
                finally:
                    await fs.aclose()
            if self.stopped or self.exiting():
                return
            if time.monotonic() - up_at >= LINK_SETTLED_S:
                bad_links.reset()
            again, acted = acted, (code if ended is not None and code in ACTED_ON else None)
            if ended is not None and not bad and (acted is None or acted == again):
                why, bad = ended, True
            if bad:  # (not at once again: the same frame or refusal may well come after the next registration)
                wait = bad_links.next()
                log.warning("cp_link_backoff", cp=self.addr, wait_s=round(wait, 3), in_a_row=bad_links.n, reason=why[:200])
                await asyncio.sleep(wait)

    async def _beat(self, fs: FrameStream) -> None:
        try:
            while True:
                fs.send({"t": "hb", "n": self.lease.beat()})
                # no deadline on drain: a CP slow to read is not a dead CP (the recv timeout judges that)
                await fs.drain()
                # at least three beats per lease, so one lost or late answer does not lapse it; the
                # lease not known yet (no registration answered): often, until it is (a long
                # heartbeat_interval let the first lease lapse and the CP take the host for silent)
                lease = self.lease.duration
                await asyncio.sleep(min(self.interval, lease / 3) if lease > 0 else min(self.interval, LEASE_UNKNOWN_BEAT_S))
        except (ConnectionError, OSError, TimeoutError, RuntimeError):
            fs.close()

    def drop(self, why: str) -> None:
        """End the link now and make it again: the CP decides anew at the registration that
        follows. This host stops serving here, synchronously (`on_down`: deliveries cancelled, the
        lease ended), not when the read loop sees the link's end: that is a few turns of the loop
        later, and a close with unsent data buffered (a backlog of replies) sends no EOF until it
        has gone, so hand-offs to the service went on meanwhile, their replies dropped. Aborted:
        what is still queued to the CP is moot (the CP hands those messages on again, marked)."""
        fs = self.fs
        if fs is None:
            return
        self.dropping = why
        self.fs = None  # nothing more is sent on it
        self._went_down(why)
        fs.writer.transport.abort()

    def _went_down(self, why: str, answered: str | None = None) -> None:
        """The link's loss said, and this host stops serving (`on_down`). `answered`: the CP
        ended the link after an error this host acts on (ACTED_ON): no loss, said as info."""
        if answered is not None:
            log.info("cp_link_down", cp=self.addr, reason=answered)
        else:
            log.warning("cp_link_down", cp=self.addr, reason=why)
        try:
            self.on_down(why)
        except Exception:  # a bug: said; the link is made again all the same
            log.exception("cp_link_down_failed", cp=self.addr)

    async def close(self) -> None:
        self.stopped = True
        if self.fs is not None:
            await self.fs.aclose()
        if self.task is not None:
            self.task.cancel()
