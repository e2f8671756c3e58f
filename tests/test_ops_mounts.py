"""hsb.ops.mounts: a CP journal shared over NFS must be mounted with the caches its fencing
cannot live with turned off (docs/operations.md, two CP machines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.ops.mounts import mount_of, nfs_fencing_problem


def info(point: str, fstype: str, opts: str, sopts: str) -> str:
    return (
        "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
        f"40 22 0:45 / {point} rw,relatime shared:20 - {fstype} nfs.example:/export/hsb {sopts}\n"
        + (f"41 40 0:46 / {point}/inner rw - tmpfs tmpfs rw\n")
    )


def test_a_journal_on_nfs_with_the_default_caches_is_named_with_the_fix(tmp_path: Path) -> None:
    point = str(tmp_path)
    default = info(point, "nfs4", "rw,relatime", "rw,vers=4.2,rsize=1048576,hard,proto=tcp,timeo=600")
    why = nfs_fencing_problem(str(tmp_path / "cp-journal"), default)
    assert why is not None
    assert "negative lookups" in why and "attributes" in why and "noac,lookupcache=positive" in why and point in why
    # one of the two right: the other is named
    only_noac = info(point, "nfs4", "rw", "rw,sync,vers=4.2,acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,hard,noac")
    why = nfs_fencing_problem(str(tmp_path / "cp-journal"), only_noac)
    assert why is not None and "negative lookups" in why and "attributes" not in why


def test_a_journal_on_nfs_mounted_as_asked_or_not_on_nfs_is_fine(tmp_path: Path) -> None:
    point = str(tmp_path)
    right = info(point, "nfs4", "rw", "rw,sync,vers=4.2,hard,noac,lookupcache=pos,proto=tcp")
    assert nfs_fencing_problem(str(tmp_path / "cp-journal"), right) is None
    actimeo = info(point, "nfs", "rw", "rw,vers=3,acregmin=0,acregmax=0,acdirmin=0,acdirmax=0,lookupcache=none")
    assert nfs_fencing_problem(str(tmp_path / "cp-journal"), actimeo) is None
    # below a mount over it (tmpfs at point/inner): that one counts, not the NFS under it
    (tmp_path / "inner").mkdir()
    assert mount_of(str(tmp_path / "inner" / "j"), info(point, "nfs4", "rw", "rw"))[1] == "tmpfs"  # type: ignore[index]
    assert nfs_fencing_problem(str(tmp_path / "inner" / "j"), info(point, "nfs4", "rw", "rw")) is None
    # this machine's own mounts (no NFS in the sandbox): nothing to say
    assert nfs_fencing_problem(str(tmp_path / "cp-journal")) is None
    assert mount_of("/x", "garbage\nnot - enough\n") is None  # lines it cannot read: no mount, no error


def test_a_hung_mount_does_not_hold_hsbcpds_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Two CP machines: the start (and --check-config) looks at how the journal's storage is
    mounted. A hung mount held the start there, before READY, /health and status, until
    systemd's start timeout killed it, again and again. The look has a bound: past it the start
    goes on (waiting says what the storage does), and the takeover asks again."""
    import threading
    import time

    from hsb.config import load
    from hsb.cp import main as cp_main
    from hsb.cp.config import CPConfig
    from hsb.ops import mounts
    from tests.support.procs import cp_config

    release = threading.Event()

    def hung(path: str, mountinfo: str | None = None) -> str | None:
        release.wait(10)
        return None

    journal = tmp_path / "j"
    journal.mkdir()
    cfg = load(cp_config(tmp_path, terminals=2, journal=str(journal), takeover="on_wake"), CPConfig)
    monkeypatch.setattr(mounts, "nfs_fencing_problem", hung)
    monkeypatch.setattr(cp_main, "STORAGE_LOOK_S", 0.2)
    monkeypatch.setattr("hsb.cp.waiting.nonlocal_bind_problem", lambda addr: None)
    t0 = time.monotonic()
    try:
        problems = cp_main.start_problems(cfg)
    finally:
        release.set()
    assert time.monotonic() - t0 < 3 and problems == [], problems
    assert "did not answer within 0.2 s" in capsys.readouterr().err
