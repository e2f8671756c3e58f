"""Monitoring configs (configs/prometheus, configs/grafana): promtool accepts the rules and the
scrape config and passes the rules' unit tests, and every hsb_ metric the rules and the dashboard
query exists in hsb/ops/metrics.py, so they cannot drift from the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROM = ROOT / "configs" / "prometheus"
RULES = PROM / "hsb-rules.yml"
RULES_TEST = PROM / "hsb-rules.test.yml"
DASHBOARD = ROOT / "configs" / "grafana" / "hsb.json"
METRICS_PY = ROOT / "hsb" / "ops" / "metrics.py"
OPERATIONS_MD = ROOT / "docs" / "operations.md"

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not found: apt-get install prometheus (.ci/run installs it)")

HSB_TOKEN = re.compile(r"\bhsb_[a-z0-9_]+")


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


@needs_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", RULES.name)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_config() -> None:
    r = promtool("check", "config", "prometheus.yml")  # rule_files are relative to the config's directory
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_rule_unit_tests() -> None:
    r = promtool("test", "rules", RULES_TEST.name)
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Each dashboard query, with Grafana's variables filled in, as a recording rule for promtool
    (JSON is YAML, so no YAML library is needed)."""
    subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
    rules = []
    for i, expr in enumerate(dashboard_exprs(json.loads(DASHBOARD.read_text()))):
        for var, value in subst.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"dashboard query uses a variable this test does not know: {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    assert len(rules) >= 20
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    r = promtool("check", "rules", str(f), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the rules and the dashboard against hsb/ops/metrics.py -------------------------------------


def code_metrics() -> tuple[set[str], set[str], set[str]]:
    """Metric families named in hsb/ops/metrics.py: all of them, the counters, the histograms."""
    src = METRICS_PY.read_text()
    names = set(re.findall(r'"(hsb_[a-z0-9_]+)"', src))
    counters = set(re.findall(r'(?:(?<![\w.])_c|CounterMetricFamily)\(\s*"(hsb_[a-z0-9_]+)"', src))
    histograms = set(re.findall(r'(?:\w*histogram|HistogramMetricFamily)\(\s*"(hsb_[a-z0-9_]+)"', src))
    assert {"hsb_serving", "hsb_epoch"} <= names and counters and histograms, "hsb/ops/metrics.py no longer looks as this test expects"
    return names, counters, histograms


def unknown_metrics(exprs: list[str]) -> list[str]:
    """hsb_ names in the queries that hsb/ops/metrics.py does not expose, each with the reason.

    Prometheus sees a counter as NAME_total and a histogram as NAME_bucket/_sum/_count; the bare
    family name of either matches nothing."""
    names, counters, histograms = code_metrics()
    bad = []
    for token in sorted({t for e in exprs for t in HSB_TOKEN.findall(e)}):
        if token in counters:
            bad.append(f"{token}: a counter, exposed as {token}_total")
        elif token in histograms:
            bad.append(f"{token}: a histogram, exposed as {token}_bucket, _sum and _count")
        elif not (
            token in names
            or (token.endswith("_total") and token.removesuffix("_total") in counters)
            or any(token.endswith(s) and token.removesuffix(s) in histograms for s in ("_bucket", "_sum", "_count"))
        ):
            bad.append(f"{token}: not in hsb/ops/metrics.py")
    return bad


def rule_exprs(text: str) -> list[str]:
    """The `expr` of every rule in a Prometheus rules file, without a YAML library (PyYAML is not a
    dependency): an `expr:` key's value and the lines indented deeper than the key (block scalars,
    continued plain scalars). Commented-out lines are ignored."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    exprs = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        parts = [] if value[:1] in ("|", ">") else [value.strip("'\"")]
        for cont in lines[i + 1 :]:
            if cont.strip() and len(cont) - len(cont.lstrip()) <= indent:
                break
            parts.append(cont.strip())
        exprs.append(" ".join(p for p in parts if p))
    n_rules = sum(1 for ln in lines if re.match(r"^\s*-\s+(alert|record):", ln))
    assert len(exprs) == n_rules, f"found {len(exprs)} exprs for {n_rules} rules"
    return exprs


def dashboard_exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for k, v in node.items() if k != "expr" for e in dashboard_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in dashboard_exprs(v)]
    return []


def test_rules_use_only_metrics_the_code_exports() -> None:
    exprs = rule_exprs(RULES.read_text())
    assert len(exprs) >= 11
    assert unknown_metrics(exprs) == []


def test_dashboard_is_json_and_uses_only_metrics_the_code_exports() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    assert [v["name"] for v in dash["templating"]["list"] if v["type"] == "datasource"] == ["DS_PROMETHEUS"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 20
    assert unknown_metrics(exprs) == []


def test_the_check_catches_a_drifted_name() -> None:
    assert unknown_metrics(["sum(hsb_serving)", "rate(hsb_replies_total[1m])", "hsb_journal_sync_seconds_bucket"]) == []
    assert len(unknown_metrics(["hsb_no_such_metric", "rate(hsb_replies[1m])", "hsb_journal_sync_seconds", "hsb_serving_total"])) == 4
    assert rule_exprs("rules:\n  - alert: A\n    expr: >-\n      hsb_x\n        > 1\n    for: 1m\n  - record: r\n    expr: hsb_y\n") == [
        "hsb_x > 1",
        "hsb_y",
    ]


def test_rule_annotations_name_existing_operations_sections() -> None:
    """Annotations point to docs/operations.md sections by name (`§ "Name"`); each must be a heading there."""
    text = "\n".join(ln for ln in RULES.read_text().splitlines() if not ln.lstrip().startswith("#"))
    cited = set(re.findall(r'§ "([^"]+)"', text))
    assert cited
    headings = {m.group(1) for m in re.finditer(r"^#{2,4}\s+(?:\d+\.\s+)?(.+?)\s*$", OPERATIONS_MD.read_text(), re.MULTILINE)}
    assert sorted(cited - headings) == [], "hsb-rules.yml names sections that docs/operations.md does not have"


def test_every_alert_has_a_unit_test() -> None:
    alerts = set(re.findall(r"^\s*-\s+alert:\s*(\w+)", RULES.read_text(), re.MULTILINE))
    tested = set(re.findall(r"alertname:\s*(\w+)", RULES_TEST.read_text()))
    assert alerts and sorted(alerts - tested) == []


async def test_a_claim_of_two_actives_is_counted_in_the_metrics(tmp_path: Path) -> None:
    """The active hears ACTIVE STARTUP from the other host (it claims the role too): an overlap
    shorter than a scrape, which the lease-sum alert cannot see, is counted for
    HsbTwoActivesClaimed."""
    from prometheus_client import CollectorRegistry, generate_latest

    from hsb.ops.metrics import HostCollector
    from hsb.service.builtin import EchoService
    from tests.support.inproc import pair_in_hot_standby, until

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, tasks):
        a.ha.post("peer_frame", msg={"t": "active_startup", "name": "host-b", "instance": "other"})
        await until(lambda: a.ha.counters["two_actives_claimed"] == 1, "the claim counted")
        reg = CollectorRegistry()
        reg.register(HostCollector(a.status))
        assert "hsb_two_actives_claimed_total 1.0" in generate_latest(reg).decode()
        # an ordinary failover: this active lost its CP link (no lease), the peer was made active
        # and says so. That is no overlap: the alert meant for one ("treat it as a bug") must not fire
        a.ha.granted = False
        a.ha.last_error = None
        a.ha.post("peer_frame", msg={"t": "active_startup", "name": "host-b", "instance": "other"})
        await until(lambda: "is the active now" in (a.ha.last_error or ""), "the takeover said")
        assert a.ha.counters["two_actives_claimed"] == 1


async def test_every_switch_is_counted_even_one_without_a_duration(tmp_path: Path) -> None:
    """A promote after a normal stop has no loss to count its duration from: the duration
    histogram leaves it out, so the dashboard's switch count (from that histogram) showed 0
    promotes while "Last switch" showed one. hsb_switches_total counts every switch."""
    from prometheus_client import CollectorRegistry, generate_latest

    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP
    from hsb.ops.metrics import CPCollector
    from tests.support.procs import cp_config

    cp = CP(load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig), None)
    reg0 = CollectorRegistry()
    reg0.register(CPCollector(cp.status, lambda: None, lambda: cp.history))
    # every kind from 0 before its first switch: a series that first appears at 1 is not counted
    # by increase() (the dashboard's switch count showed 0 for a site's only failover)
    before = generate_latest(reg0).decode()
    assert all(f'hsb_switches_total{{kind="{k}"}} 0.0' in before for k in ("failover", "switchover", "promote")), before
    cp.history.add({"kind": "promote", "at": 1.0, "epoch": 3, "duration_ms": None})
    cp.history.add({"kind": "failover", "at": 2.0, "epoch": 4, "duration_ms": 120.0})
    reg = CollectorRegistry()
    reg.register(CPCollector(cp.status, lambda: None, lambda: cp.history))
    text = generate_latest(reg).decode()
    assert 'hsb_switches_total{kind="promote"} 1.0' in text and 'hsb_switches_total{kind="failover"} 1.0' in text, text


def test_protocol_errors_and_dropped_connections_are_exported_from_zero(tmp_path: Path) -> None:
    """Every link a daemon serves has its protocol-error codes and its dropped connections
    exported before the first one (at 0): a series that first appears at 1 is no increase to
    rate() or increase(), so the first malformed frame or dropped connection after a start was
    never seen on the dashboard."""
    from prometheus_client import CollectorRegistry, generate_latest

    from hsb.config import load
    from hsb.cp.config import CPConfig
    from hsb.cp.core import CP
    from hsb.ops.metrics import CP_LINKS, HOST_LINKS, STARTING_CODES, CPCollector, _proto_errors
    from hsb.wire.conn import CONNECTIONS_DROPPED, PROTOCOL_ERRORS
    from tests.support.procs import cp_config

    cp = CP(load(cp_config(tmp_path, terminals=2, durability="none"), CPConfig), None)
    reg = CollectorRegistry()
    reg.register(CPCollector(cp.status, lambda: None, lambda: cp.history))
    text = generate_latest(reg).decode()
    for link in CP_LINKS:
        assert f'hsb_connections_dropped_total{{link="{link}"}} {float(CONNECTIONS_DROPPED.get(link, 0))}' in text, text
        for code in STARTING_CODES:
            n = float(PROTOCOL_ERRORS.get((link, code), 0))
            assert f'hsb_protocol_errors_total{{code="{code}",link="{link}"}} {n}' in text, (link, code)
    host = {s.labels["link"] for m in _proto_errors(HOST_LINKS) for s in m.samples if "code" not in s.labels}
    assert host >= set(HOST_LINKS)


def _host_status(**over: Any) -> dict[str, Any]:
    """A host's status as HostCollector reads it (an active in hot standby), with `over` on top."""
    st: dict[str, Any] = {
        "role": "active",
        "state": "established",
        "established": True,
        "serving": True,
        "lease": {"valid": True},
        "epoch": 3,
        "peer_link": {"up": True, "heartbeat_age_ms": 12.0},
        "takeover_file": {"storage": "ok"},
        "terminals": {"defined": 2, "linked": 2, "active_sessions": 2, "standby_sessions": 0},
        "delivery": {"processed": 10, "redelivered": 0, "errors": 0, "repeats_marked": 0, "transactions_retried": 0},
        "service": {"state": "ok", "retries": 0, "oldest_call_s": 0.0},
    }
    st.update(over)
    return st


def _scrape(st: dict[str, Any]) -> dict[str, float]:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from hsb.ops.metrics import HostCollector

    reg = CollectorRegistry()
    reg.register(HostCollector(lambda: st))
    return {s.name: s.value for f in text_string_to_metric_families(generate_latest(reg).decode()) for s in f.samples if not s.labels}


def test_a_stalled_service_is_healthy_and_its_oldest_call_is_exported() -> None:
    """A call of the service that has not returned (a hung disk) holds its terminal's later
    messages only: the others are answered. It made hsb_service_healthy 0, and the critical
    HsbServiceFailing (no terminal answered) fired. Healthy stays 1 (0 for "failing" only); the
    oldest call's age is its own gauge, which HsbServiceStalled reads at hsbd's own threshold."""
    from hsb.host.delivery import STALLED_AFTER

    ok = _scrape(_host_status(service={"state": "ok", "retries": 0, "oldest_call_s": 0.4}))
    assert ok["hsb_service_healthy"] == 1 and ok["hsb_service_oldest_call_seconds"] == 0.4
    stalled = _scrape(_host_status(service={"state": "stalled", "retries": 0, "oldest_call_s": 42.5}))
    assert stalled["hsb_service_healthy"] == 1 and stalled["hsb_service_oldest_call_seconds"] == 42.5
    failing = _scrape(_host_status(service={"state": "failing", "retries": 3, "oldest_call_s": 0.0}))
    assert failing["hsb_service_healthy"] == 0
    stall_rule = [e for e in rule_exprs(RULES.read_text()) if "hsb_service_oldest_call_seconds" in e]
    assert stall_rule == [f'hsb_service_oldest_call_seconds{{job="hsbd"}} >= {STALLED_AFTER:g} and on(instance) hsb_serving{{job="hsbd"}} == 1']


def test_error_replies_and_transactions_run_again_are_counted() -> None:
    """An error reply discards its message at the CP, and nothing a scrape saw counted them; nor
    the transactions the service had to run again (deadlocks, serialization failures)."""
    d = {"processed": 10, "redelivered": 0, "errors": 5, "repeats_marked": 0, "transactions_retried": 3}
    m = _scrape(_host_status(delivery=d))
    assert m["hsb_service_errors_total"] == 5 and m["hsb_service_transactions_retried_total"] == 3, m
