"""Running one shard: claim it in SQL, render its scenes in batches, and hand each batch to the
worker's finisher (workers/finisher.py), which stores and records it and then ends the shard
(farm/lifecycle.py, where every change of state lives).

Everything here is idempotent, because Celery may deliver a shard twice (a worker died, the
reaper requeued it): a finished shard is not run again, a render already done is not redone,
and each image goes to its deterministic key, so a rerun overwrites instead of duplicating.
"""

from __future__ import annotations

import functools
import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace

from PIL import Image
from sqlalchemy import select

from farm.db.models import CastMember, Character, Job, Render, Shard, StoredIdentityTokens, Worker
from farm.db.retry import retried_on_lost_race
from farm.db.states import RENDER_MOVES, ShardStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farm.identity.cache import identity_key
from farm.lifecycle import (
    CANCELLED,
    cancel_shard,
    close_job,
    end_shard,
    fail_renders,
    fail_shard,
    release_worker,
    start_renders,
)
from farm.logs import log_context
from farm.metrics import record_render
from farm.recipe import RenderSettings
from farm.render.pipeline import RenderCancelled
from farm.story import PlannedRender, Story
from workers.finisher import Rendered, ShardRun
from workers.qc import IdentityCheck
from workers.runtime import WorkerRuntime
from workers.steps import StepReporter

log = logging.getLogger(__name__)

_ENDED = (ShardStatus.SUCCEEDED, ShardStatus.FAILED, ShardStatus.CANCELLED)
_TODO = RENDER_MOVES["start"].sources  # the renders a shard's run still makes


@dataclass(frozen=True)
class Ended:
    """A shard the claim itself ended (its job was cancelled, or its attempts are spent): it
    may have been the job's last open shard, so the job may be over too."""

    outcome: str
    job_id: str


@dataclass(frozen=True)
class Claim:
    """What a claimed shard needs, read in the claiming transaction."""

    job_id: str
    preset: str
    story: Story
    character: Character
    renders: list[PlannedRender]
    render_ids: list[int]
    # The rest of the story's cast: (trigger in the prompts, character).
    cast: list[tuple[str, Character]]


def run_shard(runtime: WorkerRuntime, shard_id: int, task_id: str | None = None) -> Future[str]:
    """Render shard `shard_id`; returns once its renders are made, with what will become of
    it: the finisher stores its last batch and ends it while the worker takes the next shard.
    """
    claim = _claim(runtime, shard_id, task_id)
    if isinstance(claim, Ended):
        close_job(runtime.farm, claim.job_id)
        claim = claim.outcome
    if isinstance(claim, str):
        log.info("shard %s: %s", shard_id, claim)
        ended: Future[str] = Future()
        ended.set_result(claim)
        return ended
    run = ShardRun(shard_id, claim.job_id, claim.preset, RenderSettings.of(claim.story))
    with log_context(job=claim.job_id, shard=shard_id):
        runtime.hold(shard_id)
        runtime.current_shard = shard_id
        error = None
        try:
            _render(runtime, run, claim)
        except RenderCancelled:
            error = CANCELLED
        except Exception as failure:
            log.exception("shard %s of job %s failed", shard_id, claim.job_id)
            error = f"{type(failure).__name__}: {failure}"
        finally:
            runtime.current_shard = None
        return runtime.finisher.then(functools.partial(_end, runtime, run, error))


def _end(runtime: WorkerRuntime, run: ShardRun, error: str | None) -> str:
    """The finisher's last step of a shard, after its last batch is recorded."""
    if error is None and run.store_error is not None:
        error = f"{type(run.store_error).__name__}: {run.store_error}"
    farm = runtime.farm
    try:
        outcome = end_shard(farm, runtime.name, run.shard_id, run.job_id, error)
        log.info("shard %s: %s", run.shard_id, outcome)
        release_worker(farm, runtime.name, run.shard_id, run.tally.done, run.tally.failed)
        close_job(farm, run.job_id)
    except Exception:
        log.exception(
            "shard %s could not be ended; its lease runs out and the reaper sends it again",
            run.shard_id,
        )
        raise
    finally:
        runtime.let_go(run.shard_id)
    return outcome


@retried_on_lost_race
def _claim(runtime: WorkerRuntime, shard_id: int, task_id: str | None) -> Claim | Ended | str:
    farm = runtime.farm
    with farm.sessions.begin() as session:
        shard = session.get(Shard, shard_id, with_for_update=True)
        if shard is None:
            return "unknown shard (its job was deleted)"
        if shard.status in _ENDED:
            return f"already {shard.status}"
        now = utcnow()
        if (
            shard.status is ShardStatus.RUNNING
            and shard.worker_id != runtime.name
            and shard.lease_expires is not None
            and shard.lease_expires > now
        ):
            return f"held by {shard.worker_id}"
        # Locked too: the first shards of a job, claimed at once, all start the job.
        job = session.get(Job, shard.job_id, with_for_update=True)
        if job.cancel_requested:
            cancel_shard(session, shard, now)
            return Ended("cancelled before it started", job.id)
        if not shard.attempts_left:
            fail_shard(
                session,
                shard,
                f"gave up after {shard.attempts} attempts; the last one did not finish "
                f"(the worker died or was killed){': ' + shard.error if shard.error else ''}",
                now,
            )
            return Ended("failed: attempts exhausted", job.id)
        shard.start(runtime.name, farm.settings.lease_s, task_id=task_id, now=now)
        job.start(now)
        worker = session.get(Worker, runtime.name)
        if worker is not None:
            worker.current_shard_id = shard.id
            worker.beat(now)
        rows = list(
            session.scalars(
                select(Render)
                .where(Render.shard_id == shard_id, Render.status.in_(_TODO))
                .order_by(Render.scene_index, Render.variant)
            )
        )
        character = session.get(Character, job.character_id)
        members = session.scalars(
            select(CastMember).where(CastMember.job_id == job.id).order_by(CastMember.position)
        )
        cast = [(m.trigger, session.get(Character, m.character_id)) for m in members]
        story = Story.model_validate(job.spec)
        renders = [
            PlannedRender(r.scene_index, r.variant, r.prompt, r.negative, r.seed, r.caption)
            for r in rows
        ]
        return Claim(job.id, job.preset, story, character, renders, [r.id for r in rows], cast)


