"""Whether the reaper runs: Celery beat sends its task on a schedule (farm/queue/app.py), a worker
runs it, and each run is recorded here, in SQL, where `farm workers` and the dashboard's
`/readyz` read it.

The record is written by the run itself, not by the beat: a beat that sends into a queue no
worker takes (every worker scaled to zero, none consuming the control queue) keeps the reaper
as dead as a beat that died, and both show as stale.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from farm.db.models import ReaperRun
from farm.db.types import utcnow

STALE_AFTER_RUNS = 3  # missed runs before the reaper is called stale: a slow reap is no alarm
_ROW = 1


def record_reap(session: Session, worker_id: str, interval_s: int, now: datetime) -> None:
    """Note that `worker_id` ran the scheduled reap at `now`."""
    run = session.get(ReaperRun, _ROW)
    if run is None:
        session.add(ReaperRun(id=_ROW, last_run=now, worker_id=worker_id, interval_s=interval_s))
    else:
        run.last_run, run.worker_id, run.interval_s = now, worker_id, interval_s


@dataclass(frozen=True)
class ReaperLiveness:
    last_run: datetime | None
    worker_id: str | None
    interval_s: int | None
    age_s: float | None

    @property
    def alive(self) -> bool:
        return self.age_s is not None and self.age_s <= STALE_AFTER_RUNS * self.interval_s

    def line(self) -> str:
        """One line for an operator: what the reaper did last, and what to check if stale."""
        if self.age_s is None:
            return (
                "reaper: has never run; start one beat for the farm "
                "(farm worker --beat, farm up, or the chart's beat)"
            )
        said = f"reaper: ran {self.age_s:.0f}s ago on {self.worker_id} (every {self.interval_s}s)"
        if self.alive:
            return said
        return f"{said}: stale; is its beat running, and a worker taking the control queue?"


def reaper_liveness(session: Session, now: datetime | None = None) -> ReaperLiveness:
    run = session.get(ReaperRun, _ROW)
    if run is None:
        return ReaperLiveness(None, None, None, None)
    age_s = max(0.0, ((now or utcnow()) - run.last_run).total_seconds())
    return ReaperLiveness(run.last_run, run.worker_id, run.interval_s, age_s)
