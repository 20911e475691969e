"""The deployment files, run through real tools, offline:

- deploy/k8s rendered with kustomize (`kubectl kustomize`, or kustomize built from the Go
  module proxy) and every rendered manifest validated with kubeconform (built from the Go
  module proxy) against the Kubernetes JSON schemas that the PyPI package
  kubernetes-validate ships, made standalone here, for two Kubernetes versions; the
  ServiceMonitor and PrometheusRule against the CRD schemas that controller-gen
  generates from the prometheus-operator Go API module (as prometheus-operator does);
- project rules no schema holds (pinned images, probes, resources, selectors that match);
- deploy/compose/compose.yaml loaded by compose-go, the loader of `docker compose` (built
  from the Go module proxy: tests/tools/composecheck), which also resolves references
  between services, secrets and volumes;
- the image's entry point and health check against a real `touchpoint collector`.

The Go tools are built once into the repo's git-ignored .cache/bin (about 30 s with Go's
module and build caches warm, a few minutes on a new machine); a test is skipped only
when `go` is absent. Once built, the whole file takes about 15 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_files import (
    COMPOSE_FILE,
    DOCKERFILE,
    K8S_BASE,
    K8S_OVERLAYS,
    PROMETHEUS_RULE,
    PROMETHEUS_RULES,
    REPO,
    is_pinned,
    prometheus_rule_text,
    settings_variables,
    yaml_documents,
)

pytestmark = pytest.mark.integration

CACHE = REPO / ".cache"
BIN = CACHE / "bin"
KUBECONFORM = "github.com/yannh/kubeconform/cmd/kubeconform@v0.8.0"
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.8.1"
CONTROLLER_GEN = "sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0"
MONITORING_API = "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
MONITORING_VERSION = "v0.95.2"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
TARGETS = [K8S_BASE, *K8S_OVERLAYS]


def _go() -> str:
    go = shutil.which("go") or (
        "/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None
    )
    if go is None:
        pytest.skip(
            "`go` is not installed: kubeconform, kustomize and controller-gen are built with it"
        )
    return go


def _run(command: list[str], *, cwd: Path = REPO, timeout: float = 900, **env: str) -> str:
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def go_tool(package: str) -> Path:
    """A Go command installed into .cache/bin once (`go install package@version`)."""
    parts = package.split("@")[0].split("/")
    if re.fullmatch(r"v\d+", parts[-1]):  # go names .../kustomize/v5 "kustomize"
        parts.pop()
    binary = BIN / parts[-1]
    if binary.exists():
        return binary
    go = _go()
    BIN.mkdir(parents=True, exist_ok=True)
    _run([go, "install", package], GOBIN=str(BIN), GOFLAGS="-mod=mod")
    return binary


@pytest.fixture(scope="session")
def kubeconform() -> Path:
    return go_tool(KUBECONFORM)


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        command = [kubectl, "kustomize", str(directory)]
    else:
        command = [str(go_tool(KUSTOMIZE)), "build", str(directory)]
    return yaml_documents(_run(command, timeout=120))


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {target.name: kustomize_build(target) for target in TARGETS}


# --- schemas ---------------------------------------------------------------------------


def _closure(schema: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    """The definitions ``schema`` refers to, transitively, with refs made local."""
    needed: dict[str, Any] = {}

    def visit(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str) and "#/$defs/" in value:
                    name = value.split("#/$defs/", 1)[1]
                    if name not in needed:
                        needed[name] = None
                        needed[name] = visit(definitions[name])
                    out[key] = f"#/$defs/{name}"
                else:
                    out[key] = visit(value)
            return out
        if isinstance(node, list):
            return [visit(value) for value in node]
        return node

    root = visit(schema)
    root["$defs"] = needed
    return root


def _strict(node: Any) -> Any:
    """What openapi2jsonschema's --strict does: objects with properties allow no others."""
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(value) for value in node]
    return node


def _suffix(api_version: str) -> str:
    """kubeconform's {{ .KindSuffix }}: -<first label of the group>-<version>."""
    group, _, version = api_version.rpartition("/")
    return f"-{group.split('.')[0]}-{version}" if group else f"-{version}"


