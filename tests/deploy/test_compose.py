"""The docker-compose stack, read without a Docker engine: it parses, every variable it uses is
documented in deploy/.env.example, the farm's settings point at services that exist, and the
services start in the order the farm needs (database, migrations, then the farm's processes).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import pytest

from tests.deploy.tools import DEPLOY, ROOT, load_yaml

COMPOSE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
RUNS_FARM_CODE = ("migrate", "dashboard", "beat", "worker-gpu0", "worker-gpu1")


def env_example() -> tuple[dict[str, str], set[str]]:
    """(the variables .env.example sets, every variable it documents, set or commented)."""
    values: dict[str, str] = {}
    documented: set[str] = set()
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            documented.add(match.group(2))
            if not match.group(1):
                values[match.group(2)] = match.group(3)
    return values, documented


def _closing_brace(text: str, start: int) -> int:
    """Where the `}` that closes the `${` at `start` is."""
    depth, i = 0, start
    while i < len(text):
        if text.startswith("${", i):
            depth, i = depth + 1, i + 2
            continue
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unclosed ${{ in {text!r}")


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `$$`,
    defaults nested as compose allows them."""
    out, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i)
            match = re.fullmatch(r"([A-Za-z_]\w*)(:?[-?])?(.*)", text[i + 2 : end], re.S)
            assert match, text[i:end]
            name, op, rest = match.groups()
            value = env.get(name)
            unset = value is None or (value == "" and op is not None and op.startswith(":"))
            if op in (":-", "-") and unset:
                value = interpolate(rest, env)
            elif op in (":?", "?") and unset:
                raise KeyError(f"{name}: {rest}")
            out.append(value or "")
            i = end + 1
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def variables(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def farm_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as the container gets it, with .env.example's values."""
    values, _ = env_example()
    return {k: interpolate(str(v), values) for k, v in service["environment"].items()}


def test_the_stack_has_every_service(services):
    expected = {
        "redis",
        "postgres",
        "minio",
        "minio-init",
        "migrate",
        "dashboard",
        "beat",
        "worker-gpu0",
    }
    assert expected <= set(services)


def test_interpolation_helper_reads_nested_defaults():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y$${A}", env) == "x1y${A}"
    assert interpolate("${EMPTY:-d}/${EMPTY-d}/${NONE-${A:-z}}", env) == "d//1"
    with pytest.raises(KeyError):
        interpolate("${NONE:?set it}", env)


def test_every_variable_is_documented_and_the_required_ones_are_set():
    values, documented = env_example()
    used = variables(COMPOSE.read_text())
    assert used - documented == set(), "document these in deploy/.env.example"
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", COMPOSE.read_text()))
    assert required and required <= set(values), required - set(values)
    interpolate(COMPOSE.read_text(), values)  # no `:?` error with the example's values


def test_env_example_documents_every_farm_setting():
    source = (ROOT / "farm" / "settings.py").read_text()
    settings = set(re.findall(r'"(FARM_[A-Z_]+)"', source))
    assert {"FARM_DATABASE_URL", "FARM_BROKER_URL", "FARM_STORAGE_URL"} <= settings
    _, documented = env_example()
    needed = settings | {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FARM_SECRET_KEY"}
    assert needed - documented == set()


@pytest.mark.parametrize("name", RUNS_FARM_CODE)
def test_farm_services_reach_the_stacks_servers(services, name):
    env = farm_env(services[name])
    database = urlparse(env["FARM_DATABASE_URL"])
    assert database.scheme == "postgresql" and database.hostname == "postgres"
    assert database.port == 5432 and database.password
    broker = urlparse(env["FARM_BROKER_URL"])
    assert broker.scheme == "redis" and broker.hostname == "redis" and broker.password
    assert urlparse(env["FARM_S3_ENDPOINT_URL"]).hostname == "minio"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    for server in ("postgres", "redis", "minio"):
        assert server in services
    # The bucket the farm writes to is the one minio-init makes.
    bucket = urlparse(env["FARM_STORAGE_URL"]).hostname
    init = farm_env(services["minio-init"])
    assert bucket == init["MINIO_BUCKET"]
    assert 'mc mb --ignore-existing "farm/$${MINIO_BUCKET}"' in services["minio-init"]["command"][0]


@pytest.mark.parametrize("name", RUNS_FARM_CODE)
def test_farm_services_set_only_real_settings(services, name):
    source = (ROOT / "farm" / "settings.py").read_text()
    for key in services[name]["environment"]:
        if key.startswith("FARM_") and key != "FARM_SECRET_KEY":
            assert f'"{key}"' in source, key


def test_passwords_match_between_servers_and_clients(services):
    env = farm_env(services["dashboard"])
    values, _ = env_example()
    postgres = {
        k: interpolate(str(v), values) for k, v in services["postgres"]["environment"].items()
    }
    assert urlparse(env["FARM_DATABASE_URL"]).password == postgres["POSTGRES_PASSWORD"]
    redis_command = [interpolate(part, values) for part in services["redis"]["command"]]
    password = redis_command[redis_command.index("--requirepass") + 1]
    assert urlparse(env["FARM_BROKER_URL"]).password == password


def test_startup_order_puts_migrations_first(services):
    migrate = services["migrate"]
    assert migrate["command"] == ["farm", "db", "upgrade"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("dashboard", "beat", "worker-gpu0", "worker-gpu1"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        ), name
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for server in ("postgres", "redis", "minio"):
        assert services[server]["healthcheck"]["test"], server


def test_one_worker_per_gpu(services):
    workers = {name: s for name, s in services.items() if name.startswith("worker-gpu")}
    seen_ids: list[str] = []
    for name, worker in workers.items():
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1, "one GPU per worker"
        seen_ids += device["device_ids"]
        assert worker["command"][:4] == ["farm", "worker", "--devices", "0"], name
        assert "--beat" not in worker["command"]
        assert worker["environment"]["FARM_DEVICE"] == "cuda"
        assert "models:/models:ro" in worker["volumes"]
        assert worker["hostname"] == name, "a stable name: one worker row across restarts"
        minutes = int(re.fullmatch(r"(\d+)m", worker["stop_grace_period"]).group(1))
        assert minutes >= 10, "Docker's 10 s default would kill a worker mid-shard"
    assert len(seen_ids) == len(set(seen_ids)) >= 2


def test_beat_runs_once(services):
    beats = [
        name
        for name, s in services.items()
        if "beat" in (s.get("command") or []) or "--beat" in (s.get("command") or [])
    ]
    assert beats == ["beat"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "workers.celery_app", "beat"]


def test_dashboard_is_published_with_its_secret_key(services):
    dashboard = services["dashboard"]
    assert dashboard["ports"] == ["${DASHBOARD_PORT:-8000}:8000"]
    assert farm_env(dashboard)["FARM_SECRET_KEY"]
    assert dashboard["build"]["dockerfile"] == "deploy/Dockerfile.dashboard"
    assert (DEPLOY / dashboard["build"]["context"] / "pyproject.toml").exists()


def test_data_and_models_live_in_volumes(compose, services):
    declared = set(compose["volumes"])
    assert {"models", "postgres-data", "redis-data", "minio-data"} <= declared
    used = {
        mount.split(":")[0]
        for s in services.values()
        for mount in s.get("volumes", [])
        if not mount.startswith((".", "/"))
    }
    assert used == declared


def test_third_party_images_are_pinned(services):
    values, _ = env_example()
    for name, service in services.items():
        image = interpolate(service["image"], values)
        if image.startswith("render-farm-"):
            continue  # built from deploy/
        tag = image.rpartition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), (name, image)


def test_workers_serve_metrics_on_this_machine_only(services):
    published = []
    for name in ("worker-gpu0", "worker-gpu1"):
        worker = services[name]
        port = worker["environment"]["FARM_METRICS_PORT"]
        assert port in worker["expose"], name  # for a Prometheus in the stack's network
        (mapping,) = worker["ports"]
        host, _, container = mapping.rpartition(":")
        assert host.startswith("127.0.0.1:") and container == port, name
        published.append(interpolate(host, env_example()[0]))
    assert len(set(published)) == len(published), "two workers on one host port"
    # The dashboard's metrics are at /metrics on its own published port.
    assert services["dashboard"]["ports"] == ["${DASHBOARD_PORT:-8000}:8000"]


def test_flower_follows_the_farms_broker_on_this_machine_only(services):
    flower = services["flower"]
    assert flower["profiles"] == ["flower"], "opt-in: Flower can revoke tasks"
    assert flower["command"][:2] == ["celery", "flower"]
    env = farm_env(flower)
    assert env["CELERY_BROKER_URL"] == farm_env(services["dashboard"])["FARM_BROKER_URL"]
    assert not any("redis://" in part for part in flower["command"]), "a password in argv"
    assert [p.startswith("127.0.0.1:") for p in flower["ports"]] == [True]
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"
