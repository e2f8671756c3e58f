"""The highest CP journal generation this host has seen, kept across its restarts (SPEC §5.8).

A host refuses a CP whose generation is below one it has seen (hsb.host.cplink): a superseded
CP machine still answering. Kept in the process only, a host restarted while such a CP answered
(a split brain, a config naming the old machine) started from 0 and registered with it. So the
generation is written durably before the host registers with a CP that raised it, and read at
the start. The file is `<host name>.cp-generation` in the takeover file's folder: hsbd writes
there already (the unit's ReadWritePaths), and one file per host keeps the two hosts of a pair
that share the folder on NFS apart. Missing: generation 0 (a host's first start). Damaged or
not readable: the start stops, naming the file and the fix, rather than trust any CP.

The same file keeps the identity of the CP journal this host follows (`cp_journal`, hsb.cp.journal.generation:
generations of two journals are unrelated counters, so a host refuses a CP on another journal
whatever its generation). A file without it (an older hsbd's, or no CP has said one yet) reads
as none: the next CP that says one is taken, and its id saved before this host registers.
So does the id of the takeover that made that generation (`cp_takeover`): a CP on a copy of the
journal that took the same number in its own directory is another takeover, refused.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import structlog

from hsb.fsutil import replace_durably
from hsb.worker import Worker

log = structlog.get_logger("hsb.host")
T = TypeVar("T")

SUFFIX = ".cp-generation"
MAX_BYTES = 4096  # the file holds one short line: anything longer is not this file
RESET_FIX = (
    "remove it and start hsbd again (this host then starts from generation 0 and trusts the first CP it reaches:"
    " check first with hsbctl status that only the serving CP answers)"
)


class GenerationFileError(Exception):
    """The file is there but cannot be taken (damaged, another host's, not readable): one line
    that names it and the fix."""


def generation_path(takeover_path: str | os.PathLike[str], host: str) -> Path:
    """The file of host `host` beside its takeover file (its name quoted: a host name is any text)."""
    return Path(takeover_path).parent / f"{quote(host, safe='')}{SUFFIX}"


def read_generation(path: Path, host: str) -> int:
    """The generation in `path`; 0 if there is none. GenerationFileError for a file that is there
    but cannot be taken; the storage's own error (EIO, ESTALE) raised as it is."""
    return read_kept(path, host)[0]


def read_kept(path: Path, host: str) -> tuple[int, str | None]:
    """(the generation, the CP journal's id or None) in `path`; (0, None) if there is none; else as
    read_generation."""
    return read_memory(path, host)[:2]


def read_memory(path: Path, host: str) -> tuple[int, str | None, str | None]:
    """(the generation, the CP journal's id, the takeover's id; None: none kept) in `path`;
    (0, None, None) if there is none; else as read_generation."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return 0, None, None
    except PermissionError:
        raise GenerationFileError(
            f"cannot read the CP generation file {path}: permission denied; give it to hsbd's user (chown) and start again"
        ) from None
    except IsADirectoryError:
        raise GenerationFileError(f"the CP generation file {path} is a directory; {RESET_FIX}") from None
    gen = _generation(raw, host)
    if isinstance(gen, str):
        raise GenerationFileError(f"the CP generation file {path} is damaged ({gen}); {RESET_FIX}")
    return gen


def _generation(raw: bytes, host: str) -> tuple[int, str | None, str | None] | str:
    """(The generation, the journal's id, the takeover's id) the file's bytes hold for `host`, or
    why they hold none."""
    if len(raw) > MAX_BYTES:
        return f"over {MAX_BYTES} bytes"
    try:
        doc = json.loads(raw)
    except ValueError:
        return "not JSON" if raw.strip() else "empty"
    if not isinstance(doc, dict):
        return "not a JSON object"
    gen = doc.get("cp_generation")
    if not isinstance(gen, int) or isinstance(gen, bool) or gen < 0:
        return f"cp_generation is {str(gen)[:20]!r}, not a generation"
    if doc.get("host") != host:
        return f"written for host {str(doc.get('host'))[:64]!r}, not {host!r}"
    journal = doc.get("cp_journal")
    if journal is not None and not (isinstance(journal, str) and 0 < len(journal) <= 64):
        return f"cp_journal is {str(journal)[:20]!r}, not a journal id"
    takeover = doc.get("cp_takeover")
    if takeover is not None and not (isinstance(takeover, str) and 0 < len(takeover) <= 64):
        return f"cp_takeover is {str(takeover)[:20]!r}, not a takeover id"
    return gen, journal, takeover


def write_generation(path: Path, host: str, generation: int, journal: str | None = None, takeover: str | None = None) -> None:
    """`generation` (and the journal's id, the takeover's, if known) durable in `path`
    (hsb.fsutil.replace_durably): whole, or the one before."""
    doc: dict[str, Any] = {"host": host, "cp_generation": generation}
    if journal is not None:
        doc["cp_journal"] = journal
    if takeover is not None:
        doc["cp_takeover"] = takeover
    replace_durably(path, (json.dumps(doc) + "\n").encode())


class GenerationFile:
    """One host's file, read and written off the event loop (a hung mount must not stop it)
    within the takeover file's storage_timeout."""

    def __init__(self, path: Path, host: str, timeout: float) -> None:
        self.path = path
        self.host = host
        self.timeout = timeout  # ([takeover] storage_timeout: the file is on the same storage)
        self.saved = 0  # what a restart would start from: read at the start, then each one written
        self.saved_journal: str | None = None  # (and the CP journal's id: None, none known)
        self.saved_takeover: str | None = None  # (and the takeover's that made the generation)
        self.error: str | None = None  # why the last write failed; None once one succeeded
        self._worker: Worker | None = None
        self._busy = False  # a read or write out on the thread (one past its deadline: hung)

    async def _run(self, op: str, fn: Callable[[], T]) -> T:
        if self._busy:
            raise OSError(errno.EBUSY, f"its last {op} has not returned (the storage hangs?)", str(self.path))
        if self._worker is None:
            self._worker = Worker("hsb-cpgen")
        self._busy = True

        def call() -> T:
            try:
                return fn()
            finally:
                self._busy = False  # (on the thread: a write that returns late frees the next one)

        try:
            async with asyncio.timeout(self.timeout) as deadline:
                return await self._worker.run(call)
        except TimeoutError:
            if not deadline.expired():
                raise  # the storage's own (an OSError with errno ETIMEDOUT)
            raise OSError(errno.ETIMEDOUT, f"its {op} did not return within {self.timeout:g} s (the storage hangs?)", str(self.path)) from None

    async def load(self) -> int:
        """At the start: the generation kept (0 if none). GenerationFileError, or OSError (the
        storage's error, a read past the deadline), naming the file."""
        self.saved, self.saved_journal, self.saved_takeover = await self._run("read", lambda: read_memory(self.path, self.host))
        log.info("cp_generation_loaded", path=str(self.path), generation=self.saved, journal=self.saved_journal, takeover=self.saved_takeover)
        return self.saved

    async def save(self, generation: int, journal: str | None = None, takeover: str | None = None) -> bool:
        """`generation` durable before this host registers with the CP that showed it. A failure is
        said (and in the status) and tried again at the next link to a CP; the host registers all
        the same (hsb.host.cplink)."""
        try:
            await self._run("write", lambda: write_generation(self.path, self.host, generation, journal, takeover))
        except Exception as exc:  # (a bug too: said, and the host registers all the same)
            self.error = exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{type(exc).__name__}: {exc}"
            log.error(
                "cp_generation_not_saved",
                path=str(self.path),
                generation=generation,
                kept=self.saved,
                error=self.error,
                msg=f"a restart of this host would start from generation {self.saved}; check the storage of {self.path.parent}"
                " and that hsbd's user may write there; tried again at the next link to the CP",
            )
            return False
        self.saved, self.saved_journal, self.saved_takeover, self.error = generation, journal, takeover, None
        log.info("cp_generation_saved", path=str(self.path), generation=generation, journal=journal, takeover=takeover)
        return True

    def status(self) -> dict[str, Any]:
        return {"remembered": self.saved, "file": str(self.path), "save_error": self.error}

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown()  # (does not wait: a write hung on dead storage is left behind)
