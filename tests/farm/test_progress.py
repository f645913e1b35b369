"""A job's progress per render and per denoising step, its ETA, and why it waits: what `farm
status`, the job page and the API read (farm/progress.py), fed by a real shard run."""

from __future__ import annotations

from typing import Any

import pytest

from farm.context import Farm
from farm.db.models import Worker
from farm.db.types import utcnow
from farm.progress import eta_text, job_report
from tests.farm.conftest import job_rows, make_story, submit
from workers import steps
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ProgressWatcher:
    """Stands in for the live events: keeps each one, and on every `render.step` reads the
    job's progress as `farm status` would at that moment."""

    def __init__(self, farm: Farm) -> None:
        self.farm = farm
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fractions: list[float] = []

    def publish(self, job_id: str, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))
        if kind == "render.step":
            with self.farm.sessions() as session:
                self.fractions.append(job_report(session, job_id).fraction)


def test_progress_moves_per_step_while_a_shard_renders(farm, faces, tiny, monkeypatch):
    monkeypatch.setattr(steps, "REPORT_EVERY_S", 0.0)  # every step, not once a second
    watcher = ProgressWatcher(farm)
    farm.__dict__["events"] = watcher
    job_id = submit(farm, faces, make_story(2, steps=4)).job_id  # one shard, one batch
    runtime = WorkerRuntime(farm, "testhost:cpu0", "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    _, [shard], _ = job_rows(farm, job_id)

    assert run_shard(runtime, shard.id).result() == "succeeded"

    step_events = [fields for kind, fields in watcher.events if kind == "render.step"]
    assert [(e["step"], e["steps"]) for e in step_events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert all(len(e["renders"]) == 2 for e in step_events)
    # Before the batch ended, the job moved a quarter at a time, not 0% then 100%.
    assert watcher.fractions == [0.25, 0.5, 0.75, 1.0]
    kinds = [kind for kind, _ in watcher.events]
    assert kinds.index("render.done") > kinds.index("render.step")
    with farm.sessions() as session:
        report = job_report(session, job_id)
    assert (report.fraction, report.running, report.eta_s) == (1.0, [], None)


def test_step_reports_are_throttled_but_the_last_step_always_counts(farm, faces):
    job_id = submit(farm, faces, make_story(1)).job_id
    _, _, [render] = job_rows(farm, job_id)
    watcher = ProgressWatcher(farm)
    farm.__dict__["events"] = watcher
    now = [0.0]
    reporter = steps.StepReporter(farm, job_id, [render.id], 50, every_s=1.0, clock=lambda: now[0])
    for step in range(50):  # a quarter of a second a step
        now[0] += 0.25
        reporter(steps.StepState(step, 0.0, False, None))  # type: ignore[arg-type]
    reported = [fields["step"] for kind, fields in watcher.events if kind == "render.step"]
    assert reported == [*range(4, 50, 4), 50]


def test_eta_from_the_farms_measured_renders_and_waiting_without_a_worker(farm, faces, tiny):
    runtime = WorkerRuntime(farm, "testhost:cpu0", "cpu", ["tiny"], {"tiny": tiny})
    runtime.register()
    first = submit(farm, faces, make_story(2)).job_id
    _, [shard], _ = job_rows(farm, first)
    assert run_shard(runtime, shard.id).result() == "succeeded"

    # Another seed: the first job's two scenes again would be reused, not rendered.
    second = submit(farm, faces, make_story(4, seed=99)).job_id
    waiting = submit(farm, faces, make_story(2, preset="tiny-v1")).job_id
    with farm.sessions() as session:
        served = job_report(session, second)
        unserved = job_report(session, waiting)
        _, _, renders = job_rows(farm, first)
    # No render of its own yet: the first job's device seconds per render stand in (same
    # size and steps), what its two renders held their device for on average.
    assert served.per_render_s == pytest.approx(sum(r.device_s for r in renders) / 2)
    # Four renders in two shards, one live worker for the preset: one after the other.
    assert served.eta_s == pytest.approx(4 * served.per_render_s)
    assert served.waiting is None
    assert unserved.waiting == "no worker serves preset tiny-v1: it will wait"
    assert unserved.eta_s is None

    with farm.sessions.begin() as session:  # the worker's heartbeat stopped: not serving
        session.get(Worker, "testhost:cpu0").last_heartbeat = utcnow().replace(year=2000)
    with farm.sessions() as session:
        assert job_report(session, second).waiting == "no worker serves preset tiny: it will wait"


def test_eta_text_reads_as_a_person_says_it():
    assert [eta_text(s) for s in (None, 4.4, 65, 3725)] == ["", "ETA 4s", "ETA 1m05s", "ETA 1h02m"]
