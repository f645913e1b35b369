"""Prometheus metrics of a worker process, served on its own HTTP port.

Every name starts with `farm_`, and every label has a few known values (presets, phases,
outcomes, cache tiers): a job, shard or render id never becomes a label, since each new value
would be a new time series kept for weeks. Which worker a sample came from is the scrape
target's own label (its pod or host and port), with `farm_worker_info` to join on.

| metric | type | labels |
|---|---|---|
| `farm_renders_total` | counter | preset, outcome (done, failed) |
| `farm_shard_interruptions_total` | counter | preset (shards handed on: their worker must stop) |
| `farm_device_seconds_total` | counter | project, preset, device_kind (farm/accounting.py) |
| `farm_render_phase_seconds` | histogram | preset, phase (identity, denoise, decode, upload) |
| `farm_identity_cache_hits_total` | counter | tier (memory, storage) |
| `farm_identity_cache_misses_total` | counter | - (the tokens were computed) |
| `farm_model_load_seconds` | gauge | preset |
| `farm_worker_current_shard` | gauge | - (the shard's id; 0 while idle) |
| `farm_worker_info` | info | worker, device, presets |
| `farm_gpu_memory_allocated_bytes` | gauge | - (only where CUDA is in use) |
| `farm_gpu_memory_reserved_bytes` | gauge | - (same) |
| `farm_gpu_memory_peak_allocated_bytes` | gauge | - (same) |

The metric objects are made on first use rather than at import: the dashboard imports this
module's neighbours, and under gunicorn (PROMETHEUS_MULTIPROC_DIR) merely making a metric
writes it into every scrape of the dashboard.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal
from wsgiref.simple_server import WSGIServer

import torch
from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PHASES = ("identity", "denoise", "decode", "upload")
# From a tiny render's milliseconds on a CPU to an SDXL batch on a slow card.
PHASE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
MAX_PORT = 65535


@dataclass(frozen=True)
class WorkerMetrics:
    renders: Counter
    interruptions: Counter
    device_seconds: Counter
    render_seconds: Histogram
    identity_hits: Counter
    identity_misses: Counter
    model_load_seconds: Gauge
    current_shard: Gauge
    info: Info


@functools.cache
def worker_metrics() -> WorkerMetrics:
    """The process's metric objects, registered once in prometheus_client's default registry."""
    return WorkerMetrics(
        renders=Counter("farm_renders", "Renders finished by this worker.", ["preset", "outcome"]),
        interruptions=Counter(
            "farm_shard_interruptions",
            "Shards this worker handed on because it was told to stop; not failures.",
            ["preset"],
        ),
        # A project's name is a label: projects are a studio's few teams, and a bill per team
        # is what the counter is for. Job and render ids never are.
        device_seconds=Counter(
            "farm_device_seconds",
            "Seconds renders held this worker's device, by the project they were made for.",
            ["project", "preset", "device_kind"],
        ),
        render_seconds=Histogram(
            "farm_render_phase_seconds",
            "Seconds of one render spent in each phase (identity: its share of the shard's).",
            ["preset", "phase"],
            buckets=PHASE_BUCKETS,
        ),
        identity_hits=Counter(
            "farm_identity_cache_hits",
            "Identity tokens served from the cache, by tier.",
            ["tier"],
        ),
        identity_misses=Counter(
            "farm_identity_cache_misses", "Identity tokens computed (the vision tower ran)."
        ),
        model_load_seconds=Gauge(
            "farm_model_load_seconds", "Seconds the preset took to load at start.", ["preset"]
        ),
        current_shard=Gauge("farm_worker_current_shard", "The shard rendering now; 0 when idle."),
        info=Info("farm_worker", "Which worker this process is."),
    )


def record_render(preset: str, *, done: bool, phases: Mapping[str, float | None]) -> None:
    """Count one finished (`done`) or failed render and observe its phases (None: not
    measured, as for a render that failed before it was decoded)."""
    metrics = worker_metrics()
    metrics.renders.labels(preset=preset, outcome="done" if done else "failed").inc()
    for phase, seconds in phases.items():
        if phase not in PHASES:
            raise ValueError(f"unknown render phase {phase!r}; the phases are {PHASES}")
        if seconds is not None:
            metrics.render_seconds.labels(preset=preset, phase=phase).observe(seconds)


def record_device_seconds(
    project: str, preset: str, device_kind: str | None, seconds: float | None
) -> None:
    """Add a finished render's device seconds to its project's count (farm/accounting.py)."""
    if seconds is not None:
        labels = {"project": project, "preset": preset, "device_kind": device_kind or "unknown"}
        worker_metrics().device_seconds.labels(**labels).inc(seconds)


def record_interruption(preset: str) -> None:
    worker_metrics().interruptions.labels(preset=preset).inc()


def record_identity_lookup(source: Literal["memory", "storage", "computed"]) -> None:
    """Where a character's identity tokens came from: a hit of one tier, or a miss."""
    metrics = worker_metrics()
    if source == "computed":
        metrics.identity_misses.inc()
    else:
        metrics.identity_hits.labels(tier=source).inc()


def record_model_load(preset: str, seconds: float) -> None:
    worker_metrics().model_load_seconds.labels(preset=preset).set(seconds)


def watch_worker(
    name: str, device: str, presets: Sequence[str], current_shard: Callable[[], int | None]
) -> None:
    """Describe this process's worker, and read its state when scraped (not on every change)."""
    metrics = worker_metrics()
    metrics.info.info({"worker": name, "device": device, "presets": ",".join(presets)})
    metrics.current_shard.set_function(lambda: float(current_shard() or 0))
    _register_gpu_memory()


class GpuMemory(Collector):
    """This process's CUDA memory, read at scrape time: what its tensors hold, what the caching
    allocator keeps from the driver, and the peak since start (how close a batch came to an
    out-of-memory). Nothing where CUDA was never initialised: a scrape must not create a CUDA
    context, nor report zeros for a GPU the process does not use."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if not torch.cuda.is_initialized():
            return
        yield GaugeMetricFamily(
            "farm_gpu_memory_allocated_bytes",
            "GPU memory held by tensors.",
            value=torch.cuda.memory_allocated(),
        )
        yield GaugeMetricFamily(
            "farm_gpu_memory_reserved_bytes",
            "GPU memory reserved by torch's caching allocator.",
            value=torch.cuda.memory_reserved(),
        )
        yield GaugeMetricFamily(
            "farm_gpu_memory_peak_allocated_bytes",
            "Most GPU memory held by tensors since the process started.",
            value=torch.cuda.max_memory_allocated(),
        )


@functools.cache
def _register_gpu_memory() -> None:
    REGISTRY.register(GpuMemory())


def metrics_port(base: int | None, slot: str) -> int | None:
    """Worker slot k's port: `base` + k, so that the processes of `farm worker --devices 0,1`
    do not collide; None when metrics are off (FARM_METRICS_PORT unset or 0)."""
    if base is None:
        return None
    port = base + int(slot) if slot.isdigit() else base
    if port > MAX_PORT:
        log.warning("metrics port %s + slot %s is past %s: no metrics server", base, slot, MAX_PORT)
        return None
    return port


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> WSGIServer | None:
    """Serve /metrics on `port` in a daemon thread; None when it cannot. A port in use is
    logged, not raised: a worker without metrics still renders, one that died over them not."""
    try:
        server, _ = start_http_server(port, addr)
    except OSError as error:
        log.warning("metrics not served: port %s: %s", port, error)
        return None
    log.info("metrics on http://%s:%s/metrics", addr, port)
    return server
