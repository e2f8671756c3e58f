"""A `[service_options]` key the service does not take is the config's error, named with the keys
it does take: echo and journal ignored one (a typo such as `jornal`, a ledger's `dsn` left in
after `service` changed), the ledger said it in Python's words, naming none of the right ones."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

from hsb.config import load
from hsb.host.config import HostConfig
from hsb.host.main import service_problems
from hsb.service.api import ServiceError, load_service
from hsb.service.builtin import EchoService
from hsb.service.ledger import OPTION_KINDS, LedgerService

pytestmark = pytest.mark.timeout(30)

LEDGER_TAKES = "dsn, sqlite, pool_size, command_timeout, tx_idle_timeout, keep_hours, keep_last, busy_timeout, idempotency, logon_ms"


def with_files(options: dict[str, Any], d: Path) -> dict[str, Any]:
    """`options` with its file options (journal, sqlite) under `d`."""
    return {k: str(d / v) if k in ("journal", "sqlite") else v for k, v in options.items()}


# (service, its options, what the refusal says after "bad [service_options]: ")
UNKNOWN = [
    ("echo", {"jornal": "x"}, "unknown option 'jornal' (echo takes: logon_ms)"),
    ("echo", {"logon_ms": 0, "journal": "j.log"}, "unknown option 'journal' (echo takes: logon_ms)"),
    (
        "hsb.service.builtin:EchoService",
        {"host": "b"},
        "option 'host' is the name of the factory's first parameter, which hsbd gives the host's name: rename the option (and the parameter it is for)",
    ),
    ("journal", {"journal": "j.log", "dsn": "postgresql://x/y"}, "unknown option 'dsn' (journal takes: journal, logon_ms)"),
    ("journal", {"jornal": "j.log"}, "unknown option 'jornal' (journal takes: journal, logon_ms)"),
    ("ledger", {"sqlite": "l.db", "dns": "x", "pool": 3}, f"unknown options 'dns', 'pool' (ledger takes: {LEDGER_TAKES})"),
]


@pytest.mark.parametrize("spec, options, said", UNKNOWN)
def test_an_unknown_option_is_refused_by_the_build_naming_it_and_the_known_ones(
    tmp_path: Path, spec: str, options: dict[str, Any], said: str
) -> None:
    with pytest.raises(ServiceError) as exc:
        load_service(spec, "host-a", with_files(options, tmp_path))
    assert str(exc.value) == f"service {spec!r}: bad [service_options]: {said}"
    assert list(tmp_path.iterdir()) == []  # refused before the build: no journal, no database made


@pytest.mark.parametrize("check_only", [False, True])
@pytest.mark.parametrize("spec, options, said", UNKNOWN)
def test_an_unknown_option_is_an_error_of_hsbds_check_and_start(
    tmp_path: Path, spec: str, options: dict[str, Any], said: str, check_only: bool
) -> None:
    """The start's check (check_only False) builds the service; --check-config (True) asks the
    journal's check_options instead: both refuse it, in one line naming the key."""
    problems = service_problems(spec, "host-a", with_files(options, tmp_path), check_only)
    assert problems == [f"host.service: service {spec!r}: bad [service_options]: {said}"], problems
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("check_only", [False, True])
@pytest.mark.parametrize(
    "spec, options",
    [("echo", {}), ("echo", {"logon_ms": 5}), ("journal", {"journal": "j.log", "logon_ms": 0}), ("ledger", {"sqlite": "l.db", "keep_last": 8})],
)
def test_the_options_a_service_takes_pass(tmp_path: Path, spec: str, options: dict[str, Any], check_only: bool) -> None:
    assert service_problems(spec, "host-a", with_files(options, tmp_path), check_only) == []


def takes_anything(host: str, **options: Any) -> EchoService:
    """A service of one's own whose factory takes any option: each is its own business."""
    return EchoService(host)


def takes_colour(host: str, colour: str = "red") -> EchoService:
    return EchoService(host)


def takes_nothing(host: str) -> EchoService:
    return EchoService(host)


def test_a_service_of_ones_own_is_refused_an_option_only_when_its_factory_has_no_parameter_for_it(tmp_path: Path) -> None:
    mod = __name__
    assert isinstance(load_service(f"{mod}:takes_anything", "host-a", {"whatever": 1}), EchoService)
    assert isinstance(load_service(f"{mod}:takes_colour", "host-a", {"colour": "blue"}), EchoService)
    with pytest.raises(
        ServiceError, match=rf"^service '{mod}:takes_colour': bad \[service_options\]: unknown option 'size' \({mod}:takes_colour takes: colour\)$"
    ):
        load_service(f"{mod}:takes_colour", "host-a", {"size": 3})
    with pytest.raises(ServiceError, match=rf"bad \[service_options\]: unknown option 'size' \({mod}:takes_nothing takes no options\)$"):
        load_service(f"{mod}:takes_nothing", "host-a", {"size": 3})


