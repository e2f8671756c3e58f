"""Shared config machinery: TOML loading and one declarative schema per daemon.

Each daemon defines its schema as pydantic models with `extra="forbid"` (so a
typo is an error); `load()` reports every error at once, each with its key path.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, ValidationInfo, model_validator

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors, values are not coerced from strings."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)


class ConfigError(Exception):
    """A config file could not be used; `errors` lists every problem, one line each."""

    def __init__(self, path: str, errors: list[str]) -> None:
        self.path = path
        self.errors = errors
        super().__init__(f"{path}: " + "; ".join(errors))

    def lines(self) -> list[str]:
        return [f"{self.path}: {e}" for e in self.errors]


def _loc(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts) or "(top level)"


def format_validation(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("function-after",))
        kind = err["type"]
        if kind == "extra_forbidden":
            out.append(f"{_loc(loc)}: unknown key (typo?); remove it or check the config reference")
        elif kind == "missing":
            out.append(f"{_loc(loc)}: required key is missing")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            out.append(f"{_loc(loc)}: {msg}")
    return out


def load(path: str | Path, model: type[M], *, overrides: dict[str, Any] | None = None) -> M:
    """Read TOML at `path` and check it against `model`; raise ConfigError with every problem."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(p), ["file not found; pass an existing file with --config"]) from None
    except IsADirectoryError:
        raise ConfigError(str(p), ["is a directory, not a config file; pass the TOML file with --config"]) from None
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


def validate(data: dict[str, Any], model: type[M], source: str = "<config>", base: Path | None = None) -> M:
    try:
        return model.model_validate(data, context={"base": base or Path.cwd()})
    except ValidationError as exc:
        errors = format_validation(exc)
        # checks of the model as a whole do not run once a part of it failed: the model says
        # what they find all the same (`checks_despite`: its problems, as one line, as its own
        # check would have said them), so that every error comes at once
        despite = getattr(model, "checks_despite", None)
        if despite is not None:
            try:
                problems = despite(data)
                line = "(top level): " + "; ".join(problems)
                if problems and line not in errors:
                    errors.append(line)
            except Exception:  # noqa: BLE001, S110 - (a check on data that failed its schema: what it cannot read is reported already)
                pass
        raise ConfigError(source, errors) from None


def resolve_path(value: str, info: Any) -> str:
    """Resolve a relative path in a config against the config file's folder."""
    base = (info.context or {}).get("base") if info is not None else None
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


def _no_nul(v: str) -> str:
    if "\0" in v:  # (TOML allows the escape; every open() of it would fail with a traceback)
        raise ValueError("contains a NUL character: give a plain file path")
    return v


def _path(v: str, info: ValidationInfo) -> str:
    return resolve_path(_no_nul(v), info)


def _opt_path(v: str, info: ValidationInfo) -> str:
    return resolve_path(_no_nul(v), info) if v else v


# Field types shared by the daemons' schemas.
Addr = Annotated[str, AfterValidator(_addr)]  # "host:port"
ConnectAddr = Annotated[str, AfterValidator(_addr), AfterValidator(_connect_addr)]  # "host:port" to connect to: port 1..65535
OptAddr = Annotated[str, AfterValidator(_opt_addr)]  # "host:port", or "" for off
ConfigPath = Annotated[str, AfterValidator(_path)]  # relative to the config file's folder
OptConfigPath = Annotated[str, AfterValidator(_opt_path)]  # the same, or "" for none


class TLSLinks(Strict):
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

    @model_validator(mode="after")
    def _terminal_ca_needs_terminals(self) -> TLSSection:
        if self.terminal_ca_file and not self.terminals:
            raise ValueError("terminal_ca_file is set but terminals = false: set terminals = true, or remove terminal_ca_file")
        return self

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
