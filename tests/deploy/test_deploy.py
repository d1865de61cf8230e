"""The production deployment in deploy/ is valid and agrees with what the services export.

Prometheus files are checked with `promtool` (Debian's `prometheus` package);
Kubernetes manifests, the Grafana dashboard and the alert tests are checked
against the contract: the metric names the services export, the configuration
variables they read, their probes and port. What ships around them (image,
locks, rendered objects, operator objects, runbook URLs, compose) is checked
in test_release.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "referrals-dashboard.json"
K8S = DEPLOY / "k8s"
README = DEPLOY / "README.md"
#: Where each alert's runbook_url may point: deploy/README.md, or docs/runbooks.md.
RUNBOOK_BASE = "https://github.com/example/referral-rewards/blob/main/"
RUNBOOKS = {"deploy/README.md": README, "docs/runbooks.md": DEPLOY.parent / "docs" / "runbooks.md"}


def _exported() -> tuple[set[str], set[str]]:
    """(series names, histogram names) on the services' own registries, as /metrics shows them.

    Read off the real ``ConsumerMetrics``, ``SchedulerMetrics`` and ``WebMetrics``, so a metric
    renamed or dropped in the code fails the dashboard and alert checks here.
    """
    from prometheus_client import CollectorRegistry

    from payout_scheduler.metrics import SchedulerMetrics
    from referral_consumer.metrics import ConsumerMetrics
    from referral_web.metrics import WebMetrics

    series: set[str] = set()
    histograms: set[str] = set()
    registries = (
        ConsumerMetrics(CollectorRegistry()).registry,
        SchedulerMetrics().registry,
        WebMetrics().registry,
    )
    for registry in registries:
        for family in registry.collect():
            if family.type == "histogram":
                histograms.add(family.name)
            elif family.type == "counter":
                series.add(f"{family.name}_total")
            else:
                series.add(family.name)
    return series, histograms


SERIES, HISTOGRAMS = _exported()
HISTOGRAM_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")

#: Every key the ConfigMap may hold, with the value it must have where it is fixed.
CONFIG_KEYS: dict[str, str | None] = {
    "KAFKA_BOOTSTRAP_SERVERS": None,
    "CONSUMER_GROUP": None,
    "PROGRAM_TIMEZONE": "America/Los_Angeles",
    "PAYOUT_SETTLE_DAYS": "1",
    "REFERRAL_LINK_BASE": None,
    "PAGE_LINK_BASE": None,
    "SIGNUP_URL": None,
    "LOG_FORMAT": "json",
    "LOG_LEVEL": "INFO",
    "HTTP_PORT": "8080",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "TOPIC_SUBSCRIPTION_CREATED": "billing.subscription.created",
    "TOPIC_INVOICE_PAID": "billing.invoice.paid",
    "TOPIC_SUBSCRIPTION_CANCELLED": "billing.subscription.cancelled",
    "TOPIC_PAYOUT_DUE": "referrals.payout.due",
    "TOPIC_CODE_ASSIGNED": "referrals.code.assigned",
    "TOPIC_CREDIT_EARNED": "referrals.credit.earned",
    "TOPIC_DLQ": "referrals.dlq",
    "TOPIC_PAYOUT_STATUS": "finance.payout.status",
    "PAYOUT_STATUS_GROUP": "payout-scheduler",
}
SECRET_KEYS = {
    "DATABASE_URL",
    "WEB_DATABASE_URL",
    "API_TOKEN",
    "PAGE_SIGNING_KEY",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
}
SERVICES = {
    # Deployment name: (console script, replicas)
    "referral-consumer": (["referral-consumer"], 3),
    "payout-scheduler": (["payout-scheduler"], 2),
    "referral-web": (["referral-web"], 2),
}
#: Manifests name the image bare; deploy/k8s/release/ sets its registry and tag.
IMAGE = "referral-rewards"
HTTP_PORT = 8080

_METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:])(?:referrals|process|python)_[a-z0-9_]+")
_GRAFANA_MACROS = re.compile(
    r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}"
)


# ---------------------------------------------------------------- helpers


def _yaml() -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - depends on the environment
        pytest.fail("PyYAML is needed to read deploy/: `.venv/bin/pip install pyyaml`")
    return yaml


def _load_yaml(path: Path) -> Any:
    return _yaml().safe_load(path.read_text())


def _k8s_documents() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in sorted(K8S.rglob("*.yaml")):
        for document in _yaml().safe_load_all(path.read_text()):
            if document:
                yield path, document


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in _k8s_documents() if doc.get("kind") == kind]


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(
            "promtool is not on PATH: install Debian's prometheus package (make deps does it)",
            pytrace=False,
        )
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120, check=False
    )


def _assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"


def _unknown_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression that the services do not export."""
    unknown = set()
    for token in _METRIC_TOKEN.findall(expr):
        if token in SERIES:
            continue
        base, suffix = _split_histogram_suffix(token)
        if suffix and base in HISTOGRAMS:
            continue
        unknown.add(token)
    return unknown