def test_an_option_named_as_the_factorys_host_parameter_is_said_so_not_in_pythons_words() -> None:
    """hsbd passes the host's name as the factory's first argument: an option of that name gave a
    factory taking **kwargs Python's "got multiple values for argument 'host'" (which option, and
    what to do, unsaid)."""
    mod = __name__
    with pytest.raises(ServiceError) as exc:
        load_service(f"{mod}:takes_anything", "host-a", {"host": "b", "colour": "blue"})
    assert str(exc.value) == (
        f"service '{mod}:takes_anything': bad [service_options]: option 'host' is the name of the factory's"
        " first parameter, which hsbd gives the host's name: rename the option (and the parameter it is for)"
    )


def test_every_ledger_option_is_checked_for_its_kind() -> None:
    """LedgerService checks each of its parameters (but the host's name) by OPTION_KINDS: one
    added to either alone would go unchecked, or fail every build with a KeyError."""
    params = list(inspect.signature(LedgerService).parameters)
    assert params[0] == "host" and params[1:] == list(OPTION_KINDS)


def test_ledger_options_of_the_wrong_kind_are_said_each_with_its_key_in_order(tmp_path: Path) -> None:
    with pytest.raises(ServiceError) as exc:
        load_service("ledger", "host-a", {"sqlite": str(tmp_path / "l.db"), "idempotency": "no", "pool_size": -3, "logon_ms": "5"})
    assert str(exc.value) == (
        "service 'ledger': bad [service_options]: pool_size must be an integer of at least 1, not -3;"
        " idempotency must be true or false, not 'no'; logon_ms must be a finite number, 0 or more, not '5'"
    )


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"dsn": "postgresql://hsb@db/hsb", "sqlite": "l.db"}, "dsn and sqlite are both set: name one database, dsn for PostgreSQL"),
        ({"sqlite": "l.db", "pool_size": 20}, "pool_size is PostgreSQL's (dsn), without effect with sqlite: remove it"),
        (
            {"sqlite": "l.db", "command_timeout": 30.0, "tx_idle_timeout": 2.0},
            "command_timeout, tx_idle_timeout are PostgreSQL's (dsn), without effect with sqlite: remove them",
        ),
        ({"dsn": "postgresql://hsb@db/hsb", "busy_timeout": 9.0}, "busy_timeout is SQLite's (sqlite), without effect with dsn: remove it"),
    ],
    ids=["both-databases", "pool-on-sqlite", "timeouts-on-sqlite", "busy-on-postgresql"],
)
async def test_a_ledger_option_without_effect_on_its_database_is_refused(tmp_path: Path, options: dict[str, Any], said: str) -> None:
    """An option of the other database (pool_size with sqlite, busy_timeout with dsn), or both
    databases named, was taken and silently without effect (with both, the DSN won): the
    operator's setting did not hold, and nothing said so. Refused at the check, with the fix."""
    if "sqlite" in options:
        options = {**options, "sqlite": str(tmp_path / options["sqlite"])}
    with pytest.raises(ServiceError) as exc:
        load_service("ledger", "host-a", options)
    assert str(exc.value).startswith(f"service 'ledger': bad [service_options]: {said}"), exc.value
    # each database's own options are taken
    for ok in (
        {"sqlite": str(tmp_path / "ok.db"), "busy_timeout": 9.0},
        {"dsn": "postgresql://hsb@db/hsb", "pool_size": 20, "command_timeout": 30.0, "tx_idle_timeout": 2.0},
    ):
        await load_service("ledger", "host-a", ok).close()


@pytest.mark.parametrize("service", ["echo", "journal", "ledger"])
def test_the_sandboxs_host_configs_give_each_service_only_options_it_takes(tmp_path: Path, service: str) -> None:
    from hsb.ctl.sandbox_files import write_configs

    plan = write_configs(tmp_path / "sb", terminals=2, service=service, conventional=False)
    for path in plan["configs"].values():
        cfg = load(path, HostConfig)
        assert cfg.host.service == service
        assert service_problems(service, cfg.host.name, dict(cfg.service_options), check_only=True) == [], path


@pytest.mark.parametrize("spec", ["echo", "journal", "ledger"])
async def test_every_built_in_service_does_its_logon_work(tmp_path: Path, spec: str) -> None:
    """`logon_ms` is each built-in service's simulated logon work per session open (the sandbox
    gives it to all three): the ledger accepted it and did nothing, an option that looked as if
    it held."""
    import asyncio

    options = with_files({"echo": {}, "journal": {"journal": "j.log"}, "ledger": {"sqlite": "l.db"}}[spec], tmp_path)
    svc = load_service(spec, "host-a", {**options, "logon_ms": 300})
    try:
        opening = asyncio.ensure_future(svc.open_session("T00001", {}, False))
        done, _ = await asyncio.wait([opening], timeout=0.1)  # (a sleep of 300 ms cannot be over before 0.1 s)
        assert not done, f"{spec}: the session opened without its logon work"
        await asyncio.wait_for(opening, 10)
    finally:
        await svc.close()
    quick = load_service(spec, "host-a", {**options, "logon_ms": 0})
    try:
        await asyncio.wait_for(quick.open_session("T00001", {}, False), 10)
    finally:
        await quick.close()
