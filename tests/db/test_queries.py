"""The hot-path queries stay one statement, answered from their index, at a real job's size."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, event, insert, literal, select, text, update
from sqlalchemy.orm import Session

from farm.db.models import Job, Render, Shard
from farm.db.queries import expired_leases, job_progress
from farm.db.states import RenderStatus
from tests.db.rows import add_job

RENDERS = 10_000
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the database inside the block, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _big_job(session: Session) -> Job:
    """A job of RENDERS renders: 30% done, 10% failed, 5% running, the rest queued."""
    job = add_job(session, renders=RENDERS, shard_size=4)
    for status, below in (
        (RenderStatus.DONE, 30),
        (RenderStatus.FAILED, 40),
        (RenderStatus.RUNNING, 45),
    ):
        session.execute(
            update(Render)
            .where(
                Render.job_id == job.id,
                Render.status == RenderStatus.QUEUED,
                Render.scene_index % 100 < below,
            )
            .values(status=status)
        )
    return job


def _copy_renders(session: Session, job: Job, copies: int) -> None:
    """Other jobs as big as `job`, copied inside the database: the table of a farm in use."""
    for _ in range(copies):
        other = add_job(session, renders=1)
        shard_id = session.scalar(select(Shard.id).where(Shard.job_id == other.id))
        columns = ["job_id", "shard_id", "scene_index", "variant", "seed", "prompt", "negative"]
        source = select(
            literal(other.id),
            literal(shard_id),
            Render.scene_index + 1,
            Render.variant,
            Render.seed,
            Render.prompt,
            Render.negative,
        ).where(Render.job_id == job.id)
        session.execute(insert(Render).from_select(columns, source))


def test_job_progress_is_one_select_on_ten_thousand_renders(
    db_engine: Engine, db_session: Session
) -> None:
    job = _big_job(db_session)
    db_session.commit()

    with _statements(db_engine) as seen:
        progress = job_progress(db_session, job.id)

    assert len(seen) == 1
    assert seen[0][0].lstrip().upper().startswith("SELECT")
    assert progress == {
        RenderStatus.QUEUED: 5_500,
        RenderStatus.RUNNING: 500,
        RenderStatus.DONE: 3_000,
        RenderStatus.FAILED: 1_000,
        RenderStatus.CANCELLED: 0,
    }


def test_job_progress_is_answered_from_the_job_status_index(
    db_engine: Engine, db_session: Session
) -> None:
    job = _big_job(db_session)
    _copy_renders(db_session, job, copies=4)
    db_session.commit()
    with _statements(db_engine) as seen:
        job_progress(db_session, job.id)
    [(statement, parameters)] = seen

    with db_engine.begin() as connection:
        connection.execute(text("ANALYZE renders"))
        if db_engine.dialect.name == "postgresql":
            plan = "\n".join(
                row[0] for row in connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
            )
            assert "Seq Scan" not in plan, plan
            assert "Scan using ix_renders_job_id_status" in plan or (
                "Bitmap Index Scan on ix_renders_job_id_status" in plan
            ), plan
        else:
            rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
            plan = "\n".join(row[-1] for row in rows)
            assert "USING COVERING INDEX ix_renders_job_id_status" in plan, plan


def test_expired_leases_are_the_running_shards_past_their_lease(db_session: Session) -> None:
    job = add_job(db_session, renders=10, shard_size=2)
    shards = db_session.scalars(
        select(Shard).where(Shard.job_id == job.id).order_by(Shard.index)
    ).all()
    late, later, alive, finished, _still_queued = shards
    later.start("host:cuda0", lease_s=60, now=T0 - timedelta(minutes=5))
    late.start("host:cuda1", lease_s=60, now=T0 - timedelta(minutes=10))
    alive.start("host:cuda2", lease_s=60, now=T0 - timedelta(seconds=30))
    finished.start("host:cuda3", lease_s=60, now=T0 - timedelta(minutes=10))
    finished.succeed(now=T0 - timedelta(minutes=9))
    db_session.commit()

    assert expired_leases(db_session, T0) == [late, later]