def _split_histogram_suffix(token: str) -> tuple[str, str]:
    for suffix in HISTOGRAM_SERIES_SUFFIXES:
        if token.endswith(suffix):
            return token[: -len(suffix)], suffix
    return token, ""


def _alert_rules() -> list[dict[str, Any]]:
    groups = _load_yaml(ALERTS)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def _dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows nest their panels
    return panels


def _dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in _dashboard_panels()
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


# ---------------------------------------------------------------- promtool


def test_prometheus_config_is_valid() -> None:
    _assert_ok(_promtool("check", "config", PROMETHEUS_CONFIG))


def test_alert_rules_are_valid() -> None:
    _assert_ok(_promtool("check", "rules", ALERTS))


def test_alert_rule_unit_tests_pass() -> None:
    _assert_ok(_promtool("test", "rules", ALERTS_TEST))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """Every dashboard query parses, once Grafana's $__ macros are replaced by a duration."""
    rules = [
        {"record": f"dashboard_query_{i}", "expr": _GRAFANA_MACROS.sub("5m", expr)}
        for i, expr in enumerate(_dashboard_exprs())
    ]
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    _assert_ok(_promtool("check", "rules", rules_file))


# ---------------------------------------------------------------- prometheus


def test_prometheus_scrapes_both_services_and_loads_the_alerts() -> None:
    config = _load_yaml(PROMETHEUS_CONFIG)
    assert "alerts.yml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for service in SERVICES:
        job = jobs[service]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        ports = {sd["port"] for sd in job.get("dns_sd_configs", [])}
        targets = [t for sc in job.get("static_configs", []) for t in sc["targets"]]
        ports |= {int(t.rsplit(":", 1)[1]) for t in targets}
        assert ports == {HTTP_PORT}, f"{service} must be scraped on port {HTTP_PORT}"


