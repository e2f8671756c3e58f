"""A batch write or batch read of the takeover file that the storage fails (EPERM, EIO, ENOSPC)
shows the storage failing in the host's status (`storage`, hence hsb_takeover_storage_ok 0 and
HsbTakeoverStorageStalled), from the failure until a batch operation succeeds: also across the
ring writer's stop that starts each new try. Found by the on-call walk-through: an active whose
takeover file was made immutable (chattr +i) failed every batch write (`batch_write_failed`,
EPERM) while its status and /metrics said `storage ok`."""

from __future__ import annotations

import errno
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(30)


def _tio(tmp_path: Path) -> Any:
    from hsb.host.config import TakeoverSection
    from hsb.host.takeover_io import TakeoverIO

    return TakeoverIO(TakeoverSection(path=str(tmp_path / "t.dat"), records=64), 10, "host-a")


def _storage_ok_metric(tio: Any) -> float:
    from tests.test_prometheus import _host_status, _scrape

    return _scrape(_host_status(takeover_file=tio.status()))["hsb_takeover_storage_ok"]


async def test_a_failing_batch_write_shows_the_storage_failing_until_one_succeeds(tmp_path: Path) -> None:
    tio = _tio(tmp_path)
    path = str(tmp_path / "t.dat")
    fail = [True]

    async def batch_write(*_: Any) -> Any:
        if fail[0]:
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return SimpleNamespace(generation=3)

    tio.store.batch_write = batch_write
    assert tio.status()["storage"] == "ok" and _storage_ok_metric(tio) == 1
    for _ in range(2):  # as HA.batch_write tries: the ring writer stopped, then the write
        tio.stop_ring_writer()
        with pytest.raises(PermissionError):
            await tio.batch_write(1, [])
        assert tio.status()["storage"] == f"batch write failed: [Errno 1] Operation not permitted: '{path}'"
        assert _storage_ok_metric(tio) == 0
    tio.stop_ring_writer()  # the next try begins: still failing until it has succeeded
    assert tio.status()["storage"] != "ok" and _storage_ok_metric(tio) == 0
    fail[0] = False
    assert await tio.batch_write(1, []) == 3
    assert tio.status()["storage"] == "ok" and _storage_ok_metric(tio) == 1


async def test_a_failing_batch_read_shows_the_storage_failing_until_one_succeeds(tmp_path: Path) -> None:
    tio = _tio(tmp_path)
    fail = [True]

    async def batch_read(*_: Any) -> Any:
        if fail[0]:
            raise OSError(errno.EIO, "Input/output error")
        return SimpleNamespace(header=SimpleNamespace(generation=4, batch_records=2), entries=[])

    tio.store.batch_read = batch_read
    with pytest.raises(OSError):
        await tio.batch_read(5)
    assert tio.status()["storage"] == "batch read failed: [Errno 5] Input/output error"
    assert _storage_ok_metric(tio) == 0
    fail[0] = False
    assert await tio.batch_read(5) == (4, 2, [])
    assert tio.status()["storage"] == "ok" and _storage_ok_metric(tio) == 1


async def test_a_refusal_that_is_not_the_storages_does_not_say_it_fails(tmp_path: Path) -> None:
    """Another pair's header (ForeignWriter) is a config problem with its own line, not failing
    storage: HsbTakeoverStorageStalled's fix (the storage) would be the wrong one."""
    from hsb.takeover.errors import ForeignWriter

    tio = _tio(tmp_path)

    async def batch_write(*_: Any) -> Any:
        raise ForeignWriter("written by another pair")

    tio.store.batch_write = batch_write
    with pytest.raises(ForeignWriter):
        await tio.batch_write(1, [])
    assert tio.status()["storage"] == "ok"


async def test_a_standbys_failed_batch_read_is_forgotten_when_it_takes_over(tmp_path: Path) -> None:
    """Taken over, the host writes: its failed batch read no longer says how the storage is, and
    with no standby yet no batch write comes to clear it (the alert would fire on and on)."""
    tio = _tio(tmp_path)

    async def batch_read(*_: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    tio.store.batch_read = batch_read
    with pytest.raises(OSError):
        await tio.batch_read(5)
    assert tio.status()["storage"] != "ok"
    tio.become_writer()
    assert tio.status()["storage"] == "ok" and _storage_ok_metric(tio) == 1
