"""Preview-first approval: a job submitted with `approval: preview` renders every scene once,
fast and small, then holds (no shard queued for full quality, so no GPU) until scenes are
approved; approved scenes render at full quality with the preview's seeds, scene by scene."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from farm.approval import approve_scenes, contact_sheet
from farm.context import Farm
from farm.db.models import Job, Render
from farm.db.states import JobStatus, RenderStatus
from farm.errors import InputError
from farm.lifecycle import cancel_job
from farm.picks import pick_variant
from farm.preview import preview_of, preview_preset, preview_story
from farm.queue.app import FINALIZE_JOB
from farm.render.loading import LoadedPreset, load_preset
from farm.render.presets import PRESETS, get_preset
from farm.rerolls import reroll
from farmcli.main import main
from tests.farm.conftest import job_rows, make_story, submit, table_counts
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_fast(models_dir: Path) -> LoadedPreset:
    return load_preset(get_preset("tiny-fast"), models_dir, device="cpu")


def worker(farm: Farm, tiny: LoadedPreset, tiny_fast: LoadedPreset) -> WorkerRuntime:
    runtime = WorkerRuntime(
        farm, "testhost:cpu0", "cpu", ["tiny", "tiny-fast"], {"tiny": tiny, "tiny-fast": tiny_fast}
    )
    runtime.register()
    return runtime


def run_queued(farm: Farm, runtime: WorkerRuntime, job_id: str) -> None:
    for shard in job_rows(farm, job_id)[1]:
        if shard.status == "queued":
            run_shard(runtime, shard.id).result()


def test_the_preview_preset_is_the_fast_sibling_else_fewer_steps_at_half_size():
    assert preview_preset(PRESETS["tiny"]).name == "tiny-fast"
    assert preview_preset(PRESETS["photomaker-v2"]).name == "photomaker-v2-lightning"  # fewest
    assert preview_preset(PRESETS["photomaker-v2-hyper"]).name == "photomaker-v2-hyper"
    assert preview_preset(PRESETS["photomaker-v1"]) is None  # no few-step LoRA for V1

    v1 = preview_story(make_story(2, preset="photomaker-v1", width=1024, height=768, steps=40))
    assert (v1.preset, v1.width, v1.height, v1.steps) == ("photomaker-v1", 512, 384, 10)
    wide = make_story(2, preset="photomaker-v2", aspect="3:2", width=None, height=None)
    fast = preview_story(wide.model_copy(update={"variants": 4}))
    assert (fast.preset, fast.aspect, fast.variants) == ("photomaker-v2-lightning", None, 1)
    width, height = wide.render_size()
    assert fast.render_size() == (width // 2 // 8 * 8, height // 2 // 8 * 8)
    assert preview_story(make_story(1)).render_size() == (64, 64)  # the smallest a story takes
    # The same scenes and seeds: what is approved is what renders at full quality.
    story = make_story(3, variants=2, min_face_similarity=0.5)
    preview = preview_story(story)
    assert preview.approval == "none" and preview.min_face_similarity is None
    full_firsts = [(p.scene_index, p.seed) for p in story.plan() if p.variant == 0]
    assert [(p.scene_index, p.seed) for p in preview.plan()] == full_firsts


def test_a_preview_job_holds_until_approved_and_renders_with_the_previews_seeds(
    farm, faces, tiny, tiny_fast
):
    story = make_story(3, variants=2, title="Newton ch1", approval="preview")
    submitted = submit(farm, faces, story)
    sent = list(farm.celery.sent)
    job, shards, renders = job_rows(farm, submitted.job_id)
    assert (job.status, job.name, shards, renders) == (
        JobStatus.AWAITING_APPROVAL,
        "Newton ch1",
        [],  # nothing queued at full quality: the job holds no GPU
        [],
    )
    with farm.sessions() as session:
        preview = preview_of(session, job.id)
        assert preview is not None and preview.name == "Newton ch1 (preview)"
    _, _, previews = job_rows(farm, preview.id)
    assert (preview.preset, len(previews)) == ("tiny-fast", 3)  # every scene once
    assert {task.queue for task in sent} == {"render.tiny-fast"}

    before = table_counts_of(farm)
    with pytest.raises(InputError, match=r"preview of scene\(s\) 1, 2, 3 .* not rendered yet"):
        approve_scenes(farm, job.id)
    assert table_counts_of(farm) == before

    runtime = worker(farm, tiny, tiny_fast)
    run_queued(farm, runtime, preview.id)
    assert job_rows(farm, job.id)[0].status is JobStatus.AWAITING_APPROVAL
    with farm.sessions() as session:
        sheet = contact_sheet(session, job_rows(farm, job.id)[0])
    assert [(s.number, s.state, s.preview.job_id) for s in sheet] == [
        (n, "ready", preview.id) for n in (1, 2, 3)
    ]

    # Scene by scene: scene 2 first. Only its renders are queued, on the full preset.
    farm.celery.sent.clear()
    approved = approve_scenes(farm, job.id, [2])
    assert (approved.scenes, approved.renders) == ([2], 2)
    job, shards, renders = job_rows(farm, job.id)
    assert job.status is JobStatus.QUEUED
    assert {task.queue for task in farm.celery.sent} == {"render.tiny"}
    seeds = {r.scene_index: r.seed for r in job_rows(farm, preview.id)[2]}
    assert [(r.scene_index, r.variant) for r in renders] == [(1, 0), (1, 1)]
    assert renders[0].seed == seeds[1]  # the preview's seed, at full quality

    run_queued(farm, runtime, job.id)
    job, _, renders = job_rows(farm, job.id)
    assert job.status is JobStatus.AWAITING_APPROVAL  # scenes 1 and 3 still wait
    assert [r.status for r in renders] == [RenderStatus.DONE] * 2
    assert FINALIZE_JOB not in {task.name for task in farm.celery.sent}  # not ended: no comic

    with pytest.raises(InputError, match=r"scene\(s\) 2 of job .* approved already"):
        approve_scenes(farm, job.id, [2])
    with pytest.raises(InputError, match="has scenes 1 to 3; there is no scene 4"):
        approve_scenes(farm, job.id, [1, 4])

    approved = approve_scenes(farm, job.id)  # the rest
    assert approved.scenes == [1, 3]
    run_queued(farm, runtime, job.id)
    job, _, renders = job_rows(farm, job.id)
    assert job.status is JobStatus.SUCCEEDED
    firsts = {r.scene_index: r.seed for r in renders if r.variant == 0}
    assert firsts == seeds
    assert FINALIZE_JOB in {task.name for task in farm.celery.sent}

    before = table_counts_of(farm)
    with pytest.raises(InputError, match=f"job {job.id[:8]} is succeeded; only a job awaiting"):
        approve_scenes(farm, job.id, [1])
    assert table_counts_of(farm) == before


def test_only_a_job_submitted_for_approval_takes_approvals(farm, faces):
    job_id = submit(farm, faces, make_story(2)).job_id
    before = table_counts_of(farm)
    with pytest.raises(InputError, match="was not submitted for approval"):
        approve_scenes(farm, job_id)
    assert table_counts_of(farm) == before


def test_cancelling_a_job_awaiting_approval_cancels_its_preview(farm, faces):
    job_id = submit(farm, faces, make_story(2, approval="preview")).job_id
    cancel_job(farm, job_id)
    with farm.sessions() as session:
        preview = preview_of(session, job_id)
        job = session.get_one(Job, job_id)
        assert (job.status, preview.status) == (JobStatus.CANCELLED, JobStatus.CANCELLED)
        assert not session.scalars(select(Render).where(Render.job_id == job_id)).all()
    with pytest.raises(InputError, match="is cancelled; only a job awaiting approval"):
        approve_scenes(farm, job_id)


def table_counts_of(farm: Farm) -> dict[str, int]:
    with farm.sessions() as session:
        return table_counts(session)


def test_farm_approve_takes_a_short_id_and_scene_numbers(
    farm, faces, tiny, tiny_fast, database_url, tmp_path
):
    env = {"FARM_DATA_DIR": str(tmp_path / "cli"), "FARM_DATABASE_URL": database_url}
    job_id = submit(farm, faces, make_story(2, approval="preview")).job_id
    plain = submit(farm, faces, make_story(1)).job_id

    def farm_approve(*args: str) -> tuple[int, str, str]:
        result = CliRunner().invoke(main, ["approve", *args], env=env, catch_exceptions=False)
        return result.exit_code, result.stdout, result.stderr

    assert farm_approve(job_id[:8]) == (
        2,
        "",
        "error: name the scenes to approve (numbered from 1), or give --all\n",
    )
    code, _, error = farm_approve(plain[:8], "1")
    assert code == 2 and error.startswith(f"error: job {plain[:8]} was not submitted for approval")
    with farm.sessions() as session:
        preview = preview_of(session, job_id)
    status = CliRunner().invoke(main, ["status", job_id[:8]], env=env, catch_exceptions=False)
    assert f"  waiting: awaiting approval: scene(s) 1, 2 previewing in job {preview.id[:8]}\n" in (
        status.stdout
    )
    run_queued(farm, worker(farm, tiny, tiny_fast), preview.id)
    status = CliRunner().invoke(main, ["status", job_id[:8]], env=env, catch_exceptions=False)
    assert (
        f"  waiting: awaiting approval: scene(s) 1, 2 ready: farm approve {job_id[:8]} 1 2 "
        "(or --all)\n" in status.stdout
    )
    assert farm_approve(job_id[:8], "2") == (
        0,
        f"job {job_id}: scene(s) 2 approved; 1 render(s) in 1 shard(s) queued at full quality\n",
        "",
    )
    assert farm_approve(job_id[:8], "2")[2].endswith("approved already\n")
    assert farm_approve(job_id[:8], "--all")[1].startswith(f"job {job_id}: scene(s) 1 approved")


def test_a_rerolled_and_picked_preview_is_approved_with_the_picked_seed(
    farm, faces, tiny, tiny_fast
):
    job_id = submit(farm, faces, make_story(2, approval="preview")).job_id
    with farm.sessions() as session:
        preview = preview_of(session, job_id)
    runtime = worker(farm, tiny, tiny_fast)
    run_queued(farm, runtime, preview.id)

    reroll(farm, preview.id, [1])  # part of the editorial loop: a new variant of scene 1
    run_queued(farm, runtime, preview.id)
    variants = [r for r in job_rows(farm, preview.id)[2] if r.scene_index == 0]
    assert [r.variant for r in variants] == [0, 1]
    pick_variant(farm, preview.id, 1, 1)

    approve_scenes(farm, job_id, [1])
    (full,) = job_rows(farm, job_id)[2]
    assert full.seed == variants[1].seed != variants[0].seed
