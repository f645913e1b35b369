"""The dashboard's Prometheus metrics at `/metrics`: its own requests, and the farm's queues and
jobs as SQL and the broker hold them when Prometheus asks.

| metric | type | labels |
|---|---|---|
| `farm_http_requests_total` | counter | method, route, status |
| `farm_http_request_duration_seconds` | histogram | method, route |
| `farm_queue_shards` | gauge | queue, state (queued, running) |
| `farm_queue_messages` | gauge | queue (absent while the broker cannot be asked) |
| `farm_jobs` | gauge | status |

`route` is the URL rule (`/api/v1/jobs/<job_id>`), never the path, so that ids do not become
label values; a request no rule matched counts as `<unmatched>`. The duration is the view's, up
to the first byte: a live-progress stream is open for minutes after it.

`/metrics` is public, like `/healthz`: Prometheus scrapes without a farm token, and the page
holds only counts over the whole farm (no id, name, prompt or project). An ingress that
publishes the dashboard publishes those counts too; block the path there if that matters.

Under gunicorn every worker process counts its own requests. With PROMETHEUS_MULTIPROC_DIR set
(dashboard/gunicorn_conf.py sets it) a scrape adds up the counts of all of them; the queue and
job gauges are read from SQL by whichever process answers, so they are never added up.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dashboard.farm_state import queues
from dashboard.security import public
from farm.context import Farm
from farm.db.models import Job
from farm.db.states import JobStatus

log = logging.getLogger(__name__)

UNMATCHED = "<unmatched>"
# From a cached page to a 64 MB upload of photos checked for faces.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter(
    "farm_http_requests", "Requests the dashboard answered.", ["method", "route", "status"]
)
LATENCY = Histogram(
    "farm_http_request_duration_seconds",
    "Seconds from a request's arrival to its response.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)

metrics = Blueprint("metrics", __name__)


class FarmState(Collector):
    """Queue depths and jobs by status, read at scrape time: SQL is their truth, and a gauge
    kept in a process would be stale in every other one."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.farm.sessions() as session:
                rows = queues(self.farm, session)
                jobs = dict(
                    session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
                )
        except Exception as error:  # a scrape without these gauges, not a failed scrape
            log.warning("farm state not in this scrape: %s", error)
            return
        shards = GaugeMetricFamily(
            "farm_queue_shards", "Shards of each queue in SQL, by state.", labels=["queue", "state"]
        )
        messages = GaugeMetricFamily(
            "farm_queue_messages", "Tasks waiting in each queue of the broker.", labels=["queue"]
        )
        for row in rows:
            shards.add_metric([row.queue, "queued"], row.queued_shards)
            shards.add_metric([row.queue, "running"], row.running_shards)
            if row.broker_messages is not None:
                messages.add_metric([row.queue], row.broker_messages)
        by_status = GaugeMetricFamily("farm_jobs", "Jobs by status.", labels=["status"])
        for status in JobStatus:
            by_status.add_metric([str(status)], jobs.get(status, 0))
        yield from (shards, messages, by_status)


def init_app(app: Flask) -> None:
    """Time every request (registered before the login checks, which may answer first) and
    collect the farm's state for `/metrics`."""
    app.before_request(_start_clock)
    app.after_request(_count)
    farm_registry = CollectorRegistry(auto_describe=False)
    farm_registry.register(FarmState(app.extensions["farm"]))
    app.extensions["metrics"] = farm_registry
    app.register_blueprint(metrics)


@metrics.get("/metrics")
@public
def scrape() -> Response:
    body = generate_latest(_requests_registry()) + generate_latest(
        current_app.extensions["metrics"]
    )
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def _requests_registry() -> CollectorRegistry:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def _start_clock() -> None:
    g.request_started = time.perf_counter()


def _count(response: Response) -> Response:
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    REQUESTS.labels(request.method, route, str(response.status_code)).inc()
    started = g.get("request_started")
    if started is not None:
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    return response
