"""The dashboard's `/metrics`: its requests by route and status, and the farm's queues and jobs
read from SQL at scrape time; and the gunicorn hook that lets its processes count together."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from gunicorn.config import Config
from prometheus_client.parser import text_string_to_metric_families

from dashboard import gunicorn_conf
from dashboard.gunicorn_conf import on_starting
from farm.db.session import make_engine, session_factory
from farm.logs import FarmHandler
from tests.fixtures.dashboard import Studio, finish_renders, make_character, story_body

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(studio: Studio) -> Samples:
    response = studio.client().get("/metrics")  # no token, no session: Prometheus has neither
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_requests_are_counted_by_route_template_and_status(studio: Studio):
    job_route = "/api/v1/jobs/<uuid:job_id>"
    job_url = "/api/v1/jobs/00000000-0000-0000-0000-000000000001"
    before = scrape(studio)

    studio.call("GET", "/api/v1/me")
    studio.call("GET", "/api/v1/me")
    studio.call("GET", "/api/v1/me", who=None)  # refused before the view: still counted
    assert studio.call("GET", job_url).status_code == 404
    assert studio.client().get("/no/such/page").status_code == 404

    after = scrape(studio)

    def counted(method: str, route: str, status: str) -> float:
        labels = {"method": method, "route": route, "status": status}
        return (value(after, "farm_http_requests_total", **labels) or 0) - (
            value(before, "farm_http_requests_total", **labels) or 0
        )

    assert counted("GET", "/api/v1/me", "200") == 2
    assert counted("GET", "/api/v1/me", "401") == 1
    assert counted("GET", job_route, "404") == 1
    assert counted("GET", "<unmatched>", "404") == 1
    # The path itself, with its id, is never a label value.
    assert not any(job_url in str(labels) for _, labels in after)
    me = {"method": "GET", "route": "/api/v1/me"}
    timed = (value(after, "farm_http_request_duration_seconds_count", **me) or 0) - (
        value(before, "farm_http_request_duration_seconds_count", **me) or 0
    )
    assert timed == 3


def test_queue_depths_and_jobs_by_status_come_from_sql(studio: Studio):
    character = make_character(studio)
    waiting = studio.call("POST", "/api/v1/jobs", json=story_body(character))
    done = studio.call("POST", "/api/v1/jobs", json=story_body(character))
    assert waiting.status_code == done.status_code == 201
    finish_renders(studio, done.json["id"])

    samples = scrape(studio)

    # Three renders in shards of two: the waiting job's two shards are queued.
    assert value(samples, "farm_queue_shards", queue="render.tiny", state="queued") == 2
    assert value(samples, "farm_queue_shards", queue="render.tiny", state="running") == 0
    assert value(samples, "farm_queue_shards", queue="render.photomaker-v2", state="queued") == 0
    assert value(samples, "farm_jobs", status="queued") == 1
    assert value(samples, "farm_jobs", status="succeeded") == 1
    assert value(samples, "farm_jobs", status="failed") == 0
    # The test farm's broker is a recorder that cannot be asked: no depth, rather than 0.
    assert not [key for key in samples if key[0] == "farm_queue_messages"]


def test_a_database_that_is_down_leaves_the_rest_of_the_scrape(
    studio: Studio, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    unreachable = tmp_path / "a-folder-not-a-database"
    unreachable.mkdir()
    engine = make_engine(f"sqlite:///{unreachable}")
    studio.farm.__dict__["sessions"] = session_factory(engine)
    with caplog.at_level(logging.WARNING, logger="dashboard.metrics"):
        samples = scrape(studio)
    engine.dispose()
    assert "farm state not in this scrape" in caplog.text
    assert not [key for key in samples if key[0] in ("farm_jobs", "farm_queue_shards")]
    assert [key for key in samples if key[0] == "farm_http_requests_total"]


def test_gunicorn_starts_with_an_empty_multiprocess_folder_and_the_farm_log_format(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setenv("FARM_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FARM_LOG_FORMAT", "json")
    stale = tmp_path / "dashboard-metrics" / "counter_4242.db"
    stale.parent.mkdir()
    stale.write_bytes(b"counts of an earlier run")
    root = logging.getLogger()
    level = root.level
    try:
        on_starting(SimpleNamespace(cfg=Config()))
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(stale.parent)
        assert stale.parent.is_dir() and not any(stale.parent.iterdir())
        assert [h for h in root.handlers if isinstance(h, FarmHandler)]
    finally:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
        for handler in [h for h in root.handlers if isinstance(h, FarmHandler)]:
            root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.parametrize(("given", "expected"), [(1, 32), (8, 32), (40, 40)])
def test_gunicorn_gives_each_process_a_thread_per_stream_and_eight_for_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: int, expected: int
):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    monkeypatch.setenv("FARM_SSE_MAX_STREAMS", "24")
    cfg = Config()
    cfg.set("threads", given)  # --threads on the command line: raised, never lowered
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        on_starting(SimpleNamespace(cfg=cfg))
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)

    assert cfg.threads == expected and gunicorn_conf.worker_class == "gthread"


# Two dashboard processes, as gunicorn runs them: each counts its own requests into the shared
# folder, and whichever answers the scrape reports the sum.
PROCESS = """
import sys
from dashboard.app import create_app

client = create_app({"TESTING": True, "SECRET_KEY": "k" * 40}).test_client()
for _ in range(int(sys.argv[1])):
    client.get("/healthz")
if sys.argv[2] == "scrape":
    sys.stdout.write(client.get("/metrics").text)
"""


@pytest.mark.slow
def test_processes_sharing_a_multiprocess_folder_are_counted_together(
    tmp_path: Path, migrated_sqlite: Path
):
    folder = tmp_path / "prometheus"
    folder.mkdir()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "FARM_DATA_DIR": str(tmp_path / "data"),
        "FARM_DATABASE_URL": f"sqlite:///{migrated_sqlite}",
        "FARM_BROKER_URL": "memory://",
    }
    outputs = [
        subprocess.run(
            [sys.executable, "-c", PROCESS, count, then],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout
        for count, then in (("2", "exit"), ("3", "scrape"))
    ]
    healthz = {"method": "GET", "route": "/healthz", "status": "200"}
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(outputs[1])
        for sample in family.samples
    }
    assert value(samples, "farm_http_requests_total", **healthz) == 5
    assert value(samples, "farm_jobs", status="queued") == 0
