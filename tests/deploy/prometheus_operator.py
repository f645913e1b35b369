"""The Prometheus Operator's ServiceMonitor, checked without a cluster: kubernetes-validate
ships no schema for custom resources, so this module holds one for the fields the chart writes
(monitoring.coreos.com/v1, from the operator's CRD; strict: an unknown or misspelt field
fails), and the check a schema cannot make: that each ServiceMonitor finds exactly one Service
of the release, with the port it names, over pods that open that port.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema

API_VERSION = "monitoring.coreos.com/v1"
KIND = "ServiceMonitor"

_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
# The operator's Duration: "30s", "1m30s", "500ms".
_DURATION_PART = re.compile(r"([0-9]+)(ms|y|w|d|h|m|s)")
_DURATION = {"type": "string", "pattern": r"^(0|([0-9]+(ms|y|w|d|h|m|s))+)$"}
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}

SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": KIND},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": _NAME,
                "namespace": {"type": "string"},
                "labels": _LABELS,
                "annotations": _LABELS,
            },
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["string", "integer"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                            "honorLabels": {"type": "boolean"},
                            "honorTimestamps": {"type": "boolean"},
                            "relabelings": {"type": "array", "items": {"type": "object"}},
                            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
                        },
                    },
                },
            },
        },
    },
}


def _seconds(duration: str) -> float:
    return sum(int(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(duration))


def validate(manifest: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """Raise (jsonschema.ValidationError or AssertionError) unless `manifest` is a
    ServiceMonitor the operator accepts and that scrapes a port the release really opens."""
    jsonschema.validate(manifest, SERVICE_MONITOR)
    spec = manifest["spec"]
    wanted = spec["selector"]["matchLabels"]
    services = [
        o
        for o in objects
        if o["kind"] == "Service" and wanted.items() <= o["metadata"].get("labels", {}).items()
    ]
    assert len(services) == 1, f"{manifest['metadata']['name']} selects {len(services)} Services"
    (service,) = services
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    selected = service["spec"]["selector"].items()
    pods = [
        o["spec"]["template"]
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        and selected <= o["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(pods) == 1, service["metadata"]["name"]
    container_ports = {
        p["name"] for c in pods[0]["spec"]["containers"] for p in c.get("ports", []) if "name" in p
    }
    for endpoint in spec["endpoints"]:
        assert endpoint["port"] in ports, (endpoint["port"], sorted(ports))
        assert ports[endpoint["port"]]["targetPort"] in container_ports, endpoint
        if "interval" in endpoint and "scrapeTimeout" in endpoint:
            assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"]), endpoint
