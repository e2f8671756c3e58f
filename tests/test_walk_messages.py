"""Refusals found wanting by the service author's walk-through, said with their fix: a service
module hsbd cannot import (it was "No module named 'myapp'", with nothing on where hsbd looks),
and a ledger request without `op` (it was "unknown op None")."""

from __future__ import annotations

import sys
from pathlib import Path

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


@pytest.mark.parametrize("data", ["{}", '{"account":"alice"}'])
def test_a_ledger_request_without_op_says_it_is_missing(data: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse(data)
    assert str(exc.value) == "'op' is missing: one of open, deposit, withdraw, transfer, balance"


def test_a_ledger_request_whose_op_is_null_says_so() -> None:
    with pytest.raises(BadRequest) as exc:
        parse('{"op":null,"account":"alice"}')
    assert str(exc.value) == "'op' is null: one of open, deposit, withdraw, transfer, balance"


def test_a_service_whose_own_import_is_missing_names_that_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service's module is there; a package it imports is not: that package is named, to be
    installed into hsbd's Python (its folder on PYTHONPATH would not be the fix)."""
    (tmp_path / "walk_svc_dep.py").write_text("import walk_nosuch_dependency  # noqa: F401\n\nclass S: ...\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ServiceError) as exc:
        load_service("walk_svc_dep:S", "a", {})
    text = str(exc.value)
    assert f"walk_svc_dep itself imports walk_nosuch_dependency, which {sys.executable} cannot find: install it" in text, text
    assert "PYTHONPATH" not in text, text


def test_an_unknown_op_is_still_named() -> None:
    with pytest.raises(BadRequest, match="unknown op 'fly': one of open"):
        parse('{"op":"fly"}')


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ('{"op":"open","account":"bob","account":"dup"}', "'account' is given twice: give each field once"),
        ('{"op":"transfer","from":"a","to":"b","amount":5,"amount":500}', "'amount' is given twice: give each field once"),
    ],
)
def test_a_ledger_field_given_twice_is_refused_not_read_as_its_last_value(data: str, said: str) -> None:
    """Which of two accounts (or amounts) a money request means is not guessed: json's default
    takes the last, and `{"op":"open","account":"bob","account":"dup"}` opened 'dup'."""
    with pytest.raises(BadRequest) as exc:
        parse(data)
    assert str(exc.value) == said


@pytest.mark.parametrize(
    ("data", "said"),
    [
        ('{"op":"deposit","account":"a","amount":5,"acount":"b"}', "'acount' is not a field of 'deposit': it takes account, amount"),
        ('{"op":"transfer","from":"a","to":"b","amount":5,"account":"c"}', "'account' is not a field of 'transfer': it takes amount, from, to"),
        ('{"op":"balance","account":"a","amount":1}', "'amount' is not a field of 'balance': it takes account"),
    ],
)
def test_a_ledger_field_the_request_does_not_take_is_refused_not_ignored(data: str, said: str) -> None:
    with pytest.raises(BadRequest) as exc:
        parse(data)
    assert str(exc.value) == said


def test_every_documented_request_still_parses() -> None:
    """The requests of SPEC §8 (and docs/ledger.md's table), each with exactly its fields."""
    for data in (
        '{"op":"open","account":"alice"}',
        '{"op":"deposit","account":"alice","amount":100}',
        '{"op":"withdraw","account":"alice","amount":30}',
        '{"op":"transfer","from":"alice","to":"bob","amount":5}',
        '{"op":"balance","account":"alice"}',
    ):
        assert parse(data).op in data
