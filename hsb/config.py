"""Shared config machinery: TOML loading and one declarative schema per daemon.

Each daemon defines its schema as pydantic models with `extra="forbid"` (so a
typo is an error); `load()` reports every error at once, each with its key path.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import pwd
import re
import tomllib
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

from hsb.fsutil import path_problem

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced from strings."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


@dataclass(frozen=True)
class Rule:
    """A check across keys of one section: `check(values)` says its problems, one each. It runs
    when every key of `needs` validated fine (a key not in `needs` may be missing from `values`)."""

    needs: tuple[str, ...]
    check: Callable[[Mapping[str, Any]], list[str]]


def rule_problems(rules: tuple[Rule, ...], values: Mapping[str, Any]) -> list[str]:
    return [p for r in rules if all(k in values for k in r.needs) for p in r.check(values)]


class Ruled(Strict):
    """A section with rules across its keys (`RULES`): checked once its keys are valid, all of them
    at once (one line, joined); on the raw values of the valid keys when another key failed
    (`Partial.rule_lines`), for then this check never runs."""

    RULES: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo) -> Ruled:
        if (info.context or {}).get("rules", True):
            problems = rule_problems(self.RULES, {k: getattr(self, k) for k in type(self).model_fields})
            if problems:
                raise ValueError("; ".join(problems))
        return self


def section_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model of `model`'s section `name` (`X` of a field `X | None`), or None."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    for t in (field.annotation, *get_args(field.annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


class Partial:
    """A config that failed its schema: its raw data and which keys failed, so that the checks of
    what validated fine still run (every error at once; a check whose keys failed is skipped)."""

    def __init__(self, data: dict[str, Any], model: type[BaseModel], failed: list[tuple[Any, ...]], base: Path) -> None:
        self.data = data
        self.model = model
        self.failed = failed  # the key path of each error
        self.base = base

    def failed_under(self, *loc: Any) -> bool:
        """A key at or under `loc` failed (("host", "name"): that key; ("host",): the section or a key of it)."""
        return any(f[: len(loc)] == loc for f in self.failed)

    def key_failed_in(self, section: str) -> bool:
        """A key of `section` failed (so its own checks across keys never ran)."""
        return any(len(f) > 1 and f[0] == section for f in self.failed)

    def values(self, section: str) -> dict[str, Any]:
        """The keys of `section` that validated fine: their raw values (paths not resolved), or
        their defaults when not given; {} for a section that is not a table."""
        raw, model = self.data.get(section), section_model(self.model, section)
        if not isinstance(raw, dict) or model is None:
            return {}
        out = {}
        for name, field in model.model_fields.items():
            if self.failed_under(section, name) or (name not in raw and field.is_required()):
                continue
            value = raw[name] if name in raw else field.get_default(call_default_factory=True)
            out[name] = float(value) if field.annotation is float and type(value) is int else value
        return out

    def section(self, name: str) -> BaseModel | None:
        """Section `name` validated on its own (paths resolved) but for its rules across keys, or
        None: not given, not a table, a key of it failed."""
        model = section_model(self.model, name)
        if model is None or self.key_failed_in(name) or not isinstance(self.data.get(name), dict):
            return None
        try:
            return model.model_validate(self.data[name], context={"base": self.base, "rules": False})
        except ValidationError:
            return None

    def rule_lines(self) -> list[str]:
        """Each section's rules over its valid keys, where another key of it failed: the line its
        own check would have said."""
        out = []
        for name in self.model.model_fields:
            model = section_model(self.model, name)
            if model is not None and issubclass(model, Ruled) and self.key_failed_in(name):
                problems = rule_problems(model.RULES, self.values(name))
                if problems:
                    out.append(f"{name}: " + "; ".join(problems))
        return out


class ConfigError(Exception):
    """A config file could not be used; `errors` lists every problem, one line each; `partial`:
    the config as read when it failed its schema (None: it could not be read)."""

    def __init__(self, path: str, errors: list[str], partial: Partial | None = None) -> None:
        self.path = path
        self.errors = errors
        self.partial = partial
        super().__init__(f"{path}: " + "; ".join(errors))

    def lines(self) -> list[str]:
        return [f"{self.path}: {e}" for e in self.errors]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def key_text(key: str) -> str:
    """A key as TOML writes it: bare, or quoted with what is not printable escaped (a key given
    as "a\\nb" must not break its error's line)."""
    if _BARE_KEY.fullmatch(key):
        return key
    out = "".join(c if c.isprintable() and c not in '"\\' else _escape(c) for c in key)
    return f'"{out}"'


def _escape(c: str) -> str:
    if c in '"\\':
        return "\\" + c
    return f"\\u{ord(c):04X}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08X}"


def one_line(text: str) -> str:
    """`text` with its line breaks and control characters escaped: a line of an error that came
    from elsewhere (a service's own exception) stays one line."""
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in text)


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + key_text(str(p)))
    return "".join(parts) or "(top level)"


