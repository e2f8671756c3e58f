"""Edges of hsbctl's own reading, in-process (no daemon asked): where it finds the daemons (the
ctl config and the flags that win over it, hsb.ctl.target: paths resolved against the config's
folder, placeholders and empty values, every problem at once and none said twice, the TLS client
set only when all is well), the line naming the terminals a switchover put on the classic path
(hsb.ctl.refused), and whether the answers of one status agree on who is the active, with a CP
split brain told apart from a role change (hsb.ctl.agree). Each test pins a behaviour a one-line
change of those modules could break unseen (from a mutation audit of them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hsb.ctl.agree import claims_active, cp_active, disagreement, split_brain, two_actives
from hsb.ctl.refused import refused_line
from hsb.ctl.target import Target, TargetError, load_target

# -- where hsbctl finds the daemons (hsb.ctl.target) ----------------------------------------------


def ctl(tmp_path: Path, text: str) -> str:
    p = tmp_path / "ctl.toml"
    p.write_text(text)
    return str(p)


def problems(config: str | None, cp: str | None = None, hosts: tuple[str, ...] = (), secret_file: str | None = None) -> list[str]:
    with pytest.raises(TargetError) as ei:
        load_target(config, cp, hosts, secret_file)
    return ei.value.errors


def test_the_flags_win_over_the_ctl_config_and_a_cp_list_is_stripped(tmp_path: Path, secret: Path) -> None:
    other = tmp_path / "other"
    other.write_text("another secret\n")
    other.chmod(0o600)
    cfg = ctl(tmp_path, f'cp = "127.0.0.1:1"\nhosts = ["127.0.0.1:2"]\nsecret_file = "{other}"\n')
    t = load_target(cfg, " 127.0.0.1:7002 , ,127.0.0.1:8002 ", ("127.0.0.1:7103", "127.0.0.1:7203"), str(secret))
    assert t.cps == ["127.0.0.1:7002", "127.0.0.1:8002"] and t.cp == "127.0.0.1:7002", t
    assert t.hosts == ["127.0.0.1:7103", "127.0.0.1:7203"] and t.secret_file == str(secret), t
    # without flags the config's values stand, the first CP of two is `cp`
    t = load_target(ctl(tmp_path, f'cp = ["", "127.0.0.1:7002", "127.0.0.1:8002"]\nsecret_file = "{secret}"\n'), None, (), None)
    assert t.cps == ["127.0.0.1:7002", "127.0.0.1:8002"] and t.cp == "127.0.0.1:7002" and t.hosts == [], t


def test_relative_paths_are_resolved_against_the_ctl_configs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s").write_text("a shared secret\n")
    (tmp_path / "s").chmod(0o600)
    monkeypatch.chdir("/")  # (not the config's folder: a path left relative would not be found)
    seen: dict[str, Any] = {}

    class FakeTLS:
        def __init__(self, files: Any, reloads: bool = True) -> None:
            seen["files"] = files
            self.client = "client-context"

    monkeypatch.setattr("hsb.wire.tls.TLS", FakeTLS)
    monkeypatch.setattr("hsb.wire.tls.set_default_client", lambda c: seen.setdefault("client", c))
    cfg = ctl(tmp_path, 'hosts = ["127.0.0.1:7103"]\nsecret_file = "s"\ntls = {ca_file = "ca.pem", cert_file = "/etc/c.pem", key_file = "k/c.key"}\n')
    t = load_target(cfg, None, (), None)
    assert t.secret_file == str(tmp_path / "s"), t
    assert t.tls == {"ca_file": str(tmp_path / "ca.pem"), "cert_file": "/etc/c.pem", "key_file": str(tmp_path / "k/c.key")}, t.tls
    assert seen["client"] == "client-context", "hsbctl's own certificate was not made the TLS client's"
    assert seen["files"].ca_file == str(tmp_path / "ca.pem"), seen


def test_the_tls_client_is_not_set_when_any_other_problem_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_to: list[Any] = []

    class FakeTLS:
        def __init__(self, files: Any, reloads: bool = True) -> None:
            self.client = "client-context"

    monkeypatch.setattr("hsb.wire.tls.TLS", FakeTLS)
    monkeypatch.setattr("hsb.wire.tls.set_default_client", set_to.append)
    cfg = ctl(tmp_path, 'hosts = ["127.0.0.1:7103"]\ntls = {ca_file = "ca.pem", cert_file = "c.pem", key_file = "c.key"}\n')
    errors = problems(cfg)
    assert len(errors) == 1 and "no secret file" in errors[0], errors  # (one problem alone is raised too)
    assert set_to == [], set_to


@pytest.mark.parametrize(
    ("toml", "lines", "want"),
    [
        ('tls = {ca_file = "", cert_file = "c.pem", key_file = "c.key"}\n', 1, ["tls.ca_file must be a path string"]),
        (
            'tls = {ca_file = "ca.pem", cert_file = "c.pem"}\n',
            1,
            ["tls must be a table with ca_file, cert_file and key_file", "['ca_file', 'cert_file']"],
        ),
        (
            'tls = {ca_file = "", cert_file = 1, key_file = "c.key"}\n',
            2,
            ["tls.ca_file must be a path string", "tls.cert_file must be a path string"],
        ),
    ],
)
def test_a_tls_table_of_the_wrong_shape_says_each_problem(tmp_path: Path, secret: Path, toml: str, lines: int, want: list[str]) -> None:
    errors = problems(ctl(tmp_path, f'hosts = ["127.0.0.1:7103"]\nsecret_file = "{secret}"\n{toml}'))
    assert len(errors) == lines, errors
    for w in want:
        assert any(w in e for e in errors), (w, errors)


def test_the_daemons_named_by_cp_alone_or_hosts_alone_are_enough(tmp_path: Path, secret: Path) -> None:
    assert load_target(None, "127.0.0.1:7002", (), str(secret)).hosts == []
    assert load_target(None, None, ("127.0.0.1:7103",), str(secret)).cp is None
    errors = problems(None, None, (), str(secret))
    assert len(errors) == 1 and errors[0].startswith("no daemons named"), errors


def test_a_bad_cp_address_is_said_beside_good_hosts(tmp_path: Path, secret: Path) -> None:
    errors = problems(None, "127.0.0.1", ("127.0.0.1:7103",), str(secret))
    assert len(errors) == 1 and "'127.0.0.1' is not HOST:PORT" in errors[0] and "admin_listen" in errors[0], errors


def test_an_empty_secret_file_setting_is_as_if_not_set(tmp_path: Path) -> None:
    errors = problems(ctl(tmp_path, 'hosts = ["127.0.0.1:7103"]\nsecret_file = ""\n'))
    assert len(errors) == 1 and errors[0].startswith("no secret file: pass --secret-file"), errors


def test_a_secret_file_that_cannot_be_used_is_said(tmp_path: Path) -> None:
    bad = tmp_path / "open"
    bad.write_text("a shared secret\n")
    bad.chmod(0o644)
    errors = problems(None, None, ("127.0.0.1:7103",), str(bad))
    assert len(errors) == 1 and "accessible by group or others" in errors[0], errors


def test_a_ctl_config_not_there_says_so_and_where_one_comes_from(tmp_path: Path) -> None:
    cfg = str(tmp_path / "nope.toml")
    assert problems(cfg) == [f"ctl config {cfg} not found; check the path (hsbctl sandbox up prints one)"]


def test_a_ctl_config_nested_too_deeply_is_one_line(tmp_path: Path) -> None:
    cfg = ctl(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    errors = problems(cfg)
    assert errors == [f"ctl config {cfg}: arrays or tables nested too deeply to read; flatten them"], errors


def test_a_target_error_of_one_line_is_that_line() -> None:
    assert TargetError("one problem").errors == ["one problem"]
    assert str(TargetError(["a", "b"])) == "a; b"


def test_validate_says_nothing_twice_about_keys_already_said(tmp_path: Path) -> None:
    t = Target()
    with pytest.raises(TargetError) as ei:
        t.validate(["the cp key was wrong"], frozenset({"cp", "secret_file"}))
    assert ei.value.errors == ["the cp key was wrong"]


# -- the line of the terminals put on the classic path (hsb.ctl.refused) --------------------------


def refused(n: int, **over: Any) -> dict[str, Any]:
    return {
        "refused_standby": {"standby": "host-b", "count": n, "terminals": [{"terminal": f"T{i}", "reason": f"why {i}"} for i in range(n)], **over}
    }


def test_the_refused_line_names_all_when_few_and_the_first_ones_reason() -> None:
    line = refused_line(refused(5))
    assert line == (
        "  5 terminals took the classic path (disconnected, they log on again) because host-b refused their standby session:"
        " T0, T1, T2, T3, T4 (T0: why 0); make their attrs identical on both hosts and reload the one you change (docs/operations.md §5)"
    ), line
    assert str(refused_line(refused(2), indent="")).startswith("2 terminals took")


def test_the_refused_line_counts_the_cps_count_beyond_those_it_names() -> None:
    rec = refused(3, count=10)  # (the CP names a few of them)
    assert "T0, T1, T2 and 7 more (T0: why 0)" in str(refused_line(rec)), refused_line(rec)
    no_count = refused(3)
    del no_count["refused_standby"]["count"]
    assert str(refused_line(no_count)).startswith("  3 terminals took"), refused_line(no_count)
    no_standby = refused(1)
    del no_standby["refused_standby"]["standby"]
    assert "because the standby refused" in str(refused_line(no_standby))


@pytest.mark.parametrize("ref", [None, "x", {"terminals": []}, {"terminals": ["T1"]}, {"terminals": [{"terminal": "T1"}, 7]}, {"terminals": "T1"}])
def test_a_refused_record_of_another_shape_has_no_line(ref: Any) -> None:
    assert refused_line({"refused_standby": ref}) is None


# -- whether the answers agree on the active (hsb.ctl.agree) -----------------------------------


def cp_says(active: str | None, epoch: int, state: str = "serving", **kw: Any) -> dict[str, Any]:
    return {"reachable": True, "state": state, "epoch": epoch, "active": {"name": active} if active else None, **kw}


def host(name: str, role: str, epoch: Any, **kw: Any) -> dict[str, Any]:
    return {"reachable": True, "name": name, "role": role, "epoch": epoch, "state": "ok", **kw}


def test_claims_active_needs_a_reachable_active_serving_and_not_fenced_or_stopping() -> None:
    assert claims_active(host("a", "active", 3)) and claims_active(host("a", "active", 3, serving=True))
    assert not claims_active({**host("a", "active", 3), "reachable": False})
    for state in ("fenced", "stopping"):
        assert not claims_active(host("a", "active", 3, state=state)), state
    assert not claims_active(host("a", "active", 3, serving=False))
    assert not claims_active(host("a", "standby", 3))


def test_cp_active_is_said_by_a_serving_cp_or_one_without_an_active() -> None:
    assert cp_active(cp_says("a", 3)) == (True, "a")
    assert cp_active(cp_says(None, 3, state="no_active")) == (True, None)
    older = cp_says("a", 3)
    del older["active"]  # (a CP of before does not say it)
    assert cp_active(older) == (False, None)
    assert cp_active(cp_says("a", 3, state="waiting")) == (False, None)
    assert cp_active({**cp_says("a", 3), "reachable": False}) == (False, None)


def test_answers_that_agree_are_no_disagreement() -> None:
    cp = cp_says("a", 5)
    assert disagreement(cp, [host("a", "active", 5), host("b", "standby", 4)]) is None  # (a standby's older epoch is no news)
    assert disagreement(cp, [host("a", "active", 5), {"reachable": False, "name": "b", "epoch": 9, "role": "active"}]) is None
    assert disagreement({"reachable": False}, [host("a", "active", 5)]) is None
    older = cp_says("a", 5)
    del older["active"]
    assert disagreement(older, [host("b", "active", 5)]) is None  # (nothing to compare the active against)


def test_each_kind_of_disagreement_is_said() -> None:
    cp = cp_says("a", 5)
    assert disagreement(cp, [host("a", "active", 6)]) == "a is at epoch 6, the CP at 5"
    assert disagreement(cp, [host("a", "active", 5), host("b", "active", 5)]) == "b says it is the active at epoch 5, the CP's active is a at epoch 5"
    assert disagreement(cp, [host("a", "standby", 5)]) == "the CP's active at epoch 5 is a, which says it is the standby at epoch 5"
    assert disagreement(cp_says(None, 5, state="no_active"), [host("b", "active", 5)]) == (
        "b says it is the active at epoch 5, the CP's active is nobody at epoch 5"
    )


def test_two_actives_at_one_epoch_or_the_older_named_by_the_cp_but_not_a_role_change() -> None:
    a4, b5 = host("a", "active", 4), host("b", "active", 5)
    assert two_actives(cp_says("b", 5), [host("a", "active", 5), host("b", "active", 5)])
    assert two_actives(cp_says("b", 5), [host("a", "active", None), host("b", "active", 0)])  # (no epoch is epoch 0)
    assert two_actives(cp_says("a", 4), [a4, b5]), "the CP names the older one: the newer one's grant is another CP's"
    assert not two_actives(cp_says("b", 5), [a4, b5]), "the CP names the newer one: the older one's lease is running out"
    assert not two_actives(cp_says("a", 5), [a4, b5]), "a CP at the newer epoch naming the older one answered before its grant"


def split_hosts(g_old: Any = 1, g_new: Any = 2) -> list[dict[str, Any]]:
    return [
        host("a", "active", 4, cp_generation={"seen": g_old, "remembered": 9}),
        host("b", "active", 5, cp_generation={"seen": g_new, "remembered": 9}),
    ]


def machine(name: str, active: str, generation: Any = None, **kw: Any) -> dict[str, Any]:
    return {"reachable": True, "state": "serving", "name": name, "addr": f"{name}:7002", "active": active, "generation": generation, **kw}


def test_a_split_brain_names_each_cp_machine_its_active_and_which_cp_to_stop() -> None:
    ms = [machine("cp-2", "b", 2), machine("cp-1", "a", 1)]
    line = split_brain(cp_says("b", 5), split_hosts(), ms)
    assert line is not None and line.startswith(
        "two CPs serve, each with its own active (a CP split brain): a at epoch 4 (cp-1's active, CP generation 1)"
        " and b at epoch 5 (cp-2's active, CP generation 2); b's epoch is the newer: a will be fenced once its CP stops;"
        " stop the hsbcpd on cp-1: "
    ), line
    # two machines are enough without generations; a machine's own generation wins over the host's
    line = split_brain(cp_says("b", 5), split_hosts(7, 7), [machine("cp-1", "a"), machine("cp-2", "b")])
    assert line is not None and "a at epoch 4 (cp-1's active, CP generation 7)" in line, line


def test_machines_that_do_not_show_two_serving_cps_are_left_out() -> None:
    for m1 in (machine("cp-1", "a", reachable=False), machine("cp-1", "a", same_as="cp-2"), machine("cp-1", "a", state="no_active")):
        assert split_brain(cp_says("b", 5), split_hosts(3, 3), [m1, machine("cp-2", "b")]) is None, m1
    one_machine = [machine("cp-1", "a"), {**machine("cp-1", "b")}]  # (one address: one CP)
    assert split_brain(cp_says("b", 5), split_hosts(3, 3), one_machine) is None


def test_a_split_brain_by_generations_alone() -> None:
    line = split_brain(cp_says("b", 5, generation=2), split_hosts(1, 1), None)
    assert line is not None and "a at epoch 4 (CP generation 1) and b at epoch 5 (CP generation 2)" in line, line
    assert "stop the hsbcpd that keeps a (generation 1)" in line, line
    assert split_brain(cp_says("b", 5), split_hosts(2, 2), None) is None
    assert split_brain(cp_says("b", 5), split_hosts(None, 2), None) is None
    assert split_brain(cp_says("b", 5), split_hosts(1, None), None) is None
    assert split_brain(cp_says("b", 5), split_hosts(True, 2), None) is None  # (a bool is no generation)


def test_no_split_brain_without_exactly_two_actives_at_different_epochs() -> None:
    assert (
        split_brain(cp_says("b", 5), [host("a", "active", 5, cp_generation={"seen": 1}), host("b", "active", 5, cp_generation={"seen": 2})], None)
        is None
    )
    three = [*split_hosts(), host("c", "active", 6, cp_generation={"seen": 3})]
    assert split_brain(cp_says("b", 5), three, None) is None


def test_a_memory_only_cps_generation_0_is_said_not_unknown() -> None:
    """A CP without a journal (durability = "none") is at generation 0: said as such, not '?'."""
    line = split_brain(cp_says("b", 5), split_hosts(None, None), [machine("cp-1", "a", 0), machine("cp-2", "b", 0)])
    assert line is not None and "a at epoch 4 (cp-1's active, CP generation 0)" in line, line
    line = split_brain(cp_says("b", 5), split_hosts(None, None), [machine("cp-1", "a"), machine("cp-2", "b")])
    assert line is not None and "a at epoch 4 (cp-1's active, CP generation ?)" in line, line


def test_more_than_a_pair_of_hosts_or_two_cps_is_said_with_its_fix(tmp_path: Path, secret: Path) -> None:
    cfg = ctl(tmp_path, f'cp = ["c:1", "c:2", "c:3"]\nhosts = ["h:1", "h:2", "h:3"]\nsecret_file = "{secret}"\n')
    said = problems(cfg)
    assert said == [
        f"3 hosts named (h:1, h:2, h:3): a pair has two; name each one's admin_listen once in the ctl config {cfg}'s hosts (or --host twice)",
        f"3 CPs named (c:1, c:2, c:3): name one CP, or the two CP machines of docs/operations.md §18, in the ctl config {cfg}'s cp (or --cp A,B)",
    ], said
    # by the flags alone, the same, without a config to name
    said = problems(None, "c:1,c:2,c:3", ("h:1", "h:2", "h:3"), str(secret))
    assert said[0].startswith("3 hosts named (h:1, h:2, h:3): a pair has two;") and said[0].endswith("admin_listen once with --host twice"), said
    assert said[1].endswith("§18, with --cp A,B") and len(said) == 2, said
    # two of each (and one) pass
    t = load_target(None, "c:1,c:2", ("h:1", "h:2"), str(secret))
    assert t.cps == ["c:1", "c:2"] and t.hosts == ["h:1", "h:2"], t
