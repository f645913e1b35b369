"""A running batch's denoising step, written on its render rows and sent as a live event, so
that a job's progress moves while a shard renders and not only when it ends (farm/progress.py).

The pipeline calls back after every step; a step of the tiny preset takes milliseconds and one
of SDXL a fraction of a second, so the rows and the event are written at most once every
`REPORT_EVERY_S` (and always for the last step). Progress is a hint: a database or Redis that
fails here is logged and the render goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from farm.context import Farm
from farm.db.models import Render
from farm.db.states import RenderStatus
from farm.render.pipeline import StepState

log = logging.getLogger(__name__)

REPORT_EVERY_S = 1.0


class StepReporter:
    """The step callback of one batch: `render_ids` run together for `steps` steps."""

    def __init__(
        self,
        farm: Farm,
        job_id: str,
        render_ids: Sequence[int],
        steps: int,
        *,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.farm = farm
        self.job_id = job_id
        self.render_ids = list(render_ids)
        self.steps = steps
        self.every_s = REPORT_EVERY_S if every_s is None else every_s
        self.clock = clock
        self._last: float | None = None
        self.report(0)  # a render started again must not show its last attempt's steps

    def __call__(self, state: StepState) -> None:
        done = state.step + 1
        now = self.clock()
        if done < self.steps and self._last is not None and now - self._last < self.every_s:
            return
        self.report(done)

    def report(self, done: int) -> None:
        self._last = self.clock()
        try:
            with self.farm.sessions.begin() as session:
                session.execute(
                    update(Render)
                    .where(Render.id.in_(self.render_ids), Render.status == RenderStatus.RUNNING)
                    .values(steps_done=done, steps=self.steps)
                )
        except SQLAlchemyError as error:
            log.warning("step %d of renders %s not recorded: %s", done, self.render_ids, error)
        if done:
            self.farm.events.publish(
                self.job_id, "render.step", renders=self.render_ids, step=done, steps=self.steps
            )
