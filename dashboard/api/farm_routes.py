"""`/api/v1/workers` and `/api/v1/queues`: the farm, shared by every project.

Workers and queues belong to the farm, not to a team, so every role may see them; only an
admin may forget a worker that stopped or was lost (its row otherwise stays on the farm page).
"""

from __future__ import annotations

from flask import abort

from dashboard import farm_state
from dashboard.api import api, operation
from dashboard.api.schemas import QueueList, WorkerList
from dashboard.context import farm
from dashboard.security import principal
from farm.db.models import Role, Worker
from farm.db.states import WorkerStatus


@api.get("/workers")
@operation("farm", response=WorkerList)
def list_workers() -> WorkerList:
    """Every worker: device, state, current shard and job (of the caller's project only;
    another project's work shows as busy with no ids), heartbeat age, renders done."""
    with farm().sessions() as session:
        rows = farm_state.workers(session, principal().project_id)
    return WorkerList(items=rows)


@api.delete("/workers/<worker_id>")
@operation("farm", role=Role.ADMIN, status=204)
def forget_worker(worker_id: str) -> None:
    """Forget a stopped or lost worker; a live one must be stopped first (it would re-register)."""
    with farm().sessions.begin() as session:
        worker = session.get(Worker, worker_id)
        if worker is None:
            abort(404, f"no worker {worker_id!r}")
        if worker.status not in (WorkerStatus.STOPPED, WorkerStatus.LOST):
            abort(409, f"worker {worker_id!r} is {worker.status}; stop it before forgetting it")
        session.delete(worker)


@api.get("/queues")
@operation("farm", response=QueueList)
def list_queues() -> QueueList:
    """Per preset: shards queued and running in SQL, and messages waiting in the broker."""
    with farm().sessions() as session:
        rows = farm_state.queues(farm(), session)
    return QueueList(items=rows)
