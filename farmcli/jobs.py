"""Finding and following jobs: `farm jobs` lists them (newest first, by project, status or
name) and `farm status` shows one's progress per render, with an ETA and, while no worker
serves its preset, why it waits; `--watch` follows it to its end, `--json` is for scripts.

These are control-plane commands: they read SQL and never import the render stack, so they
answer at once (tests/test_imports.py, bench/cli_latency.py).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

from farm.context import Farm
from farm.db.states import JobStatus
from farm.db.types import utcnow
from farm.errors import InputError
from farmcli.errors import one_line_errors
from farmcli.job_refs import full_job_id

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from farm.progress import JobReport, ShardCounts

BAR_WIDTH = 30
# The shards `farm status` lists: those worth seeing first, few enough to redraw with --watch.
SHARDS_PRINTED = 20
ENDED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)

project_option = click.option(
    "--project",
    envvar="FARM_PROJECT",
    default=None,
    help="The project (as the dashboard's tokens name it); also FARM_PROJECT.",
)


def project_id_of(session: Session, name: str) -> int:
    """The id of the project called `name`; an unknown name is a one-line error naming the
    projects there are, never a new project made by a typo."""
    from sqlalchemy import select

    from farm.db.models import Project

    found = session.scalar(select(Project.id).where(Project.name == name))
    if found is None:
        known = ", ".join(session.scalars(select(Project.name).order_by(Project.name)))
        raise InputError(
            f"no project {name!r} (projects: {known}); `farm tokens create --project {name}` "
            "makes one"
        )
    return found


@contextmanager
def broker_said_once() -> Iterator[None]:
    """The outbox and the live events each log a warning when the broker is down, and the
    command says it once, with the job id (`unsent_note`); a verbose run keeps them all."""
    loggers = [logging.getLogger(name) for name in ("farm.queue.outbox", "farm.events")]
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def unsent_note(farm: Farm, job_id: str) -> str | None:
    """One line for a job committed while the broker was down: its shards wait in the outbox
    (farm/queue/outbox.py) and the reaper sends them once the broker answers. None if sent."""
    from sqlalchemy import func, select

    from farm.db.models import Shard
    from farm.logs import redact

    with farm.sessions() as session:
        unsent = session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.sent.is_(None))
        )
    if not unsent:
        return None
    return (
        f"job {job_id} is queued, but the broker at {redact(farm.settings.broker_url)} did not "
        f"answer: its {unsent} shard(s) are sent once it does (by the reaper of `farm up` or "
        "`farm worker --beat`)"
    )


def _age(when: datetime, now: datetime) -> str:
    seconds = max(int((now - when).total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


@click.command("jobs")
@project_option
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([s.value for s in JobStatus]),
    help="Only jobs in this state (repeatable).",
)
@click.option("--name", default=None, help="Only jobs whose name contains this (any case).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per job, for scripts.")
@one_line_errors
def jobs(
    project: str | None, statuses: tuple[str, ...], name: str | None, limit: int, as_json: bool
) -> None:
    """Jobs, newest first: short id, name, project, state, preset, renders done, age."""
    from sqlalchemy import func, select

    from farm.db.models import Job, Project, Render
    from farm.db.states import RenderStatus
    from farm.job_names import short_id

    farm = Farm()
    with farm.sessions() as session:
        query = select(Job.id, Job.name, Project.name, Job.status, Job.preset, Job.renders_total)
        query = query.add_columns(Job.created).join(Project, Project.id == Job.project_id)
        if project is not None:
            query = query.where(Job.project_id == project_id_of(session, project))
        if statuses:
            query = query.where(Job.status.in_(statuses))
        if name:
            query = query.where(func.lower(Job.name).contains(name.lower(), autoescape=True))
        rows = session.execute(query.order_by(Job.created.desc(), Job.id).limit(limit)).all()
        done = dict(
            session.execute(
                select(Render.job_id, func.count())
                .where(Render.job_id.in_([row[0] for row in rows]))
                .where(Render.status == RenderStatus.DONE)
                .group_by(Render.job_id)
            ).all()
        )
    farm.close()
    if as_json:
        for job_id, job_name, project_name, status, preset, total, created in rows:
            line = {
                "id": job_id,
                "name": job_name,
                "project": project_name,
                "status": str(status),
                "preset": preset,
                "renders_done": done.get(job_id, 0),
                "renders_total": total,
                "created": created.isoformat(),
            }
            click.echo(json.dumps(line))
        return
    if not rows:
        click.echo("no jobs")
        return
    from farmcli.admin import columns

    now = utcnow()
    for line in columns(
        ("JOB", "NAME", "PROJECT", "STATUS", "PRESET", "RENDERS", "CREATED"),
        [
            (short_id(i), n, p, str(s), preset, f"{done.get(i, 0)}/{total}", _age(created, now))
            for i, n, p, s, preset, total, created in rows
        ],
    ):
        click.echo(line)


def _report(farm: Farm, job_id: str) -> tuple[JobReport, ShardCounts, list[dict[str, Any]]]:
    from farm.progress import job_report, shard_counts, shard_rows

    with farm.sessions() as session:
        report = job_report(session, job_id)
        counts = shard_counts(session, job_id)
        shards = shard_rows(session, job_id, limit=SHARDS_PRINTED)
    return report, counts, shards


def status_lines(report: JobReport, counts: ShardCounts, shards: list[dict[str, Any]]) -> list[str]:
    """What `farm status` prints: the bar and counts, the running renders' steps, why it
    waits, then the shards by state and those worth seeing first (running, failed, ...)."""
    from farm.progress import eta_text

    filled = round(report.fraction * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    eta = eta_text(report.eta_s)
    lines = [
        f"job {report.job_id} {report.status}  [{bar}] {report.done}/{report.total} "
        f"{int(100 * report.fraction)}%" + (f"  {eta}" if eta else "")
    ]
    lines.append("  " + "  ".join(f"{s}: {n}" for s, n in report.counts.items() if n))
    if report.device_s:
        lines.append(f"  device: {report.device_s:.1f} s")
    if report.running:
        steps = ", ".join(
            f"scene {r.scene} v{r.variant} step {r.steps_done}/{r.steps or '?'}"
            for r in report.running
        )
        lines.append(f"  rendering: {steps}")
    if report.waiting:
        lines.append(f"  waiting: {report.waiting}")
    states = ", ".join(f"{n} {state}" for state, n in counts.by_state.items() if n)
    lines.append(f"  shards: {counts.total} ({states})")
    for shard in shards:
        where = f" on {shard['worker_id']}" if shard["worker_id"] else ""
        error = f"  {shard['error']}" if shard["error"] else ""
        lines.append(
            f"  shard {shard['index']:3d} {shard['status']:9}{where} "
            f"(attempt {shard['attempts']}/{shard['max_attempts']}){error}"
        )
    if counts.total > len(shards):
        more = counts.total - len(shards)
        lines.append(f"  ... and {more} more: GET /api/v1/jobs/{report.job_id}/shards lists all")
    return lines


@click.command("status")
@click.argument("job_id")
@click.option("--watch", is_flag=True, help="Follow the job until it ends (exit 1 if it fails).")
@click.option(
    "--interval",
    type=click.FloatRange(0.2, 60),
    default=1.0,
    show_default=True,
    help="Seconds between reads with --watch.",
)
@click.option("--json", "as_json", is_flag=True, help="The progress as JSON (one line per read).")
@one_line_errors
def status(job_id: str, watch: bool, interval: float, as_json: bool) -> None:
    """Progress of JOB_ID per render, with an ETA: a bar, counts, the renders running now and
    their steps, why it waits, and each shard's state."""
    farm = Farm()
    job_id = full_job_id(farm, job_id)
    terminal = sys.stdout.isatty() and not as_json
    shown: list[str] = []
    while True:
        report, counts, shards = _report(farm, job_id)
        if as_json:
            document = {**report.as_json(), "shard_counts": counts.by_state, "shards": shards}
            lines = [json.dumps(document, default=str)]
        else:
            lines = status_lines(report, counts, shards)
        if lines != shown:
            if terminal and shown:  # redraw in place: up over the last report, clear below
                click.echo(f"\x1b[{len(shown)}F\x1b[J", nl=False)
            click.echo("\n".join(lines))
            shown = lines
        if not watch or report.status in ENDED:
            break
        time.sleep(interval)
    farm.close()
    if watch and report.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        sys.exit(1)
