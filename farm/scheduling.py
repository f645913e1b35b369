"""Which shard a free worker takes: fair share between projects, priority within one; and the
producer's hands on a job in the queue (pause, resume, priority).

The broker's tasks are turns, not assignments. Every queued shard still sends one task to its
preset's queue (farm/queue/outbox.py), so the broker holds as many turns as there is work,
KEDA and the reaper count as before, and a broker that is down delays work without losing it.
But the task names a shard only as a hint: the worker that takes it claims, in SQL, the shard
the farm's policy picks among every queued shard of that preset (`take_turn`), and the hinted
shard is left to the turn that another shard's task brings. So a priority changed after
submission, a pause, a resume or a project's weight takes effect at the next claim, without
reordering or withdrawing messages the broker already holds, which Celery cannot do.

The policy, as render managers share a farm (OpenCue's subscriptions, Afanasy's weights):
- between projects, stride scheduling: each project's `share_pass` advances by 1 / weight for
  every shard it is given, and the project with the smallest pass is served next, so that over
  any stretch of claims projects with work get shards in proportion to their weights, with any
  number of workers (one included). A project coming back to the farm after being idle starts
  at the pass of the projects already waiting (`rejoin`), so idle time banks no credit;
- a project at its `max_running_shards` is skipped until one of its shards ends;
- within a project: priority (9 first), then the oldest job, then the shard's order.

A turn that finds nothing it may claim (every waiting shard is of a capped or paused project)
gives up its hint's place: the hinted shard is marked unsent, and a task is sent for it again
once its project has room (`send_released`) or by the reaper's outbox pass. A turn that finds
every shard it may take held by other claims in flight, look after look, is handed back to
the queue (`HeldTurn`) rather than dropped: an extra turn finds nothing and ends, where a lost
one left a shard waiting for the reaper.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.models import DEFAULT_PROJECT, Job, Project, Shard, WorkerFailures
from farm.db.retry import retried_on_lost_race
from farm.db.states import JobStatus, ShardStatus
from farm.errors import InputError
from farm.lifecycle import get_job
from farm.queue.app import MAX_PRIORITY
from farm.queue.outbox import ShardTask, send_shards

log = logging.getLogger(__name__)

_CLAIMABLE_JOB = (JobStatus.QUEUED, JobStatus.RUNNING)
_WAITING_JOB = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
# How long a turn waits for other claims to let go of the shards it may take: claims are short
# transactions (milliseconds), so a second is many of them.
_LOCKED_LOOKS = 20
_LOCKED_WAIT_S = 0.05


@dataclass(frozen=True)
class HeldTurn:
    """A turn whose every candidate stayed held by other claims: sent back, naming one."""

    task: ShardTask


@dataclass(frozen=True)
class Share:
    """A project as the claim weighs it."""

    project_id: int
    weight: float
    cap: int | None
    served: float  # share_pass


# --- The claim's choice ----------------------------------------------------------------------


def whose_turn(
    session: Session, hint: Shard, worker: str, now: datetime
) -> Shard | HeldTurn | None:
    """The shard a task naming `hint` (locked by the caller) claims: a dead worker's running
    shard is taken over as before; otherwise the policy's pick among the queued shards of the
    hint's preset, or, when it picks none, the hint itself, for the claim to say why it does
    not run (ended, paused, held, cancelled). None when the turn is given up: the hint waits
    for its project's cap, unsent, until `send_released` sends it again. A `HeldTurn` when
    the hint was taken by another turn and every other candidate stayed held by claims in
    flight: the caller sends it back."""
    if hint.status is ShardStatus.RUNNING and (
        hint.worker_id == worker or (hint.lease_expires is not None and hint.lease_expires <= now)
    ):
        return hint
    preset = session.scalar(select(Job.preset).where(Job.id == hint.job_id))
    turn = take_turn(session, preset, worker) if preset is not None else None
    if isinstance(turn, Shard):
        if turn.id != hint.id:
            log.info("the task of shard %s takes shard %s, whose turn it is", hint.id, turn.id)
        return turn
    if hint.status is ShardStatus.QUEUED and held_back(session, hint):
        hint.sent = None
        return None
    if isinstance(turn, HeldTurn) and hint.status is not ShardStatus.QUEUED:
        return turn
    return hint


def take_turn(session: Session, preset: str, worker: str | None = None) -> Shard | HeldTurn | None:
    """The queued shard of `preset` a free worker takes now, locked for the caller's claim
    (rows another claim holds are skipped), its project charged for it; None when no project
    may run one (nothing queued, or all of it capped or paused). Jobs that keep `worker` off
    (farm/blocklist.py) are not its to take.

    Every task is one turn and every queued shard has one task, so a turn that takes nothing
    while a shard waits loses that shard's turn until the reaper sends it again. That happens
    when the only queued shards are the hints of other claims in flight, locked by them while
    they pick (perhaps another shard): the turn waits for those claims to commit, a moment,
    and looks again, instead of skipping them for good. Still held after its looks (claims
    slowed by a busy database), the turn is a `HeldTurn`, to be handed back.
    """
    for _ in range(_LOCKED_LOOKS):
        shard = _pick(session, preset, worker)
        if not isinstance(shard, HeldTurn):
            return shard
        time.sleep(_LOCKED_WAIT_S)
    return shard


def _pick(session: Session, preset: str, worker: str | None) -> Shard | HeldTurn | None:
    """`take_turn`'s one look: the shard, None, or a `HeldTurn` naming a shard it may take
    that another claim held."""
    kept_off = exists().where(
        WorkerFailures.job_id == Job.id,
        WorkerFailures.worker_id == worker,
        WorkerFailures.failures >= WorkerFailures.BLOCKLIST_AFTER,
    )
    jobs = session.execute(
        select(Job.id, Job.project_id)
        .where(
            Job.status.in_(_CLAIMABLE_JOB),
            Job.preset == preset,
            Job.cancel_requested.is_(False),
            exists().where(Shard.job_id == Job.id, Shard.status == ShardStatus.QUEUED),
            ~kept_off,
        )
        .order_by(Job.priority.desc(), Job.created, Job.id)
    ).all()
    if not jobs:
        return None
    held = None
    for share in _open_shares(session, {project for _, project in jobs}):
        for job_id, project_id in jobs:
            if project_id != share.project_id:
                continue
            shard = session.scalars(
                select(Shard)
                .where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
                .order_by(Shard.index)
                .limit(1)
                .with_for_update(skip_locked=True)
            ).first()
            if shard is not None:
                _charge(session, share)
                return shard
            held = held or job_id
    if held is None:
        return None
    job = session.get_one(Job, held)
    shard_id = session.scalar(
        select(Shard.id)
        .where(Shard.job_id == held, Shard.status == ShardStatus.QUEUED)
        .order_by(Shard.index)
        .limit(1)
    )
    if shard_id is None:  # the claims that held them have taken them all
        return None
    return HeldTurn(ShardTask(shard_id, held, job.preset, job.priority))


def _open_shares(session: Session, project_ids: set[int]) -> list[Share]:
    """The projects with work waiting that are below their cap, the one furthest behind its
    share first (a heavier weight first on a tie, then the older project)."""
    shares = [
        Share(*row)
        for row in session.execute(
            select(
                Project.id, Project.share_weight, Project.max_running_shards, Project.share_pass
            ).where(Project.id.in_(project_ids))
        )
    ]
    running = running_shards(session, [s.project_id for s in shares if s.cap is not None])
    return sorted(
        (s for s in shares if s.cap is None or running.get(s.project_id, 0) < s.cap),
        key=lambda s: (s.served, -s.weight, s.project_id),
    )


def running_shards(session: Session, project_ids: Sequence[int]) -> dict[int, int]:
    """How many shards of each project run now (one GROUP BY over the running shards)."""
    if not project_ids:
        return {}
    rows = session.execute(
        select(Job.project_id, func.count())
        .select_from(Shard)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status == ShardStatus.RUNNING, Job.project_id.in_(project_ids))
        .group_by(Job.project_id)
    )
    return {project: int(n) for project, n in rows}


def _charge(session: Session, share: Share) -> None:
    """Advance the project's pass by one shard over its weight; the row is locked, so two
    claims at once both count."""
    project = session.get_one(Project, share.project_id, with_for_update=True)
    project.share_pass += 1 / project.share_weight


def rejoin(session: Session, project_id: int | None) -> None:
    """A project that had nothing waiting gets work again (a submission, a resume): it starts
    level with the projects already waiting, not with the credit of its idle time, which
    would let it take every free worker until its pass caught up. None: the default project."""
    if project_id is None:
        project_id = session.scalar(select(Project.id).where(Project.name == DEFAULT_PROJECT))
        if project_id is None:
            return
    waiting = select(Job.project_id).where(Job.status.in_(_CLAIMABLE_JOB))
    if session.scalar(select(exists(waiting.where(Job.project_id == project_id)))):
        return  # it never left
    level = session.scalar(
        select(func.min(Project.share_pass)).where(
            Project.id.in_(waiting), Project.id != project_id
        )
    )
    project = session.get_one(Project, project_id, with_for_update=True)
    if level is not None and project.share_pass < level:
        project.share_pass = level


def held_back(session: Session, shard: Shard) -> bool:
    """Whether a queued shard waits because its project is at its cap: its turn is then given
    up (the shard marked unsent), to be sent again once the project has room."""
    cap = session.scalar(
        select(Project.max_running_shards)
        .join(Job, Job.project_id == Project.id)
        .where(Job.id == shard.job_id)
    )
    if cap is None:
        return False
    project_id = session.scalar(select(Job.project_id).where(Job.id == shard.job_id))
    return running_shards(session, [project_id]).get(project_id, 0) >= cap


def send_released(farm: Farm, job_id: str) -> list[int]:
    """After a shard of `job_id`'s project ended: send turns for the project's unsent queued
    shards that now have room under its cap (the turns given up while it was full)."""
    with farm.sessions() as session:
        project_id, cap = session.execute(
            select(Project.id, Project.max_running_shards)
            .join(Job, Job.project_id == Project.id)
            .where(Job.id == job_id)
        ).one()
        if cap is None:
            return []
        room = cap - running_shards(session, [project_id]).get(project_id, 0)
        if room <= 0:
            return []
        rows = session.execute(
            select(Shard.id, Job.id, Job.preset, Job.priority)
            .join(Job, Job.id == Shard.job_id)
            .where(
                Job.project_id == project_id,
                Job.status.in_(_CLAIMABLE_JOB),
                Shard.status == ShardStatus.QUEUED,
                Shard.sent.is_(None),
            )
            .order_by(Job.priority.desc(), Job.created, Shard.index)
            .limit(room)
        ).all()
    return send_shards(farm, [ShardTask(*row) for row in rows]) if rows else []


# --- A producer's hands on a job -------------------------------------------------------------


def _job_in(session: Session, job_id: str, project_id: int | None) -> Job:
    """The job; with `project_id`, only if it is that project's (the CLI's --project)."""
    job = get_job(session, job_id)
    if project_id is not None and job.project_id != project_id:
        raise InputError(f"job {job_id} is not in this project; a project changes only its own")
    return job


@retried_on_lost_race
def pause_job(farm: Farm, job_id: str, project_id: int | None = None) -> Job:
    """Hold a queued or running job back: its queued shards pause at once and no worker claims
    them; a running shard stops at its next batch (what it rendered stays done) and pauses."""
    with farm.sessions.begin() as session:
        job = _job_in(session, job_id, project_id)
        if job.status not in _CLAIMABLE_JOB:
            raise InputError(f"job {job_id} is {job.status}; only a queued or running job pauses")
        if job.cancel_requested:
            raise InputError(f"job {job_id} is being cancelled; it cannot pause")
        job.pause()
        for shard in session.scalars(
            select(Shard).where(Shard.job_id == job_id, Shard.status == ShardStatus.QUEUED)
        ):
            shard.pause()
    farm.events.publish(job_id, "job.paused")
    return job


@retried_on_lost_race
def resume_job(farm: Farm, job_id: str, project_id: int | None = None) -> Job:
    """Let a paused job run again: its paused shards are queued and their turns sent."""
    with farm.sessions.begin() as session:
        job = _job_in(session, job_id, project_id)
        if job.status is not JobStatus.PAUSED:
            raise InputError(f"job {job_id} is {job.status}; only a paused job resumes")
        rejoin(session, job.project_id)
        job.resume()
        shards = list(
            session.scalars(
                select(Shard)
                .where(Shard.job_id == job_id, Shard.status == ShardStatus.PAUSED)
                .order_by(Shard.index)
            )
        )
        for shard in shards:
            shard.resume()
        tasks = [ShardTask(s.id, job.id, job.preset, job.priority) for s in shards]
    send_shards(farm, tasks)
    farm.events.publish(job_id, "job.resumed", shards=len(tasks))
    return job


@retried_on_lost_race
def set_priority(farm: Farm, job_id: str, priority: int, project_id: int | None = None) -> Job:
    """Change a waiting job's priority: its shards not yet claimed are taken in the new order
    from the next claim on (the claim reads it from SQL; the broker's copy is only a hint)."""
    if type(priority) is not int or not 0 <= priority <= MAX_PRIORITY:
        raise InputError(
            f"priority must be a whole number from 0 to {MAX_PRIORITY}, got {priority!r}"
        )
    with farm.sessions.begin() as session:
        job = _job_in(session, job_id, project_id)
        if job.status not in _WAITING_JOB:
            raise InputError(f"job {job_id} is {job.status}; only a job not yet ended is reordered")
        job.priority = priority
    farm.events.publish(job_id, "job.priority", priority=priority)
    return job


def set_share(
    session: Session, project: Project, *, weight: float | None, cap: int | None, uncap: bool
) -> None:
    """A project's weight and cap (`farm projects share`); the farm's operator sets them, since
    a team that could raise its own weight would take the farm from the others."""
    if weight is not None:
        if not weight > 0 or weight != weight or weight == float("inf"):
            raise InputError(f"weight must be a number above 0, got {weight}")
        project.share_weight = weight
    if cap is not None:
        if cap < 1:
            raise InputError(f"max running shards must be 1 or more (or none), got {cap}")
        project.max_running_shards = cap
    if uncap:
        project.max_running_shards = None


def within_caps(farm: Farm, tasks: Sequence[ShardTask]) -> list[ShardTask]:
    """`tasks` less those a capped project has no room for: the reaper's outbox pass must not
    send a turn per held-back shard every minute, for each to be given up again at once."""
    if not tasks:
        return []
    with farm.sessions() as session:
        project_of = {
            job_id: (project_id, cap)
            for job_id, project_id, cap in session.execute(
                select(Job.id, Project.id, Project.max_running_shards)
                .join(Project, Project.id == Job.project_id)
                .where(Job.id.in_({task.job_id for task in tasks}))
            )
        }
        capped = sorted({p for p, cap in project_of.values() if cap is not None})
        room = {p: 0 for p in capped}
        running = running_shards(session, capped)
        for project_id, cap in project_of.values():
            if cap is not None:
                room[project_id] = cap - running.get(project_id, 0)
    kept = []
    for task in tasks:
        project_id, cap = project_of.get(task.job_id, (None, None))
        if cap is None:
            kept.append(task)
        elif room[project_id] > 0:
            room[project_id] -= 1
            kept.append(task)
    return kept
