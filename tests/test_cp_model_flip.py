"""The CP's flip between two hosts against a model (hypothesis, stateful):
tests/support/cpmodel_flip.py says what it drives and checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_flip import FlipModel

pytestmark = pytest.mark.timeout(300)  # (a failure's shrinking included; a clean run takes ~35 s)

TestCPFlipModel = model_test(FlipModel)
