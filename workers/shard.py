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
from dataclasses import dataclass, field, replace

from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from farm import blocklist
from farm.accounting import device_kind
from farm.controls import attach, stored_maps
from farm.db.models import (
    CastMember,
    Character,
    Job,
    JobConsistencyTokens,
    Project,
    Render,
    Shard,
    StoredIdentityTokens,
    Worker,
    WorkerFailures,
)
from farm.db.retry import retried_on_lost_race
from farm.db.states import RENDER_MOVES, ShardStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farm.identity.cache import identity_key
from farm.lifecycle import (
    CANCELLED,
    PAUSED,
    JobPaused,
    cancel_shard,
    close_job,
    end_shard,
    fail_renders,
    fail_shard,
    interrupt_shard,
    release_worker,
    start_renders,
)
from farm.logs import log_context
from farm.metrics import record_interruption, record_render
from farm.queue.outbox import ShardTask, send_shards
from farm.recipe import RenderSettings
from farm.render.checkpoint import Checkpoint, CheckpointError, RenderInterrupted
from farm.render.consistency import SharedTokens
from farm.render.pipeline import RenderCancelled, guided
from farm.render.reference_scenes import consistent_attention
from farm.scheduling import HeldTurn, send_released, whose_turn
from farm.story import PlannedRender, Story
from workers.finisher import Rendered, ShardRun
from workers.qc import IdentityCheck
from workers.runtime import STORY_DEFERRED, WorkerRuntime
from workers.steps import StepReporter

log = logging.getLogger(__name__)

_ENDED = (ShardStatus.SUCCEEDED, ShardStatus.FAILED, ShardStatus.CANCELLED)
_HELD = (*_ENDED, ShardStatus.PAUSED)  # not to run now: "already succeeded", "already paused"
_TODO = RENDER_MOVES["start"].sources  # the renders a shard's run still makes
# A worker kept off a job waits this long before handing the job's shard back to the queue:
# the pause is all that stops it taking the same task again at once while the other workers
# are busy.
DECLINE_PAUSE_S = 2.0


def checkpoint_key(job_id: str, shard_id: int) -> str:
    """Where an interrupted shard's batch waits to be resumed: one object per shard, which the
    next interruption of the shard overwrites."""
    return f"jobs/{job_id}/checkpoints/shard-{shard_id}.pt"


@dataclass(frozen=True)
class Declined:
    """A shard of a job this worker is kept off (farm/blocklist.py): sent back for another."""

    task: ShardTask


class ShardInterrupted(Exception):
    """The worker was told to stop: the shard goes back, resumed from `key` at `step` if a
    batch was stopped midway (None when it stopped between batches)."""

    def __init__(self, key: str | None = None, step: int | None = None) -> None:
        super().__init__("interrupted" if step is None else f"interrupted at step {step}")
        self.key = key
        self.step = step


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
    checkpoint_key: str | None = None  # an interrupted run's, which this run resumes
    revision: int = 1  # of the story that made the shard's renders (farm/revisions.py)
    # The shard claimed: the task's own, or the one whose turn it was (farm/scheduling.py).
    shard_id: int = field(kw_only=True)
    project: str = field(kw_only=True)  # its job's project's name, for the device seconds


def run_shard(runtime: WorkerRuntime, shard_id: int, task_id: str | None = None) -> Future[str]:
    """Render shard `shard_id`; returns once its renders are made, with what will become of
    it: the finisher stores its last batch and ends it while the worker takes the next shard.
    """
    claim = _claim(runtime, shard_id, task_id)
    if isinstance(claim, Ended):
        close_job(runtime.farm, claim.job_id)
        claim = claim.outcome
    if isinstance(claim, Declined):
        time.sleep(DECLINE_PAUSE_S)
        send_shards(runtime.farm, [claim.task])
        claim = f"declined: {runtime.name} is kept off job {claim.task.job_id}; sent back"
    if isinstance(claim, HeldTurn):  # its shard was taken, the others held by claims in flight
        send_shards(runtime.farm, [claim.task])
        claim = f"turn handed back as shard {claim.task.shard_id}'s: all it could take were held"
    if isinstance(claim, str):
        log.info("shard %s: %s", shard_id, claim)
        ended: Future[str] = Future()
        ended.set_result(claim)
        return ended
    shard_id = claim.shard_id  # the one whose turn it was
    settings = RenderSettings.of(claim.story)
    run = ShardRun(
        shard_id,
        claim.job_id,
        claim.preset,
        settings,
        claim.revision,
        project=claim.project,
        device_kind=device_kind(runtime.device),
    )
    with log_context(job=claim.job_id, shard=shard_id):
        runtime.hold(shard_id)
        runtime.current_shard = shard_id
        error = None
        stopped = None
        try:
            _render(runtime, run, claim)
        except RenderCancelled:
            error = CANCELLED
        except JobPaused:
            error = PAUSED
        except ShardInterrupted as interruption:
            stopped = interruption
        except Exception as failure:
            log.exception("shard %s of job %s failed", shard_id, claim.job_id)
            error = f"{type(failure).__name__}: {failure}"
        finally:
            runtime.current_shard = None
        return runtime.finisher.then(functools.partial(_end, runtime, run, error, stopped))


