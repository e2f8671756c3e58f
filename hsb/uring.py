"""A small io_uring for the CP journal's group commit: a durable write (RWF_DSYNC: the write
completes once its data is on the disk, as after `fdatasync`) and two `statx`, run by the kernel
as one linked chain, their completions signalled on an eventfd the event loop watches. No thread
of ours takes part, so a group commit costs neither a thread's wake-up nor the GIL's hand-off
back (docs/cp-journal.md, "How a group commit is written").

The sync is the write's own, not an `fdatasync` linked after it: one hop through the kernel's
workers instead of two, one wake-up of the loop instead of two, and less time from the
submission to the last completion (p50 0.322 against 0.365 ms on the test machine, side by side:
bench/ring.py, bench/results/ring-dsync-session35.json).
It covers this write's bytes only, which is all there is to sync: every earlier group of the
segment was made durable before this one was written (hsb.cp.journal.writer).

Three system calls (io_uring_setup, io_uring_enter, io_uring_register: 425-427 on every Linux
architecture) over shared memory mapped with `mmap`, through ctypes. Not the PyPI `liburing`
wrapper: it is alpha, needs Linux 6.14, and keeps raw pointers into Python buffers without
holding them; this module needs Linux 5.6 (IORING_OP_WRITE, IORING_OP_STATX) and holds every
buffer until the kernel is done with it.

Memory order: the kernel reads the submission ring inside our io_uring_enter, on this thread,
so plain stores suffice there. Completions are read with plain loads (the tail, then the
entries): x86-64 keeps loads in order, but a weaker-ordered CPU (arm64) may not, and Python has
no memory barrier to put between them, so `available()` says no on any other architecture and
the journal keeps its writer thread there.

The kernel never blocks the caller here: the durable write is marked IOSQE_ASYNC, so it (its
sync with it) and every statx after it run in the kernel's own io-wq workers, on every file
system, and the chain stays out as long as the storage does (a hung NFS mount); the journal's
deadline reports that, as for the thread it replaces.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import platform
import select
import struct
import time
from collections.abc import Callable, Sequence

OP_STATX = 21
OP_WRITE = 23
SQE_IO_LINK = 1 << 2  # the next entry starts only once this one succeeded (else: -ECANCELED)
# the entry goes straight to the kernel's io-wq workers, never tried inside io_uring_enter: a
# file system that takes buffered writes without blocking (XFS, btrfs) would otherwise run the
# write there, and with it the RWF_DSYNC sync, on the event loop's thread
SQE_ASYNC = 1 << 4
RWF_DSYNC = 2  # pwritev2(2)'s flag: the write completes once its data is durable (as after fdatasync)
FEAT_SINGLE_MMAP = 1
OFF_SQ_RING = 0
OFF_CQ_RING = 0x8000000
OFF_SQES = 0x10000000
REGISTER_EVENTFD = 4
AT_FDCWD = -100
STATX_TYPE = 1
STATX_BUF = 256  # sizeof(struct statx)
NR_SETUP, NR_ENTER, NR_REGISTER = 425, 426, 427

Done = Callable[[list[int]], None]


class _SqOff(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")] + [
        ("user_addr", ctypes.c_uint64)
    ]


class _CqOff(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")] + [
        ("user_addr", ctypes.c_uint64)
    ]


class _Params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", _SqOff),
        ("cq_off", _CqOff),
    ]


class _Sqe(ctypes.Structure):
    _fields_ = [
        ("opcode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32),
        ("off", ctypes.c_uint64),  # the file offset; statx: the buffer
        ("addr", ctypes.c_uint64),  # the data; statx: the path
        ("len", ctypes.c_uint32),  # statx: the mask
        ("op_flags", ctypes.c_uint32),  # rw_flags (RWF_*), statx_flags
        ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16),
        ("personality", ctypes.c_uint16),
        ("splice_fd_in", ctypes.c_int32),
        ("addr3", ctypes.c_uint64),
        ("pad", ctypes.c_uint64),
    ]


class _Cqe(ctypes.Structure):
    _fields_ = [("user_data", ctypes.c_uint64), ("res", ctypes.c_int32), ("flags", ctypes.c_uint32)]


assert ctypes.sizeof(_Params) == 120 and ctypes.sizeof(_Sqe) == 64 and ctypes.sizeof(_Cqe) == 16
# an entry packed in one call (the fields of _Sqe, in order), not field by field through ctypes:
# the submission runs on the event loop at every group commit
_SQE = struct.Struct("<BBHiQQIIQHHiQQ")
assert _SQE.size == ctypes.sizeof(_Sqe)

_libc = ctypes.CDLL(None, use_errno=True)  # syscall(2) is variadic: every argument passed as a long
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
_abandoned: list[object] = []  # buffers of a chain still out when its ring was given up: never freed


def _check(r: int, what: str) -> int:
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return r


class Ring:
    """One io_uring with room for one chain at a time (the journal has one group out at most)."""

    def __init__(self, entries: int = 8) -> None:
        p = _Params()
        self.fd = _check(_syscall(ctypes.c_long(NR_SETUP), ctypes.c_long(entries), ctypes.byref(p)), "io_uring_setup")
        self._maps: list[mmap.mmap] = []
        self.efd = -1
        try:
            self._map(p)
            self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            reg = ctypes.c_int32(self.efd)
            _check(
                _syscall(ctypes.c_long(NR_REGISTER), ctypes.c_long(self.fd), ctypes.c_long(REGISTER_EVENTFD), ctypes.byref(reg), ctypes.c_long(1)),
                "io_uring_register",
            )
        except BaseException:
            self._unmap()
            if self.efd >= 0:  # made before the registration failed
                os.close(self.efd)
            os.close(self.fd)
            raise
        self.closed = False
        self.out: dict[int, int] = {}  # user_data -> result, for the chain out
        self._want = 0
        self._keep: object = None  # the chain's buffers, until every entry has completed
        self._done: Done | None = None
        self._serial = 0
        # the statx buffers, the paths' addresses and io_uring_enter's constant arguments, made
        # once: one chain is out at a time, and a chain given up keeps its buffers (`abandon`)
        self._statx = [ctypes.create_string_buffer(STATX_BUF) for _ in range(max(0, self.sq_entries - 1))]
        self._paths: tuple[bytes, ...] = ()
        self._path_addrs: list[int] = []
        self._enter = (ctypes.c_long(NR_ENTER), ctypes.c_long(self.fd), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))

    def _map(self, p: _Params) -> None:
        sq_size = p.sq_off.array + p.sq_entries * 4
        cq_size = p.cq_off.cqes + p.cq_entries * ctypes.sizeof(_Cqe)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        if p.features & FEAT_SINGLE_MMAP:
            sq = cq = mmap.mmap(self.fd, max(sq_size, cq_size), flags=flags, prot=prot, offset=OFF_SQ_RING)
            self._maps.append(sq)
        else:
            sq = mmap.mmap(self.fd, sq_size, flags=flags, prot=prot, offset=OFF_SQ_RING)
            self._maps.append(sq)
            cq = mmap.mmap(self.fd, cq_size, flags=flags, prot=prot, offset=OFF_CQ_RING)
            self._maps.append(cq)
        sqes = mmap.mmap(self.fd, p.sq_entries * ctypes.sizeof(_Sqe), flags=flags, prot=prot, offset=OFF_SQES)
        self._maps.append(sqes)
        self.sq_entries = p.sq_entries
        self.sq_tail = ctypes.c_uint32.from_buffer(sq, p.sq_off.tail)
        self.sq_mask = ctypes.c_uint32.from_buffer(sq, p.sq_off.ring_mask).value
        array = (ctypes.c_uint32 * p.sq_entries).from_buffer(sq, p.sq_off.array)
        for i in range(p.sq_entries):
            array[i] = i  # slot i of the ring is always entry i
        self.sqes = (_Sqe * p.sq_entries).from_buffer(sqes)
        self.sqe_mem = memoryview(sqes)
        self.cq_head = ctypes.c_uint32.from_buffer(cq, p.cq_off.head)
        self.cq_tail = ctypes.c_uint32.from_buffer(cq, p.cq_off.tail)
        self.cq_mask = ctypes.c_uint32.from_buffer(cq, p.cq_off.ring_mask).value
        self.cqes = (_Cqe * p.cq_entries).from_buffer(cq, p.cq_off.cqes)

    def _unmap(self) -> None:
        for name in ("sq_tail", "sqes", "cq_head", "cq_tail", "cqes"):
            self.__dict__.pop(name, None)
        mem = self.__dict__.pop("sqe_mem", None)
        if mem is not None:
            mem.release()
        for m in self._maps:
            try:
                m.close()
            except BufferError:  # a view still exported: the mapping goes with the process
                pass
        self._maps.clear()

    @property
    def busy(self) -> bool:
        return self._done is not None

    def write_sync_check(self, fd: int, data: bytes, offset: int, paths: Sequence[bytes], done: Done) -> None:
        """Submit, as one chain: `data` written durably at `offset` of `fd` (RWF_DSYNC), then
        a `statx` of each of `paths`. `done(results)` once every entry has completed, the
        results in that order: bytes written (or -errno: the storage's error, a failed sync
        included), the sync's (not the kernel's: 0 once the write completed, short or not, as
        what it wrote is durable then; -ECANCELED if it failed; the shape of a chain with an
        `fdatasync` of its own), then 0 or -errno per path. A statx after a write that failed
        or wrote short completes with -ECANCELED (the caller compares the count written)."""
        if self._done is not None:
            raise RuntimeError("a chain is still out")
        n = 1 + len(paths)
        if n > self.sq_entries:
            raise ValueError("chain longer than the ring")
        if paths != self._paths:
            self._paths = tuple(paths)
            self._path_addrs = [ctypes.cast(ctypes.c_char_p(path), ctypes.c_void_p).value or 0 for path in self._paths]
        bufs = self._statx[: len(paths)]
        self._serial += 1
        base = self._serial << 8
        tail = self.sq_tail.value
        mask, mem, pack = self.sq_mask, self.sqe_mem, _SQE.pack_into
        size = _SQE.size
        link = SQE_IO_LINK
        data_addr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0
        # (opcode, flags, ioprio, fd, off, addr, len, op_flags, user_data, buf_index, personality, splice_fd_in, addr3, pad)
        wflags = SQE_ASYNC | (link if n > 1 else 0)
        pack(mem, (tail & mask) * size, OP_WRITE, wflags, 0, fd, offset, data_addr, len(data), RWF_DSYNC, base, 0, 0, 0, 0, 0)
        for k in range(len(paths)):
            flags = link if 1 + k < n - 1 else 0
            pack(
                mem,
                ((tail + 1 + k) & mask) * size,
                OP_STATX,
                flags,
                0,
                AT_FDCWD,
                ctypes.addressof(bufs[k]),
                self._path_addrs[k],
                STATX_TYPE,
                0,
                base | (1 + k),
                0,
                0,
                0,
                0,
                0,
            )
        self._keep = (data, self._paths, bufs)
        self.out = {}
        self._want = n
        self._done = done
        self.sq_tail.value = (tail + n) & 0xFFFFFFFF
        op, rfd, z1, z2, z3 = self._enter
        r = _syscall(op, rfd, ctypes.c_long(n), z1, z2, None, z3)
        if r != n:  # entries left in the ring would go with the next chain: this ring is done for
            e = ctypes.get_errno() if r < 0 else errno.EIO
            self._done = None
            self.abandon()
            raise OSError(e, f"io_uring_enter took {r} of {n} entries")

    def reap(self) -> None:
        """The eventfd is readable (or the caller wants to look): collect completions; the
        chain's `done` runs once all of it is in."""
        if self._collect():
            done = self._done
            assert done is not None
            self._done = None
            self._keep = None
            res = [self.out[k] for k in range(self._want)]
            res.insert(1, 0 if res[0] >= 0 else -errno.ECANCELED)  # the write's own sync
            done(res)

    def _collect(self) -> bool:
        """Take the completions posted so far (the eventfd cleared first: one posted after it
        signals it again); True if the chain out is complete."""
        try:
            os.eventfd_read(self.efd)
        except BlockingIOError:
            pass
        head = self.cq_head.value
        tail = self.cq_tail.value
        mask = self.cq_mask
        while head != tail:
            c = self.cqes[head & mask]
            if c.user_data >> 8 == self._serial:
                self.out[c.user_data & 0xFF] = c.res
            head = (head + 1) & 0xFFFFFFFF
        self.cq_head.value = head
        return self._done is not None and len(self.out) >= self._want

    def wait(self, timeout: float) -> bool:
        """Block up to `timeout` for the chain out (for a blocking close); True once none is out."""
        deadline = time.monotonic() + timeout
        poller = select.poll()  # not select(): descriptors past 1,023 at 19,000 terminals
        poller.register(self.efd, select.POLLIN)
        while self._done is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if poller.poll(left * 1000):
                self.reap()
        return self._done is None

    def abandon(self) -> None:
        """Give the ring up with a chain perhaps still out (a hung mount at exit): its buffers
        are kept for the process's life, since the kernel may still read them."""
        if self._keep is not None:
            _abandoned.append(self._keep)
        self._keep = None
        self._done = None

    def close(self) -> None:
        """Only once no chain is out (else `abandon()` first). Once: a second call does nothing
        (its descriptors' numbers may be another file's by then)."""
        if self.closed:
            return
        self.closed = True
        if self._done is not None:
            self.abandon()
        self._unmap()
        for fd in (self.efd, self.fd):
            try:
                os.close(fd)
            except OSError:
                pass


@functools.cache
def available() -> str | None:
    """None if this kernel runs the journal's chain (setup, a durable write and two statx, on a
    scratch file: the kernel takes RWF_DSYNC and IOSQE_ASYNC); else why not, in a few words (a seccomp filter, an old kernel, a CPU other
    than x86-64). Probed once per process: hsbcpd asks at its start, before it takes the
    journal over."""
    import tempfile

    if platform.machine() not in ("x86_64", "AMD64"):
        return f"io_uring is used on x86-64 only (this CPU is {platform.machine()}: see hsb/uring.py)"

    try:
        ring = Ring()
    except OSError as exc:
        return f"io_uring_setup failed: {exc.strerror}"
    try:
        with tempfile.TemporaryFile() as f:
            got: list[list[int]] = []
            ring.write_sync_check(f.fileno(), b"x", 0, [os.fsencode(os.curdir), b"/nonexistent/hsb-probe"], got.append)
            if not ring.wait(2.0):
                return "io_uring chain did not complete in 2 s"
            res = got[0]
            if res[:3] != [1, 0, 0] or res[3] != -errno.ENOENT:
                return f"io_uring chain gave unexpected results {res}"
        return None
    except OSError as exc:
        return f"io_uring: {exc}"
    finally:
        ring.close()
