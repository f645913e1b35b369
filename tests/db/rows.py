"""Rows for the DB tests, shaped as the planner writes them: a job, its shards, its renders."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.orm import Session

from farm.db.models import Character, Job, Render, Shard
from farm.story import derive_seed


def add_character(session: Session, name: str = "Ada") -> Character:
    character = Character(name=name, class_word="woman", trigger="img", photos_fingerprint="f" * 64)
    session.add(character)
    session.flush()
    return character


def add_job(session: Session, *, renders: int = 4, shard_size: int = 2) -> Job:
    """A job of `renders` queued renders in shards of `shard_size`, inserted in bulk."""
    job = Job(
        character_id=add_character(session).id,
        preset="tiny",
        spec={"preset": "tiny"},
        renders_total=renders,
    )
    session.add(job)
    session.flush()
    shard_ids = session.scalars(
        insert(Shard).returning(Shard.id, sort_by_parameter_order=True),
        [{"job_id": job.id, "index": i} for i in range(-(-renders // shard_size))],
    ).all()
    session.execute(
        insert(Render),
        [
            {
                "job_id": job.id,
                "shard_id": shard_ids[n // shard_size],
                "scene_index": n,
                "variant": 0,
                "seed": derive_seed(0, n, 0),
                "prompt": f"a woman img in scene {n}",
                "negative": "blurry",
            }
            for n in range(renders)
        ],
    )
    return job
