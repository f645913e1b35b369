"""A producer's and an operator's hands on the queue and the bill: `farm pause`, `farm unpause`
(`farm resume` is a drained worker's), `farm priority`, `farm projects` (each team's share of
the farm) and `farm usage` (device seconds per project). The work is farm/scheduling.py's and
farm/accounting.py's; these commands read the arguments, call it, and say what changed."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from farm.errors import InputError
from farmcli.admin import columns
from farmcli.errors import one_line_errors
from farmcli.job_refs import full_job_id
from farmcli.jobs import project_id_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from farm.context import Farm
    from farm.db.models import Project

_PROJECT_HELP = "Refuse unless the job is this project's (a script acting for one team)."


def _farm() -> Farm:
    from farm.context import Farm

    return Farm()


def _project(session: Session, name: str) -> Project:
    from farm.db.models import Project

    return session.get_one(Project, project_id_of(session, name))


def _job_and_project(farm: Farm, ref: str, project: str | None) -> tuple[str, int | None]:
    """The job's whole id (from the start people type), and the project it must be in."""
    if project is None:
        return full_job_id(farm, ref), None
    with farm.sessions() as session:
        project_id = project_id_of(session, project)
    return full_job_id(farm, ref), project_id


@click.command()
@click.argument("job_id")
@click.option("--project", default=None, help=_PROJECT_HELP)
@one_line_errors
def pause(job_id: str, project: str | None) -> None:
    """Hold JOB_ID back: its queued shards wait, a running one stops at its next batch."""
    from farm.scheduling import pause_job

    farm = _farm()
    job = pause_job(farm, *_job_and_project(farm, job_id, project))
    click.echo(f"job {job.id} {job.status}")


@click.command()
@click.argument("job_id")
@click.option("--project", default=None, help=_PROJECT_HELP)
@one_line_errors
def unpause(job_id: str, project: str | None) -> None:
    """Resume the paused JOB_ID: its shards are queued again."""
    from farm.scheduling import resume_job

    farm = _farm()
    job = resume_job(farm, *_job_and_project(farm, job_id, project))
    click.echo(f"job {job.id} {job.status}")


@click.command()
@click.argument("job_id")
@click.argument("priority", type=int)
@click.option("--project", default=None, help=_PROJECT_HELP)
@one_line_errors
def priority(job_id: str, priority: int, project: str | None) -> None:
    """Set JOB_ID's PRIORITY (0-9, 9 first among its project's jobs): its shards not yet
    claimed are taken in the new order."""
    from farm.scheduling import set_priority

    farm = _farm()
    job_id, project_id = _job_and_project(farm, job_id, project)
    job = set_priority(farm, job_id, priority, project_id)
    click.echo(f"job {job.id} priority {job.priority}")


@click.group()
def projects() -> None:
    """The studio's projects and their share of the farm."""


@projects.command("list")
@one_line_errors
def projects_list() -> None:
    """Each project: its weight, its cap on running shards, and its shards queued and running."""
    from sqlalchemy import func, select

    from farm.db.models import Job, Project, Shard
    from farm.db.states import ShardStatus

    farm = _farm()
    with farm.sessions() as session:
        counts = {
            (project_id, status): n
            for project_id, status, n in session.execute(
                select(Job.project_id, Shard.status, func.count())
                .join(Job, Job.id == Shard.job_id)
                .where(Shard.status.in_([ShardStatus.QUEUED, ShardStatus.RUNNING]))
                .group_by(Job.project_id, Shard.status)
            )
        }
        rows = [
            (
                p.name,
                f"{p.share_weight:g}",
                p.max_running_shards if p.max_running_shards is not None else "-",
                counts.get((p.id, ShardStatus.QUEUED), 0),
                counts.get((p.id, ShardStatus.RUNNING), 0),
            )
            for p in session.scalars(select(Project).order_by(Project.name))
        ]
    for line in columns(["project", "weight", "max running", "queued", "running"], rows):
        click.echo(line)


@projects.command("share")
@click.argument("name")
@click.option("--weight", type=float, default=None, help="Its share, relative to the others'.")
@click.option("--max-running", type=int, default=None, help="At most this many shards at once.")
@click.option("--no-max-running", is_flag=True, help="Remove the cap.")
@one_line_errors
def projects_share(
    name: str, weight: float | None, max_running: int | None, no_max_running: bool
) -> None:
    """Set project NAME's weight and cap: with work queued in several projects, free workers
    go to each in proportion to its weight."""
    from farm.scheduling import set_share

    if weight is None and max_running is None and not no_max_running:
        raise click.UsageError("give --weight, --max-running or --no-max-running")
    if max_running is not None and no_max_running:
        raise click.UsageError("--max-running and --no-max-running contradict each other")
    farm = _farm()
    with farm.sessions.begin() as session:
        project = _project(session, name)
        set_share(session, project, weight=weight, cap=max_running, uncap=no_max_running)
        cap = project.max_running_shards
        said = f"project {name}: weight {project.share_weight:g}, "
        said += f"at most {cap} running shards" if cap is not None else "no cap"
    click.echo(said)


def _day(value: str, option: str) -> datetime:
    try:
        day = datetime.fromisoformat(value)
    except ValueError as error:
        raise InputError(
            f"{option}: a date like 2026-12-01 (or a full ISO time), got {value!r}"
        ) from error
    return day if day.tzinfo is not None else day.replace(tzinfo=UTC)


@click.command()
@click.option("--project", required=True, help="The project whose usage to report.")
@click.option("--since", required=True, help="From this day (UTC) or ISO time on.")
@click.option("--until", default=None, help="Before this day (UTC) or ISO time; default: now.")
@click.option(
    "--format", "form", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@one_line_errors
def usage(project: str, since: str, until: str | None, form: str) -> None:
    """Device seconds of PROJECT's renders finished in a period, per job and kind of device."""
    from farm.accounting import project_usage

    start = _day(since, "--since")
    end = _day(until, "--until") if until is not None else None
    if end is not None and end <= start:
        raise InputError(f"--until ({until}) must come after --since ({since})")
    farm = _farm()
    with farm.sessions() as session:
        report = project_usage(session, _project(session, project).id, project, start, end)
    sys.stdout.write(report.as_csv() if form == "csv" else report.as_json() + "\n")
