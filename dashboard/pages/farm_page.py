"""The farm page: every worker (device, current shard, heartbeat age, renders done) and the
depth of every preset's queue, in SQL and in the broker."""

from __future__ import annotations

from flask import Blueprint, render_template

from dashboard import farm_state
from dashboard.context import farm
from dashboard.security import principal

farm_page = Blueprint("farm_page", __name__)

# A worker beats every 10 s (workers/runtime.py); three missed beats is worth a colour.
STALE_HEARTBEAT_S = 30


@farm_page.get("/farm")
def index() -> str:
    with farm().sessions() as session:
        workers = farm_state.workers(session, principal().project_id)
        queues = farm_state.queues(farm(), session)
    return render_template(
        "farm.html", workers=workers, queues=queues, stale_after=STALE_HEARTBEAT_S
    )
