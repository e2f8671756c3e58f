"""Tickle ACKs (hsb/cp/tickle.py; docs/cp-journal.md, docs/operations.md "Two CP machines"), each
test naming a behaviour that a mutation audit of the module found no test for: a peer address
too short to list, the list writer's thread ended by `close()`, a list that cannot be read now
left for later (not deleted as damaged), and the CP port of a list's entry bounded like the
terminal's.

The audit (session 63): 43 hand-made mutants of tickle.py; 38 were killed by
tests/test_cp_tickle.py, test_cp_tickle_edges.py and test_cp_terminal_audit.py; 4 are killed
here; 1 is equivalent (the pacing's `k and` dropped: at k = 0 the wait computed is never
positive, so nothing sleeps).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import msgpack
import pytest

from hsb.cp import tickle
from hsb.cp.tickle import TickleList, list_name, previous_list
from tests.support.hafakes import until

pytestmark = pytest.mark.timeout(30)


def _list(d: Path, gen: int, peer: str) -> None:
    (d / list_name(gen)).write_bytes(msgpack.packb({"v": 1, "generation": gen, "conns": [["10.0.0.9", 7000, peer, 40001, ""]]}))


def test_a_peer_address_of_one_item_is_not_listed(tmp_path: Path) -> None:
    """A peername tuple of a single item is passed over like a sockname of one, not an IndexError
    in connection_made (mutant: the peer's length checked as `>= 1`)."""
    tl = TickleList(tmp_path, 3)
    tl.opened(object(), ("10.0.0.9", 7000), ("10.1.0.5",))
    assert tl.status()["connections"] == 0


async def test_closing_the_list_ends_its_writers_thread(tmp_path: Path) -> None:
    """`close()` (the CP's stop) ends the thread that writes the list: a CP stopped and started
    again in one process (a test, a worker under its master) leaves no thread behind (mutant:
    the worker not shut down)."""
    tl = TickleList(tmp_path, 3)
    tl.tick(100.0)
    await until(lambda: tl.written == 1, "the empty list written")
    assert tl._worker is not None
    thread = tl._worker._thread
    assert thread.is_alive()
    tl.close()
    await until(lambda: not thread.is_alive(), "the writer's thread still runs after close()")


def test_a_list_that_cannot_be_read_now_is_left_not_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest list unreadable for the moment (ESTALE on NFS while the other CP replaces it):
    it is skipped, not deleted as a damaged one would be, and the one before it is read (mutant:
    the unreadable file unlinked)."""
    _list(tmp_path, 1, "10.1.0.1")
    _list(tmp_path, 2, "10.1.0.2")
    real = Path.read_bytes

    def stale(self: Path) -> bytes:
        if self.name == list_name(2):
            raise OSError(errno.ESTALE, "Stale file handle")
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", stale)
    gen, conns, _here = previous_list(tmp_path, 5)
    assert (gen, [c[2] for c in conns]) == (1, ["10.1.0.1"])
    assert (tmp_path / list_name(2)).is_file(), "a list that could not be read now was deleted"


@pytest.mark.parametrize("entry", [["10.0.0.9", 65536, "10.1.0.5", 1], ["10.0.0.9", 7000, "10.1.0.5", 65536]])
def test_a_port_above_65535_on_either_side_is_refused(entry: list[Any]) -> None:
    """Ports 1-65535 on both sides of an entry: 65536 is no port, for the CP's as for the
    terminal's (mutant: the CP's port bounded `<= 65536`, which then failed in struct.pack)."""
    assert tickle._entry(entry) is None
