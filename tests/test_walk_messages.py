"""Refusals found wanting by the service author's walk-through, said with their fix: a service
module hsbd cannot import (it was "No module named 'myapp'", with nothing on where hsbd looks),
and a ledger request without `op` (it was "unknown op None")."""

from __future__ import annotations

import sys

import pytest

from hsb.service.api import ServiceError, load_service
from hsb.service.ledger import BadRequest, parse

pytestmark = pytest.mark.timeout(30)


def test_a_service_module_not_found_names_hsbds_python_and_the_fix() -> None:
    with pytest.raises(ServiceError) as exc:
        load_service("walk_nosuch_pkg.service:Orders", "a", {})
    text = str(exc.value)
    assert text.startswith("service 'walk_nosuch_pkg.service:Orders': cannot import walk_nosuch_pkg.service: No module named"), text
    assert sys.executable in text and "PYTHONPATH" in text and "install the package" in text, text


@pytest.mark.parametrize("data", ["{}", '{"account":"alice"}', '{"op":null,"account":"alice"}'])
def test_a_ledger_request_without_op_says_it_is_missing(data: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse(data)
    assert str(exc.value) == "'op' is missing: one of open, deposit, withdraw, transfer, balance"


def test_an_unknown_op_is_still_named() -> None:
    with pytest.raises(BadRequest, match="unknown op 'fly': one of open"):
        parse('{"op":"fly"}')
