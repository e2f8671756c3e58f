"""How hsbd loads its service (hsb.service.api): each way a `service = ...` can be wrong is a
ServiceError that names it, and the built-in services named by their factories are the same
services, with the same file options."""

from __future__ import annotations

import pytest

from hsb.service.api import ServiceError, load_service, path_options

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("spec", "options", "said"),
    [
        ("hsb.service.builtin:", {}, "must be 'echo', 'journal', 'ledger' or 'package.module:factory'"),
        ("hsb.service.builtin", {}, "must be 'echo', 'journal', 'ledger' or 'package.module:factory'"),
        ("nosuch_mod_hsb:make", {}, "cannot import nosuch_mod_hsb"),
        ("hsb.service.builtin:NoSuchFactory", {}, "hsb.service.builtin has no 'NoSuchFactory'"),
        ("echo", {"logon_ms": -1}, "bad [service_options]: logon_ms must be"),
    ],
)
def test_a_service_that_cannot_be_built_is_said_with_its_spec(spec: str, options: dict[str, object], said: str) -> None:
    with pytest.raises(ServiceError) as exc:
        load_service(spec, "host-a", options)
    assert said in str(exc.value) and repr(spec) in str(exc.value), exc.value


def test_the_builtins_by_their_factories_have_the_same_file_options() -> None:
    assert path_options(" hsb.service.ledger:LedgerService ") == path_options("ledger") == {"sqlite": ""}
    assert path_options("hsb.service.builtin:JournalService") == {"journal": "journal.log"}
    assert path_options("mine.mod:make") == {}
