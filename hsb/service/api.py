"""The service plug-in interface: what hsbd runs for each message, and how it is loaded.

`service = "package.module:factory"` in the host config (or a built-in name: "echo",
"journal", "ledger"). The factory is called with the host name and the `[service_options]`
table (a key it has no parameter for is refused, naming the ones it takes, unless it takes
**kwargs) and returns an object with:

    async handle(terminal, message_id, data, redelivered) -> reply data
    async open_session(terminal, attrs, standby) -> None   (logon work)
    async close_session(terminal) -> None
    async close() -> None                                  (once the calls of handle have ended:
                                                            cancelled at the host's close, they
                                                            are waited for up to 5 s)

The host sends the reply and the discard of the message in one frame once `handle` returns.
`open_session` runs for active *and* standby sessions, so an application can do its logon
work ahead of time on the standby.

What `handle` raises decides what happens to the message:
- `ServiceUnavailable` (the database is down, say): the message is kept and handed to the
  service again, in order, with backoff, until it is answered; the host's status shows the
  service as failing meanwhile. Nothing is lost and nothing is answered with an error.
- `RetryTransaction` (hsb.service.db raises it: a deadlock, a serialization failure; the
  transaction was rolled back): the message is handed to the service again after a short random
  wait, marked redelivered, up to 20 times in a row, and then as for `ServiceUnavailable`
  (`ExactlyOnce.run` retries its own transactions already: this is for a service's own).
- any other exception is the application's error: the reply is "error: <ExceptionType>".
An optional `status()` method returns a dict shown in the host's status. An optional
`cp_bounds(held_bound)` is called at every registration with the CP, with the most messages the
CP holds per terminal (a service that keeps per-terminal records can check it keeps enough).
A factory whose build changes the disk (the journal's makes its file) may have
`check_options(host, **options) -> (errors, warnings)`: hsbd --check-config asks it instead of
building the service, so that a check changes nothing.
During a call of `handle`, `serving_epoch()` is the epoch the host serves at (the CP's grant):
a service that records what it processed may keep it (the journal service writes it on each
line, which orders one message's processings across both hosts).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from contextvars import ContextVar
from typing import Any, Protocol


class Service(Protocol):
    async def handle(self, terminal: str, message_id: int, data: Any, redelivered: bool) -> Any: ...

    async def open_session(self, terminal: str, attrs: dict[str, Any], standby: bool) -> None: ...

    async def close_session(self, terminal: str) -> None: ...

    async def close(self) -> None: ...


# set by the host's delivery in each terminal's task, before each call of handle
SERVING_EPOCH: ContextVar[int | None] = ContextVar("hsb_serving_epoch", default=None)


def serving_epoch() -> int | None:
    """The epoch the host served at when it handed the message in hand to `handle` (None outside
    a host's call: a service called by a test, say)."""
    return SERVING_EPOCH.get()


class ServiceError(Exception):
    """The service named in the config cannot be loaded or built."""


class ServiceUnavailable(Exception):
    """The service cannot answer now (its database is unreachable, say): retry the message later."""


class RetryTransaction(Exception):
    """The transaction lost a race (serialization failure, deadlock, busy) and was rolled back:
    run it again (hsb.service.db raises it; the host hands the message over again)."""


# RetryTransactions in a row for one message before the service counts as failing (the host's
# hand-overs and ExactlyOnce.run's own tries alike), and the random wait before the n-th retry:
# up to n times COLLISION_WAIT seconds
MAX_COLLISIONS = 20
COLLISION_WAIT = 0.002


# The built-in services' options that name a file, with their defaults: relative to the host
# config file's folder, like every path in it (hsb.host.config), not to the working directory
# (`/` under systemd). A service of one's own gets its [service_options] as written.
PATH_OPTIONS: dict[str, dict[str, str]] = {"journal": {"journal": "journal.log"}, "ledger": {"sqlite": ""}}
# the built-in services named by their factories: the same services, the same paths
BUILTIN_SPECS = {
    "hsb.service.builtin:EchoService": "echo",
    "hsb.service.builtin:JournalService": "journal",
    "hsb.service.ledger:LedgerService": "ledger",
}


BUILTIN_NAMES = tuple(BUILTIN_SPECS.values())  # ("echo", "journal", "ledger")


def path_options(spec: str) -> dict[str, str]:
    """The options of service `spec` that name a file, with their defaults (none: a service of one's own)."""
    return PATH_OPTIONS.get(BUILTIN_SPECS.get(spec.strip(), spec), {})


def builtins() -> dict[str, Any]:
    from hsb.service.builtin import EchoService, JournalService
    from hsb.service.ledger import LedgerService

    return {"echo": EchoService, "journal": JournalService, "ledger": LedgerService}


def load_service(spec: str, host: str, options: dict[str, Any]) -> Service:
    """Build the service named by `spec` ("echo", "journal" or "pkg.mod:factory")."""
    return _with_options(spec, _factory(spec), host, options)  # type: ignore[no-any-return]


def look_at_options(spec: str, host: str, options: dict[str, Any]) -> tuple[list[str], list[str]] | None:
    """hsbd --check-config's look at the service's options without building it, for a service
    whose build changes the disk (the journal's makes its file): (what the build would refuse,
    what the start will do), from the factory's `check_options(host, **options)`. None: the
    factory has none (the check builds the service, then closes it)."""
    look: Any = getattr(_factory(spec), "check_options", None)
    return None if look is None else _with_options(spec, look, host, options)


def service_problem(spec: str, host: str, options: dict[str, Any]) -> str:
    """What would stop hsbd building the service `spec` with `options`, found without building
    it ("" if nothing): its module not importable, its factory missing, an option it does not
    take (or its own `check_options` refusing one). For a tool that writes configs (hsbctl
    sandbox up) to say it before any daemon starts."""
    try:
        fn = _factory(spec)
        look: Any = getattr(fn, "check_options", None)
        if look is not None:
            refused, _ = _with_options(spec, look, host, options)
            return f"service {spec!r}: bad [service_options]: {'; '.join(refused)}" if refused else ""
        unknown = unknown_options(spec, fn, options)
    except ServiceError as exc:
        return str(exc)
    return f"service {spec!r}: bad [service_options]: {unknown}" if unknown else ""


def _with_options(spec: str, fn: Any, host: str, options: dict[str, Any]) -> Any:
    """`fn(host, **options)`; options it does not take are the config's error, said so."""
    unknown = unknown_options(spec, fn, options)
    if unknown:
        raise ServiceError(f"service {spec!r}: bad [service_options]: {unknown}")
    try:
        return fn(host, **options)
    except TypeError as exc:
        raise ServiceError(f"service {spec!r}: bad [service_options]: {exc}") from None


def unknown_options(spec: str, fn: Any, options: dict[str, Any]) -> str:
    """The keys of `options` that `fn(host, **options)` takes no parameter for, said with those
    it takes ("" when all are taken, or when fn takes **kwargs or has no signature to read):
    Python's own "got an unexpected keyword argument" names one key and none of the right ones.
    An option named as the parameter that takes the host's name is said too (Python's "got
    multiple values for argument" named neither the option nor the fix)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return ""
    if params and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and params[0].name in options:
        return (
            f"option {params[0].name!r} is the name of the factory's first parameter, which hsbd gives the"
            " host's name: rename the option (and the parameter it is for)"
        )
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return ""
    if params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
        params = params[1:]  # (it takes the host's name)
    known = [p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    unknown = [k for k in options if k not in known]
    if not unknown:
        return ""
    name = BUILTIN_SPECS.get(spec.strip(), spec)
    takes = f"takes: {', '.join(known)}" if known else "takes no options"
    return f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} ({name} {takes})"


def _factory(spec: str) -> Any:
    known = builtins()
    if spec in known:
        factory: Any = known[spec]
    else:
        mod_name, sep, attr = spec.partition(":")
        if not sep or not mod_name or not attr:
            raise ServiceError(f"service {spec!r} must be 'echo', 'journal', 'ledger' or 'package.module:factory'")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as exc:
            fix = ""
            missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
            if missing is not None and not (mod_name == missing or mod_name.startswith(missing + ".")):
                # the service's module was found; something it imports was not
                fix = f": {mod_name} itself imports {missing}, which {sys.executable} cannot find: install it into that environment"
            elif missing is not None:  # (where to put it: hsbd's own Python, not the shell's)
                fix = (
                    f": hsbd imports it with {sys.executable}: install the package into that environment, or put the folder"
                    " that holds it on hsbd's PYTHONPATH (docs/ledger.md, 'Your own service')"
                )
            raise ServiceError(f"service {spec!r}: cannot import {mod_name}: {exc}{fix}") from None
        factory = getattr(mod, attr, None)
        if factory is None:
            raise ServiceError(f"service {spec!r}: {mod_name} has no {attr!r}")
    return factory
