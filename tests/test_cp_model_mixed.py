"""The CP's promise to a mix of resuming and non-resuming terminals, with logoffs and CP crashes,
against a model (hypothesis, stateful): tests/support/cpmodel_mixed.py says what it drives and
checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_mixed import MixedModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included; a clean run takes ~26 s)

TestCPModelMixed = model_test(MixedModel)
