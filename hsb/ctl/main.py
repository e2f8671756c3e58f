"""`hsbctl`: the operator's command line. It talks to daemons only over their
admin links and never imports daemon internals (hsb.cp / hsb.host)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from hsb.ctl.file_cmd import file_group
from hsb.ctl.ops_cmds import SECONDS, Bounded, say_down, say_unknown
from hsb.ctl.ops_cmds import register as register_ops
from hsb.ctl.target import Target, TargetError, load_target
from hsb.ctl.tls_cmd import tls_group

DEFAULT_CONFIG = "/etc/hsb/ctl.toml"


class Ctx:
    def __init__(self, config: str | None, cp: str | None, hosts: tuple[str, ...], secret_file: str | None) -> None:
        self.args = (config, cp, hosts, secret_file)

    def target(self) -> Target:
        try:
            return load_target(*self.args)
        except TargetError as exc:
            for line in exc.errors:  # every problem at once, one line each
                click.echo(f"error: {line}", err=True)
            sys.exit(3)  # nothing could be asked: unknown


def _default_config_there() -> bool:
    """Whether /etc/hsb/ctl.toml is there to be read: one that cannot be (a folder, no permission)
    is still taken, so that reading it says why (a one-line error) instead of 'no daemons named'."""
    try:
        os.stat(DEFAULT_CONFIG)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True
    return True


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "-c",
    envvar=["HSB_CTL_CONFIG", "HSBCTL_CONFIG"],
    # (a plain string: a folder or a missing file is said by the config's own reading, one line, exit 3)
    help="ctl TOML naming the daemons' admin addresses (default: $HSB_CTL_CONFIG, then /etc/hsb/ctl.toml; sandbox up writes one).",
)
@click.option("--cp", help="Admin address of hsbcpd, HOST:PORT (two CP machines: HOST:PORT,HOST:PORT).")
@click.option("--host", "hosts", multiple=True, help="Admin address of an hsbd, HOST:PORT (twice for the pair).")
@click.option("--secret-file", help="The shared secret (mode 600).")
@click.pass_context
def main(ctx: click.Context, config: str | None, cp: str | None, hosts: tuple[str, ...], secret_file: str | None) -> None:
    """Operate an hsb hot-standby pair."""
    from hsb import logs

    logs.setup("warning")  # library events go to stderr; stdout stays clean for --json
    if config is None and cp is None and not hosts and _default_config_there():
        config = DEFAULT_CONFIG
    ctx.obj = Ctx(config, cp, hosts, secret_file)


main.add_command(file_group)
main.add_command(tls_group)
register_ops(main, Ctx)


class CheckUsageError(click.UsageError):
    exit_code = 3  # UNKNOWN


class CheckCommand(click.Command):
    """A monitoring check (hsbctl status): a usage error of its own is UNKNOWN (3), as monitoring
    plugins have it, not click's 2, which a monitor reads as CRITICAL."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise CheckUsageError(exc.message, exc.ctx) from None


@main.command(cls=CheckCommand)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--watch", is_flag=True, help="Redraw whenever something changes.")
@click.pass_obj
def status(obj: Ctx, as_json: bool, watch: bool) -> None:
    """Status of the CP and both hosts; exit 0 established, 1 serving without a standby, 2 not serving, 3 unknown."""
    from hsb.ctl.status import run_status

    sys.exit(run_status(obj.target(), as_json, watch))


