"""farm/lifecycle.py is the one home of state changes: no other module writes a status column,
and its bulk moves leave rows as the models' own methods would."""

from __future__ import annotations

import ast
import re
from contextlib import suppress
from datetime import timedelta
from pathlib import Path

import pytest
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import update

from farm.db.models import Job, Render, Shard
from farm.db.states import JobStatus, RenderStatus, ShardStatus, TransitionError
from farm.lifecycle import (
    cancel_job,
    cancel_shard,
    close_job,
    fail_shard,
    finish_job_if_done,
    retry_job,
)
from farm.queue.app import CONTROL_QUEUE, FINALIZE_JOB
from tests.farm.conftest import job_rows, make_story, submit
from tests.fixtures.tasks import SentTask
from workers.reaper import reap

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("farm", "workers", "dashboard", "farmcli")
# The two places allowed to write one: the models' methods (a row) and the lifecycle (many).
HOMES = {Path("farm/lifecycle.py"), Path("farm/db/models.py")}
# Migrations move rows between the states of two schemas (a downgrade's paused jobs resume).
MIGRATIONS = Path("farm/db/migrations")
_SQL_SET_STATUS = re.compile(r"\bSET\s+status\b", re.IGNORECASE)
WORKER = "gpu-box:cuda0"
ERROR = "IndexError: list index out of range"
HOUR = timedelta(hours=1)


def _is_status(node: ast.expr) -> bool:
    """`x.status` or the string "status": what names the column in Python and in a dict."""
    return (isinstance(node, ast.Attribute) and node.attr == "status") or (
        isinstance(node, ast.Constant) and node.value == "status"
    )


def _writes_status(call: ast.Call) -> bool:
    """`.values(status=...)`, `.update({X.status: ...})`, `setattr(x, "status", ...)`."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name == "setattr":
        return len(call.args) > 1 and _is_status(call.args[1])
    if name not in ("values", "update"):
        return False
    keys = [k for arg in call.args if isinstance(arg, ast.Dict) for k in arg.keys if k]
    return any(k.arg == "status" for k in call.keywords) or any(map(_is_status, keys))


def status_writes(source: str) -> list[int]:
    """The lines of `source` that assign or update a status column."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            write = any(map(_is_status, targets))
        elif isinstance(node, ast.Call):
            write = _writes_status(node)
        else:
            write = isinstance(node, ast.Constant) and bool(
                isinstance(node.value, str) and _SQL_SET_STATUS.search(node.value)
            )
        if write:
            lines.append(node.lineno)
    return sorted(set(lines))


@pytest.mark.parametrize(
    "source",
    [
        "session.execute(update(Render).where(x).values(status=RenderStatus.FAILED))",
        "shard.status = ShardStatus.QUEUED",
        "row.status: str = 'done'",
        "query.update({Render.status: 'cancelled'})",
        "query.update({'status': 'cancelled'})",
        "setattr(job, 'status', 'failed')",
        "session.execute(text(\"UPDATE renders SET status = 'failed'\"))",
    ],
)
def test_the_check_finds_each_way_of_writing_a_status(source: str) -> None:
    assert status_writes(source) == [1]


def test_no_module_outside_the_lifecycle_and_the_models_writes_a_status() -> None:
    found = {
        f"{path.relative_to(REPO)}:{line}"
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if path.relative_to(REPO) not in HOMES and MIGRATIONS not in path.relative_to(REPO).parents
        for line in status_writes(path.read_text())
    }
    assert found == set(), "state changes belong in farm/lifecycle.py"


def test_a_cancelled_queued_render_is_finished_as_render_cancel_finishes_it(farm, faces):
    job_id = submit(farm, faces, make_story(3)).job_id

    cancel_job(farm, job_id)

    _, _, renders = job_rows(farm, job_id)
    assert {r.status for r in renders} == {RenderStatus.CANCELLED}
    assert all(r.finished is not None for r in renders)


def test_a_cancelled_shard_leaves_its_failed_render_failed(farm, faces):
    """Render.cancel refuses a failed render, and so does the bulk cancel of a shard's renders;
    a retry reopens both, as Render.reopen would."""
    job_id = submit(farm, faces, make_story(2)).job_id
    _, (shard,), (failed, waiting) = job_rows(farm, job_id)
    with farm.sessions.begin() as session:
        session.get(Shard, shard.id).start(WORKER, 60)
        row = session.get(Render, failed.id)
        row.start(WORKER, "cpu")
        row.fail(ERROR)
    cancel_job(farm, job_id)  # the shard is running: it ends at its next render
    with farm.sessions.begin() as session:
        cancel_shard(session, session.get_one(Shard, shard.id))
        finish_job_if_done(session, job_id)

    _, (shard,), (failed, waiting) = job_rows(farm, job_id)
    assert shard.status is ShardStatus.CANCELLED
    assert (failed.status, failed.error) == (
        RenderStatus.FAILED,
        "IndexError: list index out of range",
    )
    assert waiting.status is RenderStatus.CANCELLED and waiting.finished is not None

    assert retry_job(farm, job_id) == 1
    _, _, renders = job_rows(farm, job_id)
    assert [(r.status, r.error, r.finished) for r in renders] == [
        (RenderStatus.QUEUED, None, None)
    ] * 2


@pytest.mark.parametrize("source", list(RenderStatus))
@pytest.mark.parametrize("move", ["cancel", "fail"])
def test_a_shards_renders_move_in_bulk_exactly_as_one_render_would(farm, faces, move, source):
    """For a render in each state, ending its shard moves it in one statement where the
    render's own method would, to the same state, and leaves it where the method refuses."""
    job_id = submit(farm, faces, make_story(1)).job_id
    _, (shard,), (render,) = job_rows(farm, job_id)
    with farm.sessions.begin() as session:
        session.get(Shard, shard.id).start(WORKER, 60)
        session.execute(update(Render).where(Render.id == render.id).values(status=source))

    one = Render(id=render.id, status=source)  # what the render's own method makes of it
    with suppress(TransitionError):
        one.cancel() if move == "cancel" else one.fail(ERROR)
    with farm.sessions.begin() as session:
        row = session.get_one(Shard, shard.id)
        if move == "cancel":
            cancel_shard(session, row)
        else:
            fail_shard(session, row, ERROR)

    _, _, (render,) = job_rows(farm, job_id)
    assert render.status is one.status
    assert (render.finished is not None) == (one.finished is not None)
    assert render.error == one.error


def test_a_job_ends_when_the_broker_refuses_its_finalize_task_and_the_reaper_sends_it(farm, faces):
    job_id = submit(farm, faces, make_story(1)).job_id
    _, (shard,), _ = job_rows(farm, job_id)
    with farm.sessions.begin() as session:
        session.get(Shard, shard.id).start(WORKER, 60)
        fail_shard(session, session.get_one(Shard, shard.id), ERROR)

    def refuse(task: SentTask) -> None:
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    farm.celery.on_send, farm.celery.sent = refuse, []
    assert close_job(farm, job_id) is JobStatus.FAILED  # the end stands, without its finalize
    job, _, _ = job_rows(farm, job_id)
    assert job.status is JobStatus.FAILED and job.finalize_pending

    farm.celery.on_send = None
    assert reap(farm).finalized == []  # its closer had a whole reaper interval first
    with farm.sessions.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(updated=job.updated - HOUR))
    assert reap(farm).finalized == [job_id]
    assert farm.celery.sent == [SentTask(FINALIZE_JOB, [job_id], CONTROL_QUEUE, 0)]
    assert not job_rows(farm, job_id)[0].finalize_pending
    assert reap(farm).finalized == []
