"""Celery's routine lines about the reaper, dropped: Celery logs every task a worker receives
and ends, and beat every task it sends, so a farm's reaper wrote three lines a minute that said
nothing. The reaper logs what it did itself (workers/reaper.py) and its liveness is in SQL
(farm/queue/beat.py), so only these INFO lines go; a reap that fails is still logged."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from farm.queue.app import REAP

REAPER_SCHEDULE = "reap-expired-leases"  # the beat entry's name (farm/queue/app.py)
CELERY_LOGGERS = ("celery.app.trace", "celery.worker.strategy", "celery.beat")


class RoutineReaps(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        args = record.args
        # The worker's "Task %(name)s[%(id)s] received / succeeded" take a mapping; beat's
        # "Scheduler: Sending due task %s (%s)" the entry's name and its task's.
        named = {args.get("name")} if isinstance(args, Mapping) else set(args or ())
        return not named & {REAP, REAPER_SCHEDULE}


def quiet_routine_reaps() -> None:
    routine = RoutineReaps()
    for name in CELERY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineReaps) for f in logger.filters):
            logger.addFilter(routine)
