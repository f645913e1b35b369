"""The schema's constraints and types hold on both backends, not only in Python."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, delete, func, select, text
from sqlalchemy.exc import IntegrityError, InvalidRequestError, StatementError
from sqlalchemy.orm import Session

from farm.db.models import Character, CharacterPhoto, Job, Render, Shard
from farm.db.states import JobStatus
from farm.db.types import utcnow
from farm.story import MAX_SEED
from tests.db.rows import add_character, add_job


def _count(session: Session, model: type, job_id: str) -> int:
    return session.scalar(select(func.count()).select_from(model).where(model.job_id == job_id))


def test_a_render_is_unique_per_job_scene_and_variant(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    shard_id = db_session.scalar(select(Shard.id).where(Shard.job_id == job.id))
    db_session.add(
        Render(
            job_id=job.id,
            shard_id=shard_id,
            scene_index=0,
            variant=0,
            seed=1,
            prompt="a woman img again",
            negative="",
        )
    )
    with pytest.raises(
        IntegrityError, match=r"uq_renders_job_id_scene_index_variant|UNIQUE constraint failed"
    ):
        db_session.flush()


@pytest.mark.parametrize("how", ["orm", "sql"])
def test_deleting_a_job_deletes_its_shards_and_renders(db_session: Session, how: str) -> None:
    job, other = add_job(db_session, renders=6), add_job(db_session, renders=2)
    db_session.commit()

    if how == "orm":
        db_session.delete(job)  # passive deletes: the database cascades, nothing is loaded
    else:
        db_session.execute(delete(Job).where(Job.id == job.id))
    db_session.commit()

    assert _count(db_session, Shard, job.id) == 0
    assert _count(db_session, Render, job.id) == 0
    assert _count(db_session, Render, other.id) == 2


def test_the_status_check_rejects_an_unknown_state(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    db_session.commit()

    with pytest.raises(IntegrityError, match="ck_renders_status"):
        db_session.execute(
            text("UPDATE renders SET status = 'exploded' WHERE job_id = :job_id"),
            {"job_id": job.id},
        )


def test_the_orm_refuses_an_unknown_state_before_the_database_sees_it(
    db_session: Session,
) -> None:
    job = add_job(db_session, renders=1)
    job.status = "exploded"  # type: ignore[assignment]
    with pytest.raises(StatementError, match="exploded"):
        db_session.flush()


def test_priority_stays_in_celerys_range(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    job.priority = 10
    with pytest.raises(IntegrityError, match="ck_jobs_priority_range"):
        db_session.flush()


def test_new_rows_get_their_defaults_from_the_database(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    db_session.commit()

    assert uuid.UUID(job.id).version == 4
    assert (job.status, job.priority, job.cancel_requested) == (JobStatus.QUEUED, 5, False)
    shard = db_session.scalars(select(Shard).where(Shard.job_id == job.id)).one()
    assert (shard.attempts, shard.max_attempts) == (0, 3)


def test_the_largest_seed_fits(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    db_session.execute(text("UPDATE renders SET seed = :seed"), {"seed": MAX_SEED})
    db_session.commit()

    assert db_session.scalar(select(Render.seed).where(Render.job_id == job.id)) == MAX_SEED


def test_timestamps_read_back_aware_and_in_utc(db_engine: Engine, db_session: Session) -> None:
    before = utcnow()
    job = add_job(db_session, renders=1)
    job.start(now=datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
    db_session.commit()

    with Session(db_engine) as fresh:
        read = fresh.get_one(Job, job.id)
        for value in (read.created, read.updated, read.started):
            assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
        assert read.started == datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
        # The database's clock, on this same machine: within a few seconds of ours.
        assert abs(read.created - before) < timedelta(seconds=5)


def test_a_time_in_another_zone_is_stored_as_the_same_instant(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    job.start(now=datetime(2030, 1, 1, 9, 0, tzinfo=timezone(timedelta(hours=9))))
    db_session.commit()
    db_session.expire_all()

    assert db_session.get_one(Job, job.id).started == datetime(2030, 1, 1, 0, 0, tzinfo=UTC)


def test_a_naive_time_is_refused(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    job.start(now=datetime(2030, 1, 1))
    with pytest.raises(StatementError, match="naive datetime"):
        db_session.flush()


def test_updated_moves_on_every_write_and_created_does_not(db_session: Session) -> None:
    job = add_job(db_session, renders=1)
    db_session.commit()
    created, updated = job.created, job.updated
    time.sleep(0.005)  # SQLite's clock counts milliseconds

    job.preset = "tiny-v1"
    db_session.commit()

    assert job.created == created
    assert job.updated > updated


def test_photos_come_with_their_character_in_order(db_engine: Engine, db_session: Session) -> None:
    character = add_character(db_session)
    for position in (1, 0):
        character.photos.append(
            CharacterPhoto(
                position=position,
                name=f"photo_{position}.jpg",
                sha256=f"{position}" * 64,
                storage_key=f"photos/{position}.jpg",
                width=512,
                height=512,
                face_x0=10.0,
                face_y0=12.0,
                face_x1=200.5,
                face_y1=220.0,
                face_score=0.98,
            )
        )
    db_session.commit()

    with Session(db_engine) as fresh:
        read = fresh.get_one(Character, character.id)
    assert [photo.name for photo in read.photos] == ["photo_0.jpg", "photo_1.jpg"]


def test_big_collections_never_load_behind_your_back(
    db_engine: Engine, db_session: Session
) -> None:
    job = add_job(db_session, renders=2)
    db_session.commit()

    with Session(db_engine) as fresh:
        read = fresh.get_one(Job, job.id)
        with pytest.raises(InvalidRequestError, match="raise_on_sql"):
            _ = read.renders
