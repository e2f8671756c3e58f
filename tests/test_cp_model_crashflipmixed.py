"""CP crashes, the flip, terminals that do not resume and logoffs together, against a model
(hypothesis, stateful): tests/support/cpmodel_crashflipmixed.py says what it drives and checks."""

from __future__ import annotations

import pytest
from hypothesis import settings

from tests.support.cpmodel import MODEL_SETTINGS, model_test
from tests.support.cpmodel_crashflipmixed import CrashFlipMixedModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included; a clean run takes ~30 s)

TestCPCrashFlipMixedModel = model_test(CrashFlipMixedModel)
TestCPCrashFlipMixedModel.settings = settings(MODEL_SETTINGS, max_examples=800)  # (its examples are quick: ~35 ms)
