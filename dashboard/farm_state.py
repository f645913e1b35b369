"""The farm as the farm page and `GET /api/v1/workers` show it: workers and queue depths.

Queue depth is counted twice, because each count misses something: SQL knows the queued and
running shards of every preset (the truth about work), the broker knows the messages waiting
in `render.<preset>`, per priority on Redis (`farm.queue.depths`). A queue with shards queued
in SQL but no message in the broker has lost its tasks, which the reaper sends again.
`farm workers` and `farm queues` print the same rows.

Workers are shared, their work is not: a project sees which shard and job a worker is on only
when the job is its own; another project's work shows as a busy worker with no ids, which
would otherwise tell one studio the job ids (and so the activity) of another.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dashboard.api.schemas import QueueOut, WorkerOut
from farm.context import Farm
from farm.db.models import Job, Shard, Worker
from farm.db.states import ShardStatus
from farm.db.types import utcnow
from farm.queue.app import render_queue
from farm.queue.depths import queue_depths
from farm.render.presets import PRESETS


def workers(session: Session, project_id: int | None = None) -> list[WorkerOut]:
    """Every worker, with the ids of its current work where that work is `project_id`'s;
    None: every project's (the operator's `farm workers`)."""
    now = utcnow()
    rows = session.execute(
        select(Worker, Shard.job_id, Job.project_id)
        .outerjoin(Shard, Shard.id == Worker.current_shard_id)
        .outerjoin(Job, Job.id == Shard.job_id)
        .order_by(Worker.id)
    ).all()
    listed = []
    for w, job_id, owner in rows:
        shown = project_id is None or owner == project_id
        listed.append(
            WorkerOut(
                id=w.id,
                hostname=w.hostname,
                device=w.device,
                presets=list(w.presets),
                status=str(w.status),
                current_shard_id=w.current_shard_id if shown else None,
                current_job_id=job_id if shown else None,
                heartbeat_age_s=round((now - w.last_heartbeat).total_seconds(), 1),
                renders_done=w.renders_done,
                renders_failed=w.renders_failed,
                started=w.started,
            )
        )
    return listed


def queues(farm: Farm, session: Session) -> list[QueueOut]:
    counts = session.execute(
        select(Job.preset, Shard.status, func.count())
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]))
        .group_by(Job.preset, Shard.status)
    ).all()
    by_preset: dict[str, dict[ShardStatus, int]] = {name: {} for name in PRESETS}
    for preset, status, count in counts:
        by_preset.setdefault(preset, {})[status] = count
    depths = queue_depths(farm.celery, [render_queue(preset) for preset in by_preset])
    rows = []
    for preset, states in sorted(by_preset.items()):
        depth = depths[render_queue(preset)]
        rows.append(
            QueueOut(
                preset=preset,
                queue=render_queue(preset),
                queued_shards=states.get(ShardStatus.QUEUED, 0),
                running_shards=states.get(ShardStatus.RUNNING, 0),
                broker_messages=depth.messages,
                broker_by_priority=depth.by_priority,
            )
        )
    return rows
