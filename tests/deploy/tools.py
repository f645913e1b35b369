"""What the deployment tests share: where things are, the offline tools, and a rendered chart.

The tools (helm-python-sdk, kubernetes-validate, hadolint) come from PyPI with the test extra.
Without them a test skips on a laptop and fails under CI=true, like the database tests: a
skip there would report a green build for a chart that was never rendered.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests.fixtures.services import skip_or_fail

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "render-farm"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
RELEASE, NAMESPACE = "farm", "studio"
FULLNAME = f"{RELEASE}-render-farm"


def missing(what: str) -> None:
    skip_or_fail(f"{what} is not installed (it comes with the test extra)", module_level=True)


def require(module: str, package: str) -> ModuleType:
    """Import `module` (from the PyPI package `package`), or skip / fail as above."""
    try:
        return __import__(module)
    except ImportError:
        missing(f"{package} (import {module})")
        raise  # not reached: missing() always raises


def tool(name: str) -> str:
    """An executable from the test extra: beside this Python first (a venv not on PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        missing(f"the `{name}` command")
    assert found is not None
    return found


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@dataclass
class Release:
    """A chart rendered offline: the manifests by template, and the objects in them."""

    values: dict[str, Any]
    manifests: dict[str, str]
    objects: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.objects = [
            doc
            for path, text in sorted(self.manifests.items())
            if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        assert len(found) == 1, f"{kind} {name}: found {len(found)} in {self.names()}"
        return found[0]

    def find(self, kind: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.of_kind(kind) if o["metadata"]["name"] == name]
        return found[0] if found else None

    def names(self) -> list[str]:
        return [f"{o['kind']}/{o['metadata']['name']}" for o in self.objects]

    def pod_specs(self) -> list[tuple[str, dict[str, Any]]]:
        """(object, pod spec) of everything that runs pods."""
        return [
            (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
            for o in self.objects
            if o["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet")
        ]


def render(values: dict[str, Any] | None = None) -> Release:
    helm_python = require("helm_python", "helm-python-sdk")
    values = values or {}
    with helm_python.Chart.load(CHART) as chart:
        return Release(values, chart.render(values, name=RELEASE, namespace=NAMESPACE))


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]
