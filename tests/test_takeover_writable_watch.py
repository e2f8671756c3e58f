"""Each host asks every `WRITABLE_EVERY_S` whether it could open the takeover file for writing
(hsb.host.takeover_io.TakeoverIO.watch_writable). An idle pair writes nothing to the file, so one
made immutable or read-only since its last write (ext4 remounted read-only after an error, an NFS
export changed to ro, `chattr +i`) said `storage ok` and hsb_takeover_storage_ok 1 until a
failover, whose new active then failed every batch write. Now the status's storage names the
reason (so the metric is 0 and HsbTakeoverStorageStalled fires), logged once
(`takeover_file_not_writable`), until a check or a batch write succeeds
(`takeover_file_writable_again`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog

from hsb.host import takeover_io
from hsb.host.config import TakeoverSection
from hsb.host.takeover_io import TakeoverIO
from hsb.takeover import store
from hsb.takeover.errors import NotWritable
from hsb.takeover.fileio import create_file
from tests.support.inproc import until

pytestmark = pytest.mark.timeout(30)


async def test_a_takeover_file_that_became_unwritable_shows_in_the_storage_until_it_is_writable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "t.dat")
    create_file(path, 64, 4096)
    refused = [False]
    real = store.writable

    def writable(p: str, who: str = "this host") -> None:
        if refused[0]:
            raise NotWritable(f"takeover file {p} cannot be opened for writing by {who} (Operation not permitted); chattr -i -a {p}")
        real(p, who)

    monkeypatch.setattr(store, "writable", writable)
    monkeypatch.setattr(takeover_io, "WRITABLE_EVERY_S", 0.02)
    tio = TakeoverIO(TakeoverSection(path=path, records=64), 10, "host-a")
    checks = [0]
    asked = tio.unwritable

    async def counted(who: str) -> str | None:
        checks[0] += 1
        return await asked(who)

    tio.unwritable = counted  # type: ignore[method-assign]
    try:
        with structlog.testing.capture_logs() as logs:
            tio.watch_writable("host-a")
            await until(lambda: checks[0] >= 3, "three checks of a writable file")
            assert tio.status()["storage"] == "ok"
            refused[0] = True
            await until(lambda: tio.status()["storage"] != "ok", "the storage shown failing")
            said = tio.status()["storage"]
            assert said.startswith(f"takeover file {path} cannot be opened for writing by host-a") and "chattr -i -a" in said, said
            n = checks[0]
            await until(lambda: checks[0] >= n + 3, "three more checks")
            assert tio.status()["storage"] == said  # (still failing: said once, kept)
            refused[0] = False
            await until(lambda: tio.status()["storage"] == "ok", "the storage ok again")
        events = [e["event"] for e in logs if e["event"].startswith("takeover_file_")]
        assert events == ["takeover_file_not_writable", "takeover_file_writable_again"], events
    finally:
        await tio.close()
    assert tio.watcher is not None and tio.watcher.cancelled()


async def test_a_batch_write_that_succeeds_clears_an_unwritable_file(tmp_path: Path) -> None:
    """A batch write opened and wrote the file: what the last check said is no longer so."""
    path = str(tmp_path / "t.dat")
    create_file(path, 64, 4096)
    tio = TakeoverIO(TakeoverSection(path=path, records=64), 10, "host-a")
    try:
        tio.unwritable_error = "takeover file … cannot be opened for writing by host-a (Read-only file system)"
        assert tio.status()["storage"] != "ok"

        async def batch_write(*_: Any) -> Any:
            return type("H", (), {"generation": 2})()

        tio.store.batch_write = batch_write  # type: ignore[method-assign,assignment]
        assert await tio.batch_write(1, []) == 2
        assert tio.status()["storage"] == "ok"
    finally:
        await tio.close()