@main.command()
@click.option("--timeout", default=10.0, show_default=True, type=SECONDS, help="Seconds to wait for the CP's answer.")
@click.pass_obj
def promote(obj: Ctx, timeout: float) -> None:
    """Make the standby the active after a normal stop of the active."""
    from hsb.ctl.gather import ask, status_all
    from hsb.ctl.switchover import refused_or_unasked
    from hsb.wire.auth import load_secret

    t = obj.target()
    st = asyncio.run(status_all(t.cp, t.hosts, t.secret_file, cp_machines=t.cps))  # type: ignore[arg-type]
    sb = [h for h in st["hosts"] if h.get("reachable") and h.get("role") == "standby"]
    # the standby the CP names (a host that says standby may not be registered: the CP refused it
    # as a second standby, and it could not ask for the role), else one the CP registered
    cp_sb = st["cp"].get("standby") if st["cp"].get("reachable") else None
    named = cp_sb.get("name") if isinstance(cp_sb, dict) else None
    sb.sort(key=lambda h: (named is not None and h.get("name") != named, h.get("registered_at_cp", True) is not True))
    if not sb:
        code = say_unknown(st.get("unknown") or []) or 1
        say_down(st.get("absent") or [])
        click.echo("error: no reachable standby host to promote", err=True)
        sys.exit(code)
    ans = asyncio.run(ask(sb[0]["addr"], load_secret(t.secret_file), {"t": "promote"}))  # type: ignore[arg-type]
    failed = refused_or_unasked(ans, sb[0])
    if failed is not None:
        sys.exit(failed)
    name = sb[0]["name"]
    refusals = sb[0].get("switch_refusals")  # (a refusal from before this request is not its answer)

    async def outcome() -> tuple[bool, str]:
        deadline = time.monotonic() + timeout  # the CP decides: a deadline, not a count of polls that may each wait
        while True:
            left = max(0.05, min(1.0, deadline - time.monotonic()))  # a poll does not outlast the deadline
            st = await status_all(t.cp, t.hosts, t.secret_file, timeout=left, cp_machines=t.cps)  # type: ignore[arg-type]
            h: dict[str, Any] = next((x for x in st["hosts"] if x.get("name") == name), {})
            if h.get("role") == "active":
                return True, f"{name} is the active host now (epoch {h.get('epoch')})"
            now = h.get("switch_refusals")
            refused = now > refusals if isinstance(now, int) and isinstance(refusals, int) else "refused" in str(h.get("last_error") or "")
            if refused:
                return False, "promote refused: " + str(h.get("last_error")).split("refused by the CP: ", 1)[-1]
            if time.monotonic() >= deadline:
                return False, f"{name} did not become active within {timeout:g} s; see 'hsbctl status'"
            await asyncio.sleep(0.1)

    ok, msg = asyncio.run(outcome())
    click.echo(msg if ok else f"error: {msg}", err=not ok)
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--timeout", default=60.0, show_default=True, type=SECONDS, help="Seconds to wait for hot standby again.")
@click.pass_obj
def switchover(obj: Ctx, yes: bool, timeout: float) -> None:
    """Planned role swap with no terminal disconnect (needs an established standby)."""
    from hsb.ctl.switchover import run_switchover

    sys.exit(run_switchover(obj.target(), yes, timeout))


@main.group()
def sandbox() -> None:
    """A complete system on loopback (CP, host A active, host B standby)."""


def _sandbox_call(fn: Any, *args: Any, **kw: Any) -> Any:
    """A sandbox operation; its SandboxError is one line on stderr and exit 1."""
    from hsb.ctl.sandbox import SandboxError
    from hsb.takeover.errors import TakeoverError

    try:
        return fn(*args, **kw)
    except SandboxError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except (OSError, TakeoverError) as exc:  # (its folder, the takeover file: a full disk, say)
        why = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.strerror and exc.filename else str(exc)
        click.echo(f"error: {why}; check the sandbox's folder (free space, permissions) or pick another", err=True)
        sys.exit(1)


class ServiceSpec(click.ParamType):  # type: ignore[type-arg, unused-ignore]  # (generic from click 8.5)
    """A service for the sandbox: a built-in one's name, or one's own as MODULE:FACTORY."""

    name = "echo|journal|ledger|MODULE:FACTORY"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from hsb.service.api import BUILTIN_NAMES

        mod, _, attr = str(value).partition(":")
        if value in BUILTIN_NAMES or (mod and attr.isidentifier() and all(p.isidentifier() for p in mod.split("."))):
            return str(value)
        self.fail(f"{value!r} is not echo, journal, ledger or a service of your own as MODULE:FACTORY (e.g. myapp.service:Orders)", param, ctx)


