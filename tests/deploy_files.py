"""Readers for the deployment files (deploy/docker, deploy/compose, deploy/k8s), shared by
tests/unit/test_deploy_files.py and tests/integration/test_deploy.py."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from schemas.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
K8S_OVERLAYS = sorted(path for path in (K8S / "overlays").iterdir() if path.is_dir())
COMPOSE_SCHEMA = REPO / "tests" / "data" / "compose-spec" / "compose-spec.json"

_VARIABLE = re.compile(r"\bTOUCHPOINT_[A-Z0-9_]+\b")


def settings_variables() -> frozenset[str]:
    """Every environment variable schemas/settings.py reads: prefix + field name."""

    def walk(model: type[BaseSettings]) -> Iterator[str]:
        prefix = str(model.model_config.get("env_prefix", ""))
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                yield from walk(annotation)  # a section reads its own prefix
            else:
                yield (prefix + name).upper()

    return frozenset(walk(Settings))


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (comments and blank lines skipped), as compose and kustomize read them."""
    pairs: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path}: not KEY=VALUE: {line!r}"
            pairs[key] = value
    return pairs


def service_environment(service: dict[str, Any]) -> dict[str, str]:
    """A compose service's environment: its env_file(s), then `environment` on top."""
    merged: dict[str, str] = {}
    files = service.get("env_file", [])
    for name in [files] if isinstance(files, str) else files:
        merged.update(env_file(COMPOSE_DIR / (name if isinstance(name, str) else name["path"])))
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.partition("=")[::2] for item in environment)
    merged.update({key: str(value) for key, value in environment.items()})
    return merged


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def variables_in_text(text: str) -> set[str]:
    return set(_VARIABLE.findall(text))


def k8s_source_files() -> list[Path]:
    """Every file of deploy/k8s (manifests, patches, settings env files)."""
    return sorted(path for path in K8S.rglob("*") if path.is_file())


def yaml_documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def is_pinned(image: str) -> bool:
    """A tag that names a version (not latest, not missing), or a digest."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (the colon was a registry port)
        return False
    return tag != "latest" and any(char.isdigit() for char in tag)


PROMETHEUS_RULES = DEPLOY / "prometheus" / "touchpoint.rules.yml"
PROMETHEUS_RULE = K8S_BASE / "prometheusrule.yaml"
_PROMETHEUS_RULE_HEADER = """\
# The alert rules of deploy/prometheus/touchpoint.rules.yml as a PrometheusRule, for a
# Prometheus run by the Prometheus Operator (it must select this object's labels).
# Generated: edit the rules file (and its promtool tests), then run
#   .venv/bin/python -c 'from tests.deploy_files import write_prometheus_rule as w; w()'
# tests/integration/test_deploy.py fails while this file differs from what that writes.
"""


def prometheus_rule_text() -> str:
    """deploy/k8s/base/prometheusrule.yaml as generated from the rules file."""
    rules = yaml.safe_load(PROMETHEUS_RULES.read_text(encoding="utf-8"))

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "touchpoint"},
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
    return _PROMETHEUS_RULE_HEADER + body


def write_prometheus_rule() -> None:
    PROMETHEUS_RULE.write_text(prometheus_rule_text(), encoding="utf-8")
