"""The CP's flip with terminals that do not resume and logoffs, against a model (hypothesis, stateful):
tests/support/cpmodel_flipmixed.py says what it drives and checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_flipmixed import FlipMixedModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included; a clean run takes ~40 s)

TestCPFlipMixedModel = model_test(FlipMixedModel)
