"""Where hsbctl finds the daemons: a small TOML file (or flags) naming the admin
addresses of the CP and both hosts and the secret file.

    cp = "127.0.0.1:7002"                  # or both CP machines: ["10.0.0.10:7002", "10.0.0.20:7002"]
    hosts = ["127.0.0.1:7103", "127.0.0.1:7203"]
    secret_file = "secret"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hsb.config import parse_addr


class TargetError(Exception):
    pass


@dataclass
class Target:
    cp: str | None = None  # the first CP named; with two CP machines hsbctl asks both (`cps`)
    hosts: list[str] = field(default_factory=list)
    secret_file: str | None = None
    cps: list[str] = field(default_factory=list)
    tls: dict[str, str] | None = None  # {ca_file, cert_file, key_file}: hsbctl's own certificate

    def validate(self) -> None:
        if not self.cp and not self.hosts:
            raise TargetError(
                "no daemons named: pass --config CTL.toml (hsbctl sandbox up prints one), set $HSB_CTL_CONFIG, write /etc/hsb/ctl.toml, or pass --cp/--host"
            )
        for a in [*self.cps, *self.hosts]:
            if a or a in self.hosts:  # (an empty host is a placeholder left in the ctl config: said, not a traceback)
                try:
                    parse_addr(a)
                except ValueError as exc:
                    raise TargetError(f"{exc}: give each daemon's admin_listen address (HOST:PORT)") from None
        if not self.secret_file:
            raise TargetError("no secret file: pass --secret-file or set secret_file in the ctl config")
        from hsb.wire.auth import SecretFileError, load_secret

        try:
            load_secret(self.secret_file)
        except SecretFileError as exc:
            raise TargetError(str(exc)) from None
        if self.tls is not None:  # the daemons speak TLS: hsbctl presents its own certificate
            from hsb.wire.tls import TLS, TLSError, TLSFiles, set_default_client

            try:
                set_default_client(TLS(TLSFiles(**self.tls)).client)
            except TLSError as exc:
                raise TargetError(str(exc)) from None


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


def load_target(config: str | None, cp: str | None, hosts: tuple[str, ...], secret_file: str | None) -> Target:
    t = Target()
    if config:
        p = Path(config)
        data = _read_config(p)
        unknown = set(data) - {"cp", "hosts", "secret_file", "tls"}
        if unknown:
            raise TargetError(f"ctl config {p}: unknown keys {sorted(unknown)}")
        if "cp" in data:
            t.cps = [a for a in _strings(p, "cp", data["cp"], 'a "HOST:PORT" string, or a list of two for two CP machines') if a]
        if "hosts" in data:
            hs = data["hosts"]
            if not isinstance(hs, list):  # one string would be taken apart into characters
                raise TargetError(f'ctl config {p}: hosts must be a list of "HOST:PORT" strings, e.g. hosts = ["10.0.0.1:7103"], not {hs!r}')
            t.hosts = _strings(p, "hosts", hs, 'a list of "HOST:PORT" strings, e.g. hosts = ["10.0.0.1:7103", "10.0.0.2:7203"]')
        sf = data.get("secret_file")
        if sf is not None:
            if not isinstance(sf, str):
                raise TargetError(f'ctl config {p}: secret_file must be a path string, e.g. secret_file = "secret", not {sf!r}')
            if sf:
                t.secret_file = str(sf if Path(sf).is_absolute() else p.parent / sf)
        tl = data.get("tls")
        if tl is not None:
            if not isinstance(tl, dict) or set(tl) != {"ca_file", "cert_file", "key_file"}:
                raise TargetError(f"ctl config {p}: tls must be a table with ca_file, cert_file and key_file")
            for k, v in tl.items():
                if not isinstance(v, str) or not v:
                    raise TargetError(f'ctl config {p}: tls.{k} must be a path string, e.g. {k} = "/etc/hsb/tls/{_TLS_EXAMPLE[k]}", not {v!r}')
            t.tls = {k: str(v if Path(v).is_absolute() else p.parent / v) for k, v in tl.items()}
    if cp:
        t.cps = [a.strip() for a in cp.split(",") if a.strip()]
    t.cp = t.cps[0] if t.cps else None
    if hosts:
        t.hosts = list(hosts)
    if secret_file:
        t.secret_file = secret_file
    t.validate()
    return t
