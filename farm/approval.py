"""Approving the scenes of a job submitted with `approval: preview`, all at once or scene by
scene: each approved scene goes to full quality with the seed of its preview (the picked
variant's, after a re-roll), and the job waits, holding no GPU, while scenes remain unapproved.

The dashboard, the API and `farm approve` call `approve_scenes`; the preview itself is
farm/preview.py's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import Job, Render
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus
from farm.errors import InputError
from farm.job_names import short_id
from farm.lifecycle import close_job, get_job
from farm.preview import approved_scenes, approved_seed, preview_of, preview_picks
from farm.queue.outbox import ShardTask, send_shards
from farm.reuse import RecipeHasher, job_people, place_renders
from farm.story import Story

TAKES_APPROVALS = (JobStatus.AWAITING_APPROVAL, JobStatus.QUEUED, JobStatus.RUNNING)


@dataclass(frozen=True)
class Approved:
    """What an approval queued: the scenes (numbered from 1), renders and shards."""

    job_id: str
    scenes: list[int]
    renders: int
    shards: int


def approve_scenes(farm: Farm, job_id: str, scenes: Sequence[int] | None = None) -> Approved:
    """Approve `scenes` (numbers from 1; None: every scene not approved yet) of `job_id`.

    Refused, with nothing changed, for a job that was not submitted for approval or has ended,
    a scene that does not exist or is approved already, and a scene whose preview is not
    rendered yet (its seed is not known until then).
    """
    approved, tasks = _approve(farm, job_id, scenes)
    if tasks:
        send_shards(farm, tasks)
    else:
        close_job(farm, job_id)  # every approved render was one the project had made
    farm.events.publish(job_id, "job.approved", scenes=approved.scenes)
    return approved


@retried_on_lost_race
def _approve(
    farm: Farm, job_id: str, numbers: Sequence[int] | None
) -> tuple[Approved, list[ShardTask]]:
    with farm.sessions.begin() as session:
        job = get_job(session, job_id)
        preview = preview_of(session, job.id)
        if preview is None:
            raise InputError(
                f"job {short_id(job.id)} was not submitted for approval (approval: preview); "
                "it renders every scene at full quality already"
            )
        if job.status not in TAKES_APPROVALS:
            raise InputError(
                f"job {short_id(job.id)} is {job.status}; only a job awaiting approval, or "
                "rendering scenes approved before, takes approvals"
            )
        story = Story.model_validate(job.spec)
        wanted = _wanted(job, story, approved_scenes(session, job.id), numbers)
        seeds = {i: approved_seed(r) for i, r in preview_picks(session, preview.id).items()}
        unready = [index + 1 for index in wanted if index not in seeds]
        if unready:
            raise InputError(
                f"the preview of scene(s) {_listed(unready)} of job {short_id(job.id)} is not "
                "rendered yet; approve them once it is"
            )
        planned = [
            dataclasses.replace(p, seed=seeds[p.scene_index]) if p.variant == 0 else p
            for p in story.plan()
            if p.scene_index in wanted
        ]
        placed = place_renders(  # a render the project has made already is not made again
            session,
            job,
            planned,
            RecipeHasher(story, job_people(session, job), farm.settings),
            shard_size=farm.settings.shard_size,
            max_attempts=farm.settings.max_attempts,
        )
        if job.status is JobStatus.AWAITING_APPROVAL:
            job.approve()
        tasks = [ShardTask(s, job.id, job.preset, job.priority) for s in placed.shard_ids]
        numbers_approved = sorted(index + 1 for index in wanted)
        return Approved(job.id, numbers_approved, len(planned), len(tasks)), tasks


def _wanted(job: Job, story: Story, done: set[int], numbers: Sequence[int] | None) -> list[int]:
    """The scene indices to approve, checked against the story and what is approved already."""
    count = len(story.scenes)
    if numbers is None:
        wanted = [index for index in range(count) if index not in done]
        if not wanted:
            raise InputError(f"every scene of job {short_id(job.id)} is approved already")
        return wanted
    if not numbers:
        raise InputError("name the scenes to approve (numbered from 1), or approve them all")
    missing = sorted({n for n in numbers if not 1 <= n <= count})
    if missing:
        raise InputError(
            f"job {short_id(job.id)} has scenes 1 to {count}; there is no scene {_listed(missing)}"
        )
    again = sorted({n for n in numbers if n - 1 in done})
    if again:
        raise InputError(f"scene(s) {_listed(again)} of job {short_id(job.id)} approved already")
    return sorted({n - 1 for n in numbers})


def _listed(numbers: Sequence[int]) -> str:
    return ", ".join(str(n) for n in numbers)


@dataclass(frozen=True)
class SceneApproval:
    """One scene of a contact sheet: its number (from 1), where it stands (`approved`, `ready`
    to approve, or `previewing`), and the preview render that would be approved."""

    number: int
    state: str
    preview: Render | None


def contact_sheet(session: Session, job: Job) -> list[SceneApproval]:
    """The job's scenes as approval sees them; empty for a job not submitted for approval."""
    preview = preview_of(session, job.id)
    if preview is None:
        return []
    done = approved_scenes(session, job.id)
    picks = preview_picks(session, preview.id)
    return [
        SceneApproval(
            index + 1,
            "approved" if index in done else "ready" if index in picks else "previewing",
            picks.get(index),
        )
        for index in range(len(job.spec.get("scenes", [])))
    ]


def approval_note(session: Session, job: Job) -> str:
    """What a job awaiting approval waits for, and the command that moves it on."""
    sheet = contact_sheet(session, job)
    ready = [scene.number for scene in sheet if scene.state == "ready"]
    previewing = [scene.number for scene in sheet if scene.state == "previewing"]
    notes = []
    if ready:
        numbers = " ".join(map(str, ready))
        notes.append(
            f"scene(s) {_listed(ready)} ready: farm approve {short_id(job.id)} {numbers} (or --all)"
        )
    if previewing:
        preview = preview_of(session, job.id)
        where = f" in job {short_id(preview.id)}" if preview is not None else ""
        notes.append(f"scene(s) {_listed(previewing)} previewing{where}")
    return "awaiting approval: " + "; ".join(notes)
