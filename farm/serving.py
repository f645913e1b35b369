"""Which presets the farm's live workers serve, so that a story on a preset no worker hosts is
said to wait (in the form, the plan, the job page and `farm status`) instead of queueing
silently forever.

A worker serves its presets while it is starting (loading them), idle or busy, and its
heartbeat is recent; a draining worker takes no new work, and a worker whose heartbeat
stopped is not counted even before the reaper marks it lost. Waiting is a warning, never a
refusal: a worker for the preset may start at any time and take the job's shards.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Worker
from farm.db.states import WorkerStatus
from farm.db.types import utcnow
from farm.render.presets import PRESETS

# A dozen missed heartbeats (workers.runtime.HEARTBEAT_S is 10 s), as the startup probe counts.
LIVE_WITHIN_S = 120.0
SERVING_STATES = (WorkerStatus.STARTING, WorkerStatus.IDLE, WorkerStatus.BUSY)


def served_presets(session: Session, now: datetime | None = None) -> dict[str, int]:
    """Live workers per preset name; presets no live worker hosts are absent."""
    since = (now or utcnow()) - timedelta(seconds=LIVE_WITHIN_S)
    hosted = session.scalars(
        select(Worker.presets).where(
            Worker.status.in_(SERVING_STATES), Worker.last_heartbeat >= since
        )
    )
    counts: Counter[str] = Counter()
    for presets in hosted:
        counts.update(set(presets))
    return dict(counts)


def waiting_note(preset: str, served: Mapping[str, int]) -> str | None:
    """What to tell a person whose work on `preset` has no worker to run it; None if served."""
    if served.get(preset):
        return None
    return f"no worker serves preset {preset}: it will wait"


def default_preset(served: Mapping[str, int], usual: str) -> str:
    """The preset a new story starts with: the usual one if a live worker serves it, else the
    preset most live workers serve (the catalogue's order breaks ties), else the usual one."""
    if served.get(usual) or not served:
        return usual
    order = list(PRESETS)
    known = [name for name in served if name in PRESETS]
    if not known:
        return usual
    return min(known, key=lambda name: (-served[name], order.index(name)))
