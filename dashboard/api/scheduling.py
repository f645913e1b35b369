"""`/api/v1`: a producer's hands on a waiting job (pause, resume, priority) and the project's
device-seconds report. The rules are farm/scheduling.py's and farm/accounting.py's; a job of
another project answers 404, as every lookup by id does (dashboard/scope.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field, StrictInt, field_validator

from dashboard.api import api, operation
from dashboard.api.jobs import changed
from dashboard.api.schemas import JobOut
from dashboard.context import farm
from dashboard.security import principal
from farm.accounting import project_usage
from farm.db.models import Project, Role
from farm.errors import InputError
from farm.scheduling import pause_job, resume_job, set_priority

_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class PriorityIn(BaseModel):
    # Required, but checked by the route once the job is found: another project's job is a
    # 404 whatever the body says, as every lookup by id is.
    priority: StrictInt | None = Field(
        default=None, ge=0, le=9, description="Required: 0-9, 9 served first in the project."
    )


class UsageQuery(BaseModel):
    since: datetime = Field(description="From this time (a day is midnight UTC).")
    until: datetime | None = Field(default=None, description="Before this time; default now.")

    @field_validator("since", "until", mode="before")
    @classmethod
    def iso_only(cls, value: object) -> object:
        """A day or an ISO time, never a bare number, which pydantic would read as seconds
        since 1970: `since=1` is a typo, not a request for the farm's whole history."""
        if isinstance(value, str) and not _ISO_DAY.match(value):
            raise ValueError("a day like 2026-12-01 or an ISO time")
        return value


class UsageLineOut(BaseModel):
    job_id: str
    job_name: str
    preset: str
    device_kind: str = Field(description="The make of device: 'NVIDIA H200', 'cpu'.")
    renders: int
    device_s: float


class UsageOut(BaseModel):
    project: str
    share_weight: float = Field(description="The project's share of the farm, by weight.")
    max_running_shards: int | None = Field(description="Its cap on shards at once; null: none.")
    since: datetime
    until: datetime | None
    renders: int
    device_s: float = Field(description="Seconds its renders held devices in the period.")
    jobs: list[UsageLineOut]


@api.post("/jobs/<uuid:job_id>/pause")
@operation("jobs", role=Role.ARTIST, response=JobOut)
def pause(job_id: Any) -> JobOut:
    """Pause a queued or running job: its queued shards wait, holding no worker, and a
    running one stops at its next batch."""
    return changed(str(job_id), lambda job: pause_job(farm(), job))


@api.post("/jobs/<uuid:job_id>/resume")
@operation("jobs", role=Role.ARTIST, response=JobOut)
def resume(job_id: Any) -> JobOut:
    """Resume a paused job: its shards are queued again."""
    return changed(str(job_id), lambda job: resume_job(farm(), job))


@api.post("/jobs/<uuid:job_id>/priority")
@operation("jobs", role=Role.ARTIST, response=JobOut, body=PriorityIn)
def priority(job_id: Any, body: PriorityIn) -> JobOut:
    """Change a job's priority (0-9) before it ends: its shards not yet claimed are taken in
    the new order among the project's jobs."""

    def change(job: str) -> None:
        if body.priority is None:
            raise InputError("body.priority: Field required: a whole number from 0 to 9")
        set_priority(farm(), job, body.priority)

    return changed(str(job_id), change)


@api.get("/usage")
@operation("usage", response=UsageOut, query=UsageQuery)
def usage(query: UsageQuery) -> UsageOut:
    """The project's device seconds in a period, per job and kind of device."""
    since, until = _utc(query.since), _utc(query.until)
    if until is not None and until <= since:
        raise InputError(f"query.until ({until}) must come after query.since ({since})")
    with farm().sessions() as session:
        project = session.get_one(Project, principal().project_id)
        report = project_usage(session, project.id, project.name, since, until)
        weight, cap = project.share_weight, project.max_running_shards
    return UsageOut(
        project=report.project,
        share_weight=weight,
        max_running_shards=cap,
        since=since,
        until=until,
        renders=report.renders,
        device_s=round(report.device_s, 3),
        jobs=[UsageLineOut(**vars(line)) for line in report.lines],
    )


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)
