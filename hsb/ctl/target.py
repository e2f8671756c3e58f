"""Where hsbctl finds the daemons: a small TOML file (or flags) naming the admin
addresses of the CP and both hosts and the secret file.

    cp = "127.0.0.1:7002"                  # or both CP machines: ["10.0.0.10:7002", "10.0.0.20:7002"]
    hosts = ["127.0.0.1:7103", "127.0.0.1:7203"]
    secret_file = "secret"
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hsb.config import parse_addr
from hsb.fsutil import path_problem


def _shown(addr: str) -> str:
    """An address as the ctl config gave it, quoted when it holds what a line must not (a
    control character: the error stays one line)."""
    return addr if addr.isprintable() else repr(addr)


class TargetError(Exception):
    """The ctl config or the flags cannot be used: `errors` lists every problem, one line each, each
    with its fix (hsbctl prints each as an `error:` line)."""

    def __init__(self, errors: str | list[str]) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        super().__init__("; ".join(self.errors))


@dataclass
class Target:
    cp: str | None = None  # the first CP named; with two CP machines hsbctl asks both (`cps`)
    hosts: list[str] = field(default_factory=list)
    secret_file: str | None = None
    cps: list[str] = field(default_factory=list)
    tls: dict[str, str] | None = None  # {ca_file, cert_file, key_file}: hsbctl's own certificate

    def validate(self, errors: list[str] | None = None, said: frozenset[str] = frozenset(), config: str | None = None) -> None:
        """Every problem at once: `errors` (those found reading the ctl config `config`, about the
        keys in `said`, whose absence is then not said again) and those of the values themselves;
        raises a TargetError listing them all. Sets hsbctl's TLS client only when there is no problem."""
        errors = list(errors or [])
        if not self.cp and not self.hosts and not said & {"cp", "hosts"}:
            errors.append(
                f'ctl config {config} names no daemons: set cp = "HOST:PORT" or hosts = ["HOST:PORT", ...] in it (their admin_listen), or pass --cp/--host'
                if config  # (one was read: "pass --config" would send the operator to what they did)
                else "no daemons named: pass --config CTL.toml (hsbctl sandbox up prints one), set $HSB_CTL_CONFIG, write /etc/hsb/ctl.toml, or pass --cp/--host"
            )

        def where(key: str, flag: str) -> str:
            return f"in the ctl config {config}'s {key} (or {flag})" if config else f"with {flag}"

        if len(self.hosts) > 2:  # (a third would be judged as if the pair had three hosts)
            errors.append(
                f"{len(self.hosts)} hosts named ({', '.join(map(_shown, self.hosts))}): a pair has two; name each one's admin_listen once {where('hosts', '--host twice')}"
            )
        if len(self.cps) > 2:
            errors.append(
                f"{len(self.cps)} CPs named ({', '.join(map(_shown, self.cps))}): name one CP, or the two CP machines of docs/operations.md §18, {where('cp', '--cp A,B')}"
            )
        for a in [*self.cps, *self.hosts]:
            if a or a in self.hosts:  # (an empty host is a placeholder left in the ctl config: said, not a traceback)
                try:
                    parse_addr(a)
                except ValueError as exc:
                    errors.append(f"{exc}: give each daemon's admin_listen address (HOST:PORT)")
        if self.secret_file:
            from hsb.wire.auth import SecretFileError, load_secret

            try:
                load_secret(self.secret_file)
            except SecretFileError as exc:
                errors.append(str(exc))
        elif "secret_file" not in said:
            errors.append("no secret file: pass --secret-file or set secret_file in the ctl config")
        client = None
        if self.tls is not None:  # the daemons speak TLS: hsbctl presents its own certificate
            from hsb.wire.tls import TLS, TLSError, TLSFiles

            try:
                client = TLS(TLSFiles(**self.tls), reloads=False).client  # (read at every command: no SIGHUP to send)
            except TLSError as exc:
                errors.append(str(exc))
        if errors:
            raise TargetError(errors)
        if client is not None:
            from hsb.wire.tls import set_default_client

            set_default_client(client)


KNOWN_KEYS = ("cp", "hosts", "secret_file", "tls")
_TLS_EXAMPLE = {"ca_file": "ca.pem", "cert_file": "hsbctl.pem", "key_file": "hsbctl.key"}


