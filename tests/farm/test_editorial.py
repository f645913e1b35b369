"""The editorial loop on the farm's service functions, with shards run in this process on the
tiny preset: renders reused by content hash, re-rolls, picks and story revisions.

Pipeline calls are counted where every render goes through (`LoadedPreset.render`), so "renders
exactly 2" means two images were made, not two rows written.
"""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image, ImageChops
from sqlalchemy import func, select

from farm.comic.job import build_job_outputs, built_picks
from farm.context import Farm
from farm.db.models import Job, JobRevision, Project, Render, RetiredRender, Shard
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.errors import InputError
from farm.picks import pick_variant, scene_picks
from farm.queue.app import FINALIZE_JOB
from farm.render.loading import LoadedPreset
from farm.rerolls import reroll
from farm.revisions import revise_job, revised_story
from tests.farm.conftest import job_rows, make_story, submit, table_counts
from tests.farm.test_run_shard import runtime_with
from workers.runtime import WorkerRuntime
from workers.shard import run_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def rendered(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Scenes handed to the pipeline, one entry per render made."""
    made: list[int] = []
    render = LoadedPreset.render

    def counted(self: LoadedPreset, scenes: Any, *args: Any, **kwargs: Any) -> Any:
        made.extend(scene.scene_index for scene in scenes)
        return render(self, scenes, *args, **kwargs)

    monkeypatch.setattr(LoadedPreset, "render", counted)
    return made


@pytest.fixture
def runtime(farm: Farm, tiny: LoadedPreset) -> WorkerRuntime:
    return runtime_with(farm, tiny)


def run_queued(farm: Farm, runtime: WorkerRuntime, job_id: str) -> None:
    """Every queued shard of the job, run as a worker would, to the job's end."""
    with farm.sessions() as session:
        queued = session.scalars(
            select(Shard.id).where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
        ).all()
    for shard_id in queued:
        run_shard(runtime, shard_id).result()


def images(farm: Farm, job_id: str) -> dict[tuple[int, int], bytes]:
    """The job's finished renders, by (scene index, variant), as stored."""
    _, _, renders = job_rows(farm, job_id)
    return {
        (r.scene_index, r.variant): farm.storage.get(r.storage_key)
        for r in renders
        if r.status is RenderStatus.DONE
    }


def scenes(count: int, **changed: str) -> list[dict[str, Any]]:
    """`count` scenes; `changed` maps "s<index>" to another prompt for that scene."""
    return [
        {"prompt": changed.get(f"s{i}", f"a man img in scene {i}"), "caption": f"Scene {i}"}
        for i in range(count)
    ]


@pytest.fixture
def finished_job(farm: Farm, faces: Any, runtime: WorkerRuntime) -> Iterator[str]:
    """A finished job of 2 scenes."""
    job_id = submit(farm, faces, make_story(scenes(2))).job_id
    run_queued(farm, runtime, job_id)
    yield job_id


def test_resubmitting_with_two_prompts_changed_renders_exactly_two(farm, faces, runtime, rendered):
    first = submit(farm, faces, make_story(scenes(6))).job_id
    run_queued(farm, runtime, first)
    assert len(rendered) == 6
    before = images(farm, first)

    changed = make_story(scenes(6, s1="a man img on a horse", s4="a man img in the rain"))
    second = submit(farm, faces, changed)

    assert (second.renders, second.shards) == (6, 1)  # two renders, one shard of 2
    run_queued(farm, runtime, second.job_id)
    assert sorted(rendered[6:]) == [1, 4]  # exactly the two changed scenes were rendered
    job, _, renders = job_rows(farm, second.job_id)
    assert job.status is JobStatus.SUCCEEDED
    after = images(farm, second.job_id)
    for scene in (0, 2, 3, 5):  # byte for byte the first job's, and the same objects
        assert after[(scene, 0)] == before[(scene, 0)]
    assert {r.scene_index for r in renders if r.reused_from_job == first} == {0, 2, 3, 5}
    assert all(r.shard_id is None for r in renders if r.reused_from_job)
    assert after[(1, 0)] != before[(1, 0)] and after[(4, 0)] != before[(4, 0)]

    # Nothing changed: the job is finished at submission, and its outputs are queued.
    third = submit(farm, faces, changed)
    assert (third.renders, third.shards) == (6, 0)
    assert job_rows(farm, third.job_id)[0].status is JobStatus.SUCCEEDED
    assert farm.celery.sent[-1].name == FINALIZE_JOB
    assert farm.celery.sent[-1].args == [third.job_id]
    assert len(rendered) == 8


def test_reuse_stays_within_the_project_and_can_be_turned_off(farm, faces, runtime, rendered):
    first = submit(farm, faces, make_story(scenes(1))).job_id
    run_queued(farm, runtime, first)
    farm.settings = dataclasses.replace(farm.settings, reuse_renders=False)
    assert submit(farm, faces, make_story(scenes(1))).shards == 1  # FARM_REUSE_RENDERS=0
    farm.settings = dataclasses.replace(farm.settings, reuse_renders=True)
    assert submit(farm, faces, make_story(scenes(1))).shards == 0
    with farm.sessions.begin() as session:
        other = Project(name="other-studio")
        session.add(other)
        session.flush()
        other_id = other.id
    elsewhere = submit(farm, faces, make_story(scenes(1)), project_id=other_id)
    assert elsewhere.shards == 1


def test_a_reroll_adds_variants_and_keeps_the_old_ones(farm, finished_job, runtime, rendered):
    before = images(farm, finished_job)

    rerolled = reroll(farm, finished_job, [2], variants=2)

    assert len(rerolled.render_ids) == 2 and rerolled.shards == 1
    job, _, renders = job_rows(farm, finished_job)
    assert job.status is JobStatus.RUNNING  # it runs again, for the re-rolls
    assert job.renders_total == 4
    new = [r for r in renders if r.id in rerolled.render_ids]
    assert [(r.scene_index, r.variant, r.status) for r in new] == [
        (1, 1, RenderStatus.QUEUED),
        (1, 2, RenderStatus.QUEUED),
    ]
    assert len({r.seed for r in renders}) == 4  # new seeds

    run_queued(farm, runtime, finished_job)

    assert sorted(rendered) == [1, 1]
    after = images(farm, finished_job)
    assert {k: after[k] for k in before} == before  # the old variants, untouched
    assert len(after) == 4 and after[(1, 1)] != after[(1, 2)] != after[(1, 0)]
    job, _, renders = job_rows(farm, finished_job)
    assert job.status is JobStatus.SUCCEEDED
    assert {r.storage_key for r in renders} == {
        f"jobs/{finished_job}/renders/000{s + 1}-v{v}.png" for s, v in after
    }


def page_of(farm: Farm, keys: dict[str, str]) -> Image.Image:
    return Image.open(io.BytesIO(farm.storage.get(keys["page-001"]))).convert("RGB")


def cbz_page(farm: Farm, keys: dict[str, str]) -> tuple[bytes, bytes]:
    with zipfile.ZipFile(io.BytesIO(farm.storage.get(keys["cbz"]))) as cbz:
        return cbz.read("001.jpg"), cbz.read("ComicInfo.xml")


def test_a_pick_changes_the_comic_pages(farm, finished_job, runtime):
    reroll(farm, finished_job, [2])
    run_queued(farm, runtime, finished_job)
    with farm.sessions() as session:
        first = build_job_outputs(session, farm.storage, finished_job)
        default = [
            (p.render.scene_index, p.render.variant) for p in scene_picks(session, finished_job)
        ]
    assert default == [(0, 0), (1, 0)]  # no face on noise: the first variant
    page, (jpeg, info) = page_of(farm, first), cbz_page(farm, first)
    pdf = farm.storage.get(first["pdf"])

    pick = pick_variant(farm, finished_job, 2, 1)

    assert (pick.render.scene_index, pick.render.variant, pick.reason) == (1, 1, "picked")
    rebuild = farm.celery.sent[-1]
    assert (rebuild.name, rebuild.args, rebuild.kwargs) == (
        FINALIZE_JOB,
        [finished_job],
        {"webhook": False},
    )
    with farm.sessions() as session:  # what the rebuild task runs
        picked = build_job_outputs(session, farm.storage, finished_job)
    assert ImageChops.difference(page, page_of(farm, picked)).getbbox() is not None
    picked_jpeg, picked_info = cbz_page(farm, picked)
    assert picked_jpeg != jpeg and farm.storage.get(picked["pdf"]) != pdf
    assert b"scene 2: v1 (picked)" in picked_info and b"scene 2: v0 (first)" in info
    assert built_picks(farm.storage, finished_job) == [
        {"scene": 1, "variant": 0, "render": pick.render.id - 2, "reason": "first"},
        {"scene": 2, "variant": 1, "render": pick.render.id, "reason": "picked"},
    ]

    pick_variant(farm, finished_job, 2, 0)  # back: the same page as before, pixel for pixel
    with farm.sessions() as session:
        again = build_job_outputs(session, farm.storage, finished_job)
    assert ImageChops.difference(page, page_of(farm, again)).getbbox() is None


def test_bad_rerolls_and_picks_change_nothing(farm, finished_job, faces):
    with farm.sessions.begin() as session:
        other = Project(name="elsewhere")
        session.add(other)
        session.flush()
        other_id = other.id
    with farm.sessions() as session:
        counts = table_counts(session)
    sent = len(farm.celery.sent)
    cases = [
        (lambda: reroll(farm, finished_job, [3]), "has scenes 1 to 2; there is no scene 3"),
        (lambda: reroll(farm, finished_job, [0]), "there is no scene 0"),
        (lambda: reroll(farm, finished_job, [1], variants=0), "variants: from 1 to 16"),
        (lambda: reroll(farm, "no-such-job", [1]), "no job 'no-such-job'"),
        (lambda: pick_variant(farm, finished_job, 1, 5), "has variants v0; there is no v5"),
        (lambda: pick_variant(farm, finished_job, 9, 0), "there is no scene 9"),
        (
            lambda: pick_variant(farm, finished_job, 1, 0, project_id=other_id),
            f"no job '{finished_job}'",
        ),
        (
            lambda: reroll(farm, finished_job, [1], project_id=other_id),
            f"no job '{finished_job}'",
        ),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
            call()
    with farm.sessions() as session:
        assert table_counts(session) == counts
        assert not session.scalar(select(func.count()).where(Render.picked.is_(True)))
    assert len(farm.celery.sent) == sent


def test_a_queued_variant_cannot_be_picked(farm, finished_job):
    reroll(farm, finished_job, [1])
    with pytest.raises(InputError, match=r"v1 of job .* is queued; only a finished render"):
        pick_variant(farm, finished_job, 1, 1)


def test_a_revision_renders_only_what_changed_and_keeps_the_history(farm, faces, runtime, rendered):
    job_id = submit(farm, faces, make_story(scenes(3))).job_id
    run_queued(farm, runtime, job_id)
    reroll(farm, job_id, [1])  # scene 1 gets a v1, and it is picked
    run_queued(farm, runtime, job_id)
    pick_variant(farm, job_id, 1, 1)
    before = images(farm, job_id)
    del rendered[:]

    with farm.sessions() as session:
        story = revised_story(
            session.get(Job, job_id),
            {
                "scenes": {
                    "change": {"1": {"caption": "Chapter 1"}, "2": {"prompt": "a man img at sea"}},
                    "remove": [3],
                    "add": [{"prompt": "a man img on the moon"}],
                }
            },
        )
    revised = revise_job(farm, job_id, story)

    assert (revised.revision, revised.kept, revised.rendered, revised.retired) == (2, 2, 2, 2)
    assert "scene 2: prompt changed" in revised.summary
    job, _, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.RUNNING and job.revision == 2 and job.renders_total == 4
    scene_one = [r for r in renders if r.scene_index == 0]
    assert [(r.variant, r.caption, r.picked) for r in scene_one] == [
        (0, "Chapter 1", False),
        (1, "Chapter 1", True),  # the re-roll and the pick stay with the unchanged scene
    ]
    run_queued(farm, runtime, job_id)
    assert sorted(rendered) == [1, 2]
    after = images(farm, job_id)
    assert after[(0, 0)] == before[(0, 0)] and after[(0, 1)] == before[(0, 1)]
    job, _, renders = job_rows(farm, job_id)
    assert job.status is JobStatus.SUCCEEDED
    # Made by revision 2, under names of their own: revision 1's images stay for the history.
    assert {r.storage_key.rsplit("/", 1)[1] for r in renders if r.revision == 2} == {
        "0002-v0-r2.png",
        "0003-v0-r2.png",
    }
    with farm.sessions() as session:
        retired = session.scalars(select(RetiredRender).order_by(RetiredRender.scene_index)).all()
        assert [(r.scene_index, r.revision, r.retired_in) for r in retired] == [
            (1, 1, 2),
            (2, 1, 2),
        ]
        assert [farm.storage.get(r.storage_key) for r in retired] == [
            before[(1, 0)],
            before[(2, 0)],
        ]
        history = session.scalars(
            select(JobRevision).where(JobRevision.job_id == job_id).order_by(JobRevision.number)
        ).all()
        assert [(h.number, h.kept, h.rendered, h.retired) for h in history] == [
            (1, 0, 3, 0),
            (2, 2, 2, 2),
        ]

    # Back to the first story's scene 2: its image comes back from the history, unrendered.
    with farm.sessions() as session:
        story = revised_story(
            session.get(Job, job_id),
            {"scenes": {"change": {"2": {"prompt": "a man img in scene 1"}}}},
        )
    third = revise_job(farm, job_id, story)
    assert (third.revision, third.reused, third.rendered, third.shards) == (3, 1, 0, 0)
    assert images(farm, job_id)[(1, 0)] == before[(1, 0)]
    assert job_rows(farm, job_id)[0].status is JobStatus.SUCCEEDED
    assert farm.celery.sent[-1].kwargs == {"webhook": False}  # its outputs follow the story
    assert len(rendered) == 2


def test_bad_revisions_change_nothing(farm, finished_job, faces):
    with farm.sessions() as session:
        job = session.get(Job, finished_job)
        counts = table_counts(session)
        cases = [
            ({"scenes": {"remove": [7]}}, "scenes.remove: the story has scenes 1 to 2"),
            ({"scenes": {"swap": []}}, "unknown edit 'swap'"),
            ({"scenes": []}, "scenes"),
            ({"character": {"name": "Ada", "class_word": "woman"}}, "keeps the job's characters"),
            ({"scenes": {"add": [{"prompt": "a dog"}]}}, "trigger"),
        ]
        for changes, message in cases:
            with pytest.raises(InputError, match=message):
                revised_story(job, changes)
    # A queued job cannot be revised.
    submitted = submit(farm, faces, make_story([{"prompt": "a man img waiting"}]))
    with farm.sessions() as session:
        story = revised_story(session.get(Job, submitted.job_id), {"steps": 3})
    with pytest.raises(InputError, match="is queued; revise it once it has ended"):
        revise_job(farm, submitted.job_id, story)
    with farm.sessions() as session:
        after = table_counts(session)
    assert (
        after["jobs"] == counts["jobs"] + 1
        and after["job_revisions"] == counts["job_revisions"] + 1
    )
    assert json.dumps(job_rows(farm, finished_job)[0].spec) == json.dumps(job.spec)
