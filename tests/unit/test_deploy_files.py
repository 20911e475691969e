"""The deployment files, read as files: the compose stack against the official compose-spec
JSON schema, and what a schema cannot say (settings that exist, pinned images, health
checks, non-root image). Tools that run them (kubeconform, kustomize, promtool, the image's
scripts) are in tests/integration/test_deploy.py."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
import pytest

from tests.deploy_files import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    COMPOSE_SCHEMA,
    DEPLOY,
    DOCKERFILE,
    REPO,
    compose,
    dockerfile_instructions,
    env_file,
    is_pinned,
    k8s_source_files,
    service_environment,
    settings_variables,
    variables_in_text,
)

TOUCHPOINT_SERVICES = ("migrate", "collector", "worker", "sink")


def compose_errors(document: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{error.json_path}: {error.message}" for error in validator.iter_errors(document)]


def test_the_compose_file_is_valid_against_the_compose_spec_schema() -> None:
    assert compose_errors(compose()) == []


def test_the_schema_check_is_not_vacuous() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["sink"]["healthchek"] = broken["services"]["sink"].pop("healthcheck")
    broken["services"]["worker"]["deploy"]["replicas"] = [2]
    errors = compose_errors(broken)
    assert any("healthchek" in error for error in errors), errors
    assert any("replicas" in error for error in errors), errors


def test_settings_variables_are_read_from_the_models() -> None:
    names = settings_variables()
    assert {
        "TOUCHPOINT_DATA_DIR",
        "TOUCHPOINT_METRICS_PORT",
        "TOUCHPOINT_KAFKA_BOOTSTRAP",
        "TOUCHPOINT_CLICKHOUSE_PASSWORD",
        "TOUCHPOINT_COLLECTOR_API_KEYS",
        "TOUCHPOINT_ALLOWED_LATENESS",
    } <= names
    assert "TOUCHPOINT_KAFKA" not in names and "TOUCHPOINT_CLICKHOUSE" not in names


def test_every_touchpoint_variable_of_compose_is_a_setting() -> None:
    """Names, not just values: a misspelt TOUCHPOINT_* variable is silently ignored."""
    known = settings_variables()
    used: dict[str, set[str]] = {}
    for name, service in compose()["services"].items():
        for variable in service_environment(service):
            if variable.startswith("TOUCHPOINT_"):
                # TOUCHPOINT_X_FILE: the image's entry point reads TOUCHPOINT_X from a file.
                used.setdefault(variable.removesuffix("_FILE"), set()).add(name)
    unknown = {variable: sorted(users) for variable, users in used.items() if variable not in known}
    assert unknown == {}
    assert {"TOUCHPOINT_CLICKHOUSE_PASSWORD", "TOUCHPOINT_COLLECTOR_API_KEYS"} <= set(used)


def test_every_touchpoint_variable_of_the_image_and_kubernetes_is_a_setting() -> None:
    known = settings_variables()
    sources = [DOCKERFILE, *k8s_source_files()]
    unknown = {
        str(path.relative_to(REPO)): sorted(variables_in_text(path.read_text()) - known)
        for path in sources
    }
    assert {path: names for path, names in unknown.items() if names} == {}
    assert any(variables_in_text(path.read_text()) for path in k8s_source_files())


def test_no_secret_value_is_written_in_the_compose_files() -> None:
    secret_settings = {"TOUCHPOINT_CLICKHOUSE_PASSWORD", "TOUCHPOINT_COLLECTOR_API_KEYS"}
    for name, service in compose()["services"].items():
        environment = service_environment(service)
        assert not secret_settings & set(environment), name  # only the *_FILE twins
        for variable, value in environment.items():
            if variable.endswith("_FILE") and variable.startswith("TOUCHPOINT_"):
                secret = value.removeprefix("/run/secrets/")
                assert secret in service.get("secrets", []), (name, variable)
        for variable in ("CLICKHOUSE_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD"):
            assert variable not in environment, name
    assert 'password: ""' not in (COMPOSE_DIR / "grafana" / "datasources.yml").read_text()


def test_secret_files_have_committed_examples_and_are_not_committed() -> None:
    secrets = compose()["secrets"]
    assert secrets
    ignored = (COMPOSE_DIR / "secrets" / ".gitignore").read_text().split()
    assert ignored[ignored.index("*") :] == ["*", "!.gitignore", "!*.example"]
    for name, secret in secrets.items():
        path = COMPOSE_DIR / secret["file"]
        assert path.parent == COMPOSE_DIR / "secrets", name
        assert path.with_name(path.name + ".example").is_file(), name
    keys = (COMPOSE_DIR / "secrets" / "collector_api_keys.example").read_text()
    assert isinstance(json.loads(keys), dict)  # the JSON TOUCHPOINT_COLLECTOR_API_KEYS takes


def test_every_image_is_pinned() -> None:
    for name, service in compose()["services"].items():
        assert is_pinned(service["image"]), (name, service["image"])
    arguments = dict(
        argument.partition("=")[::2]
        for instruction, argument in dockerfile_instructions()
        if instruction == "ARG"
    )
    base = arguments["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert not is_pinned("python") and not is_pinned("grafana/grafana:latest")
    assert not is_pinned("registry:5000/touchpoint") and is_pinned("touchpoint:0.2.0")


def test_every_service_is_health_checked_or_waits_for_one_that_is() -> None:
    services = compose()["services"]
    for name, service in services.items():
        check = service.get("healthcheck", {})
        checked = bool(check.get("test")) and not check.get("disable", False)
        assert checked or service.get("depends_on"), name
        for dependency, condition in service.get("depends_on", {}).items():
            target = services[dependency]
            if condition["condition"] == "service_healthy":
                assert target.get("healthcheck", {}).get("test"), (name, dependency)
            else:  # a one-shot job: it must end, not restart
                assert condition["condition"] == "service_completed_successfully", name
                assert target.get("restart") == "no", dependency
    assert services["sink"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_touchpoint_services_listen_where_their_checks_and_scrapes_look() -> None:
    services = compose()["services"]
    for name in TOUCHPOINT_SERVICES:
        service = services[name]
        environment = service_environment(service)
        assert service["command"][0] == name
        assert environment["TOUCHPOINT_KAFKA_BOOTSTRAP"] == "kafka:9092"
        if name in ("worker", "sink"):
            assert int(environment["TOUCHPOINT_METRICS_PORT"]) > 0
            assert environment["TOUCHPOINT_METRICS_HOST"] == "0.0.0.0"
    collector = service_environment(services["collector"])
    assert collector["TOUCHPOINT_COLLECTOR_HOST"] == "0.0.0.0"
    assert "TOUCHPOINT_METRICS_PORT" not in collector  # its /metrics is on the API port


def test_the_prometheus_config_of_compose_scrapes_the_compose_services() -> None:
    import yaml

    services = compose()["services"]
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.compose.yml").read_text())
    ports = {
        "collector": int(service_environment(services["collector"])["TOUCHPOINT_COLLECTOR_PORT"]),
        "worker": int(service_environment(services["worker"])["TOUCHPOINT_METRICS_PORT"]),
        "sink": int(service_environment(services["sink"])["TOUCHPOINT_METRICS_PORT"]),
    }
    scraped: dict[str, int] = {}
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                scraped[host] = int(port)
        for sd in job.get("dns_sd_configs", []):
            for host in sd["names"]:
                scraped[host] = sd["port"]
    assert scraped == ports
    mounts = services["prometheus"]["volumes"]
    assert any(mount.startswith("../prometheus:") for mount in mounts)
    assert config["rule_files"] == ["touchpoint.rules.yml"]


def test_bind_mounts_env_files_and_the_build_context_exist() -> None:
    document = compose()
    for name, service in document["services"].items():
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).exists(), (name, mount)
            else:
                assert source in document["volumes"], (name, mount)
        for file in service.get("env_file", []):
            assert env_file(COMPOSE_DIR / file), (name, file)
        if "build" in service:
            context = COMPOSE_DIR / service["build"]["context"]
            assert (context / service["build"]["dockerfile"]).resolve() == DOCKERFILE


def datasource_uids(node: Any) -> set[str]:
    """The uids of every ``"datasource": {"uid": …}`` in a dashboard."""
    found: set[str] = set()
    if isinstance(node, dict):
        source = node.get("datasource")
        if isinstance(source, dict) and "uid" in source:
            found.add(source["uid"])
        for value in node.values():
            found |= datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found |= datasource_uids(value)
    return found


def test_grafana_in_compose_has_the_datasources_the_dashboards_use() -> None:
    import yaml

    provisioned = yaml.safe_load((COMPOSE_DIR / "grafana" / "datasources.yml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    used: set[str] = set()
    for dashboard in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        used |= datasource_uids(json.loads(dashboard.read_text()))
    assert used == {"touchpoint-prometheus", "touchpoint-clickhouse"}
    assert used <= uids
    grafana = compose()["services"]["grafana"]
    assert "grafana-clickhouse-datasource" in grafana["environment"]["GF_INSTALL_PLUGINS"]
    mounts = grafana["volumes"]
    assert "../grafana/dashboards:/var/lib/grafana/dashboards/touchpoint:ro" in mounts


def test_the_dockerfile_is_multi_stage_non_root_and_health_checked() -> None:
    instructions = dockerfile_instructions()
    stages = [argument for instruction, argument in instructions if instruction == "FROM"]
    assert len(stages) >= 2, stages
    final = max(
        index for index, (instruction, _) in enumerate(instructions) if instruction == "FROM"
    )
    tail = instructions[final:]
    users = [argument for instruction, argument in tail if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    healthchecks = [argument for instruction, argument in tail if instruction == "HEALTHCHECK"]
    assert len(healthchecks) == 1 and "touchpoint-healthcheck" in healthchecks[0]
    assert ("ENTRYPOINT", '["touchpoint-entrypoint"]') in tail
    for instruction, argument in instructions:
        if instruction == "COPY" and "deploy/docker/" in argument:
            source = next(part for part in argument.split() if part.startswith("deploy/"))
            assert (REPO / source).is_file(), argument
    ignore = [
        line
        for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert ignore[0] == "*", ignore  # nothing but what the build copies
    copied = {"pyproject.toml", "README.md", "schemas/", "ingest/", "processors/", "sinks/"}
    assert {"!" + name for name in copied} <= set(ignore)


@pytest.mark.parametrize("script", ["entrypoint.sh", "healthcheck.sh"])
def test_the_image_scripts_are_posix_shell_and_executable(script: str) -> None:
    path = DOCKERFILE.parent / script
    assert path.read_text().startswith("#!/bin/sh\n")
    assert path.stat().st_mode & 0o111


def test_compose_file_is_linked_to_its_docs() -> None:
    assert "docs/deployment.md" in COMPOSE_FILE.read_text()
