"""A worker's Prometheus metrics: what a tiny job leaves in them, what a starting worker
reports, and the HTTP server each worker process runs, which must never take the worker down.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.models import Render
from farm.logs import current_ids, set_process_context
from farm.metrics import (
    PHASES,
    GpuMemory,
    metrics_port,
    record_render,
    start_metrics_server,
)
from farm.render.loading import LoadedPreset
from farm.settings import Settings
from tests.farm.conftest import farm_settings, job_rows, make_story, submit
from tests.fixtures.tasks import TaskRecorder
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "testhost:cpu0"
TOO_LONG = "very " * 80 + "old man img"  # its identity tokens would fall past CLIP's 77


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def snapshot() -> dict[str, float]:
    """The counters a tiny job moves, read before and after it."""
    values = {
        "done": sample("farm_renders_total", preset="tiny", outcome="done"),
        "failed": sample("farm_renders_total", preset="tiny", outcome="failed"),
        "misses": sample("farm_identity_cache_misses_total"),
        "memory": sample("farm_identity_cache_hits_total", tier="memory"),
        "storage": sample("farm_identity_cache_hits_total", tier="storage"),
    }
    for phase in PHASES:
        values[phase] = sample("farm_render_phase_seconds_count", preset="tiny", phase=phase)
    return values


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    """A farm on SQLite: what is measured here does not depend on the database."""
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    upgrade(url)
    farm = Farm(farm_settings(tmp_path, url))
    farm.__dict__["celery"] = TaskRecorder()
    yield farm
    farm.close()


def test_a_tiny_job_leaves_its_renders_phases_and_cache_lookups(
    farm: Farm, faces, tiny: LoadedPreset, json_lines: io.StringIO
):
    runtime = WorkerRuntime(farm, NAME, "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    story = make_story(
        [{"prompt": "a man img reading"}, {"prompt": "a man img"}, {"prompt": "a man img at sea"}]
    )
    job_id = submit(farm, faces, story).job_id
    _, shards, renders = job_rows(farm, job_id)
    # Stories refuse such a prompt when read; a row that holds one still fails alone.
    with farm.sessions.begin() as session:
        session.get(Render, renders[1].id).prompt = TOO_LONG
    before = snapshot()

    for shard in shards:
        run_shard(runtime, shard.id).result()

    after = snapshot()
    delta = {key: after[key] - before[key] for key in before}
    assert (delta["done"], delta["failed"]) == (2, 1)
    # Every rendered image went through every phase; the failed one never reached decode.
    for phase in PHASES:
        assert delta[phase] == 2, phase
    # One identity lookup per shard: computed once at most, then served.
    assert delta["misses"] + delta["memory"] + delta["storage"] == len(shards) == 2
    assert delta["misses"] <= 1

    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    identity = [line for line in lines if "identity tokens" in line["message"]]
    assert [(line["job"], line["shard"]) for line in identity] == [(job_id, s.id) for s in shards]


def test_render_phases_are_a_closed_set():
    with pytest.raises(ValueError, match="unknown render phase 'vae'"):
        record_render("tiny", done=True, phases={"vae": 1.0})
    before = sample("farm_render_phase_seconds_count", preset="tiny", phase="upload")
    record_render("tiny", done=False, phases={"identity": 0.5, "upload": None})
    assert sample("farm_render_phase_seconds_count", preset="tiny", phase="upload") == before


def test_a_starting_worker_reports_its_models_name_and_shard(
    farm: Farm, tiny: LoadedPreset, models_dir: Path
):
    """`WorkerRuntime.start`, as a pool child runs it: the load time of each preset, which
    worker this process is (for metrics and for every log line), and its current shard."""
    worker_farm = Farm(replace(farm.settings, models_dir=models_dir, device="cpu"))  # tiny built
    worker_farm.__dict__["celery"] = farm.celery
    runtime = WorkerRuntime.start(worker_farm, ["tiny"], "0")
    try:
        loaded = runtime.presets["tiny"]
        assert sample("farm_model_load_seconds", preset="tiny") == loaded.load_seconds > 0
        info = {"worker": runtime.name, "device": "cpu", "presets": "tiny"}
        assert sample("farm_worker_info", **info) == 1
        assert sample("farm_worker_current_shard") == 0
        runtime.current_shard = 12
        assert sample("farm_worker_current_shard") == 12
        assert current_ids()["worker"] == runtime.name
        # No CUDA in use here: no GPU memory gauges, rather than zeros.
        assert REGISTRY.get_sample_value("farm_gpu_memory_allocated_bytes") is None
    finally:
        runtime.current_shard = None
        runtime.stop()
        set_process_context()
        worker_farm.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_worker_serves_prometheus_text_on_its_port():
    record_render("tiny", done=True, phases={"denoise": 0.2})
    port = free_port()
    server = start_metrics_server(port, "127.0.0.1")
    assert server is not None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            content_type = response.headers["Content-Type"]
            body = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert content_type.startswith("text/plain; version=")
    assert "# TYPE farm_renders_total counter" in body
    assert 'farm_render_phase_seconds_bucket{le="0.25",phase="denoise",preset="tiny"}' in body
    assert "process_cpu_seconds_total" in body  # prometheus_client's own process metrics


def test_a_port_in_use_leaves_the_worker_running(caplog: pytest.LogCaptureFixture):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="farm.metrics"):
            assert start_metrics_server(port, "127.0.0.1") is None
    assert f"metrics not served: port {port}" in caplog.text


@pytest.mark.parametrize(
    ("env", "slot", "port"),
    [
        ({}, "0", None),  # unset: no metrics server
        ({"FARM_METRICS_PORT": "0"}, "1", None),  # 0: the same
        ({"FARM_METRICS_PORT": "9500"}, "0", 9500),
        ({"FARM_METRICS_PORT": "9500"}, "3", 9503),  # slot k of `farm worker`: base + k
        ({"FARM_METRICS_PORT": "65535"}, "1", None),  # past the last port: none
    ],
)
def test_each_worker_slot_gets_its_own_port(env: dict[str, str], slot: str, port: int | None):
    assert metrics_port(Settings.from_env(env).metrics_port, slot) == port


def test_gpu_memory_is_read_from_torch_once_cuda_is_in_use(monkeypatch: pytest.MonkeyPatch):
    """No GPU here: torch's CUDA counters stand in, as a worker on a card would read them."""
    assert list(GpuMemory().collect()) == []  # CUDA never initialised: no gauges at all
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda: 4 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 5 * 2**30)
    values = {family.name: family.samples[0].value for family in GpuMemory().collect()}
    assert values == {
        "farm_gpu_memory_allocated_bytes": 3 * 2**30,
        "farm_gpu_memory_reserved_bytes": 4 * 2**30,
        "farm_gpu_memory_peak_allocated_bytes": 5 * 2**30,
    }
