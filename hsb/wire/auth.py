"""Shared-secret challenge-response for the host, peer and admin links.

The server sends a fresh random nonce; the client answers
HMAC-SHA256(secret, nonce || role || name). A nonce is used once, so a replayed
answer is refused. The secret never goes on the wire or into a log.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

from hsb.fsutil import path_problem

NONCE_BYTES = 32


class SecretFileError(Exception):
    """The secret file is missing, empty, or readable by others."""


def load_secret(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    why = path_problem(str(p))  # (a TOML escape can put a NUL there, and stat() would raise ValueError)
    if why is not None:
        raise SecretFileError(f"secret file {str(p)!r} {why}; give a plain file path")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SecretFileError(f"secret file {p} does not exist; create it with 'head -c 32 /dev/urandom | base64 > {p}; chmod 600 {p}'") from None
    except OSError as exc:
        raise SecretFileError(f"secret file {p} cannot be read: {exc.strerror or exc} (check the directories' permissions)") from None
    if stat.S_ISDIR(st.st_mode):
        raise SecretFileError(f"secret file {p} is a directory; give the path of the secret file in it, not its folder")
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(f"secret file {p} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"secret file {p} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):o}); run 'chmod 600 {p}'")
    try:
        data = p.read_bytes().strip()
    except OSError as exc:  # another user's file (mode 600): run as its owner
        raise SecretFileError(f"secret file {p} cannot be read: {exc.strerror or exc} (run as the user that owns it, or as root)") from None
    if not data:
        raise SecretFileError(f"secret file {p} is empty; put a random secret in it")
    return data


def new_nonce() -> bytes:
    return os.urandom(NONCE_BYTES)


def answer(secret: bytes, nonce: bytes, role: str, name: str) -> bytes:
    return hmac.new(secret, nonce + role.encode() + b"\0" + name.encode(), hashlib.sha256).digest()


def server_role(link: str) -> str:
    """What the server's own answer (to the client's nonce, in `auth_ok`) is made for: never the
    same input as a client's answer, so neither side's answer can be played back as the other's."""
    return f"server:{link}"


def verify(secret: bytes, nonce: bytes, role: str, name: str, mac: bytes) -> bool:
    return hmac.compare_digest(answer(secret, nonce, role, name), mac)