def _err_loc(err: Any) -> tuple[Any, ...]:
    return tuple(p for p in err["loc"] if p not in ("function-after",))


def format_validation(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = _err_loc(err)
        kind = err["type"]
        if kind == "extra_forbidden":
            out.append(f"{_loc(loc)}: unknown key (typo?); remove it or check the config reference")
        elif kind == "missing":
            out.append(f"{_loc(loc)}: required key is missing")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if kind in _TYPE_KINDS and "input" in err:  # (what was written, and the fix for a number or boolean in quotes)
                msg += _given(kind, err["input"])
            out.append(f"{_loc(loc)}: {msg}")
    return out


_TYPE_KINDS = ("int_type", "float_type", "bool_type")


def _given(kind: str, value: Any) -> str:
    """What a key of the wrong kind holds, for its error: `, not the string '256': write it
    without the quotes` (values are not read from strings); `, not 2.5`; `, not a table`."""
    if isinstance(value, str):
        said = f", not the string {one_line(repr(value[:40]))}"
        return said + (": write it without the quotes" if _reads_as(kind, value.strip()) else "")
    if isinstance(value, bool):
        return f", not {str(value).lower()}"
    if isinstance(value, int | float):
        return f", not {value!r}"
    if isinstance(value, dict):
        return ", not a table"
    return ", not an array" if isinstance(value, list) else f", not a {type(value).__name__}"


def _reads_as(kind: str, text: str) -> bool:
    """`text` without its quotes is a value of the kind the key wants (a finite number)."""
    if kind == "bool_type":
        return text in ("true", "false")
    try:
        return math.isfinite(int(text) if kind == "int_type" else float(text))
    except ValueError:
        return False


def load(path: str | Path, model: type[M], *, overrides: dict[str, Any] | None = None) -> M:
    """Read TOML at `path` and check it against `model`; raise ConfigError with every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found; pass an existing file with --config"]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), ["is a directory, not a config file; pass the TOML file with --config"]) from None
    except PermissionError as exc:
        raise ConfigError(str(p), [_unreadable(p, exc)]) from None
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read: {exc.strerror}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(p), ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(p), [f"TOML syntax error: {exc}"]) from None
    except RecursionError:  # (tomllib recurses per level: thousands of them)
        raise ConfigError(str(p), ["arrays or tables nested too deeply to read; flatten them"]) from None
    if overrides:
        data.update(overrides)
    return validate(data, model, str(p), base=p.parent)


def _unreadable(p: Path, exc: OSError) -> str:
    """A config this process may not read (a file, or a folder on its way, of mode 600 or 750
    owned by root): who reads it, and the fix. The shipped units run the daemons as `hsb`."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # (a uid with no name: a container's)
        user = f"uid {os.geteuid()}"
    return (
        f"cannot read: {exc.strerror} (this process runs as user {user}); let that user read the file and its folders,"
        f" e.g. 'chgrp hsb {p} && chmod 640 {p}' for the hsb user of the shipped units (docs/operations.md §2)"
    )


def validate(data: dict[str, Any], model: type[M], source: str = "<config>", base: Path | None = None) -> M:
    base = base or Path.cwd()
    try:
        return model.model_validate(data, context={"base": base})
    except ValidationError as exc:
        errors = format_validation(exc)
        part = Partial(data, model, [_err_loc(e) for e in exc.errors(include_url=False)], base)
        # a check across keys does not run once one of them failed: each section's rules run on
        # its valid keys, and the model's checks of itself as a whole on its valid parts
        # (`checks_despite`: its problems, as one line, as its own check would have said them),
        # so that every error comes at once. (Every error of the whole model: its check ran.)
        despite: Any = getattr(model, "checks_despite", None) if any(part.failed) else None
        if any(part.failed):
            errors += [line for line in part.rule_lines() if line not in errors]
        if despite is not None:
            try:
                problems = despite(part)
                line = "(top level): " + "; ".join(problems)
                if problems and line not in errors:
                    errors.append(line)
            except Exception:  # noqa: BLE001, S110 - (a check on data that failed its schema: what it cannot read is reported already)
                pass
        raise ConfigError(source, errors, part) from None


def resolve_path(value: str, info: Any) -> str:
    """Resolve a relative path in a config against the config file's folder."""
    return resolve_under(value, (info.context or {}).get("base") if info is not None else None)


def resolve_under(value: str, base: Path | str | None) -> str:
    """A config's path `value` relative to `base` (the config file's folder) unless absolute."""
    p = Path(value)
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return str(p)


def parse_addr(value: str) -> tuple[str, int]:
    """'host:port' → (host, port); '[::1]:7000' works too."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]:")
    else:
        host, _, port = value.rpartition(":")
        if ":" in host:  # "fd00::2" (its port forgotten) would be host "fd00:", port 2
            raise ValueError(f"{value!r} is not HOST:PORT: write an IPv6 address in brackets, [ADDR]:PORT")
    if not host or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{value!r} is not HOST:PORT")
    name = host.split("%", 1)[0]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        try:  # a name the resolver cannot even encode (an empty label, one over 63 characters)
            name.encode("idna")
        except UnicodeError:
            raise ValueError(f"{value!r}: {host!r} is not a valid host name (an empty label, or one over 63 characters)") from None
    return host, int(port)


def address_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address of 'host:port' (an IPv6 scope dropped: fe80::1%eth0), or None for a name."""
    host, _ = parse_addr(value)
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _host_key(host: str) -> str:
    """A listening host as one spelling (an IP in its normal form; "" for any address)."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host.lower()
    return "" if ip.is_unspecified else str(ip)


def same_addr(a: str, b: str) -> bool:
    """Two 'host:port' that name one address ('[::1]:7' and '[0:0::1]:7'; names compared as text)."""
    (ha, pa), (hb, pb) = parse_addr(a), parse_addr(b)
    return pa == pb and _host_key(ha) == _host_key(hb)


def listen_clashes(listens: dict[str, str]) -> list[str]:
    """Listeners of one daemon (key: 'host:port', '' for none) that would take the same port: the
    same address, or one of them any address (0.0.0.0, [::]). Port 0 (any free one) never clashes."""
    given = [(k, parse_addr(v)) for k, v in listens.items() if v]
    out = []
    for i, (ka, (ha, pa)) in enumerate(given):
        for kb, (hb, pb) in given[i + 1 :]:
            if pa and pa == pb and ("" in (_host_key(ha), _host_key(hb)) or _host_key(ha) == _host_key(hb)):
                out.append(f"{ka} and {kb} both listen on port {pa} ({listens[ka]}, {listens[kb]}): give each its own port")
    return out


def _addr(v: str) -> str:
    parse_addr(v)
    return v


def _opt_addr(v: str) -> str:
    return _addr(v) if v else v


def _connect_addr(v: str) -> str:
    if parse_addr(v)[1] == 0:
        raise ValueError(f"{v!r} has port 0, which nothing listens on: give the port the other side listens on")
    return v


def plain_path(v: str) -> str:
    """`v`, a path with no NUL, control character or line break (TOML allows their escapes) and
    not too long for Linux, else a ValueError saying so (hsb.fsutil.path_problem)."""
    why = path_problem(v)
    if why is not None:
        raise ValueError(f"{why}: give a plain file path")
    return v


def _path(v: str, info: ValidationInfo) -> str:
    return plain_path(resolve_path(v, info))  # (resolved: a relative path's length is the folder's too)


def _opt_path(v: str, info: ValidationInfo) -> str:
    return _path(v, info) if v else v


# Field types shared by the daemons' schemas.
Addr = Annotated[str, AfterValidator(_addr)]  # "host:port"
ConnectAddr = Annotated[str, AfterValidator(_addr), AfterValidator(_connect_addr)]  # "host:port" to connect to: port 1..65535
OptAddr = Annotated[str, AfterValidator(_opt_addr)]  # "host:port", or "" for off
ConfigPath = Annotated[str, AfterValidator(_path)]  # relative to the config file's folder
OptConfigPath = Annotated[str, AfterValidator(_opt_path)]  # the same, or "" for none


class TLSLinks(Ruled):
    """`[tls]` of hsbd (docs/tls.md): mutual TLS on the host, peer and admin links with these files."""

    ca_file: ConfigPath
    cert_file: ConfigPath
    key_file: ConfigPath
    # the least TLS version this daemon's listeners take: "1.2" lets a client resume a session
    # by its id after a SIGHUP changed the certificates, skipping them for up to 300 s
    min_version: Literal["1.2", "1.3"] = "1.3"

    def files(self) -> Any:
        from hsb.wire.tls import TLSFiles

        return TLSFiles(self.ca_file, self.cert_file, self.key_file, self.min_version)


class TLSSection(TLSLinks):
    """`[tls]` of hsbcpd: the links as on hsbd; `terminals = true` puts TLS on the terminal
    listener too (the terminals connect to the CP only, so hsbd has no such key)."""

    terminals: bool = False
    # the CAs whose terminal certificates the terminal listener takes ("": those of ca_file).
    # Trusted there only: a terminal CA listed in ca_file would let a terminal's certificate
    # onto the host and admin links too
    terminal_ca_file: OptConfigPath = ""

    RULES = (
        Rule(
            ("terminal_ca_file", "terminals"),
            lambda v: (
                ["terminal_ca_file is set but terminals = false: set terminals = true, or remove terminal_ca_file"]
                if v["terminal_ca_file"] and not v["terminals"]
                else []
            ),
        ),
    )

    def files(self) -> Any:
        from hsb.wire.tls import TLSFiles

        return TLSFiles(self.ca_file, self.cert_file, self.key_file, self.min_version, self.terminal_ca_file)


def toml_value(v: Any) -> str:
    """A Python value as a TOML value (for configs the tools generate)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_section(name: str, values: dict[str, Any]) -> list[str]:
    """Lines of one TOML table ("[name]" or "[[name]]" when name is "[name]")."""
    return [f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in values.items()] + [""]