def _end(
    runtime: WorkerRuntime,
    run: ShardRun,
    error: str | None,
    stopped: ShardInterrupted | None = None,
) -> str:
    """The finisher's last step of a shard, after its last batch is recorded."""
    if error is None and run.store_error is not None:
        error = f"{type(run.store_error).__name__}: {run.store_error}"
    farm = runtime.farm
    try:
        if stopped is not None and error is None:
            reason = f"interrupted on {runtime.name}: the worker was told to stop"
            where = "" if stopped.step is None else f"; resumes at step {stopped.step}"
            outcome = interrupt_shard(
                farm,
                runtime.name,
                run.shard_id,
                run.job_id,
                reason + where,
                stopped.key,
                stopped.step,
            )
            record_interruption(run.preset)
        else:
            outcome = end_shard(farm, runtime.name, run.shard_id, run.job_id, error)
        log.info("shard %s: %s", run.shard_id, outcome)
        release_worker(farm, runtime.name, run.shard_id, run.tally.done, run.tally.failed)
        close_job(farm, run.job_id)
        send_released(farm, run.job_id)  # the turns its project's cap held back
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
def _claim(
    runtime: WorkerRuntime, shard_id: int, task_id: str | None
) -> Claim | Ended | Declined | HeldTurn | str:
    farm = runtime.farm
    with farm.sessions.begin() as session:
        shard = session.get(Shard, shard_id, with_for_update=True)
        if shard is None:
            return "unknown shard (its job was deleted)"
        now = utcnow()
        turn = whose_turn(session, shard, runtime.name, now)  # farm/scheduling.py
        if turn is None:
            return "turn given up: its project runs as many shards as its cap allows"
        if isinstance(turn, HeldTurn):
            return turn
        shard, shard_id = turn, turn.id
        if shard.status in _HELD:
            return f"already {shard.status}"
        if (
            shard.status is ShardStatus.RUNNING
            and shard.worker_id != runtime.name
            and shard.lease_expires is not None
            and shard.lease_expires > now
        ):
            return f"held by {shard.worker_id}"
        # Locked too: the first shards of a job, claimed at once, all start the job.
        job = session.get(Job, shard.job_id, with_for_update=True, options=STORY_DEFERRED)
        if job.cancel_requested:
            cancel_shard(session, shard, now)
            return Ended("cancelled before it started", job.id)
        if blocklist.is_blocked(session, job.id, runtime.name):
            if blocklist.workers_left(session, job.id, job.preset):
                return Declined(ShardTask(shard.id, job.id, job.preset, job.priority))
            fail_shard(
                session,
                shard,
                f"no worker may take it: every live worker hosting {job.preset} failed "
                f"{WorkerFailures.BLOCKLIST_AFTER} of this job's shards and is kept off it",
                now,
            )
            return Ended("failed: every worker is kept off its job", job.id)
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
        story = runtime.story(session, job)
        project = session.get_one(Project, job.project_id).name
        renders = [
            PlannedRender(r.scene_index, r.variant, r.prompt, r.negative, r.seed, r.caption)
            for r in rows
        ]
        return Claim(
            job.id,
            job.preset,
            story,
            character,
            renders,
            [r.id for r in rows],
            cast,
            shard.checkpoint_key,
            rows[0].revision if rows else job.revision,
            shard_id=shard.id,
            project=project,
        )


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
    maps = stored_maps(runtime.farm.storage, story, claim.renders)
    todo = list(zip(claim.render_ids, attach(claim.renders, story, maps), strict=True))
    batch_size = loaded.preset.batch_size
    shard_renders = max(len(claim.renders), 1)  # what its shared work is divided among
    per_render_identity_s = identity_s / shard_renders
    shared_started = time.perf_counter()
    # Self-attention shared across the story's scenes, if it asks: in story mode, the tokens of
    # its reference scenes, rendered first by whichever worker needs them first.
    attention = consistent_attention(
        story, loaded, settings, identities, class_words, runtime.shared_tokens
    )
    if attention is not None and attention.reading is not None:
        _record_consistency(runtime, claim.job_id, attention.reading)
    # The tokens of the outfits' and locations' reference images its renders use, likewise.
    dressed = [p for _, p in todo if p.dressing]
    if dressed and loaded.pipeline.reference_images is not None:
        made = loaded.pipeline.reference_images.for_renders(
            loaded.pipeline,
            dressed,
            height=settings.height,
            width=settings.width,
            steps=settings.steps,
            guided=guided(settings.guidance),
        )
        for tokens in made:
            _record_consistency(runtime, claim.job_id, tokens)
    # Making those tokens (a reference batch, reference images' UNet passes) or reading them
    # held the device for these renders: theirs, as the identity's encoding is.
    per_render_shared_s = (time.perf_counter() - shared_started) / shard_renders

    def render_again(planned: PlannedRender, seed: int) -> Image.Image:
        again = replace(planned, seed=seed)
        render = loaded.render([again], settings, identities, class_words, consistency=attention)
        return render.images[0]

    resume = _checkpoint(runtime, claim)
    if resume is not None:  # the interrupted batch first, as it was made up
        batch_size = len(resume.seeds)
    while todo:
        batch, rest = todo[:batch_size], todo[batch_size:]
        ids = [render_id for render_id, _ in batch]
        if runtime.stop_requested():
            raise ShardInterrupted()  # between batches: nothing to keep but what is stored
        if not start_renders(runtime.farm, runtime.name, runtime.device, claim.job_id, ids):
            raise RenderCancelled("job cancelled")  # between batches: the shard stops
        seeds = [p.seed for _, p in batch]
        hooks: dict[str, object] = {
            "interrupted": runtime.stop_requested,
            "consistency": attention,
            "callback": StepReporter(runtime.farm, claim.job_id, ids, settings.steps),
        }
        if resume is not None:
            if resume.fits(seeds, settings.steps):
                hooks["resume"] = resume
                log.info("shard %s resumes its batch at step %d", run.shard_id, resume.step)
            resume, batch_size = None, loaded.preset.batch_size
        batch_started = time.perf_counter()
        try:
            # Splits a batch, then offloads, on out-of-memory errors.
            result = loaded.render(
                [p for _, p in batch], settings, identities, class_words, **hooks
            )
        except RenderInterrupted as interruption:
            raise _keep(runtime, run, interruption.checkpoint) from interruption
        except CheckpointError as error:
            log.warning("shard %s: not resumed (%s); the batch starts over", run.shard_id, error)
            continue
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
        if "resume" in hooks and claim.checkpoint_key is not None:
            _forget(runtime, claim.checkpoint_key)
        held_s = (time.perf_counter() - batch_started) / len(batch)  # the device, per render
        per_render = {k: v / len(batch) for k, v in result.timings.items()}
        rendered = []
        for (render_id, planned), image in zip(batch, result.images, strict=True):
            checked = None  # scored beside the device, by the finisher
            qc_s = 0.0  # its QC re-renders' device time, made here
            if check.may_render_again:  # the check may need the pipeline: here, then
                with log_context(render=render_id):
                    again = functools.partial(render_again, planned)
                    qc_started = time.perf_counter()
                    checked = check.check(image, planned, again)
                    qc_s = time.perf_counter() - qc_started
            rendered.append(
                Rendered(
                    render_id,
                    planned,
                    image,
                    checked,
                    identity_s=per_render_identity_s,
                    denoise_s=per_render.get("denoise"),
                    decode_s=per_render.get("decode"),
                    device_s=per_render_identity_s + per_render_shared_s + held_s + qc_s,
                )
            )
        runtime.finisher.store(run, check, rendered)
        todo = rest


