"""The CP's promise to resuming terminals across CP crashes, against a model (hypothesis,
stateful): tests/support/cpmodel_crash.py says what it drives and checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_crash import CPModel

pytestmark = pytest.mark.timeout(300)  # (a failure's shrinking included; a clean run takes ~40 s)

TestCPModel = model_test(CPModel)
