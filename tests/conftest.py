"""Shared fixtures: `sb` starts sandboxes (real processes) and always brings them down; `pg` is a
throwaway PostgreSQL server of the module's own (skipped, saying what is missing, without one);
`secret` a shared secret file in the test's tmp_path (hsbctl's --secret-file); `fake` a started
fake CP (tests/support/fakecp.py) for hsbterm's tests; `hostile_sb`, the hostile-input tests'
sandbox (tests/support/hostile.py, one a module), and `witness`, a real terminal on it;
`supervised` starts `hsbcpd --supervise` (tests/support/supervised.py)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# the support modules' checks (assert_clean, check_journals, ...) fail with pytest's breakdown of
# the values, as the tests' own asserts do (registered before any of them is imported)
pytest.register_assert_rewrite("tests.support")

import structlog  # noqa: E402

from hsb import ports  # noqa: E402
from hsb.ctl import sandbox  # noqa: E402
from tests.support.fakecp import FakeCP  # noqa: E402
from tests.support.fuzz import Witness  # noqa: E402
from tests.support.hostile import SB, module_sandbox  # noqa: E402
from tests.support.supervised import supervised_cps  # noqa: E402

if TYPE_CHECKING:
    from tests.support.pg import PgServer

# every hsbcpd a test starts checks its kept status totals against a walk over every terminal
# at each status call, and exits (code 70) on a difference (hsb.cp.status_view.audit_counts)
os.environ["HSB_AUDIT_COUNTS"] = "1"


# The modules whose tests start many processes or terminals (loads of a thousand terminals, the
# fault campaigns, the network-namespace labs). scripts/test runs the suite on three workers
# (pytest-xdist, `--dist loadscope`): these all go to one worker, one test at a time and first,
# so two such loads never share the machine's two cores, while the other workers take the light
# modules; every other module goes whole to one worker (its module-scoped fixtures, a
# PostgreSQL server or a sandbox, start once). Their tests are marked `slow`.
SLOW_MODULES = frozenset(
    {
        "tests/netns/test_cpfailover.py",
        "tests/netns/test_lease.py",
        "tests/netns/test_partitions.py",
        "tests/netns/test_terminal_keepalive.py",
        "tests/test_campaign.py",
        "tests/test_cp_backpressure.py",
        "tests/test_cp_restart.py",
        "tests/test_cp_supervise.py",
        "tests/test_failover.py",
        "tests/test_hostile_memory.py",
        "tests/test_ledger_e2e.py",
        "tests/test_operations.py",
        "tests/test_tls.py",
        "tests/test_tls_handshakes.py",
    }
)


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker: a slice of the port range of its own (hsb.ports, $HSB_PORT_RANGE, which
    the daemons and sandboxes it starts inherit), so two workers never pick the same free port in
    the moment between one picking it and its daemon binding it."""
    worker = getattr(config, "workerinput", None)
    try:
        if worker is None:  # (the controller, or one process: a bad $HSB_PORT_RANGE said here, once)
            n = config.getoption("numprocesses", None)
            ports.split_range(0, n if isinstance(n, int) and n > 0 else 1)
            return
        index = int(str(worker["workerid"]).removeprefix("gw"))
        os.environ[ports.ENV] = ports.split_range(index, int(worker["workercount"]))
    except ports.PortRangeError as exc:
        raise pytest.UsageError(str(exc)) from None


def _module(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadscope` with SLOW_MODULES as one scope, and the scopes in the order the workers
    collected them (the slow ones first: pytest_collection_modifyitems)."""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class SlowOnesInTurn(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = _module(nodeid)
            return "slow" if module in SLOW_MODULES else module

    config.option.loadscopereorder = False
    return SlowOnesInTurn(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _module(item.nodeid) in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
    if hasattr(config, "workerinput"):  # (an xdist worker: the order the scheduler deals in)
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # (stable)


@pytest.fixture(autouse=True)
def _structlog_config() -> Iterator[None]:
    """structlog's configuration as it was before each test: an in-process hsbctl (CliRunner)
    sets it to warning and above, and a later test's capture_logs then saw none of the info
    events it waits for (the order of the test files decided whether a test passed)."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture
def sb(tmp_path: Path) -> Iterator[Callable[..., Awaitable[dict[str, Any]]]]:
    dirs: list[Path] = []

    async def make(**kw: Any) -> dict[str, Any]:
        d = tmp_path / f"sb{len(dirs)}"
        dirs.append(d)
        return await sandbox.aup(d, **kw)

    yield make
    for d in dirs:
        try:  # (no graceful stop needed: an active whose standby went waits up to 3 s for it)
            sandbox.down(d, timeout=0.5)
        except sandbox.SandboxError:
            pass


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    s = tmp_path / "secret"
    s.write_text("a shared secret\n")
    s.chmod(0o600)
    return s


@pytest.fixture
async def fake() -> AsyncIterator[FakeCP]:
    cp = FakeCP()
    await cp.start()
    yield cp
    await cp.stop()


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Any]:
    yield from supervised_cps(tmp_path)


@pytest.fixture(scope="module")
def hostile_sb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SB]:
    yield from module_sandbox(tmp_path_factory, "hostile")


@pytest.fixture
def witness(hostile_sb: SB) -> Iterator[Witness]:
    w = Witness(hostile_sb.addr("cp.terminal"), "T00001")
    yield w
    w.close()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    from tests.support import pg as pgsupport

    why = pgsupport.missing()
    if why is not None:
        pytest.skip(why)
    server = pgsupport.PgServer()
    yield server
    server.close()
