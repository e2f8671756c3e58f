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
            if a:
                try:
                    parse_addr(a)
                except ValueError as exc:
                    raise TargetError(str(exc)) from None
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


def load_target(config: str | None, cp: str | None, hosts: tuple[str, ...], secret_file: str | None) -> Target:
    t = Target()
    if config:
        p = Path(config)
        try:
            data = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise TargetError(f"ctl config {p} not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise TargetError(f"ctl config {p}: {exc}") from None
        unknown = set(data) - {"cp", "hosts", "secret_file", "tls"}
        if unknown:
            raise TargetError(f"ctl config {p}: unknown keys {sorted(unknown)}")
        cp_cfg = data.get("cp")
        t.cps = [str(a) for a in cp_cfg] if isinstance(cp_cfg, list) else ([str(cp_cfg)] if cp_cfg else [])
        t.hosts = list(data.get("hosts", []))
        sf = data.get("secret_file")
        if sf:
            t.secret_file = str(sf if Path(sf).is_absolute() else p.parent / sf)
        tl = data.get("tls")
        if tl is not None:
            if not isinstance(tl, dict) or set(tl) != {"ca_file", "cert_file", "key_file"}:
                raise TargetError(f"ctl config {p}: tls must be a table with ca_file, cert_file and key_file")
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
