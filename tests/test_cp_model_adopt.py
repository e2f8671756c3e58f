"""The CP's promise across its crashes with an active that adopts its sessions and marks repeats
itself (early delivery), against a model (hypothesis, stateful): tests/support/cpmodel_adopt.py
says what it drives and checks."""

from __future__ import annotations

import pytest

from tests.support.cpmodel import model_test
from tests.support.cpmodel_adopt import AdoptModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included)

TestCPModelAdopt = model_test(AdoptModel)
