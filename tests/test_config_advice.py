"""The advice of the config errors can be followed: each value a rule's line tells the operator to
set is inside its key's bounds, and setting the key just past it gives a config that passes. At
the schemas' edges (each key at its least and most, the margins' edges, values no :g spells) and
for the ctl config and the ledger's [service_options], whose lines named a fix that was no fix."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from hsb.config import ConfigError, validate
from hsb.cp.config import CPConfig
from hsb.ctl.target import TargetError, load_target
from hsb.host.config import HostConfig
from hsb.service.ledger import option_problems
from tests.test_config_edges import cp_data, host_data

STEP = 1e-6  # "just past" the value a line names


def under(x: str, least: float) -> float:
    """Just below `x` (but not below the key's `least`, where what is left of the step is half the way)."""
    return max(float(x) - STEP, (float(x) + least) / 2)


def over(x: str, most: float) -> float:
    return min(float(x) + STEP, (float(x) + most) / 2)


def cp_line(tmp_path: Path, timeout: float, lease: float) -> str | None:
    try:
        validate(cp_data(host_timeout=timeout, host_lease=lease), CPConfig, base=tmp_path)
    except ConfigError as exc:
        (line,) = exc.errors
        return line
    return None


def lease_fixes(line: str, timeout: float, lease: float) -> list[tuple[float, float]]:
    """The (host_timeout, host_lease) each fix of the lease rule's line leads to."""
    out = [(timeout, under(m, 0.01)) for m in re.findall(r"lower cp\.host_lease below ([0-9.]+)", line)]
    out += [(over(m, 3600), lease) for m in re.findall(r"raise cp\.host_timeout above ([0-9.]+)(?! and)", line)]
    # (a raise with no number: as far as the schema goes)
    out += [(3600.0, lease) for _ in re.findall(r"raise cp\.host_timeout(?! above| and)", line)]
    if "the defaults: 0.5 and 0.35" in line:
        out.append((0.5, 0.35))
    return out


TIMEOUTS = [0.05, 0.1, 0.11, 0.1100004, 0.111, 0.12, 0.3, 0.5, 1234.56789, 3599.9, 3600.0]
LEASES = [0.01, 0.02, 0.35, 0.4, 5.0, 1234.5, 3599.8, 3599.9, 3599.95, 3600.0]


@pytest.mark.parametrize("timeout", TIMEOUTS)
@pytest.mark.parametrize("lease", LEASES)
def test_every_fix_of_the_lease_rule_gives_a_config_that_passes(tmp_path: Path, timeout: float, lease: float) -> None:
    """Was: host_timeout 3600 (its most) with a lease above 3599.9 told to "raise cp.host_timeout";
    1234.56789 told to lower the lease "below 1234.47" (a :g rounded up: 1234.468 fails);
    0.1100004 with a lease of 0.02 told to raise host_timeout "above 0.11", which it is, as no
    lease would fit (0.01 does); 0.05 with a lease of 5 told to raise it above 0.11 (0.12 fails)."""
    line = cp_line(tmp_path, timeout, lease)
    if line is None:
        return
    fixes = lease_fixes(line, timeout, lease)
    assert fixes, line
    for t, le in fixes:
        assert 0.05 <= t <= 3600 and 0.01 <= le <= 3600, (t, le, line)
        assert cp_line(tmp_path, t, le) is None, (t, le, line)


def test_the_lease_rules_line_says_the_values_as_written(tmp_path: Path) -> None:
    line = cp_line(tmp_path, 1234.56789, 1234.5)
    assert line is not None and "host_timeout (1234.56789 s)" in line and "below 1234.46789 " in line, line


@pytest.mark.parametrize(
    ("timeout", "interval"), [(0.05, 0.025), (0.05, 0.03), (0.2, 0.1), (0.7, 0.35), (1.0, 0.55), (100.0, 60.0), (0.3, 12.3456789)]
)
def test_the_heartbeat_rule_says_a_fix_that_passes(tmp_path: Path, timeout: float, interval: float) -> None:
    """Was: the problem only ("must be greater than two heartbeat intervals"), no fix."""
    with pytest.raises(ConfigError) as ei:
        validate(host_data(heartbeat_timeout=timeout, heartbeat_interval=interval), HostConfig, base=tmp_path)
    (line,) = ei.value.errors
    fixes = [(over(m, 600), interval) for m in re.findall(r"raise host\.heartbeat_timeout above ([0-9.]+)s", line)]
    fixes += [(timeout, under(m, 0.01)) for m in re.findall(r"lower host\.heartbeat_interval below ([0-9.]+)s", line)]
    assert len(fixes) == 2, line
    for t, i in fixes:
        assert 0.05 <= t <= 600 and 0.01 <= i <= 60, (t, i, line)
        validate(host_data(heartbeat_timeout=t, heartbeat_interval=i), HostConfig, base=tmp_path)


@pytest.mark.parametrize("key", ["command_timeout", "tx_idle_timeout", "busy_timeout", "logon_ms", "keep_hours"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_ledger_option_not_finite_is_told_so(key: str, value: float) -> None:
    """Was: "command_timeout must be a number of seconds above 0, not inf" (inf is above 0),
    "keep_hours must be a number, not inf"."""
    (line,) = option_problems({key: value})
    assert line.startswith(f"{key} must be a finite number"), line


@pytest.mark.parametrize("text", ['cp = ""\nhosts = []\n', ""])
def test_a_ctl_config_naming_no_daemons_is_told_to_name_them(tmp_path: Path, text: str) -> None:
    """Was: "no daemons named: pass --config CTL.toml ...", to an operator who did."""
    secret = tmp_path / "secret"
    secret.write_text("x" * 44)
    secret.chmod(0o600)
    cfg = tmp_path / "ctl.toml"
    cfg.write_text(text + 'secret_file = "secret"\n')
    with pytest.raises(TargetError) as ei:
        load_target(str(cfg), None, (), None)
    (line,) = ei.value.errors
    assert line.startswith(f"ctl config {cfg} names no daemons: set cp = ") and "pass --config" not in line, line
    assert load_target(str(cfg), "127.0.0.1:7002", (), None).cp == "127.0.0.1:7002"
