"""The CP's crashes and the flip together, against a model (hypothesis, stateful):
tests/support/cpmodel_crashflip.py says what it drives and checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_crashflip import CrashFlipModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included, ~5 min: a broken recovery waits 5 s a step; a clean run takes ~30 s)

TestCPCrashFlipModel = model_test(CrashFlipModel)