@pytest.fixture(scope="session")
def crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → openAPIV3Schema of the prometheus-operator CRDs, generated by
    controller-gen from the API module's Go types (cached in .cache/crdgen/out)."""
    out = CACHE / "crdgen" / MONITORING_VERSION / "out"
    if not any(out.glob("*.yaml")):
        go, generator = _go(), go_tool(CONTROLLER_GEN)
        module = out.parent
        module.mkdir(parents=True, exist_ok=True)
        (module / "go.mod").write_text("module touchpoint.local/crdgen\n\ngo 1.24\n")
        (module / "tools.go").write_text(f'package crdgen\n\nimport _ "{MONITORING_API}/v1"\n')
        _run([go, "get", f"{MONITORING_API}@{MONITORING_VERSION}"], cwd=module)
        _run([go, "mod", "tidy"], cwd=module)
        _run(
            [
                str(generator),
                "crd:crdVersions=v1",
                f"paths={MONITORING_API}/v1",
                f"output:crd:dir={out}",
            ],
            cwd=module,
        )
    found = {}
    for path in out.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            found[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    assert ("monitoring.coreos.com/v1", "ServiceMonitor") in found
    return found


@pytest.fixture(scope="session")
def schema_dir(
    tmp_path_factory: pytest.TempPathFactory,
    rendered: dict[str, list[dict[str, Any]]],
    crds: dict[tuple[str, str], dict[str, Any]],
) -> Path:
    """kubeconform's standalone-strict layout, for the kinds the manifests use:
    <dir>/v<version>-standalone-strict/<kind><suffix>.json."""
    import kubernetes_validate

    package = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    root = tmp_path_factory.mktemp("k8s-schemas")
    kinds = {(doc["apiVersion"], doc["kind"]) for docs in rendered.values() for doc in docs}
    for version in KUBERNETES_VERSIONS:
        source = package / f"v{version}-local-strict"
        definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
        target = root / f"v{version}-standalone-strict"
        target.mkdir()
        for api_version, kind in kinds:
            name = f"{kind.lower()}{_suffix(api_version)}.json"
            if (api_version, kind) in crds:
                schema = _strict(crds[(api_version, kind)])
            else:
                schema = _closure(json.loads((source / name).read_text()), definitions)
            (target / name).write_text(json.dumps(schema))
    return root


def kubeconform_run(
    kubeconform: Path, schema_dir: Path, version: str, manifests: Path
) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(kubeconform),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            version,
            "-schema-location",
            str(schema_dir)
            + "/{{ .NormalizedKubernetesVersion }}-standalone{{ .StrictSuffix }}"
            + "/{{ .ResourceKind }}{{ .KindSuffix }}.json",
            str(manifests),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    report["returncode"] = result.returncode
    return report


# --- Kubernetes ------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS, ids=lambda path: path.name)
def test_every_rendered_manifest_is_valid_for_kubeconform(
    kubeconform: Path,
    schema_dir: Path,
    rendered: dict[str, list[dict[str, Any]]],
    tmp_path: Path,
    target: Path,
    version: str,
) -> None:
    documents = rendered[target.name]
    manifests = tmp_path / f"{target.name}.yaml"
    manifests.write_text(yaml.safe_dump_all(documents))
    report = kubeconform_run(kubeconform, schema_dir, version, manifests)
    summary = report["summary"]
    assert (summary["invalid"], summary["errors"], summary["skipped"]) == (0, 0, 0), report
    assert summary["valid"] == len(documents) and report["returncode"] == 0


def test_kubeconform_rejects_what_the_api_server_would(
    kubeconform: Path, schema_dir: Path, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    """A misspelt field, a wrong type, and bad ServiceMonitor and PrometheusRule fields are
    each caught."""
    documents = rendered["base"]
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    monitor = next(doc for doc in documents if doc["kind"] == "ServiceMonitor")
    rule = next(doc for doc in documents if doc["kind"] == "PrometheusRule")
    bad = [
        {**deployment, "spec": {**deployment["spec"], "replica": 2}},
        {**deployment, "spec": {**deployment["spec"], "minReadySeconds": "ten"}},
        {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "scheme": 7}]}},
        {**monitor, "spec": {**monitor["spec"], "endpoint": []}},
        {**rule, "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expression": "1"}]}]}},
    ]
    for index, document in enumerate(bad):
        path = tmp_path / f"bad-{index}.yaml"
        path.write_text(yaml.safe_dump(document))
        report = kubeconform_run(kubeconform, schema_dir, KUBERNETES_VERSIONS[-1], path)
        assert report["summary"]["invalid"] == 1, (index, report)


