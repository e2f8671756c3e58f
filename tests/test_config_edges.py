"""Edges of the config schemas, in-process (no daemon started): the bounds, defaults and rules
across keys of hsbcpd's [cp] and [tls] and hsbd's [host] and [takeover] at their exact limits,
the address checks (port range, IPv6 spellings, wildcard clashes), the wording of what is
reported (key paths, the fix's numbers), and that a config whose schema failed still has its
rules on the valid keys reported once each (hsb.config.validate). Each test pins a behaviour
a one-line change of hsb/config.py, hsb/cp/config.py or hsb/host/config.py could break unseen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.config import ConfigError, TLSLinks, TLSSection, load, validate
from hsb.cp.config import CPConfig, CPSection
from hsb.host.config import HostConfig
from hsb.wire.framing import LOGIN_MAX


def cp_data(**cp: Any) -> dict[str, Any]:
    return {"cp": {"secret_file": "secret", **cp}, "terminals": [{"name": "T1"}]}


def host_data(terminals: int = 1, takeover: dict[str, Any] | None = None, **host: Any) -> dict[str, Any]:
    h = {
        "name": "a",
        "peer": "127.0.0.1:7101",
        "peer_listen": "127.0.0.1:7102",
        "cp": "127.0.0.1:7001",
        "admin_listen": "127.0.0.1:7103",
        "secret_file": "secret",
    }
    return {
        "host": {**h, **host},
        "takeover": {"path": "t.dat", "records": 64, **(takeover or {})},
        "terminals": [{"name": f"T{i}"} for i in range(terminals)],
    }


def cp_errors(tmp_path: Path, **cp: Any) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        validate(cp_data(**cp), CPConfig, base=tmp_path)
    return ei.value.errors


def host_errors(tmp_path: Path, data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        validate(data, HostConfig, base=tmp_path)
    return ei.value.errors


def cp_ok(tmp_path: Path, **cp: Any) -> CPSection:
    return validate(cp_data(**cp), CPConfig, base=tmp_path).cp


# ---------------------------------------------------------------- [cp]: defaults and bounds


def test_the_cp_defaults_an_operator_relies_on(tmp_path: Path) -> None:
    c = cp_ok(tmp_path)
    assert (c.host_timeout, c.host_lease, c.resume_window, c.takeover_stale) == (0.5, 0.35, 60.0, 0.3)
    assert (c.journal_segment_kib, c.durability, c.takeover) == (1024, "fsync", "at_start")
    assert c.journal == str(tmp_path / "cp-journal")


@pytest.mark.parametrize(
    ("key", "low", "below"),
    [
        ("host_lease", 0.01, 0.005),
        ("takeover_stale", 0.2, 0.15),
        ("held_bytes", LOGIN_MAX, LOGIN_MAX - 1),
        ("journal_segment_kib", 16, 8),
    ],
)
def test_cp_lower_bounds_are_exact(tmp_path: Path, key: str, low: float, below: float) -> None:
    # (host_timeout raised so that the lease rule never speaks for these)
    assert getattr(cp_ok(tmp_path, host_timeout=10.0, **{key: low}), key) == low
    errors = cp_errors(tmp_path, host_timeout=10.0, **{key: below})
    assert len(errors) == 1 and errors[0].startswith(f"cp.{key}: Input should be greater than or equal to"), errors


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("held_bound", "256", "cp.held_bound: Input should be a valid integer, not the string '256': write it without the quotes"),
        ("host_timeout", "0.5", "cp.host_timeout: Input should be a valid number, not the string '0.5': write it without the quotes"),
        ("tickle_acks", "true", "cp.tickle_acks: Input should be a valid boolean, not the string 'true': write it without the quotes"),
        ("held_bound", "abc", "cp.held_bound: Input should be a valid integer, not the string 'abc'"),
        ("host_timeout", "inf", "cp.host_timeout: Input should be a valid number, not the string 'inf'"),
        ("held_bound", 2.5, "cp.held_bound: Input should be a valid integer, not 2.5"),
        ("held_bound", True, "cp.held_bound: Input should be a valid integer, not true"),
        ("held_bound", [1], "cp.held_bound: Input should be a valid integer, not an array"),
        ("held_bound", {"a": 1}, "cp.held_bound: Input should be a valid integer, not a table"),
    ],
)
def test_a_value_of_the_wrong_kind_is_named_with_the_fix(tmp_path: Path, key: str, value: Any, said: str) -> None:
    """A number or boolean written in quotes (values are not read from strings) is named with what
    was written and the fix; any other wrong kind with what it is."""
    assert cp_errors(tmp_path, **{key: value}) == [said]


def test_a_cp_name_with_a_space_inside_is_refused(tmp_path: Path) -> None:
    errors = cp_errors(tmp_path, name="cp a")
    assert errors == ["cp.name: 'cp a' has a space: a CP's name is one word (hosts and certificates name it)"]


# ---------------------------------------------------------------- [cp]: the lease rule


@pytest.mark.parametrize(
    ("timeout", "lease", "ok"),
    [(0.5, 0.4, False), (0.5, 0.42, False), (0.5, 0.39, True), (1.0, 0.85, True)],
)
def test_the_lease_rule_at_its_edge(tmp_path: Path, timeout: float, lease: float, ok: bool) -> None:
    # lease + 0.1 == timeout is refused: the margin is strict
    assert CPSection.lease_allows(timeout, lease) is ok
    if ok:
        assert cp_ok(tmp_path, host_timeout=timeout, host_lease=lease).host_lease == lease
    else:
        (line,) = cp_errors(tmp_path, host_timeout=timeout, host_lease=lease)
        assert line.startswith(f"cp: host_lease ({lease:g} s) + margin (0.1 s) must be less than host_timeout ({timeout:g} s)")


def test_the_lease_rules_fix_names_the_lease_that_would_do(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, host_timeout=0.5, host_lease=0.45)
    assert "lower cp.host_lease below 0.4 or raise cp.host_timeout" in line


@pytest.mark.parametrize("timeout", [0.05, 0.11])
def test_a_host_timeout_no_lease_fits_below_is_told_to_be_raised(tmp_path: Path, timeout: float) -> None:
    """A host_timeout the schema takes (0.05 s and up) but no lease it takes (0.01 s and up) fits
    below with the margin: the fix said was "lower cp.host_lease below 0" (or below 0.01, which
    the schema refuses), advice nobody can follow."""
    (line,) = cp_errors(tmp_path, host_timeout=timeout, host_lease=0.01)
    assert line.endswith(f"raise cp.host_timeout above 0.11 (no lease of 0.01 s or more fits below {timeout:g})"), line
    assert "lower cp.host_lease" not in line, line


def test_a_default_host_timeout_counts_in_the_lease_rule_when_another_key_failed(tmp_path: Path) -> None:
    # host_timeout not given: its default (0.5) is what the rule compares, though held_bound failed
    errors = cp_errors(tmp_path, host_lease=0.45, held_bound=0)
    assert len(errors) == 2, errors
    assert errors[1].startswith("cp: host_lease (0.45 s) + margin (0.1 s) must be less than host_timeout (0.5 s)")


def test_a_reload_that_breaks_the_lease_rule_waits_for_a_restart() -> None:
    applied, restart = CPSection.reload_host_timeout(["cp.host_timeout", "cp.auth_timeout"], [], 0.4, 0.35)
    assert applied == ["cp.auth_timeout"]
    assert restart == ["cp.host_timeout (below the running host_lease 0.35 s + margin)"]
    assert CPSection.reload_host_timeout(["cp.host_timeout"], [], 0.6, 0.35) == (["cp.host_timeout"], [])


# ---------------------------------------------------------------- [cp]: takeover and listeners


def test_durability_none_is_fine_without_on_wake(tmp_path: Path) -> None:
    assert cp_ok(tmp_path, durability="none").durability == "none"
    (line,) = cp_errors(tmp_path, durability="none", takeover="on_wake", terminal_listen="10.0.0.9:7000")
    assert line.startswith('cp: takeover = "on_wake" needs the journal')


def test_on_wake_refuses_a_wildcard_terminal_listen(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, takeover="on_wake", terminal_listen="0.0.0.0:7000")
    assert "needs terminal_listen on the virtual address keepalived moves, not '0.0.0.0'" in line
    assert cp_ok(tmp_path, takeover="on_wake", terminal_listen="10.0.0.9:7000").takeover == "on_wake"


def test_a_wildcard_listener_clashes_with_any_address_on_its_port(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, terminal_listen="0.0.0.0:7000", host_listen="127.0.0.1:7000")
    assert "terminal_listen and host_listen both listen on port 7000" in line
    (line,) = cp_errors(tmp_path, admin_listen="[::]:7002", http_listen="127.0.0.1:7002")
    assert "admin_listen and http_listen both listen on port 7002" in line


def test_port_zero_never_clashes(tmp_path: Path) -> None:
    c = cp_ok(tmp_path, terminal_listen="127.0.0.1:0", host_listen="127.0.0.1:0", admin_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    assert c.http_listen == "127.0.0.1:0"


def test_the_port_range_is_0_to_65535(tmp_path: Path) -> None:
    assert cp_ok(tmp_path, http_listen="127.0.0.1:65535").http_listen == "127.0.0.1:65535"
    (line,) = cp_errors(tmp_path, http_listen="127.0.0.1:65536")
    assert line == "cp.http_listen: '127.0.0.1:65536' is not HOST:PORT"


def test_an_ipv6_address_without_brackets_says_how_to_write_it(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, http_listen="fd00::2")
    assert line == "cp.http_listen: 'fd00::2' is not HOST:PORT: write an IPv6 address in brackets, [ADDR]:PORT"


# ---------------------------------------------------------------- what is reported, and how


def test_several_rules_of_one_section_are_all_said_in_its_line(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, host_timeout=0.5, host_lease=0.45, takeover="on_wake", durability="none", terminal_listen="10.0.0.9:7000")
    assert line.startswith("cp: ") and 'needs the journal (durability = "fsync")' in line and "host_lease (0.45 s)" in line


def test_a_rule_on_int_values_says_them_as_the_full_check_does(tmp_path: Path) -> None:
    # the rule line said beside another key's error reads the values as the schema would (floats)
    alone = host_errors(tmp_path, host_data(heartbeat_timeout=1, heartbeat_interval=1))
    beside = host_errors(tmp_path, host_data(heartbeat_timeout=1, heartbeat_interval=1, name=""))
    assert alone == [
        "host: heartbeat_timeout (1.0s) must be greater than two heartbeat intervals (2.0s), or one late heartbeat looks like a dead peer;"
        " raise host.heartbeat_timeout above 2.0s or lower host.heartbeat_interval below 0.5s"
    ]
    assert beside[1:] == alone


def test_no_empty_top_level_line_when_the_terminal_table_is_fine(tmp_path: Path) -> None:
    assert cp_errors(tmp_path, held_bound=0) == ["cp.held_bound: Input should be greater than or equal to 1"]


def test_the_cp_terminal_table_is_checked_though_cp_failed(tmp_path: Path) -> None:
    data = cp_data(held_bound=0)
    data["terminals"] = [{"name": "D"}, {"name": "D"}]
    with pytest.raises(ConfigError) as ei:
        validate(data, CPConfig, base=tmp_path)
    assert len(ei.value.errors) == 2 and "terminal 'D' is defined twice" in ei.value.errors[1], ei.value.errors


def test_a_dotted_unknown_key_is_quoted_in_its_path(tmp_path: Path) -> None:
    (line,) = cp_errors(tmp_path, **{"a.b": 1})
    assert line == 'cp."a.b": unknown key (typo?); remove it or check the config reference'


def test_load_takes_overrides_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "cp.toml"
    cfg.write_text('[cp]\nsecret_file = "secret"\nheld_bound = 0\n[[terminals]]\nname = "T1"\n')
    c = load(cfg, CPConfig, overrides={"cp": {"secret_file": "secret", "held_bound": 5}})
    assert c.cp.held_bound == 5


# ---------------------------------------------------------------- [tls]


def test_tls_min_version_defaults_to_1_3_and_terminal_ca_needs_terminals(tmp_path: Path) -> None:
    files = {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}
    assert TLSLinks.model_validate(files, context={"base": tmp_path}).min_version == "1.3"
    t = TLSSection.model_validate({**files, "terminals": True, "terminal_ca_file": "tca.pem"}, context={"base": tmp_path})
    assert t.terminal_ca_file == str(tmp_path / "tca.pem")
    with pytest.raises(ValueError, match="terminal_ca_file is set but terminals = false"):
        TLSSection.model_validate({**files, "terminal_ca_file": "tca.pem"}, context={"base": tmp_path})


# ---------------------------------------------------------------- [host] and [takeover]


def test_the_heartbeat_rule_at_its_edge(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(heartbeat_timeout=0.2, heartbeat_interval=0.1))
    assert line.startswith("host: heartbeat_timeout (0.2s) must be greater than two heartbeat intervals (0.2s)")
    host_errors(tmp_path, host_data(heartbeat_timeout=0.15, heartbeat_interval=0.1))
    assert validate(host_data(heartbeat_timeout=0.21, heartbeat_interval=0.1), HostConfig, base=tmp_path).host.heartbeat_timeout == 0.21


def test_host_bounds_are_exact(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(heartbeat_interval=0.005, heartbeat_timeout=0.5))
    assert line.startswith("host.heartbeat_interval: Input should be greater than or equal to 0.01")
    assert host_errors(tmp_path, host_data(takeover={"records": 3}))[0].startswith("takeover.records: Input should be greater than or equal to 4")
    (line,) = host_errors(tmp_path, host_data(takeover={"record_size": 768}))
    assert line == "takeover.record_size: record_size must be a multiple of 512 (whole, aligned records)"


def test_peer_as_this_hosts_own_peer_listen_in_another_spelling_is_refused(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(peer="[::1]:7102", peer_listen="[0:0::1]:7102"))
    assert line == "host: host.peer must be the other host's peer_listen, not this host's own"


def test_host_http_listen_clashing_with_admin_is_refused(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(http_listen="0.0.0.0:7103"))
    assert "admin_listen and http_listen both listen on port 7103" in line


def test_a_cp_address_with_port_zero_is_refused(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(cp="127.0.0.1:0"))
    assert line.startswith("host.cp: '127.0.0.1:0' has port 0, which nothing listens on")


def test_an_empty_hook_command_says_so(tmp_path: Path) -> None:
    (line,) = host_errors(tmp_path, host_data(on_role_change="  "))
    assert line == 'host.on_role_change: no command in it: leave it out (or "") for none'


def test_a_service_option_that_is_not_an_identifier_is_refused(tmp_path: Path) -> None:
    data = host_data()
    data["service_options"] = {"1abc": 1}
    (line,) = host_errors(tmp_path, data)
    assert line.startswith("service_options: 1abc: not an option name")


def test_the_size_check_runs_though_host_failed(tmp_path: Path) -> None:
    errors = host_errors(tmp_path, host_data(terminals=100, takeover={"records": 4}, name=""))
    assert len(errors) == 2 and errors[1].startswith("(top level): takeover.records: "), errors


def test_a_missing_required_key_is_said_as_missing(tmp_path: Path) -> None:
    data = cp_data()
    del data["cp"]["secret_file"]
    with pytest.raises(ConfigError) as ei:
        validate(data, CPConfig, base=tmp_path)
    assert ei.value.errors == ["cp.secret_file: required key is missing"]


def terminal_table_with_attrs_problem(name: str) -> dict[str, Any]:
    data = host_data(terminals=100, takeover={"records": 4}, name=name)
    data["terminals"][5]["attrs"] = {"x": "a" * 300}  # (too big for one entry of the takeover file)
    return data


def test_the_size_check_beside_an_attrs_problem_is_said_though_host_failed(tmp_path: Path) -> None:
    # the full check says the attrs problem and the records too few, in one line
    (whole,) = host_errors(tmp_path, terminal_table_with_attrs_problem("a"))
    assert "terminals[5].attrs: " in whole and "takeover.records: " in whole
    # beside a [host] error the records too few went unsaid until host.name was fixed
    errors = host_errors(tmp_path, terminal_table_with_attrs_problem(""))
    assert errors == ["host.name: String should have at least 1 character", whole], errors


def test_a_name_twice_beside_a_host_error_says_what_the_full_check_says(tmp_path: Path) -> None:
    """A table with a name twice has no size to check: beside a [host] error its line is the
    full check's, and no size line appears that the full check does not say."""
    data = host_data(terminals=100, takeover={"records": 4}, name="a")
    data["terminals"][6]["name"] = data["terminals"][5]["name"]
    (whole,) = host_errors(tmp_path, data)
    assert "defined twice" in whole and "takeover.records" not in whole
    data["host"]["name"] = ""
    assert host_errors(tmp_path, data) == ["host.name: String should have at least 1 character", whole]
