"""File-system durability shared by the takeover file, the CP's journal and small state files,
and the look at whether a path can be made that the config checks share."""

from __future__ import annotations

import ctypes
import errno
import os
import unicodedata
from pathlib import Path

# Errors of the file system that last until someone acts (permissions, a read-only file system, a
# path through a file): every try fails the same way. Others (a hung or missing mount, EIO,
# ESTALE after an NFS server restarted) may pass
LASTING = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG})


NAME_MAX, PATH_MAX = 255, 4095  # bytes of a file name, of a path (Linux's; with the NUL: 4096)


def path_problem(path: str) -> str | None:
    """Why `path` is no plain file path, to follow it ("contains ..."), or None: a NUL character
    (every open() of it fails with a ValueError), another control character or a line break (every
    error line naming the file would be broken in two, or its end hidden by a carriage return), a
    name or a path longer than Linux takes (every look at it fails with ENAMETOOLONG)."""
    bad = next((c for c in path if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        return "contains a NUL character" if bad == "\0" else f"contains a control character or line break ({ascii(bad)})"
    size = len(path.encode())
    if size > PATH_MAX:
        return f"is {size} bytes long, over the {PATH_MAX} a path may have"
    longest = max(len(part.encode()) for part in path.split("/"))
    if longest > NAME_MAX:
        return f"has a name of {longest} bytes in it, over the {NAME_MAX} a file name may have"
    return None


def unwritable_above(path: Path) -> Path | None:
    """Where making `path` (a folder, or a file in one; its missing folders too) fails for this
    user: the nearest of `path` and the folders above it that exists, if that is not a directory
    this user may write into; None if it is (or nothing of it exists). Looked at only."""
    there = next((p for p in (path, *path.parents) if p.exists()), None)
    if there is not None and not (there.is_dir() and os.access(there, os.W_OK | os.X_OK)):
        return there
    return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the names in directory `path` durable (a file just created, renamed or removed)."""
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def replace_durably(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """`path` holds `data` whole, or what it held before, whenever the machine stops: written to
    PATH.tmp, fsynced, renamed over `path`, then the folder fsynced (the rename itself durable)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:  # (a short write goes on where it stopped)
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate64", None) or getattr(_libc, "fallocate", None)
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _fallocate.restype = ctypes.c_int


def preallocate(fd: int, size: int) -> bool:
    """Allocate the first `size` bytes of the file `fd` (Linux fallocate(2), mode 0: the file's
    size becomes `size`, the new bytes read as zeros) so that writes into them change no file
    size: an `fdatasync` after such a write flushes the data alone, where one after an append
    also writes the inode (and on a journalled file system waits for a journal commit). False,
    and nothing changed, where the file system cannot (NFS before 4.2, say) or has no room: the
    writes then extend the file as before (a full disk is reported by the write itself). Not
    posix_fallocate(3): glibc emulates that by writing a byte per block where fallocate is missing."""
    if _fallocate is None or size <= 0:
        return False
    return bool(_fallocate(fd, 0, 0, size) == 0)


BULK_RATE = 16 * 1024 * 1024  # bytes a second: what storage that works moves, given to operations on many bytes


def bulk_seconds(n_bytes: float) -> float:
    """The time `n_bytes` get beyond an operation's own deadline (BULK_RATE)."""
    return n_bytes / BULK_RATE
