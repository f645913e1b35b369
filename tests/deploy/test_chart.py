"""The Helm chart, rendered offline the way chart maintainers check it in CI: with its default
values (the quick start) and with a production-like values file, linted, every manifest
validated strictly against Kubernetes' schemas (KEDA's objects against tests/deploy/keda.py),
and the properties a GPU farm depends on asserted one by one.
"""

from __future__ import annotations

import base64
import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, text

from farm.db.migrate import upgrade
from farm.db.models import Character, Job, Project, Shard, project_or_default
from farm.db.session import make_engine, session_factory
from tests.deploy import keda, prometheus_operator
from tests.deploy.tools import (
    CHART,
    FULLNAME,
    PRODUCTION_VALUES,
    Release,
    containers,
    load_yaml,
    render,
    require,
    tool,
)

helm_python = require("helm_python", "helm-python-sdk")
kubernetes_validate = require("kubernetes_validate", "kubernetes-validate")

# The oldest Kubernetes the chart states (Chart.yaml kubeVersion) and the newest known.
KUBERNETES_VERSIONS = ("1.29.0", kubernetes_validate.utils.latest_version())
WORKER = f"{FULLNAME}-worker"
MONITORED = {"metrics": {"serviceMonitor": {"enabled": True}}, "flower": {"enabled": True}}


@pytest.fixture(scope="module")
def default() -> Release:
    return render({})


@pytest.fixture(scope="module")
def production() -> Release:
    return render(load_yaml(PRODUCTION_VALUES))


@pytest.fixture(scope="module")
def monitored() -> Release:
    """The quick start with every optional monitoring piece on: ServiceMonitors, Flower."""
    return render(MONITORED)


@pytest.fixture(params=["default", "production", "monitored"])
def release(request: pytest.FixtureRequest) -> Release:
    return request.getfixturevalue(request.param)


def merged(release: Release) -> dict[str, Any]:
    """The values the release was rendered with, defaults included."""
    with helm_python.Chart.load(CHART) as chart:
        return chart.merge_values(release.values)


def worker_pod(release: Release) -> dict[str, Any]:
    return release.get("Deployment", WORKER)["spec"]["template"]["spec"]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in pod_spec["containers"] if c["name"] == name]
    return found


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


# --- the chart as a whole ---------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_lints_clean(values_file: Path | None):
    values = load_yaml(values_file) if values_file else {}
    report = helm_python.lint(CHART, values, strict=True)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert problems == []


def test_every_manifest_validates_strictly(release: Release):
    """Built-in kinds against Kubernetes' schemas (strict: an unknown field fails), at the
    oldest and newest version the chart supports; KEDA's kinds against their own."""
    assert release.objects
    for manifest in release.objects:
        if manifest["apiVersion"] == prometheus_operator.API_VERSION:
            prometheus_operator.validate(manifest, release.objects)
            continue
        if manifest["apiVersion"] == keda.API_VERSION:
            keda.validate(manifest, release.objects)
            if manifest["kind"] == "ScaledObject":
                for version in KUBERNETES_VERSIONS:
                    kubernetes_validate.validate(keda.hpa_of(manifest), version, strict=True)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_the_validator_command_passes(production: Release, tmp_path: Path):
    """`kubernetes-validate --strict`, as CI would run it on the rendered chart; it knows no
    custom resources and only warns about KEDA's and the Prometheus Operator's, which keda.py
    and prometheus_operator.py check instead."""
    bundle = tmp_path / "production.yaml"
    bundle.write_text(
        "\n---\n".join(
            production.manifests[k] for k in sorted(production.manifests) if k.endswith(".yaml")
        )
    )
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert not [line for line in lines if line.startswith(("ERROR", "FATAL"))]
    warned = [line for line in lines if line.startswith("WARN")]
    custom = ("ScaledObject", "TriggerAuthentication", "ServiceMonitor")
    assert warned and all(any(kind in line for kind in custom) for line in warned), warned
    assert any("ServiceMonitor" in line for line in warned)
    assert sum(line.startswith("INFO") for line in lines) == len(production.objects) - len(warned)


