"""KEDA's objects, checked without a cluster: kubernetes-validate ships no schema for custom
resources, so this module holds one, written from KEDA's CRDs (keda.sh/v1alpha1, KEDA 2.x) and
its scalers' documented parameters, strict where the chart writes (an unknown or misspelt field
fails), plus the checks a schema cannot say: which metadata each trigger type reads, and which
parameters its TriggerAuthentication may fill.
"""

from __future__ import annotations

from typing import Any

import jsonschema

API_VERSION = "keda.sh/v1alpha1"
KINDS = ("ScaledObject", "TriggerAuthentication")

_INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": _NAME,
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

SCALED_OBJECT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "ScaledObject"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": _NAME,
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": _INT32,
                "cooldownPeriod": _INT32,
                "initialCooldownPeriod": _INT32,
                "idleReplicaCount": _INT32,
                "minReplicaCount": _INT32,
                "maxReplicaCount": _INT32,
                "fallback": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["failureThreshold", "replicas"],
                    "properties": {
                        "failureThreshold": _INT32,
                        "replicas": _INT32,
                        "behavior": {
                            "enum": ["static", "currentReplicas", "currentReplicasIfHigher"]
                        },
                    },
                },
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        # The behavior goes into the HPA KEDA makes: the tests validate it
                        # there, against Kubernetes' own schema.
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {"type": "object"},
                            },
                        },
                        "scalingModifiers": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "formula": {"type": "string"},
                                "target": {"type": "string"},
                                "activationTarget": {"type": "string"},
                                "metricType": {"enum": ["AverageValue", "Value"]},
                            },
                        },
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string", "minLength": 1},
                            "name": {"type": "string"},
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # Every value a string: KEDA's CRD says so, and YAML numbers fail.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {
                                    "name": _NAME,
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}

_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["parameter", "name", "key"],
    "properties": {"parameter": {"type": "string"}, "name": _NAME, "key": {"type": "string"}},
}

TRIGGER_AUTHENTICATION = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": API_VERSION},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "secretTargetRef": {"type": "array", "minItems": 1, "items": _REF},
                "configMapTargetRef": {"type": "array", "minItems": 1, "items": _REF},
                "env": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "containerName": {"type": "string"},
                        },
                    },
                },
                "podIdentity": {
                    "type": "object",
                    "required": ["provider"],
                    "properties": {"provider": {"type": "string"}},
                },
            },
        },
    },
}

# What each scaler the chart uses reads from a trigger's metadata and from its authentication
# (KEDA's postgresql and redis scalers); a name outside these is silently ignored by KEDA, so
# a typo would only show as a farm that never scales.
SCALERS: dict[str, dict[str, set[str]]] = {
    "postgresql": {
        "metadata": {
            "query",
            "targetQueryValue",
            "activationTargetQueryValue",
            "connectionFromEnv",
            "host",
            "port",
            "userName",
            "dbName",
            "sslmode",
            "passwordFromEnv",
        },
        "required": {"query", "targetQueryValue"},
        "auth": {"connection", "host", "port", "userName", "dbName", "sslmode", "password"},
    },
    "redis": {
        "metadata": {
            "address",
            "addressFromEnv",
            "host",
            "hostFromEnv",
            "port",
            "portFromEnv",
            "listName",
            "listLength",
            "activationListLength",
            "databaseIndex",
            "enableTLS",
            "unsafeSsl",
            "username",
            "usernameFromEnv",
            "passwordFromEnv",
        },
        "required": {"listName"},
        "auth": {"password", "username", "address", "host", "port", "tls", "cert", "key", "ca"},
    },
}
_NUMBERS = {
    "targetQueryValue",
    "activationTargetQueryValue",
    "listLength",
    "activationListLength",
    "databaseIndex",
}


def validate(manifest: dict[str, Any], objects: list[dict[str, Any]]) -> None:
    """Raise (jsonschema.ValidationError or AssertionError) unless `manifest` is a KEDA object
    KEDA would accept and act on as meant; `objects` is the rest of the release, where the
    TriggerAuthentications a trigger names must be."""
    if manifest["kind"] == "TriggerAuthentication":
        jsonschema.validate(manifest, TRIGGER_AUTHENTICATION)
        return
    jsonschema.validate(manifest, SCALED_OBJECT)
    spec = manifest["spec"]
    assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100), spec
    names = [t["name"] for t in spec["triggers"] if "name" in t]
    assert len(names) == len(set(names)), f"trigger names repeat: {names}"
    auths = {
        o["metadata"]["name"]: o
        for o in objects
        if o["kind"] == "TriggerAuthentication" and o["apiVersion"] == API_VERSION
    }
    for trigger in spec["triggers"]:
        scaler = SCALERS.get(trigger["type"])
        assert scaler is not None, f"no checks for trigger type {trigger['type']!r}"
        metadata = trigger["metadata"]
        assert set(metadata) <= scaler["metadata"], set(metadata) - scaler["metadata"]
        assert scaler["required"] <= set(metadata), scaler["required"] - set(metadata)
        for key in _NUMBERS & set(metadata):
            assert float(metadata[key]) >= 0, (key, metadata[key])
        if trigger["type"] == "redis":
            assert "address" in metadata or "host" in metadata, metadata
        if "authenticationRef" in trigger:
            auth = auths.get(trigger["authenticationRef"]["name"])
            assert auth is not None, f"{trigger['authenticationRef']} is not in the release"
            parameters = {ref["parameter"] for ref in auth["spec"].get("secretTargetRef", [])}
            assert parameters <= scaler["auth"], parameters - scaler["auth"]


def hpa_of(scaled_object: dict[str, Any]) -> dict[str, Any]:
    """The HorizontalPodAutoscaler KEDA makes from a ScaledObject, as far as the ScaledObject
    decides it, so that Kubernetes' own schema can judge the part the chart wrote."""
    spec = scaled_object["spec"]
    target = spec["scaleTargetRef"]
    hpa_spec: dict[str, Any] = {
        "scaleTargetRef": {
            "apiVersion": target.get("apiVersion", "apps/v1"),
            "kind": target.get("kind", "Deployment"),
            "name": target["name"],
        },
        "minReplicas": max(spec.get("minReplicaCount", 0), 1),
        "maxReplicas": spec.get("maxReplicaCount", 100),
        "metrics": [
            {
                "type": "External",
                "external": {
                    "metric": {"name": f"s{i}-{t['type']}"},
                    "target": {"type": "AverageValue", "averageValue": "1"},
                },
            }
            for i, t in enumerate(spec["triggers"])
        ],
    }
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa_spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": f"keda-hpa-{scaled_object['metadata']['name']}"},
        "spec": hpa_spec,
    }
