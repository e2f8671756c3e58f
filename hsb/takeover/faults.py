"""Fault injection for the takeover storage: stalls, I/O errors, corrupted reads.

Off by default (daemons pass None, and every hook site is one `is not None`
test). Fault-injection tests hand a `Faults` to `TakeoverStore` (or to the
readers) and flip its fields while the system runs; all of it is thread-safe
because the hooks run on the storage thread.
"""

from __future__ import annotations

import errno as _errno
import os
import threading
from dataclasses import dataclass, field


@dataclass
class Faults:
    delay: float = 0.0  # seconds every matching op waits before it runs
    error: int | None = None  # errno every matching op raises as OSError, e.g. errno.EIO
    corrupt_reads: int = 0  # flip one byte in each of the next n records read
    ops: frozenset[str] | None = None  # op names the delay/error apply to; None = all
    _open: threading.Event = field(default_factory=threading.Event, repr=False)
    _wake: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    holding: threading.Event = field(default_factory=threading.Event, repr=False)  # an op is held (tests wait on it)

    def __post_init__(self) -> None:
        self._open.set()

    def quiet(self) -> bool:
        """No delay, error or hold set (corrupted reads concern the takeover file only)."""
        return self._open.is_set() and self.delay <= 0 and self.error is None

    def hold(self) -> None:
        """Stall every matching op until `release()` (a hung NFS server)."""
        self._open.clear()

    def release(self) -> None:
        """End a hold and cut any running delay short."""
        self.delay = 0.0
        self._open.set()
        self._wake.set()

    def eio(self) -> None:
        self.error = _errno.EIO

    def before(self, op: str) -> None:
        """Called on the storage thread before `op` runs."""
        if self.ops is not None and op not in self.ops:
            return
        if not self._open.is_set():
            self.holding.set()
        self._open.wait()
        if self.delay > 0:
            self._wake.clear()
            self._wake.wait(self.delay)
        if self.error is not None:
            raise OSError(self.error, f"{os.strerror(self.error)} (injected during {op})")

    def after_read(self, first_record: int, view: memoryview, record_size: int) -> None:
        """Called with each buffer of whole records just read; may corrupt some."""
        if self.corrupt_reads <= 0:
            return
        with self._lock:
            for i in range(len(view) // record_size):
                if self.corrupt_reads <= 0:
                    break
                pos = i * record_size + record_size // 2
                view[pos] ^= 0xFF
                self.corrupt_reads -= 1
