"""Submitting a story: planned in one transaction, sent only after it commits, refused whole.

A worker must find every row its task names, so the order (commit, then send) is checked at the
moment of sending, from a connection of its own; and a submission that fails must leave nothing
behind, neither rows nor objects, because nobody would ever clean them up.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image
from sqlalchemy import event, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from farm.characters import photo_key
from farm.context import Farm
from farm.db.models import Character, CharacterPhoto, Project, Render, Shard
from farm.db.session import make_engine
from farm.db.states import JobStatus, RenderStatus, ShardStatus
from farm.errors import InputError
from farm.identity.engine import Photo
from farm.jobs import submit_story, submit_with_photos
from farm.queue.app import RENDER_SHARD, make_celery
from tests.farm.conftest import PHOTO, job_rows, make_story, submit, table_counts
from tests.fixtures.tasks import SentTask


@pytest.fixture
def other_session(farm: Farm) -> Iterator[Session]:
    """A session on an engine of its own: sees only what the farm's transactions committed."""
    engine = make_engine(farm.settings.database_url)
    with Session(engine) as session:
        yield session
    engine.dispose()


def stored_keys(farm: Farm) -> list[str]:
    return list(farm.storage.list())


def test_plan_is_deterministic_and_sharded(farm, faces):
    story = make_story(
        [{"prompt": "a man img reading"}] * 4 + [{"prompt": "a man img", "variants": 2}]
    )
    submitted = submit(farm, faces, story)

    job, shards, renders = job_rows(farm, submitted.job_id)
    plan = story.plan()
    assert (submitted.renders, submitted.shards) == (6, 3)  # shards of settings.shard_size=2
    assert job.status is JobStatus.QUEUED and job.renders_total == 6 and job.preset == "tiny"
    assert [(r.scene_index, r.variant, r.seed, r.prompt, r.negative) for r in renders] == [
        (p.scene_index, p.variant, p.seed, p.prompt, p.negative) for p in plan
    ]
    assert [s.index for s in shards] == [0, 1, 2]
    assert all(s.status is ShardStatus.QUEUED and s.max_attempts == 2 for s in shards)
    by_shard = [[r.scene_index for r in renders if r.shard_id == s.id] for s in shards]
    assert by_shard == [[0, 1], [2, 3], [4, 4]]  # consecutive scenes share a shard
    assert all(r.status is RenderStatus.QUEUED for r in renders)


def test_tasks_are_sent_after_commit_one_per_shard(farm, faces, other_session):
    """At each send, another connection already sees the shard and its renders."""
    seen = []

    def look(task: SentTask) -> None:
        other_session.rollback()  # a fresh snapshot for each look
        shard = other_session.get(Shard, task.args[0])
        renders = other_session.scalars(select(Render.id).where(Render.shard_id == task.args[0]))
        seen.append((shard.status, len(renders.all())))

    farm.celery.on_send = look
    submitted = submit(farm, faces, make_story(3))

    _, shards, _ = job_rows(farm, submitted.job_id)
    assert farm.celery.sent == [
        SentTask(RENDER_SHARD, [s.id], "render.tiny", 4)
        for s in shards  # farm 5 -> Celery 4
    ]
    assert seen == [(ShardStatus.QUEUED, 2), (ShardStatus.QUEUED, 1)]


@pytest.mark.parametrize(("priority", "celery_priority"), [(9, 0), (5, 4), (0, 9)])
def test_priority_is_inverted_for_celery(farm, faces, priority, celery_priority):
    """The farm's 9 is the most urgent; Celery on Redis serves 0 first."""
    submitted = submit(farm, faces, make_story(1), priority=priority)
    job, _, _ = job_rows(farm, submitted.job_id)
    assert job.priority == priority
    assert [t.priority for t in farm.celery.sent] == [celery_priority]


def test_task_reaches_the_preset_queue_of_a_real_broker(farm, faces):
    """The farm's own Celery app on kombu's in-memory broker, read as a tiny worker declares
    its queues: the task is in render.tiny only, with its name, shard and priority."""
    del farm.__dict__["celery"]
    worker_queues = make_celery(farm.settings, ["tiny"]).conf.task_queues
    with farm.celery.connection_for_read() as connection:
        control, render = (connection.SimpleQueue(q) for q in worker_queues)
        for queue in (control, render):
            queue.clear()  # the in-memory broker is shared by the whole test process
        submitted = submit(farm, faces, make_story(1), priority=8)
        message = render.get(timeout=1)
        message.ack()
        assert (render.qsize(), control.qsize()) == (0, 0)
    _, shards, _ = job_rows(farm, submitted.job_id)
    assert message.headers["task"] == RENDER_SHARD
    assert message.payload[0] == [shards[0].id]
    assert message.properties["priority"] == 1