def _pods(documents: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    for doc in documents:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield doc, doc["spec"]["template"]


@pytest.mark.parametrize("target", TARGETS, ids=lambda path: path.name)
def test_workloads_are_pinned_probed_sized_and_unprivileged(
    rendered: dict[str, list[dict[str, Any]]], target: Path
) -> None:
    documents = rendered[target.name]
    workloads = {doc["metadata"]["name"]: doc["kind"] for doc, _ in _pods(documents)}
    assert {doc["kind"] for doc in documents} >= {"ServiceMonitor", "PrometheusRule"}
    assert workloads == {
        "touchpoint-collector": "Deployment",
        "touchpoint-worker": "Deployment",
        "touchpoint-sink": "StatefulSet",
        "touchpoint-migrate": "Job",
    }
    for doc, template in _pods(documents):
        spec = template["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            where = (doc["metadata"]["name"], container["name"])
            assert is_pinned(container["image"]), where
            assert container["args"][0] == doc["metadata"]["name"].removeprefix("touchpoint-")
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, where
            if doc["kind"] != "Job":
                assert "livenessProbe" in container and "readinessProbe" in container, where
                ports = {port["name"] for port in container["ports"]}
                for probe in ("livenessProbe", "readinessProbe"):
                    assert container[probe]["httpGet"]["port"] in ports, where


@pytest.mark.parametrize("target", TARGETS, ids=lambda path: path.name)
def test_settings_secrets_and_selectors_fit_together(
    rendered: dict[str, list[dict[str, Any]]], target: Path
) -> None:
    documents = rendered[target.name]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (config,) = by_kind["ConfigMap"]
    (secret,) = by_kind["Secret"]
    known = settings_variables()
    assert set(config["data"]) <= known
    assert set(secret["stringData"]) <= known
    assert all("CHANGE-ME" in value for value in secret["stringData"].values())
    config_name, secret_name = config["metadata"]["name"], secret["metadata"]["name"]
    for doc, template in _pods(documents):
        for container in template["spec"]["containers"]:
            refs = [source["configMapRef"]["name"] for source in container.get("envFrom", [])]
            assert refs == [config_name], doc["metadata"]["name"]  # the hashed name
            for variable in container.get("env", []):
                assert variable["name"] in known, variable
                key_ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if key_ref is not None:
                    assert key_ref["name"] == secret_name and key_ref["key"] in secret["stringData"]
    pod_labels = [template["metadata"]["labels"] for _, template in _pods(documents)]
    for doc in by_kind["PodDisruptionBudget"] + by_kind["Service"]:
        selector = doc["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(selector.items() <= labels.items() for labels in pod_labels), doc
    workloads = {doc["metadata"]["name"]: doc for doc, _ in _pods(documents)}
    partitions = int(config["data"]["TOUCHPOINT_KAFKA_PARTITIONS"])
    for hpa in by_kind["HorizontalPodAutoscaler"]:
        assert hpa["spec"]["scaleTargetRef"]["name"] in workloads
        assert "replicas" not in workloads[hpa["spec"]["scaleTargetRef"]["name"]]["spec"]
    (worker_hpa,) = [
        hpa
        for hpa in by_kind["HorizontalPodAutoscaler"]
        if hpa["metadata"]["name"].endswith("worker")
    ]
    assert worker_hpa["spec"]["maxReplicas"] == partitions  # no idle workers
    (metric,) = worker_hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "touchpoint_consumer_lag"
    assert metric["external"]["metric"]["selector"]["matchLabels"] == {
        "group": "touchpoint",  # TOUCHPOINT_KAFKA_APP_ID: the workers' group
        "topic": "touchpoints.raw",
    }
    (monitor,) = by_kind["ServiceMonitor"]
    service_ports = {port["name"] for doc in by_kind["Service"] for port in doc["spec"]["ports"]}
    assert {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]} == service_ports


def test_the_prometheusrule_holds_exactly_the_alert_rules_file(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), "regenerate it (see its header)"
    rules = yaml.safe_load(PROMETHEUS_RULES.read_text())
    for documents in rendered.values():
        (rule,) = [doc for doc in documents if doc["kind"] == "PrometheusRule"]
        assert rule["spec"]["groups"] == rules["groups"]


def test_the_lag_metric_the_autoscaler_reads_is_the_one_workers_export() -> None:
    from prometheus_client import CollectorRegistry

    from touchpoint.monitoring import LagMonitor

    registry = CollectorRegistry()
    LagMonitor(registry, "127.0.0.1:1", "touchpoint", ["touchpoints.raw"]).lag.labels(
        "touchpoint", "touchpoints.raw", "0"
    ).set(5)
    assert (
        registry.get_sample_value(
            "touchpoint_consumer_lag",
            {"group": "touchpoint", "topic": "touchpoints.raw", "partition": "0"},
        )
        == 5
    )


# --- compose, through the loader docker compose uses ----------------------------------


COMPOSECHECK = REPO / "tests" / "tools" / "composecheck"


@pytest.fixture(scope="session")
def composecheck() -> Path:
    """tests/tools/composecheck (compose-go, the loader of `docker compose`), built once."""
    binary = BIN / "composecheck"
    if not binary.exists():
        BIN.mkdir(parents=True, exist_ok=True)
        _run([_go(), "build", "-o", str(binary), "."], cwd=COMPOSECHECK)
    return binary


def load_compose(composecheck: Path, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(composecheck), str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_compose_go_loads_the_stack_as_docker_compose_would(composecheck: Path) -> None:
    result = load_compose(composecheck, COMPOSE_FILE)
    assert result.returncode == 0, result.stderr
    project = json.loads(result.stdout)
    services = project["services"]
    assert set(services) == {
        "kafka", "clickhouse", "migrate", "collector", "worker", "sink", "prometheus", "grafana"
    }  # fmt: skip
    # `$$` in compose.yaml is a literal `$` for the shell, not an interpolation.
    assert '"$(cat /run/secrets/clickhouse_password)"' in services["clickhouse"]["entrypoint"][2]
    for name in ("migrate", "collector", "worker", "sink"):
        build = services[name]["build"]
        assert Path(build["context"]) / build["dockerfile"] == DOCKERFILE, name
    assert services["worker"]["deploy"]["replicas"] == 2
    assert services["sink"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert set(project["secrets"]) == {
        "clickhouse_password", "collector_api_keys", "grafana_admin_password"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (("secrets: [collector_api_keys]", "secrets: [nope]"), "undefined secret nope"),
        (("      migrate: {condition:", "      migrat: {condition:"), 'undefined service "migrat"'),
        (('    command: ["sink"]', '    comand: ["sink"]'), "comand"),
    ],
)
def test_compose_go_rejects_a_broken_stack(
    composecheck: Path, tmp_path: Path, change: tuple[str, str], error: str
) -> None:
    shutil.copytree(COMPOSE_FILE.parent, tmp_path / "compose")
    text = COMPOSE_FILE.read_text()
    assert change[0] in text
    broken = tmp_path / "compose" / "compose.yaml"
    broken.write_text(text.replace(change[0], change[1], 1))
    result = load_compose(composecheck, broken)
    assert result.returncode != 0 and error in result.stderr, result.stderr


# --- the image's scripts, for real -----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_the_entrypoint_reads_secret_files_and_the_healthcheck_follows_the_collector(
    tmp_path: Path,
) -> None:
    """The image's scripts, with the venv's touchpoint on PATH: the API key comes from a
    file (TOUCHPOINT_COLLECTOR_API_KEYS_FILE), the health check is 1 before the collector
    listens and 0 once it does."""
    scripts = DOCKERFILE.parent
    keys = tmp_path / "collector_api_keys"
    keys.write_text('{"web": "key-from-a-file"}\n')
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "TOUCHPOINT_COLLECTOR_PORT": str(port),
        "TOUCHPOINT_KAFKA_BOOTSTRAP": f"127.0.0.1:{_free_port()}",  # nothing there
        "TOUCHPOINT_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("TOUCHPOINT_METRICS_PORT", None)

    def healthcheck() -> int:
        return subprocess.run(
            ["sh", str(scripts / "healthcheck.sh")], env=env, capture_output=True, timeout=30
        ).returncode

    assert healthcheck() == 1
    both = subprocess.run(
        ["sh", str(scripts / "entrypoint.sh"), "--help"],
        env={
            **env,
            "TOUCHPOINT_COLLECTOR_API_KEYS": "{}",
            "TOUCHPOINT_COLLECTOR_API_KEYS_FILE": str(keys),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 1 and "set one" in both.stderr
    process = subprocess.Popen(
        ["sh", str(scripts / "entrypoint.sh"), "collector"],
        env={**env, "TOUCHPOINT_COLLECTOR_API_KEYS_FILE": str(keys)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while healthcheck() != 0:
            assert process.poll() is None, "the collector exited"
            assert time.monotonic() < deadline, "the collector never answered /healthz"
            time.sleep(0.3)
        import urllib.error
        import urllib.request

        def post(key: str) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/touchpoints",
                data=b"{}",
                headers={"Authorization": f"Bearer {key}"},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return int(answer.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert post("wrong") == 401
        assert post("key-from-a-file") != 401  # the key was read from the file
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert healthcheck() == 1
