"""What happens once a job has ended (farm.lifecycle.announce_job_end queued this task on the
control queue): build its comic pages and exports, then call its webhook.

The webhook fires after the outputs exist, so a pipeline that downloads on the webhook finds the
PDF and the zip in place.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from farm.comic.job import build_job_outputs
from farm.comic.pages import PageSize
from farm.context import Farm
from farm.db.models import Render
from farm.db.states import RenderStatus
from farm.webhooks import send_job_webhook

log = logging.getLogger(__name__)

AUTO_COMIC_MAX_RENDERS = 400  # beyond this, `farm comic JOB` builds them on demand
AUTO_COMIC_PAGE = PageSize.parse("A4", 150)


def finalize_job(farm: Farm, job_id: str, *, webhook: bool = True) -> dict[str, str]:
    """Build the job's comic pages and exports (when it has renders), then call its webhook;
    `webhook` is off for a rebuild after a pick, when the job has not ended again."""
    keys: dict[str, str] = {}
    try:
        with farm.sessions() as session:
            done = session.scalar(
                select(func.count())
                .select_from(Render)
                .where(Render.job_id == job_id, Render.status == RenderStatus.DONE)
            )
            if 0 < done <= AUTO_COMIC_MAX_RENDERS:
                keys = build_job_outputs(session, farm.storage, job_id, page=AUTO_COMIC_PAGE)
    except Exception:  # the renders are the product; a comic that fails must not lose the webhook
        log.exception("job %s: building the comic and exports failed", job_id)
    if keys:
        farm.events.publish(job_id, "job.outputs", keys=sorted(keys.values()))
        log.info("job %s: %d comic and export files built", job_id, len(keys))
    if webhook:
        send_job_webhook(farm, job_id)
    return keys