def service_options(given: tuple[str, ...]) -> dict[str, Any]:
    """--service-option KEY=VALUE entries as [service_options]: VALUE read as TOML (3, 1.5, true,
    "text"), anything else taken as text (a DSN, a path)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in given:
        key, eq, raw = item.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE (e.g. dsn=postgresql://hsb@/hsb)", param_hint="--service-option")
        if key in out:
            raise click.BadParameter(f"{key!r} is given twice: give each option once", param_hint="--service-option")
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


@sandbox.command("up")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False), help="Folder for configs, secret, takeover file and logs.")
@click.option("--terminals", default=200, show_default=True, type=click.IntRange(1, 1_000_000))
@click.option(
    "--service",
    type=ServiceSpec(),
    default="echo",
    show_default=True,
    help="echo, journal, ledger, or a service of your own as MODULE:FACTORY (importable by this Python: docs/ledger.md).",
)
@click.option(
    "--service-option",
    "service_option",
    multiple=True,
    metavar="KEY=VALUE",
    help='One [service_options] entry for both hosts (VALUE as TOML: 3, true, "text"; else taken as text). Repeatable.',
)
@click.option("--dsn", default=None, metavar="DSN", help="ledger: a PostgreSQL database both hosts use (default: SQLite in --dir).")
@click.option("--tls", is_flag=True, help="TLS on every link, terminals' too: a CA and certificates in D/tls (hsbctl tls init).")
@click.option("--conventional", is_flag=True, help="fast_switch = false: no standby sessions (the classic hot standby).")
@click.option(
    "--logon-ms", default=0.0, show_default=True, type=Bounded(0, 3_600_000, False, "milliseconds"), help="Simulated logon work per session open."
)
@click.option("--timeout", default=60.0, show_default=True, type=SECONDS, help="Seconds to wait for hot standby.")
@click.option("--supervise", is_flag=True, help="hsbcpd under its master process (hsbcpd --supervise): a CP that dies is started again at once.")
def sandbox_up(
    dir_: str,
    terminals: int,
    service: str,
    service_option: tuple[str, ...],
    dsn: str | None,
    tls: bool,
    conventional: bool,
    logon_ms: float,
    timeout: float,
    supervise: bool,
) -> None:
    """Start the sandbox and wait for hot standby; print one JSON object."""
    from hsb.ctl.sandbox import up
    from hsb.service.api import BUILTIN_NAMES

    if dsn and service != "ledger":
        raise click.UsageError("--dsn is for --service ledger (a service of your own: --service-option dsn=...)")
    if logon_ms and service not in BUILTIN_NAMES:
        raise click.UsageError("--logon-ms is an option of the built-in services (yours: --service-option logon_ms=... if it takes one)")
    options = service_options(service_option)
    info = _sandbox_call(
        up,
        Path(dir_),
        terminals=terminals,
        service=service,
        conventional=conventional,
        timeout=timeout,
        logon_ms=logon_ms,
        dsn=dsn,
        tls=tls,
        supervise=supervise,
        service_options=options or None,
    )
    click.echo(json.dumps(info))


@sandbox.command("down")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False))
def sandbox_down(dir_: str) -> None:
    """Stop every process the sandbox started (removes nothing)."""
    from hsb.ctl.sandbox import down

    stopped = _sandbox_call(down, Path(dir_), ordered=True)  # the standby, the active, then the CP
    click.echo(json.dumps({"stopped": stopped}))


@sandbox.command("start-host")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False))
@click.argument("name", type=click.Choice(["host-a", "host-b"]))
@click.option("--role", type=click.Choice(["active", "standby"]), required=True)
def sandbox_start_host(dir_: str, name: str, role: str) -> None:
    """(Re)start one host of the sandbox, e.g. the old active as standby after a failover."""
    from hsb.ctl.sandbox import start_host, wait_started

    pid = _sandbox_call(start_host, Path(dir_), name, role)
    data = _sandbox_call(lambda: asyncio.run(wait_started(Path(dir_), name, pid)))
    # (the role it holds: one started as active while the other host is rejoins as the standby)
    click.echo(json.dumps({"name": name, "role": data.get("role", role), "started_as": role, "pid": pid, "state": data.get("state")}))


@sandbox.command("start-cp")
@click.option("--dir", "dir_", required=True, type=click.Path(file_okay=False))
def sandbox_start_cp(dir_: str) -> None:
    """(Re)start the sandbox's hsbcpd on its journal (after it crashed or was killed)."""
    from hsb.ctl.sandbox import start_cp, wait_started

    pid = _sandbox_call(start_cp, Path(dir_))
    _sandbox_call(lambda: asyncio.run(wait_started(Path(dir_), "hsbcpd", pid)))
    click.echo(json.dumps({"name": "hsbcpd", "pid": pid}))


from hsb.cli import add_version_everywhere  # noqa: E402  (after every command is defined)

add_version_everywhere(main, "hsbctl")
