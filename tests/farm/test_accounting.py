"""Device seconds: recorded by the worker for each render (its identity check's re-renders
included, and the tokens it makes for consistency), summed exactly into jobs and projects,
reported per project, counted by project in the worker's metrics, and read back as a story's
estimate.

The tiny preset renders in milliseconds, so the pipeline here waits a fixed time per call: each
render's device seconds then have a floor that only the time attributed to it can reach."""

from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import update

from farm.accounting import job_usage, project_usage
from farm.auth import ensure_project
from farm.db.models import Render
from farm.db.types import utcnow
from farm.estimates import estimate
from tests.farm.conftest import job_rows, make_story, submit
from tests.farm.test_run_shard import runtime_with
from workers.qc import IdentityCheck
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CALL_S = 0.2  # what every call into the pipeline waits, on top of rendering


class Slow:
    """The tiny pipeline, holding the device `CALL_S` longer per call, as a big model would."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(CALL_S)
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipeline, name)


def device_seconds(project: str) -> float:
    labels = {"project": project, "preset": "tiny", "device_kind": "cpu"}
    return REGISTRY.get_sample_value("farm_device_seconds_total", labels) or 0.0


def run_job(farm, faces, runtime, project_id: int, **fields: Any) -> str:
    job_id = submit(farm, faces, make_story(2, **fields), project_id=project_id).job_id
    for shard in job_rows(farm, job_id)[1]:
        run_shard(runtime, shard.id).result()
    return job_id


def test_device_seconds_add_up_from_renders_to_job_to_project_with_qc_renders(
    farm, faces, tiny, monkeypatch
):
    with farm.sessions.begin() as session:
        team = ensure_project(session, "features")
        team_id, other_id = team.id, ensure_project(session, "commercials").id
    runtime = runtime_with(farm, replace(tiny, pipeline=Slow(tiny.pipeline)))
    counted_before = device_seconds("features")

    plain = run_job(farm, faces, runtime, team_id)
    monkeypatch.setattr(IdentityCheck, "score", lambda self, image: 0.0)  # always under the bar
    checked = run_job(farm, faces, runtime, team_id, min_face_similarity=0.5, qc_retries=2)
    elsewhere = run_job(farm, faces, runtime, other_id)

    plain_renders, checked_renders = job_rows(farm, plain)[2], job_rows(farm, checked)[2]
    for render in plain_renders + checked_renders:
        assert (render.device_kind, render.worker_id) == ("cpu", runtime.name)
    # One batch per shard: each render holds its share of one call at least ...
    assert all(r.device_s >= CALL_S / 2 for r in plain_renders)
    # ... and a render made again twice also the two calls of its re-renders.
    assert all(r.qc_retries == 2 for r in checked_renders)
    assert all(r.device_s >= CALL_S / 2 + 2 * CALL_S for r in checked_renders)

    with farm.sessions() as session:
        usage = job_usage(session, [plain, checked, elsewhere])
        report = project_usage(session, team_id, "features", utcnow() - timedelta(hours=1))
    assert usage[plain].device_s == pytest.approx(sum(r.device_s for r in plain_renders))
    assert usage[checked].device_s == pytest.approx(sum(r.device_s for r in checked_renders))
    assert (usage[plain].renders, usage[checked].renders) == (2, 2)
    assert {line.job_id for line in report.lines} == {plain, checked}  # not the other team's
    assert report.device_s == pytest.approx(usage[plain].device_s + usage[checked].device_s)
    assert report.renders == 4
    assert device_seconds("features") - counted_before == pytest.approx(report.device_s)


def test_the_tokens_a_shard_makes_for_consistency_are_its_renders_device_seconds(farm, faces, tiny):
    # Story mode: the worker renders the reference batch (one more call) before the shard's
    # batches, and that call held the device for these renders.
    runtime = runtime_with(farm, replace(tiny, pipeline=Slow(tiny.pipeline)))
    with farm.sessions.begin() as session:
        project_id = ensure_project(session, "features").id
    story = {"consistency": {"mode": "story", "reference_scenes": 2}}

    def rendering_s(job_id: str) -> float:  # the identity's encoding is computed once only
        return sum(r.device_s - r.identity_s for r in job_rows(farm, job_id)[2])

    off = rendering_s(run_job(farm, faces, runtime, project_id))
    consistent = rendering_s(run_job(farm, faces, runtime, project_id, **story))
    assert runtime.shared_tokens.rendered == 1
    assert consistent - off >= 0.75 * CALL_S


def test_a_report_counts_the_renders_finished_in_its_period_as_csv_and_json(farm, faces, tiny):
    with farm.sessions.begin() as session:
        team_id = ensure_project(session, "features").id
    runtime = runtime_with(farm, tiny)
    old, new = (run_job(farm, faces, runtime, team_id, seed=seed) for seed in (1, 2))
    last_month = utcnow() - timedelta(days=30)
    with farm.sessions.begin() as session:
        session.execute(update(Render).where(Render.job_id == old).values(finished=last_month))

    since = utcnow() - timedelta(days=1)
    with farm.sessions() as session:
        report = project_usage(session, team_id, "features", since)
        earlier = project_usage(session, team_id, "features", last_month, until=since)

    assert [line.job_id for line in report.lines] == [new]
    assert [line.job_id for line in earlier.lines] == [old]
    rows = list(csv.DictReader(io.StringIO(report.as_csv())))
    assert [(r["job"], r["preset"], r["device_kind"], r["renders"]) for r in rows] == [
        (new, "tiny", "cpu", "2")
    ]
    assert float(rows[0]["device_seconds"]) == pytest.approx(report.device_s, abs=1e-3)
    document = json.loads(report.as_json())
    assert document["project"] == "features" and document["renders"] == 2
    assert document["jobs"][0]["job_id"] == new
    assert document["device_seconds"] == pytest.approx(report.device_s, abs=1e-3)


def test_an_estimate_scales_what_the_farm_measured_for_the_preset(farm, faces, tiny):
    with farm.sessions.begin() as session:
        team_id = ensure_project(session, "features").id
    job_id = run_job(farm, faces, runtime_with(farm, tiny), team_id)
    renders = job_rows(farm, job_id)[2]
    measured = sum(r.device_s for r in renders) / len(renders)

    with farm.sessions() as session:
        same = estimate(session, make_story(6))
        bigger = estimate(session, make_story(6, width=128, height=128, steps=4))
        unmeasured = estimate(session, make_story(6, preset="tiny-v1"))

    assert same.per_render_s == pytest.approx(measured)
    assert same.device_s == pytest.approx(6 * measured)
    assert same.measured_renders == 2
    assert bigger.per_render_s == pytest.approx(8 * measured)  # 4x the pixels, twice the steps
    assert unmeasured is None
