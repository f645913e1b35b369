"""A throwaway PostgreSQL database for a benchmark run, on the local server, dropped after."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from farm.db.models import Character, Project
from farm.jobs import plan_job
from farm.settings import Settings
from farm.story import parse_story

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """The URL of a fresh database named after `prefix` and this process."""
    name = f"{prefix}_{os.getpid()}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def planned_jobs(session: Session, settings: Settings, project: Project, count: int) -> list[str]:
    """`count` jobs of 8 scenes for one character without photos: rows for the control plane
    to read and stream; nothing is sent, and nothing will render them."""
    character = Character(
        name="Newton",
        class_word="man",
        trigger="img",
        photos_fingerprint="0" * 64,
        project_id=project.id,
    )
    session.add(character)
    session.flush()
    story = parse_story(
        {
            "character": {"name": "Newton", "class_word": "man", "photos": ["p.jpg"]},
            "preset": "tiny",
            "scenes": [{"prompt": f"a man img reading, scene {i}"} for i in range(8)],
        },
        presets={"tiny"},
    )
    return [
        plan_job(
            session,
            story,
            character.id,
            settings,
            project_id=project.id,
        )[0].id
        for _ in range(count)
    ]