def _checkpoint(runtime: WorkerRuntime, claim: Claim) -> Checkpoint | None:
    """The checkpoint an interrupted run of the shard left, if it can be read; a shard whose
    checkpoint is lost or damaged renders its batch from the start, which costs only time."""
    if claim.checkpoint_key is None:
        return None
    try:
        return Checkpoint.from_bytes(runtime.farm.storage.get(claim.checkpoint_key))
    except (CheckpointError, OSError, KeyError) as error:
        log.warning("checkpoint %s not read (%s): starting over", claim.checkpoint_key, error)
        return None


def _forget(runtime: WorkerRuntime, key: str) -> None:
    """A checkpoint resumed is not needed again; one left behind only costs storage."""
    try:
        runtime.farm.storage.delete(key)
    except Exception:
        log.warning("checkpoint %s was resumed but not deleted", key, exc_info=True)


def _keep(runtime: WorkerRuntime, run: ShardRun, checkpoint: Checkpoint) -> ShardInterrupted:
    """Store the stopped batch's checkpoint for the next run; if storage refuses it, the shard
    is handed on all the same, to start that batch over."""
    key = checkpoint_key(run.job_id, run.shard_id)
    try:
        runtime.farm.storage.put(key, checkpoint.to_bytes())
    except Exception:
        log.exception(
            "shard %s: its checkpoint was not stored; the batch starts over", run.shard_id
        )
        return ShardInterrupted()
    log.info("shard %s stopped at step %d of %d", run.shard_id, checkpoint.step, checkpoint.steps)
    return ShardInterrupted(key, checkpoint.step)


def _record_consistency(runtime: WorkerRuntime, job_id: str, tokens: SharedTokens) -> None:
    """The job's row for the reference tokens it reads (its reference scenes' or its reference
    images'): what keeps them from `farm gc`."""
    try:
        with runtime.farm.sessions.begin() as session:
            recorded = session.scalar(
                select(JobConsistencyTokens.id).where(
                    JobConsistencyTokens.job_id == job_id,
                    JobConsistencyTokens.storage_prefix == tokens.key,
                )
            )
            if recorded is None:
                session.add(
                    JobConsistencyTokens(
                        job_id=job_id,
                        storage_prefix=tokens.key,
                        references=len(tokens.references),
                        stored_bytes=tokens.nbytes,
                    )
                )
    except IntegrityError:
        pass  # another worker of the job recorded them meanwhile


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
