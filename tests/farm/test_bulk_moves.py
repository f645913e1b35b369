"""A batch's renders start and finish in one statement each (the claim/finish path's round
trips are per batch, not per render), and each bulk move leaves a render exactly as the
render's own method would, and leaves alone a render the method refuses."""

from __future__ import annotations

from contextlib import suppress

import pytest
from sqlalchemy import event, update

from farm.db.models import Render, Shard
from farm.db.states import RenderStatus, TransitionError
from farm.lifecycle import finish_renders, start_renders
from tests.farm.conftest import job_rows, make_story, submit

WORKER = "bulk:cuda0"
FINISH = {
    "storage_key": "jobs/j/renders/0000-v0.png",
    "thumb_key": "jobs/j/thumbs/0000-v0.webp",
    "identity_s": 0.5,
    "denoise_s": 1.25,
    "decode_s": 0.25,
    "upload_s": 0.125,
    "face_similarity": 0.75,
    "qc_retries": 1,
    "qc_seed": 99,
}
# What the two moves write; the rest of a render is its plan.
COLUMNS = ["status", "worker_id", "device", "attempts", "error", "started", "finished", *FINISH]


def _with_status(farm, render_id: int, status: RenderStatus) -> None:
    with farm.sessions.begin() as session:
        session.execute(update(Render).where(Render.id == render_id).values(status=status))


def _same_but_times(bulk: Render, one: Render) -> None:
    for column in COLUMNS:
        if column in ("started", "finished"):  # the clock moved between the two
            assert (getattr(bulk, column) is None) == (getattr(one, column) is None), column
        else:
            assert getattr(bulk, column) == getattr(one, column), column


@pytest.mark.parametrize("source", list(RenderStatus))
def test_a_batch_starts_and_finishes_as_each_render_would(farm, faces, source):
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), (render, other) = job_rows(farm, job_id)
    with farm.sessions.begin() as session:
        session.get_one(Shard, shard.id).start(WORKER, 60)
    for row in (render, other):
        _with_status(farm, row.id, source)

    assert start_renders(farm, WORKER, "cuda:0", job_id, [render.id])
    with farm.sessions.begin() as session:
        one = session.get_one(Render, other.id)
        with suppress(TransitionError):
            one.start(WORKER, "cuda:0")
    _, _, (render, other) = job_rows(farm, job_id)
    _same_but_times(render, other)

    with farm.sessions.begin() as session:
        finish_renders(session, {render.id: FINISH})
    with farm.sessions.begin() as session:
        one = session.get_one(Render, other.id)
        with suppress(TransitionError):
            one.finish(**FINISH)
    _, _, (render, other) = job_rows(farm, job_id)
    _same_but_times(render, other)


def test_a_batch_of_four_is_one_statement_to_start_and_one_to_finish(farm, faces):
    job_id = submit(farm, faces, make_story(4)).job_id
    renders = job_rows(farm, job_id)[2]
    ids = [r.id for r in renders]
    statements: list[str] = []
    event.listen(farm.engine, "before_cursor_execute", lambda *a: statements.append(a[2]))

    start_renders(farm, WORKER, "cuda:0", job_id, ids)
    with farm.sessions.begin() as session:
        finish_renders(session, dict.fromkeys(ids, FINISH))

    writes = [s for s in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(writes) == 2, statements
    _, _, renders = job_rows(farm, job_id)
    assert [r.status for r in renders] == [RenderStatus.DONE] * 4
    assert all(r.attempts == 1 and r.worker_id == WORKER for r in renders)
