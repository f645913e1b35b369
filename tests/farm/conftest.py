"""Fixtures of the farm-layer tests: a migrated farm on each backend, whose sent tasks are kept.

Nothing here starts a worker process or a broker: the Celery app is replaced by a recorder, so
a test sees exactly which tasks the farm sent, in which order, and what SQL held at that moment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.context import Farm
from farm.db.migrate import upgrade
from farm.db.models import Base, Job, Render, Shard
from farm.identity.engine import Photo
from farm.identity.faces import DlibFaceAnalyzer
from farm.jobs import Submitted, submit_with_photos
from farm.settings import Settings
from farm.story import Story
from tests.fixtures.tasks import TaskRecorder
from tests.fixtures.tiny import EXAMPLES

PHOTO = Photo("newton_0.jpg", (EXAMPLES / "photos" / "newton_0.jpg").read_bytes())


def farm_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    """Settings for a farm in `tmp_path`: small shards and few attempts, so tests stay short."""
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "models_dir": tmp_path / "models",
        "database_url": database_url,
        "broker_url": "memory://",
        "storage_url": (tmp_path / "storage").as_uri(),
        "shard_size": 2,
        "max_attempts": 2,
        "lease_s": 60,
    }
    return Settings(**{**fields, **overrides})


@pytest.fixture
def farm(database_url: str, tmp_path: Path) -> Iterator[Farm]:
    """A farm on a migrated database of each backend, with a `TaskRecorder` as its Celery app."""
    upgrade(database_url)
    farm = Farm(farm_settings(tmp_path, database_url))
    farm.__dict__["celery"] = TaskRecorder()
    yield farm
    farm.close()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """On a small shared machine torch's threads fight the other processes: one is faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def faces() -> DlibFaceAnalyzer:
    return DlibFaceAnalyzer()


def make_story(scenes: int | list[dict[str, Any]] = 3, **fields: Any) -> Story:
    """A story of Newton on the tiny preset; an int gives that many ordinary scenes."""
    if isinstance(scenes, int):
        scenes = [{"prompt": f"a man img in scene {i}"} for i in range(scenes)]
    data = {
        "character": {"name": "Newton", "class_word": "man", "photos": [PHOTO.name]},
        "preset": "tiny",
        "width": 64,
        "height": 64,
        "steps": 2,
        "seed": 1687,
        "scenes": scenes,
        **fields,
    }
    return Story.model_validate(data)


def submit(
    farm: Farm, faces: DlibFaceAnalyzer, story: Story | None = None, **options: Any
) -> Submitted:
    return submit_with_photos(farm, story or make_story(), [PHOTO], faces, **options)


def table_counts(session: Session) -> dict[str, int]:
    """Rows in each of the farm's tables."""
    return {
        table.name: session.scalar(select(func.count()).select_from(table))
        for table in Base.metadata.sorted_tables
    }


def job_rows(farm: Farm, job_id: str) -> tuple[Job, list[Shard], list[Render]]:
    """The job, its shards and its renders as SQL holds them now, read in a fresh session."""
    with farm.sessions() as session:
        job = session.get(Job, job_id)
        shards = list(
            session.scalars(select(Shard).where(Shard.job_id == job_id).order_by(Shard.index))
        )
        renders = list(
            session.scalars(
                select(Render)
                .where(Render.job_id == job_id)
                .order_by(Render.scene_index, Render.variant)
            )
        )
    return job, shards, renders
