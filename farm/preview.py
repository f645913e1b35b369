"""The preview of a job submitted with `approval: preview`: which fast, low-resolution story
renders it, and where a job stands with its approvals.

A render farm renders a first frame, or a sample of frames, for approval before the whole
sequence; here every scene is rendered once in fast mode at low resolution, with the seeds the
full renders would use, so that what is approved is what comes out at full quality. The
preview is a job of its own (`Job.preview_of`) run by the same shards, workers, retries and
re-rolls as any job; the job it previews holds no shard, and so no GPU, until scenes are
approved (farm/approval.py).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.picks import scene_picks
from farm.render.presets import PRESETS, Preset, get_preset
from farm.story import Story

PREVIEW_MIN_STEPS = 8  # a preset without a few-step LoRA: a quarter of its steps, at least this
MIN_SIDE = 64  # the smallest side a story may ask for


def preview_preset(preset: Preset) -> Preset | None:
    """The preset itself when it renders in few steps already, else its few-step sibling (the
    same base, PhotoMaker and weights with a few-step LoRA: `tiny-fast` for `tiny`), the one
    with the fewest steps; None when it has none, and the preview takes fewer steps instead."""
    if preset.fast is not None:
        return preset
    siblings = [
        p for p in PRESETS.values() if p.fast is not None and _weights(p) == _weights(preset)
    ]
    return min(siblings, key=lambda p: (p.fast.steps if p.fast else 0, p.name), default=None)


def _weights(preset: Preset) -> tuple[object, ...]:
    """What makes two presets the same model but for a LoRA."""
    return preset.tiny, preset.version, preset.base_model, preset.checkpoint_file, preset.face_model


def _half(side: int) -> int:
    return max(MIN_SIDE, side // 2 // 8 * 8)


def preview_story(story: Story) -> Story:
    """The story of the preview: every scene once (variant 0, whose seed the full render of the
    scene keeps), in fast mode at half size, without identity QC (which would change seeds)."""
    fast = preview_preset(get_preset(story.preset))
    width, height = story.render_size()
    update: dict[str, object] = {
        "preset": story.preset if fast is None else fast.name,
        "width": _half(width),
        "height": _half(height),
        "aspect": None,
        "variants": 1,
        "min_face_similarity": None,
        "approval": "none",
        "scenes": [scene.model_copy(update={"variants": None}) for scene in story.scenes],
    }
    if fast is None:
        update["steps"] = min(story.steps, max(PREVIEW_MIN_STEPS, story.steps // 4))
    return story.model_copy(update=update)


def preview_of(session: Session, job_id: str) -> Job | None:
    """The preview job of `job_id`, if it was submitted for approval."""
    return session.scalar(select(Job).where(Job.preview_of == job_id))


def approved_scenes(session: Session, job_id: str) -> set[int]:
    """The scene indices approved so far: those the job holds renders of."""
    rows = session.scalars(select(Render.scene_index).where(Render.job_id == job_id).distinct())
    return set(rows)


def awaits_approval(session: Session, job: Job) -> bool:
    """Whether scenes of `job` still wait for approval once its approved ones are rendered."""
    if preview_of(session, job.id) is None:
        return False
    approved = session.scalar(
        select(func.count(func.distinct(Render.scene_index))).where(Render.job_id == job.id)
    )
    return (approved or 0) < len(job.spec.get("scenes", []))


def preview_picks(session: Session, preview_id: str) -> dict[int, Render]:
    """Each previewed scene's render whose seed is approved: the one the preview's gallery
    shows as the scene's pick (picked by a person after a re-roll, else the best face, else
    the first; farm/picks.py), so that what is approved is what was looked at."""
    return {pick.render.scene_index: pick.render for pick in scene_picks(session, preview_id)}


def approved_seed(render: Render) -> int:
    """The seed a preview render's picture came from (identity QC may have kept another)."""
    return render.seed if render.qc_seed is None else render.qc_seed
