"""The suite's own scheduling (tests/conftest.py): every module named in SLOW_MODULES exists, so
a renamed or split one is not silently dealt out beside another heavy load."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import SLOW_MODULES

ROOT = Path(__file__).resolve().parent.parent


def test_every_slow_module_named_exists() -> None:
    missing = sorted(m for m in SLOW_MODULES if not (ROOT / m).is_file())
    assert missing == [], f"tests/conftest.py SLOW_MODULES names modules that do not exist: {missing}"