def _render(runtime: WorkerRuntime, run: ShardRun, claim: Claim) -> None:
    """Render the shard's batches, handing each to the finisher."""
    loaded = runtime.presets.get(claim.preset)
    if loaded is None:
        raise RuntimeError(f"worker {runtime.name} does not host preset {claim.preset!r}")
    story, character, settings = claim.story, claim.character, run.settings

    started = time.perf_counter()
    computed_before = loaded.identity.cache.stats.computed
    photos = runtime.photos.of(character)
    identity = loaded.identity.tokens_for(photos, crop=character.face_crop)
    identity_s = time.perf_counter() - started
    computed = loaded.identity.cache.stats.computed > computed_before
    if computed:
        _record_identity(
            runtime,
            identity.encoder_fingerprint,
            identity.photos_fingerprint,
            identity.num_tokens,
            identity_s,
        )
    # One line per shard, so that "a second job never runs the vision tower again" can be read
    # from any worker's log, not only from the identity_tokens table.
    log.info(
        "job %s shard %s: identity tokens of character %s %s in %.2f s",
        claim.job_id,
        run.shard_id,
        character.id,
        "computed" if computed else "served from the cache",
        identity_s,
    )

    identities = {character.trigger: identity}
    class_words = {character.trigger: character.class_word}
    for trigger, member in claim.cast:  # served from the cache like the main character's
        member_photos = runtime.photos.of(member)
        identities[trigger] = loaded.identity.tokens_for(member_photos, crop=member.face_crop)
        class_words[trigger] = member.class_word
    check = IdentityCheck(
        loaded.identity, runtime.references, photos, story.min_face_similarity, story.qc_retries
    )
    todo = list(zip(claim.render_ids, claim.renders, strict=True))
    batch_size = loaded.preset.batch_size
    per_render_identity_s = identity_s / max(len(claim.renders), 1)

    def render_again(planned: PlannedRender, seed: int) -> Image.Image:
        again = replace(planned, seed=seed)
        return loaded.render([again], settings, identities, class_words).images[0]

    while todo:
        batch, rest = todo[:batch_size], todo[batch_size:]
        ids = [render_id for render_id, _ in batch]
        if not start_renders(runtime.farm, runtime.name, runtime.device, claim.job_id, ids):
            raise RenderCancelled("job cancelled")  # between batches: the shard stops
        try:
            # Splits a batch, then offloads, on out-of-memory errors.
            result = loaded.render(
                [p for _, p in batch],
                settings,
                identities,
                class_words,
                callback=StepReporter(runtime.farm, claim.job_id, ids, settings.steps),
            )
        except InputError as error:  # a scene that can never render
            if len(batch) > 1:
                batch_size = 1  # one at a time: the others render, only that one fails
                continue
            fail_renders(runtime.farm, ids, str(error))
            run.tally.failed += len(batch)
            for _ in batch:
                record_render(claim.preset, done=False, phases={})
            todo = rest
            continue
        per_render = {k: v / len(batch) for k, v in result.timings.items()}
        rendered = []
        for (render_id, planned), image in zip(batch, result.images, strict=True):
            checked = None  # scored beside the device, by the finisher
            if check.may_render_again:  # the check may need the pipeline: here, then
                with log_context(render=render_id):
                    again = functools.partial(render_again, planned)
                    checked = check.check(image, planned, again)
            rendered.append(
                Rendered(
                    render_id,
                    planned,
                    image,
                    checked,
                    identity_s=per_render_identity_s,
                    denoise_s=per_render.get("denoise"),
                    decode_s=per_render.get("decode"),
                )
            )
        runtime.finisher.store(run, check, rendered)
        todo = rest


def _record_identity(
    runtime: WorkerRuntime, encoder_fp: str, photos_fp: str, num_tokens: int, seconds: float
) -> None:
    with runtime.farm.sessions.begin() as session:
        exists = session.scalar(
            select(StoredIdentityTokens.id).where(
                StoredIdentityTokens.encoder_fingerprint == encoder_fp,
                StoredIdentityTokens.photos_fingerprint == photos_fp,
            )
        )
        if exists is None:
            session.add(
                StoredIdentityTokens(
                    encoder_fingerprint=encoder_fp,
                    photos_fingerprint=photos_fp,
                    storage_key=identity_key(encoder_fp, photos_fp),
                    num_tokens=num_tokens,
                    seconds=seconds,
                )
            )
