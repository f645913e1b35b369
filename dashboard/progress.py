"""A job's progress and timings as plain data: what the job page shows, the live stream sends
and the API returns, read the same way for all three (its shards are farm/progress.py's, which
`farm status` reads too)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from farm.db.models import Job, Render
from farm.db.states import RenderStatus
from farm.progress import eta_text, job_report

TIMED_STEPS = ("identity_s", "denoise_s", "decode_s", "upload_s")


def job_summary(session: Session, job_id: str) -> dict[str, Any] | None:
    """Status, counts per render state, fraction done (running renders by their share of
    steps), the ETA and why it waits, and mean seconds per render step."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return None
    report = job_report(session, job_id)
    counts, reported = report.counts, report.as_json()
    means = session.execute(
        select(*(func.avg(getattr(Render, step)) for step in TIMED_STEPS)).where(
            Render.job_id == job_id, Render.status == RenderStatus.DONE
        )
    ).one()
    return {
        "status": str(job.status),
        "total": job.renders_total,
        "counts": {str(state): n for state, n in counts.items()},
        "fraction": round(report.fraction, 4),
        "percent": int(100 * report.fraction),
        "running": reported["running"],
        "eta_s": reported["eta_s"],
        "eta": eta_text(report.eta_s),
        "waiting": report.waiting,
        "device_s": reported["device_s"],
        "timings": {
            step: None if mean is None else round(mean, 3)
            for step, mean in zip(TIMED_STEPS, means, strict=True)
        },
        # Times rather than an elapsed count, which would change on every read: the page
        # counts the seconds itself.
        "started": job.started.isoformat() if job.started else None,
        "finished": job.finished.isoformat() if job.finished else None,
        "cancel_requested": job.cancel_requested,
        "error": job.error,
    }
