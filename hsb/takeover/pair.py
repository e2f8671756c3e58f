"""Which pair a takeover file belongs to: the pair tag and the check for another pair's writer.

Each pair needs a takeover file of its own. Another pair's hosts pointed at it (a copied
config, a second sandbox) would take turns with this pair's active at batch writes, every
one a new generation for the other's standby: hot standby lost and resynced for ever, and
nothing naming the cause. So every batch write records in record 0 the writer's host name
and the pair tag, 32 bits of HMAC-SHA256 of the pair's shared secret (one secret per pair:
docs/operations.md §4; two pairs with one secret could also log on to each other's CP). The
active checks the header before it writes a batch, the standby when it reads one, and a
header written by a host outside the pair is refused (`ForeignWriter`), naming that host:

- a fresh file (generation 0: no batch yet; its writer is whoever ran `hsbctl file create`)
  is anyone's;
- a header with a pair tag: the tag decides, whatever the names (a host renamed keeps its
  pair's tag; another pair's hosts named as this pair's do not have it);
- a header without one (written by an earlier version): the writer must be this host or its
  peer, when the peer's name is known (the peer link's; unknown, only the tag counts).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

import structlog

from hsb.takeover.errors import ForeignWriter
from hsb.takeover.records import Header

log = structlog.get_logger("hsb.takeover")

_LABEL = b"hsb takeover file pair tag v1"


def pair_tag(secret: bytes) -> int:
    """The pair's tag: 32 bits of HMAC-SHA256(secret, a fixed label), never 0 (0: no tag)."""
    return int.from_bytes(hmac.new(secret, _LABEL, hashlib.sha256).digest()[:4], "little") or 1


@dataclass(frozen=True, slots=True)
class Pair:
    """This host's side of the check: its own name and its pair's tag."""

    own: str
    tag: int

    def foreign(self, h: Header, peer: str | None) -> str | None:
        """Who wrote `h`, when that is a host outside this pair (see the module docstring); else None."""
        if h.generation == 0:
            return None
        who = h.writer_host or "?"
        if h.pair_tag:
            return None if h.pair_tag == self.tag else f"{who} of another pair (the header's pair tag is not this pair's: another secret)"
        if not h.writer_host or h.writer_host == self.own or peer is None or h.writer_host == peer:
            return None
        return f"{who}, neither this host ({self.own}) nor its peer ({peer})"

    def check(self, path: str, h: Header, peer: str | None, *, role: str) -> None:
        """ForeignWriter (logged as `takeover_file_foreign_writer`) when another pair wrote `h`.
        `role`: "active" (about to write a batch) or "standby" (has read its header)."""
        who = self.foreign(h, peer)
        if who is None:
            return
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.written_at_ms / 1000)) if h.written_at_ms else "?"
        done = "this host does not write it" if role == "active" else "this standby does not read it"
        msg = (
            f"takeover file {path} was last written by {who}, generation {h.generation} at {when}: another pair's hosts name this file"
            f" and {done}; give each pair a file of its own (hsbctl file create; that pair's [takeover] path);"
            f" if the file is this pair's and no other pair names it any more (or this pair's secret changed), recreate it with both"
            f" hosts of this pair stopped: hsbctl file create {path} --records {h.records} --record-size {h.record_size} --force --force"
        )
        log.error("takeover_file_foreign_writer", path=path, role=role, writer=h.writer_host, generation=h.generation, msg=msg)
        raise ForeignWriter(msg, writer=h.writer_host)