def test_a_failure_half_way_leaves_nothing(farm, faces):
    """The renders' insert fails after the character, job and shards were written."""
    seen: list[str] = []

    def fail_renders(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        seen.append(statement.split("(", 1)[0].strip())
        if statement.startswith("INSERT INTO renders"):
            raise RuntimeError("disk full")

    with farm.sessions() as session:
        before = table_counts(session)
    event.listen(Engine, "before_cursor_execute", fail_renders)
    try:
        with pytest.raises(RuntimeError, match="disk full"):
            submit(farm, faces, make_story(5))
    finally:
        event.remove(Engine, "before_cursor_execute", fail_renders)

    for table in ("characters", "jobs", "shards"):  # it did fail half way through
        assert f"INSERT INTO {table}" in seen, seen
    with farm.sessions() as session:
        assert table_counts(session) == before
    assert farm.celery.sent == []


def test_same_story_twice_reuses_the_character(farm, faces):
    first = submit(farm, faces)
    second = submit(farm, faces)

    assert first.job_id != second.job_id
    with farm.sessions() as session:
        counts = table_counts(session)
        character = session.scalars(select(Character)).one()
        key = session.scalars(select(CharacterPhoto.storage_key)).one()
    assert (counts["characters"], counts["character_photos"], counts["jobs"]) == (1, 1, 2)
    assert key == photo_key(PHOTO.sha256) and key.startswith(f"photos/{PHOTO.sha256[:2]}/")
    assert stored_keys(farm) == [key]
    assert farm.storage.get(key) == PHOTO.data
    assert {job_rows(farm, j)[0].character_id for j in (first.job_id, second.job_id)} == {
        character.id
    }


def gradient_photo() -> Photo:
    image = Image.linear_gradient("L").resize((128, 128)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Photo("gradient.png", buffer.getvalue())


@pytest.mark.parametrize(
    ("story", "photos", "priority", "message"),
    [
        (make_story(1, preset="nope"), [PHOTO], 5, "unknown preset 'nope'; choose one of: tiny"),
        (make_story(1), [gradient_photo()], 5, "photo 'gradient.png': no face found"),
        (make_story(1), [PHOTO], 10, "priority must be between 0 and 9, got 10"),
        (make_story(1), [PHOTO], -1, "priority must be between 0 and 9, got -1"),
    ],
    ids=["unknown-preset", "no-face", "priority-10", "priority-minus-1"],
)
def test_bad_input_is_refused_and_writes_nothing(farm, faces, story, photos, priority, message):
    with farm.sessions() as session:
        before = table_counts(session)
    with pytest.raises(InputError) as refused:
        submit_with_photos(farm, story, photos, faces, priority=priority)

    assert str(refused.value).startswith(message)
    with farm.sessions() as session:
        assert table_counts(session) == before
    assert stored_keys(farm) == []
    assert farm.celery.sent == []


def test_a_submit_by_id_names_only_the_projects_own_character(farm, faces):
    """`submit_story` reads ids (no photos on the request thread), so it must check them: a
    character of another project, or one answering to another trigger, is refused unwritten."""
    character_id = job_rows(farm, submit(farm, faces).job_id)[0].character_id
    with farm.sessions.begin() as session:
        other = Project(name="elsewhere")
        session.add(other)
        session.flush()
        other_id = other.id
    with farm.sessions() as session:
        before = table_counts(session)

    with pytest.raises(InputError, match=f"no character {character_id} in this project"):
        submit_story(farm, make_story(1), character_id, project_id=other_id)
    renamed = make_story(
        [{"prompt": "a man ohm reading"}],
        character={"name": "Newton", "class_word": "man", "trigger": "ohm", "photos": [PHOTO.name]},
    )
    with pytest.raises(InputError, match="answers to trigger 'img', but the story names 'ohm'"):
        submit_story(farm, renamed, character_id)
    with farm.sessions() as session:
        assert table_counts(session) == before

    again = submit_story(farm, make_story(2), character_id)
    assert job_rows(farm, again.job_id)[0].character_id == character_id