def test_alerts_use_only_exported_metrics_and_scraped_jobs() -> None:
    jobs = {job["job_name"] for job in _load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    for rule in _alert_rules():
        assert not _unknown_metrics(rule["expr"]), (rule["alert"], _unknown_metrics(rule["expr"]))
        for operator, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', rule["expr"]):
            named = value.split("|") if operator == "=~" else [value]
            assert set(named) <= jobs, (rule["alert"], named)


def test_every_alert_is_labelled_annotated_and_in_the_alert_table() -> None:
    """Their runbooks are checked in test_release.py."""
    table = README.read_text().split("## Alerts and runbooks", 1)[1]
    for rule in _alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert {"summary", "description", "runbook_url"} <= rule["annotations"].keys(), name
        row = f"| {name} | {rule['labels']['severity']} |"
        assert row in table, f"the alert table of deploy/README.md lacks {row}"


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in _alert_rules()}
    fires: set[str] = set()
    silent: set[str] = set()
    for case in _load_yaml(ALERTS_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            name = check["alertname"]
            assert name in alerts, f"alerts_test.yml tests {name}, which alerts.yml lacks"
            (fires if check.get("exp_alerts") else silent).add(name)
    assert not alerts - fires, f"never shown firing: {sorted(alerts - fires)}"
    assert not alerts - silent, f"never shown silent: {sorted(alerts - silent)}"


def test_required_alerts_exist() -> None:
    rules = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    overdue = rules["ReferralSchedulerPassOverdue"]
    assert "time()" in overdue and "7200" in overdue
    assert any(
        "absent(referrals_scheduler_last_success_timestamp_seconds)" in expr
        for expr in rules.values()
    )
    for needed in (
        "referrals_consumer_lag",
        "referrals_consumer_ready",
        "referrals_consumer_dead_letters_total",
        "referrals_consumer_db_retries_total",
        "referrals_consumer_commit_failures_total",
        "referrals_outbox_oldest_age_seconds",
        "referrals_outbox_publish_failures_total",
        "referrals_scheduler_due_soon",
        "referrals_scheduler_pass_failures_total",
        "referrals_scheduler_ready",
        "referrals_scheduler_overdue_undecided",
        "referrals_consumer_event_age_seconds_bucket",
        "referrals_payouts_overdue",
        "referrals_payout_status_events_total",
    ):
        assert any(needed in expr for expr in rules.values()), f"no alert on {needed}"
    # Money out wrong pages; so does a payout unpaid past its pay_by.
    assert rules["ReferralPayoutsOverdue"] == "max(referrals_payouts_overdue) > 0"
    assert "mismatched|paid_twice" in rules["ReferralPayoutMoneyOutWrong"]
    assert (
        rules["ReferralPayoutsOverdueUndecided"] == "max(referrals_scheduler_overdue_undecided) > 0"
    )
    # The lag in seconds comes from the consumers; it must not resolve when they vanish.
    seconds = rules["ReferralConsumerLagSecondsHigh"]
    assert "referrals_consumer_event_age_seconds_bucket" in seconds
    assert re.search(r'\bup\{job="referral-consumer"\}|absent\(', seconds), seconds


# ---------------------------------------------------------------- grafana


def test_dashboard_is_a_grafana_dashboard() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in _dashboard_panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _dashboard_panels():
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"


def test_dashboard_uses_only_exported_metrics() -> None:
    for expr in _dashboard_exprs():
        assert not _unknown_metrics(expr), (expr, _unknown_metrics(expr))


def test_dashboard_covers_the_golden_signals_and_payouts() -> None:
    used = {token for expr in _dashboard_exprs() for token in _METRIC_TOKEN.findall(expr)}
    for needed in (
        "referrals_consumer_events_total",
        "referrals_consumer_dead_letters_total",
        "referrals_consumer_lag",
        "referrals_consumer_batch_duration_seconds_bucket",
        "referrals_consumer_event_age_seconds_bucket",
        "referrals_outbox_backlog",
        "referrals_outbox_oldest_age_seconds",
        "referrals_scheduler_decisions_total",
        "referrals_scheduler_cash_due_cents_total",
        "referrals_scheduler_last_success_timestamp_seconds",
        "referrals_scheduler_due_soon",
        "referrals_scheduler_overdue_undecided",
        "referrals_scheduler_pass_failures_total",
        "referrals_scheduler_ready",
        "referrals_payouts",
        "referrals_payouts_overdue",
        "referrals_payout_status_events_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert needed in used, f"the dashboard never shows {needed}"


def test_grafana_provisioning() -> None:
    datasources = _load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    assert [ds["type"] for ds in datasources["datasources"]] == ["prometheus"]
    providers = _load_yaml(GRAFANA / "provisioning" / "dashboards" / "referrals.yaml")
    assert providers["providers"][0]["type"] == "file"


# ---------------------------------------------------------------- kubernetes


def test_every_manifest_is_valid_yaml_with_a_kind() -> None:
    documents = list(_k8s_documents())
    assert documents
    for path, document in documents:
        assert document.get("kind") and document.get("apiVersion"), path.name
        assert "namespace" not in document.get("metadata", {}), f"{path.name} names a namespace"


def test_deployments_run_the_services_with_probes_port_and_limits() -> None:
    deployments = {d["metadata"]["name"]: d for d in _of_kind("Deployment")}
    assert deployments.keys() == SERVICES.keys()
    for name, (command, replicas) in SERVICES.items():
        spec = deployments[name]["spec"]
        pod = spec["template"]
        assert spec["replicas"] == replicas, name
        assert pod["spec"]["terminationGracePeriodSeconds"] == 30, name
        annotations = pod["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(HTTP_PORT), name
        assert annotations["prometheus.io/path"] == "/metrics", name
        (container,) = pod["spec"]["containers"]
        assert container["image"] == IMAGE, name
        assert container["command"] == command, name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": HTTP_PORT}, name
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            http_get = container[probe]["httpGet"]
            assert http_get["path"] == path, (name, probe)
            assert http_get["port"] in ("http", HTTP_PORT), (name, probe)
        resources = container["resources"]
        assert resources["requests"]["memory"] and resources["limits"]["memory"], name


def test_jobs_migrate_and_create_topics() -> None:
    jobs = {j["metadata"]["name"]: j["spec"]["template"]["spec"] for j in _of_kind("Job")}
    (migrate,) = jobs["referral-rewards-migrate"]["containers"]
    assert migrate["image"] == IMAGE
    assert migrate["command"] == ["referrals", "migrate"]

    (topics,) = jobs["referral-rewards-kafka-topics"]["containers"]
    env = {e["name"]: e.get("value") for e in topics.get("env", [])}
    assert env["PARTITIONS"] == "12"
    assert env["REPLICATION_FACTOR"] == "3"
    assert env["MIN_INSYNC_REPLICAS"] == "2"
    script = "\n".join(topics.get("args", []) + topics.get("command", []))
    assert "kafka-topics.sh" in script and "--if-not-exists" in script
    for key in CONFIG_KEYS:
        if key.startswith("TOPIC_"):
            assert f"${{{key}}}" in script, f"the topics Job does not create {key}"


def test_configmap_holds_exactly_the_documented_settings() -> None:
    (configmap,) = _of_kind("ConfigMap")
    data = configmap["data"]
    assert set(data) <= CONFIG_KEYS.keys(), f"unknown keys: {set(data) - CONFIG_KEYS.keys()}"
    assert CONFIG_KEYS.keys() <= set(data), f"missing keys: {CONFIG_KEYS.keys() - set(data)}"
    for key, expected in CONFIG_KEYS.items():
        assert isinstance(data[key], str) and data[key], key
        if expected is not None:
            assert data[key] == expected, key


def test_example_secret_holds_only_secrets() -> None:
    (secret,) = _of_kind("Secret")
    assert set(secret["stringData"]) == SECRET_KEYS


def test_workloads_read_config_only_from_the_configmap_and_secret() -> None:
    (configmap,) = _of_kind("ConfigMap")
    (secret,) = _of_kind("Secret")
    workloads = _of_kind("Deployment") + _of_kind("Job")
    for workload in workloads:
        name = workload["metadata"]["name"]
        for container in workload["spec"]["template"]["spec"]["containers"]:
            sources = container.get("envFrom", [])
            config_refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
            secret_refs = [s["secretRef"]["name"] for s in sources if "secretRef" in s]
            assert config_refs == [configmap["metadata"]["name"]], name
            assert secret_refs == [secret["metadata"]["name"]], name
            for variable in container.get("env", []):
                value_from = variable.get("valueFrom", {})
                if "configMapKeyRef" in value_from:
                    ref = value_from["configMapKeyRef"]
                    assert ref["name"] == configmap["metadata"]["name"], (name, variable)
                    assert ref["key"] in CONFIG_KEYS, (name, variable)
                if "secretKeyRef" in value_from:
                    assert value_from["secretKeyRef"]["key"] in SECRET_KEYS, (name, variable)
                assert variable["name"] not in CONFIG_KEYS.keys() | SECRET_KEYS or value_from, (
                    f"{name} hard-codes {variable['name']}; it belongs in the ConfigMap or Secret"
                )