def _strings(p: Path, key: str, value: object, example: str) -> list[str]:
    """`value`, a string or a list of strings, as a list; else a TargetError naming the key and a fix."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise TargetError(f"ctl config {p}: {key} must be {example}, not {value!r}")


def _read_config(p: Path) -> dict[str, object]:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TargetError(f"ctl config {p} not found; check the path (hsbctl sandbox up prints one)") from None
    except IsADirectoryError:
        raise TargetError(f"ctl config {p} is a directory; point --config (or $HSB_CTL_CONFIG) at the ctl TOML file") from None
    except PermissionError:
        raise TargetError(
            f"cannot read ctl config {p}: permission denied; run hsbctl as a user who can read it (the hsb user), or pass --config with a copy of your own"
        ) from None
    except OSError as exc:
        raise TargetError(f"cannot read ctl config {p}: {exc.strerror or exc}; check the path and its permissions") from None
    except UnicodeDecodeError:
        raise TargetError(f"ctl config {p} is not a text (UTF-8) file; point --config (or $HSB_CTL_CONFIG) at the ctl TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetError(f"ctl config {p}: {exc}") from None
    except RecursionError:
        raise TargetError(f"ctl config {p}: arrays or tables nested too deeply to read; flatten them") from None


def _path(p: Path, key: str, value: object, example: str) -> str:
    """`value`, a path string, resolved against the ctl config's folder; else a TargetError naming
    the key and a fix (`example`: the setting as it could be written)."""
    if not isinstance(value, str) or not value:
        raise TargetError(f"ctl config {p}: {key} must be a path string, e.g. {example}, not {value!r}")
    why = path_problem(value)  # (TOML allows the escapes; every open() of a NUL would fail with a traceback)
    if why is not None:
        raise TargetError(f"ctl config {p}: {key} {value!r} {why}; give a plain file path, e.g. {example}")
    return str(value if Path(value).is_absolute() else p.parent / value)


def _unknown_key(p: Path, key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key, KNOWN_KEYS, n=1)
    fix = f"did you mean {close[0]!r}? " if close else ""
    return f"ctl config {p}: unknown key {key!r}; {fix}the known keys are {', '.join(KNOWN_KEYS)} (remove or rename it)"


def _from_config(p: Path, data: dict[str, object], t: Target) -> tuple[list[str], set[str]]:
    """The ctl config's values into `t`: (every problem, the keys they are about)."""
    errors: list[str] = [_unknown_key(p, k) for k in sorted(set(data) - set(KNOWN_KEYS))]
    said: set[str] = set()

    def check(key: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except TargetError as exc:
            errors.extend(exc.errors)
            said.add(key)

    def cp() -> None:
        t.cps = [a for a in _strings(p, "cp", data["cp"], 'a "HOST:PORT" string, or a list of two for two CP machines') if a]

    def hosts() -> None:
        hs = data["hosts"]
        if not isinstance(hs, list):  # one string would be taken apart into characters
            raise TargetError(f'ctl config {p}: hosts must be a list of "HOST:PORT" strings, e.g. hosts = ["10.0.0.1:7103"], not {hs!r}')
        t.hosts = _strings(p, "hosts", hs, 'a list of "HOST:PORT" strings, e.g. hosts = ["10.0.0.1:7103", "10.0.0.2:7203"]')

    def secret_file() -> None:
        sf = data["secret_file"]
        if sf != "":  # (an empty one: as if not set)
            t.secret_file = _path(p, "secret_file", sf, 'secret_file = "secret"')

    def tls() -> None:
        tl = data["tls"]
        if not isinstance(tl, dict) or set(tl) != set(_TLS_EXAMPLE):
            got = f"keys {sorted(tl)}" if isinstance(tl, dict) else repr(tl)
            raise TargetError(
                f'ctl config {p}: tls must be a table with ca_file, cert_file and key_file, e.g. tls = {{ca_file = "ca.pem",'
                f' cert_file = "hsbctl.pem", key_file = "hsbctl.key"}}, not {got}'
            )
        problems, files = [], {}
        for k, v in tl.items():
            try:
                files[k] = _path(p, f"tls.{k}", v, f'{k} = "/etc/hsb/tls/{_TLS_EXAMPLE[k]}"')
            except TargetError as exc:
                problems += exc.errors
        if problems:
            raise TargetError(problems)
        t.tls = files

    for key, fn in (("cp", cp), ("hosts", hosts), ("secret_file", secret_file), ("tls", tls)):
        if data.get(key) is not None:
            check(key, fn)
    return errors, said


def load_target(config: str | None, cp: str | None, hosts: tuple[str, ...], secret_file: str | None) -> Target:
    """The daemons to ask, from the ctl config and the flags (which win); a TargetError listing
    every problem with either at once."""
    t = Target()
    errors: list[str] = []
    said: set[str] = set()
    if config:
        errors, said = _from_config(Path(config), _read_config(Path(config)), t)
    if cp:
        t.cps = [a.strip() for a in cp.split(",") if a.strip()]
    t.cp = t.cps[0] if t.cps else None
    if hosts:
        t.hosts = list(hosts)
    if secret_file:
        t.secret_file = secret_file
    t.validate(errors, frozenset(said), config)
    return t
