"""Shared fixtures: `sb` starts sandboxes (real processes) and always brings them down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.ctl import sandbox


@pytest.fixture
def sb(tmp_path: Path):  # type: ignore[no-untyped-def]
    dirs: list[Path] = []

    async def make(**kw: Any) -> dict[str, Any]:
        d = tmp_path / f"sb{len(dirs)}"
        dirs.append(d)
        return await sandbox.aup(d, **kw)

    yield make
    for d in dirs:
        try:
            sandbox.down(d, timeout=2.0)
        except sandbox.SandboxError:
            pass