def test_selectors_match_their_pods(release: Release):
    for kind in ("Deployment", "StatefulSet"):
        for workload in release.of_kind(kind):
            selector = workload["spec"]["selector"]["matchLabels"]
            labels = workload["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), workload["metadata"]["name"]
    for service in release.of_kind("Service"):
        matched = [
            w
            for w in release.of_kind("Deployment") + release.of_kind("StatefulSet")
            if service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(matched) == 1, service["metadata"]["name"]


def test_pods_run_hardened_and_pinned(release: Release):
    for where, pod in release.pod_specs():
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        for c in containers(pod):
            context = c["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, (where, c["name"])
            assert context["readOnlyRootFilesystem"] is True, (where, c["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (where, c["name"])
            repository, _, tag = c["image"].rpartition(":")
            assert repository and tag and tag != "latest", (where, c["image"])
            assert "resources" in c, (where, c["name"])


def test_every_secret_reference_resolves(release: Release):
    """Each secretKeyRef names a Secret of the release that has the key, or an existing
    Secret the values name (which the chart cannot see, and must not invent)."""
    values = merged(release)
    existing = {
        values["database"]["existingSecret"],
        values["broker"]["existingSecret"],
        values["storage"]["existingSecret"],
        values["dashboard"]["existingSecret"],
    } - {""}
    secrets = {s["metadata"]["name"]: s.get("data", {}) for s in release.of_kind("Secret")}
    refs = [
        (where, env["valueFrom"]["secretKeyRef"])
        for where, pod in release.pod_specs()
        for c in containers(pod)
        for env in c.get("env", [])
        if "secretKeyRef" in env.get("valueFrom", {})
    ]
    refs += [
        (auth["metadata"]["name"], ref)
        for auth in release.of_kind("TriggerAuthentication")
        for ref in auth["spec"]["secretTargetRef"]
    ]
    assert refs
    for where, ref in refs:
        if ref["name"] in existing:
            continue
        assert ref["name"] in secrets, (where, ref)
        assert ref["key"] in secrets[ref["name"]], (where, ref)


# --- GPU workers ------------------------------------------------------------------------------


def test_each_worker_pod_gets_one_gpu(release: Release):
    worker = container(worker_pod(release), "worker")
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in worker["resources"].get("requests", {})
    # The GPU the device plugin gives the pod is index 0 inside it; CUDA or nothing.
    assert worker["args"][:4] == ["farm", "worker", "--devices", "0"]
    assert {"name": "FARM_DEVICE", "value": "cuda"} in worker["env"]
    for where, pod in release.pod_specs():
        if where != f"Deployment/{WORKER}":
            for c in containers(pod):
                assert "nvidia.com/gpu" not in str(c.get("resources")), where


def test_workers_are_placed_by_the_values(production: Release):
    values = load_yaml(PRODUCTION_VALUES)["worker"]
    pod = worker_pod(production)
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]


def test_default_workers_tolerate_gpu_taints(default: Release):
    tolerations = worker_pod(default)["tolerations"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_startup_probe_allows_minutes_of_model_loading(release: Release):
    worker = container(worker_pod(release), "worker")
    probe = worker["startupProbe"]
    assert probe["exec"]["command"][:4] == ["python", "-m", "workers.probe", "--startup"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 10 * 60
    assert probe["timeoutSeconds"] >= 10  # a Python start on a busy node


def test_liveness_probe_reads_the_heartbeat_and_spares_a_busy_worker(release: Release):
    """The heartbeat in SQL, never a ping through the broker into the busy Celery process;
    and no readiness probe that could take a rendering worker out of anything."""
    values = merged(release)["worker"]["probes"]["liveness"]
    worker = container(worker_pod(release), "worker")
    probe = worker["livenessProbe"]
    command = probe["exec"]["command"]
    assert command[:4] == ["python", "-m", "workers.probe", "--liveness"]
    assert command[command.index("--max-age") + 1] == str(values["maxHeartbeatAgeSeconds"])
    assert "httpGet" not in probe and "tcpSocket" not in probe
    assert not any("celery" in part or "inspect" in part for part in command)
    # Heartbeats come every 10 s: tolerate several missed ones, and give Python time.
    assert values["maxHeartbeatAgeSeconds"] >= 60
    assert probe["timeoutSeconds"] >= 10
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 60
    assert "readinessProbe" not in worker


def test_grace_period_lets_a_worker_finish_its_shard(release: Release):
    values = merged(release)["worker"]
    pod = worker_pod(release)
    assert pod["terminationGracePeriodSeconds"] == values["terminationGracePeriodSeconds"]
    assert pod["terminationGracePeriodSeconds"] >= 10 * 60
    # The image's entrypoint (tini) stays PID 1 and hands SIGTERM to `farm worker`.
    assert "command" not in container(pod, "worker")


def test_models_come_read_only_from_a_volume_claim(release: Release):
    values = merged(release)["models"]
    pod = worker_pod(release)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "models"]
    claim = volume["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    if values["existingClaim"]:
        assert claim["claimName"] == values["existingClaim"]
        assert release.find("PersistentVolumeClaim", claim["claimName"]) is None
    else:
        pvc = release.get("PersistentVolumeClaim", claim["claimName"])
        assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    (mount,) = [m for m in container(pod, "worker")["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True
    settings = release.get("ConfigMap", f"{FULLNAME}-settings")["data"]
    assert mount["mountPath"] == settings["FARM_MODELS_DIR"]


def test_beat_runs_once_and_only_in_its_own_deployment(release: Release):
    worker = container(worker_pod(release), "worker")
    assert "--beat" not in worker["args"] and "beat" not in worker["args"]
    beat = release.get("Deployment", f"{FULLNAME}-beat")
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    (runs_beat,) = [
        (where, c["name"])
        for where, pod in release.pod_specs()
        for c in pod["containers"]
        if "beat" in c.get("command", []) + c.get("args", [])
        or "--beat" in c.get("command", []) + c.get("args", [])
    ]
    assert runs_beat == (f"Deployment/{FULLNAME}-beat", "beat")
    command = container(beat["spec"]["template"]["spec"], "beat")["command"]
    assert command[:4] == ["celery", "-A", "workers.celery_app", "beat"]


def test_pods_wait_for_the_migrations(release: Release):
    for name in ("worker", "beat", "dashboard"):
        pod = release.get("Deployment", f"{FULLNAME}-{name}")["spec"]["template"]["spec"]
        (init,) = pod["initContainers"]
        assert "workers.probe --migrated" in init["command"][-1], name


# --- migrations -------------------------------------------------------------------------------


def test_migrations_run_as_a_hook_before_the_new_version(production: Release, default: Release):
    job = production.get("Job", f"{FULLNAME}-migrations")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    migrate = container(job["spec"]["template"]["spec"], "migrate")
    assert migrate["command"] == ["farm", "db", "upgrade"]
    (url,) = [e for e in migrate["env"] if e["name"] == "FARM_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"] == {"name": "render-farm-database", "key": "url"}

    # The bundled PostgreSQL exists only after install: the job follows it there, and reads
    # the URL from a hook Secret made just before it (the release's own Secret comes later).
    job = default.get("Job", f"{FULLNAME}-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    hook_secret = default.get("Secret", f"{FULLNAME}-migrations")
    weight = int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert weight < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    database = secret_data(default.get("Secret", f"{FULLNAME}-database"))
    assert secret_data(hook_secret)["url"] == database["url"]


def test_inline_database_url_migrates_before_install():
    release = render(inline_values())
    job = release.get("Job", f"{FULLNAME}-migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    migrate = container(job["spec"]["template"]["spec"], "migrate")
    (url,) = [e for e in migrate["env"] if e["name"] == "FARM_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-migrations"


# --- autoscaling ------------------------------------------------------------------------------


def test_keda_scales_workers_on_queued_and_running_shards(release: Release):
    values = merged(release)["autoscaling"]
    scaled = release.get("ScaledObject", WORKER)["spec"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": WORKER,
    }
    assert scaled["minReplicaCount"] == values["minReplicas"] == 0
    assert scaled["maxReplicaCount"] == values["maxReplicas"]
    assert scaled["cooldownPeriod"] == values["cooldownPeriod"]
    postgresql = scaled["triggers"][0]
    assert postgresql["type"] == "postgresql"
    query = " ".join(postgresql["metadata"]["query"].split())
    assert "FROM shards" in query and "shards.status IN ('queued', 'running')" in query
    assert postgresql["metadata"]["targetQueryValue"] == str(values["shardsPerWorker"])
    assert postgresql["metadata"]["activationTargetQueryValue"] == "0"
    auth = release.get("TriggerAuthentication", postgresql["authenticationRef"]["name"])
    (ref,) = auth["spec"]["secretTargetRef"]
    worker_env = container(worker_pod(release), "worker")["env"]
    (database_url,) = [e for e in worker_env if e["name"] == "FARM_DATABASE_URL"]
    # KEDA reads the same URL as the farm, from the same Secret.
    assert ref["parameter"] == "connection"
    assert {"name": ref["name"], "key": ref["key"]} == database_url["valueFrom"]["secretKeyRef"]
    # KEDA owns the replica count: a stated one would be reset by every upgrade.
    assert "replicas" not in release.get("Deployment", WORKER)["spec"]
    assert not release.of_kind("HorizontalPodAutoscaler")


def test_the_scaler_query_counts_this_presets_queued_and_running_shards(
    default: Release, tmp_path: Path
):
    """The query runs on the farm's own schema (made by its migrations) and counts what a
    worker of these presets could take or is taking: not finished or paused shards, not other
    presets, and no more of a capped project's shards than its cap lets run."""
    query = default.get("ScaledObject", WORKER)["spec"]["triggers"][0]["metadata"]["query"]
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(url)
    engine = make_engine(url)
    with session_factory(engine).begin() as session:
        character = Character(
            name="Ada", class_word="woman", trigger="img", photos_fingerprint="f" * 64
        )
        session.add(character)
        session.flush()
        capped = Project(name="commercials", max_running_shards=1)
        session.add(capped)
        session.flush()
        for preset, project_id, statuses in [
            ("photomaker-v2", None, ["queued", "queued", "running", "succeeded", "failed"]),
            ("photomaker-v2", None, ["cancelled", "paused", "paused"]),
            ("photomaker-v1", None, ["queued", "running"]),
            ("photomaker-v2", capped.id, ["queued", "queued", "queued"]),  # one runs at a time
        ]:
            job = Job(
                character_id=character.id,
                preset=preset,
                spec={},
                renders_total=4,
                project_id=project_or_default(project_id),
            )
            session.add(job)
            session.flush()
            session.execute(
                insert(Shard),
                [{"job_id": job.id, "index": i, "status": s} for i, s in enumerate(statuses)],
            )
    with engine.connect() as connection:
        assert connection.execute(text(query)).scalar_one() == 3 + 1
    engine.dispose()


def test_redis_trigger_is_optional_and_authenticated(default: Release, production: Release):
    assert [t["type"] for t in default.get("ScaledObject", WORKER)["spec"]["triggers"]] == [
        "postgresql"
    ]
    triggers = production.get("ScaledObject", WORKER)["spec"]["triggers"]
    redis = [t for t in triggers if t["type"] == "redis"]
    values = load_yaml(PRODUCTION_VALUES)["autoscaling"]
    assert [t["metadata"]["listName"] for t in redis] == values["redis"]["listNames"]
    for trigger in redis:
        assert trigger["metadata"]["address"] == values["redis"]["address"]
        assert trigger["metadata"]["listLength"] == str(values["shardsPerWorker"])
        auth = production.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": "render-farm-broker", "key": "password"}
        ]


def test_plain_mode_has_fixed_workers_and_no_autoscaler():
    release = render({"autoscaling": {"enabled": False}, "worker": {"replicas": 3}})
    assert release.get("Deployment", WORKER)["spec"]["replicas"] == 3
    for kind in ("ScaledObject", "TriggerAuthentication", "HorizontalPodAutoscaler"):
        assert not release.of_kind(kind), kind


# --- settings and secrets ---------------------------------------------------------------------

SECRETS = {
    "database": "db-pass-4f1c",
    "broker": "redis-pass-9a2e",
    "key_id": "AKIAFARMTESTKEY0001",
    "secret_key": "s3-secret-77d0",
    "dashboard": "dashboard-key-1b9f",
}


def inline_values() -> dict[str, Any]:
    """Every secret given inline (the least careful way), to see where each one lands."""
    return {
        "database": {"url": f"postgresql://farm:{SECRETS['database']}@db.internal:5432/farm"},
        "broker": {"url": f"redis://:{SECRETS['broker']}@redis.internal:6379/0"},
        "storage": {
            "url": "s3://studio/farm",
            "s3EndpointUrl": "https://s3.example.com",
            "accessKeyId": SECRETS["key_id"],
            "secretAccessKey": SECRETS["secret_key"],
        },
        "dashboard": {"secretKey": SECRETS["dashboard"]},
        "autoscaling": {"redis": {"enabled": True, "listNames": ["render.photomaker-v2"]}},
        "bundled": {
            "postgresql": {"enabled": False},
            "redis": {"enabled": False},
            "minio": {"enabled": False},
        },
    }


def test_no_secret_outside_a_secret():
    release = render(inline_values())
    in_secrets = "\n".join(
        value for s in release.of_kind("Secret") for value in secret_data(s).values()
    )
    elsewhere = "\n".join(str(o) for o in release.objects if o["kind"] != "Secret")
    for name, value in SECRETS.items():
        assert value in in_secrets, name
        assert value not in elsewhere, name
    # The Redis trigger gets the broker's password from the broker's Secret, not a copy.
    broker = secret_data(release.get("Secret", f"{FULLNAME}-broker"))
    assert broker["password"] == SECRETS["broker"]


def test_settings_configmap_holds_no_secret(release: Release):
    generated = {
        value
        for s in release.of_kind("Secret")
        for value in secret_data(s).values()
        if len(value) >= 8
    }
    for configmap in release.of_kind("ConfigMap"):
        for key, value in configmap["data"].items():
            assert not any(
                word in key.upper()
                for word in (
                    "PASSWORD",
                    "SECRET",
                    "TOKEN",
                    "KEY_ID",
                    "DATABASE_URL",
                    "BROKER_URL",
                    "EVENTS_URL",
                )
            ), key
            assert "@" not in value, key  # a URL with credentials
            assert not any(secret in value for secret in generated), key


def test_settings_are_the_farms_own(release: Release):
    """Every FARM_* name in the ConfigMap is one farm/settings.py reads: a misspelt setting
    would be silently ignored by the farm."""
    source = (CHART.parents[1] / "farm" / "settings.py").read_text()
    data = release.get("ConfigMap", f"{FULLNAME}-settings")["data"]
    farm_keys = [k for k in data if k.startswith("FARM_")]
    assert farm_keys
    for key in farm_keys:
        assert f'"{key}"' in source, key
    values = merged(release)["settings"]
    assert data["FARM_SHARD_SIZE"] == str(values["shardSize"])
    assert data["FARM_LEASE_SECONDS"] == str(values["leaseSeconds"])
    assert data["FARM_REAP_INTERVAL"] == str(values["reapInterval"])


def test_quick_start_bundles_the_services_production_does_not(default, production):
    for service in ("postgresql", "redis", "minio"):
        default.get("StatefulSet", f"{FULLNAME}-{service}")
        default.get("Service", f"{FULLNAME}-{service}")
        assert production.find("StatefulSet", f"{FULLNAME}-{service}") is None
    assert default.get("Job", f"{FULLNAME}-minio-bucket")
    settings = default.get("ConfigMap", f"{FULLNAME}-settings")["data"]
    assert settings["FARM_S3_ENDPOINT_URL"] == f"http://{FULLNAME}-minio:9000"
    database = secret_data(default.get("Secret", f"{FULLNAME}-database"))
    assert database["url"] == (
        f"postgresql://farm:{database['password']}@{FULLNAME}-postgresql:5432/farm"
    )
    assert production.find("Secret", f"{FULLNAME}-database") is None


# --- dashboard --------------------------------------------------------------------------------


def test_dashboard_serves_on_8000_with_health_and_readiness(release: Release):
    pod = release.get("Deployment", f"{FULLNAME}-dashboard")["spec"]["template"]["spec"]
    dashboard = container(pod, "dashboard")
    assert dashboard["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert dashboard["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert dashboard["readinessProbe"]["httpGet"]["path"] == "/readyz"
    (key,) = [e for e in dashboard["env"] if e["name"] == "FARM_SECRET_KEY"]
    assert "secretKeyRef" in key["valueFrom"]
    service = release.get("Service", f"{FULLNAME}-dashboard")
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_ingress_is_optional(default: Release, production: Release):
    assert not default.of_kind("Ingress")
    ingress = production.get("Ingress", f"{FULLNAME}-dashboard")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{FULLNAME}-dashboard", "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == ["farm.studio.example.com"]


# --- metrics, logs and Flower -----------------------------------------------------------------


def scrape_annotations(workload: dict[str, Any]) -> dict[str, str]:
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    return {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")}


def test_workers_and_the_dashboard_are_scraped(release: Release):
    port = merged(release)["metrics"]["workerPort"]
    worker = container(worker_pod(release), "worker")
    assert worker["ports"] == [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    # The pod's one worker process is slot 0: it listens on the base port itself.
    assert {"name": "FARM_METRICS_PORT", "value": str(port)} in worker["env"]
    assert scrape_annotations(release.get("Deployment", WORKER)) == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    dashboard = release.get("Deployment", f"{FULLNAME}-dashboard")
    assert scrape_annotations(dashboard)["prometheus.io/port"] == "8000"
    settings = release.get("ConfigMap", f"{FULLNAME}-settings")["data"]
    assert settings["FARM_LOG_FORMAT"] == merged(release)["settings"]["logFormat"] == "json"


def test_metrics_can_be_switched_off():
    release = render({"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}})
    worker = container(worker_pod(release), "worker")
    assert "ports" not in worker
    assert not [e for e in worker["env"] if e["name"] == "FARM_METRICS_PORT"]
    for workload in release.of_kind("Deployment"):
        assert scrape_annotations(workload) == {}, workload["metadata"]["name"]
    assert not release.of_kind("ServiceMonitor")
    assert release.find("Service", f"{FULLNAME}-worker-metrics") is None


def test_service_monitors_are_optional_and_carry_the_operators_label(
    default: Release, production: Release
):
    assert not default.of_kind("ServiceMonitor")
    assert default.find("Service", f"{FULLNAME}-worker-metrics") is None
    monitors = {m["metadata"]["name"]: m for m in production.of_kind("ServiceMonitor")}
    assert set(monitors) == {WORKER, f"{FULLNAME}-dashboard"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
    assert monitors[WORKER]["spec"]["endpoints"][0]["port"] == "metrics"
    # Headless: Prometheus reaches each worker pod, never one picked by a load balancer.
    assert production.get("Service", f"{FULLNAME}-worker-metrics")["spec"]["clusterIP"] == "None"


def test_flower_is_optional_and_reads_the_farms_broker(default: Release, monitored: Release):
    assert default.find("Deployment", f"{FULLNAME}-flower") is None
    pod = monitored.get("Deployment", f"{FULLNAME}-flower")["spec"]["template"]["spec"]
    flower = container(pod, "flower")
    assert flower["command"][:2] == ["celery", "flower"]
    assert not any("redis" in part for part in flower["command"]), "a password in argv"
    (broker,) = [e for e in flower["env"] if e["name"] == "CELERY_BROKER_URL"]
    (farm_broker,) = [
        e
        for e in container(worker_pod(monitored), "worker")["env"]
        if e["name"] == "FARM_BROKER_URL"
    ]
    assert broker["valueFrom"] == farm_broker["valueFrom"]
    assert flower["readinessProbe"]["httpGet"]["path"] == "/healthcheck"
    service = monitored.get("Service", f"{FULLNAME}-flower")
    assert service["spec"]["type"] == "ClusterIP"
    assert not monitored.find("Ingress", f"{FULLNAME}-flower")


# --- values.schema.json -----------------------------------------------------------------------

BAD_VALUES = {
    "unknown key": {"workers": {"replicas": 2}},
    "max below one": {"autoscaling": {"maxReplicas": 0}},
    "replicas as text": {"autoscaling": {"maxReplicas": "ten"}},
    "grace too short to finish a shard": {"worker": {"terminationGracePeriodSeconds": 5}},
    "heartbeat limit below the beat": {
        "worker": {"probes": {"liveness": {"maxHeartbeatAgeSeconds": 5}}}
    },
    "shard size out of the farm's range": {"settings": {"shardSize": 500}},
    "preset that would break the SQL": {"worker": {"presets": ["v2') OR 1=1 --"]}},
    "no preset": {"worker": {"presets": []}},
    "gpus set by hand": {"worker": {"resources": {"limits": {"nvidia.com/gpu": 2}}}},
    "a driver KEDA cannot read": {"database": {"url": "postgresql+psycopg://u:p@h/db"}},
    "no database at all": {"bundled": {"postgresql": {"enabled": False}}},
    "redis trigger without lists": {"autoscaling": {"redis": {"enabled": True}}},
    "secret in the ConfigMap": {"settings": {"extraEnv": {"API_TOKEN": "x"}}},
    "storage that is not S3": {"storage": {"url": "file:///data"}},
    "latest image": {"bundled": {"redis": {"image": "redis:latest"}}},
    "log format nobody reads": {"settings": {"logFormat": "xml"}},
    "a privileged metrics port": {"metrics": {"workerPort": 80}},
    "scrape interval without a unit": {"metrics": {"serviceMonitor": {"interval": "30"}}},
    "latest flower": {"flower": {"image": "mher/flower:latest"}},
}


@pytest.mark.parametrize("values", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_fail_at_install(values: dict[str, Any]):
    with helm_python.Chart.load(CHART) as chart:
        with pytest.raises(helm_python.HelmValuesError):
            chart.validate_schema(values)
        with pytest.raises(helm_python.HelmError):
            chart.render(values, name="farm", namespace="studio")


def test_the_shipped_values_pass_the_schema():
    with helm_python.Chart.load(CHART) as chart:
        chart.validate_schema({})
        chart.validate_schema(load_yaml(PRODUCTION_VALUES))
        chart.validate_schema(copy.deepcopy(inline_values()))
