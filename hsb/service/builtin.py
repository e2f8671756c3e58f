"""The built-in services `echo` and `journal` (SPEC §2's stand-ins for an application)."""

from __future__ import annotations

import asyncio
import functools
import os
from pathlib import Path
from typing import Any

import structlog

from hsb.fsutil import unwritable_above
from hsb.service.api import ServiceUnavailable, serving_epoch
from hsb.worker import Worker

log = structlog.get_logger("hsb.service")


LOGON_MS_MAX = 3_600_000  # an hour of simulated logon work per session open


def logon_seconds(logon_ms: Any) -> float:
    """The `logon_ms` option of a built-in service (simulated logon work per session open) in
    seconds; a TypeError (the config's, said with the key) if it is no such time: NaN, inf or
    1e300 would hold every logon for ever."""
    if type(logon_ms) not in (int, float) or not 0 <= logon_ms <= LOGON_MS_MAX:
        raise TypeError(f"logon_ms must be a number of milliseconds from 0 to {LOGON_MS_MAX}, not {logon_ms!r}")
    return float(logon_ms) / 1000.0


class EchoService:
    """Replies with the message's own data. `logon_ms` simulates logon work per session open."""

    def __init__(self, host: str, logon_ms: float = 0) -> None:
        self.host = host
        self.logon_s = logon_seconds(logon_ms)

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        return data

    async def open_session(self, terminal: str, attrs: dict[str, Any], standby: bool) -> None:
        if self.logon_s:
            await asyncio.sleep(self.logon_s)

    async def close_session(self, terminal: str) -> None:
        pass

    async def close(self) -> None:
        pass


class JournalService(EchoService):
    """Echo, and append one line per processed message to a journal file, durably.

    Line: "<host> <terminal> <id> <redelivered 0|1> <epoch>" (the epoch the host served at,
    `serving_epoch`: one message's lines on both hosts are in its order; without a host, no
    epoch and four fields). Lines are group-committed:
    one write + fsync for everything that arrived meanwhile, and no reply goes
    out before its line is on disk, so the journal proves SPEC §5.6 from outside.
    """

    close_timeout = 2.0  # how long close() waits for a write still on the disk

    def __init__(self, host: str, journal: str = "journal.log", logon_ms: float = 0) -> None:
        super().__init__(host, logon_ms)
        self.path = Path(journal)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # a torn last line is cut before the first append, not here: hsbd --check-config builds
        # the service too, and a check must leave the file as it found it
        self.repaired = False
        self.pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self.wake = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.worker = Worker("hsb-journal-service")  # the loop gives it the GIL while it writes (hsb.worker)

    @staticmethod
    def check_options(host: str, journal: str = "journal.log", logon_ms: float = 0) -> tuple[list[str], list[str]]:
        """hsbd --check-config's look at the options instead of a build, which makes the file and
        its folder: (what the build would refuse, what the start will do); nothing is made."""
        EchoService(host, logon_ms)  # (its option read as the build reads it)
        return journal_look(Path(journal))

    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any:
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_task(self._write_loop())
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        epoch = serving_epoch()
        line = f"{self.host} {terminal} {message_id} {int(redelivered)}" + ("" if epoch is None else f" {epoch}")
        self.pending.append((f"{line}\n".encode(), fut))
        self.wake.set()
        await fut
        return data

    async def _write_loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch, self.pending = self.pending, []
            if not batch:
                continue
            blob = b"".join(line for line, _ in batch)
            try:
                if not self.repaired:
                    dropped = await self.worker.run(self._drop_torn_line)
                    self.repaired = True
                    if dropped:
                        log.warning("journal_torn_line_dropped", path=str(self.path), bytes=dropped)
                await self.worker.run(functools.partial(self._append, blob))
            except Exception as exc:  # noqa: BLE001 - each waiting message gets its answer; the loop goes on
                # a full disk, EIO: the messages wait (the CP holds them), not error replies; any
                # other failure (a bug, the worker stopped) as unavailable too: a writer that died
                # here would leave every later message waiting for ever
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
                unavailable = ServiceUnavailable(f"journal {self.path} cannot be written: {why}")
                for _, f in batch:
                    if not f.done():
                        f.set_exception(unavailable)
                continue
            for _, f in batch:
                if not f.done():
                    f.set_result(None)

    def _drop_torn_line(self) -> int:
        """A kill in the middle of a batch's write leaves a last line without its newline (never
        answered: replies wait for the fsync); cut it off, so the next line is not glued to it.
        Returns the bytes cut."""
        size = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return 0
        tail = os.pread(self.fd, min(size, 4096), max(0, size - 4096))
        if b"\n" not in tail and len(tail) < size:
            return 0  # no line is this long: not a line torn by a kill, leave the file as it is
        keep = size - len(tail) + tail.rfind(b"\n") + 1
        os.ftruncate(self.fd, keep)
        os.fsync(self.fd)
        return size - keep

    def _append(self, blob: bytes) -> None:
        end = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            view = memoryview(blob)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
            os.fsync(self.fd)
        except OSError:
            try:  # no torn line for the next batch to be appended to: back to the last whole one
                os.ftruncate(self.fd, end)
            except OSError:
                pass
            raise

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.cancel()
        # the descriptor is closed only once the thread has ended: not under a write or fsync
        # still running on it (a hung disk), whose number a later open could otherwise reuse
        if await self.worker.stop(timeout=self.close_timeout):
            os.close(self.fd)
        else:
            log.warning(
                "journal_service_close_abandoned_write", path=str(self.path), msg=f"a journal write did not return within {self.close_timeout:g} s"
            )


def journal_look(path: Path) -> tuple[list[str], list[str]]:
    """Whether the journal service's build could open `path` (read and write, made with its
    folders when missing): (errors, warnings), looked at only."""
    key = "service_options.journal"
    if path.exists():
        if path.is_dir():
            return [f"{key}: {path} is a directory: name the journal's file in it"], []
        if not os.access(path, os.R_OK | os.W_OK):
            return [f"{key}: {path} cannot be written by this user: give hsbd's user read and write on it"], []
        return [], []
    there = unwritable_above(path)  # (path itself does not exist)
    if there is not None:
        return [
            f"{key}: {path} cannot be made ({there} is not a directory this user may write): point journal at a file in"
            " a folder hsbd's user may write (under the shipped systemd unit: in /var/lib/hsb, its ReadWritePaths)"
        ], []
    made = next((p for p in reversed(path.parents) if not p.exists()), None)  # the outermost folder missing
    return [], [f"{key}: {path} does not exist; the start makes it" + (f" and its folder {made}" if made is not None else "")]
