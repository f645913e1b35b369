"""The operator's commands: `farm workers`, `farm queues`, `farm drain` and `farm resume`,
`farm requeue --stuck` and `farm gc`. Each reads SQL (and the broker or storage) the way the
farm page does and prints a table or a report; the ones that change something say what they
changed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import click

from farm.context import Farm
from farm.errors import FarmError, InputError
from farmcli.errors import one_line_errors

if TYPE_CHECKING:
    from celery import Celery

    from dashboard.api.schemas import WorkerOut
    from farm.db.models import Worker

CONTROL_TIMEOUT_S = 5.0  # a node answers from its main process, even while its child renders


def columns(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns as wide as their widest cell; numbers right-aligned."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], int) for row in rows) for i in range(len(headers))]
    return [
        "  ".join(
            cell.rjust(width) if is_number else cell.ljust(width)
            for cell, width, is_number in zip(row, widths, numeric, strict=True)
        ).rstrip()
        for row in cells
    ]


def worker_state(worker: WorkerOut) -> str:
    """The row's status, with what an operator asks next: is it rendering, may it be stopped.

    The shard loop records its shard on the row without moving it to busy, so a current shard
    is what makes a live worker busy; a draining worker without one is drained: safe to stop.
    """
    if worker.status == "draining":
        return "draining" if worker.current_shard_id else "drained"
    if worker.status in ("idle", "busy"):
        return "busy" if worker.current_shard_id else "idle"
    return worker.status


@click.command()
@one_line_errors
def workers() -> None:
    """Workers: state, device, presets, current shard and job, heartbeat age, renders; and
    when the reaper last ran, which requeues the shards of those that die."""
    from dashboard import farm_state
    from farm.queue.beat import reaper_liveness

    with Farm().sessions() as session:
        rows = farm_state.workers(session)
        reaper = reaper_liveness(session)
    if not rows:
        click.echo("no workers have registered")
        click.echo(reaper.line())
        return
    table = [
        (
            w.id,
            worker_state(w),
            w.device,
            ",".join(w.presets),
            w.current_shard_id or "-",
            w.current_job_id or "-",
            f"{w.heartbeat_age_s:.0f}s ago",
            w.renders_done,
            w.renders_failed,
        )
        for w in rows
    ]
    headers = ("WORKER", "STATE", "DEVICE", "PRESETS", "SHARD", "JOB", "BEAT", "DONE", "FAILED")
    for line in columns(headers, table):
        click.echo(line)
    click.echo(reaper.line())


@click.command()
@one_line_errors
def queues() -> None:
    """Queue depth per preset: shards queued and running in SQL, tasks waiting in the broker
    (per priority, 9 first, where the broker keeps priorities)."""
    from dashboard import farm_state

    farm = Farm()
    with farm.sessions() as session:
        rows = farm_state.queues(farm, session)
    table = []
    for row in rows:
        if row.broker_by_priority is not None:
            spread = " ".join(f"{p}:{n}" for p, n in row.broker_by_priority.items() if n) or "-"
        else:
            spread = "-" if row.broker_messages is not None else "unknown"
        waiting = "unknown" if row.broker_messages is None else row.broker_messages
        table.append((row.queue, row.queued_shards, row.running_shards, waiting, spread))
    headers = ("QUEUE", "QUEUED", "RUNNING", "WAITING", "BY PRIORITY")
    for line in columns(headers, table):
        click.echo(line)
    if any(row.broker_messages is None for row in rows):
        click.echo("the broker could not be read: waiting tasks are unknown", err=True)


def _confirm(command: Callable[..., Any], node: str, queue: str, failure: str) -> None:
    """Send `command` (control's cancel_consumer, add_consumer) for `queue` to `node`; no
    confirmation within the timeout raises `failure`."""
    replies = command(queue, destination=[node], reply=True, timeout=CONTROL_TIMEOUT_S)
    if not any(node in reply for reply in replies or []):
        raise FarmError(failure)


def _stop_consuming(celery: Celery, node: str) -> None:
    """Cancel every queue that `node` consumes now, as the node itself lists them."""
    inspect = celery.control.inspect(destination=[node], timeout=CONTROL_TIMEOUT_S)
    answer = inspect.active_queues() or {}
    if node not in answer:
        raise FarmError(
            f"Celery node {node} did not answer within {CONTROL_TIMEOUT_S:g} s, so it cannot "
            "be told to stop taking work; is it running (farm workers)?"
        )
    for queue in (q["name"] for q in answer[node]):
        failure = f"Celery node {node} did not confirm that it stopped taking {queue}"
        _confirm(celery.control.cancel_consumer, node, queue, failure)


def _start_consuming(celery: Celery, node: str, queues: Sequence[str]) -> None:
    """Have `node` consume `queues` again; each is declared in the node's own app already."""
    for queue in queues:
        failure = (
            f"Celery node {node} did not confirm within {CONTROL_TIMEOUT_S:g} s that it "
            f"takes {queue} again; is it running (farm workers)?"
        )
        _confirm(celery.control.add_consumer, node, queue, failure)


def _worker_row(farm: Farm, worker_id: str) -> Worker:
    from farm.db.models import Worker

    with farm.sessions() as session:
        worker = session.get(Worker, worker_id)
    if worker is None:
        raise InputError(f"no worker {worker_id!r} (farm workers lists them)")
    return worker


def _remote_control(farm: Farm, worker_id: str, what: str, do: Callable[[], None]) -> None:
    """Run `do`, which talks to `worker_id`'s Celery node, where the broker carries remote
    control (Redis does; the embedded SQL broker does not)."""
    from kombu.exceptions import OperationalError

    with farm.celery.connection_for_write() as connection:
        if not connection.supports_exchange_type("fanout"):
            raise FarmError(
                f"the broker ({connection.transport.driver_type}) carries no remote control, so "
                f"{worker_id} cannot be told to {what}; stop it with SIGTERM instead "
                "(Celery's warm shutdown also finishes the current shard first)"
            )
    try:
        do()
    except OperationalError as error:
        message = f"cannot reach the broker to tell {worker_id} to {what}: {error}"
        raise FarmError(message) from error


@click.command()
@click.argument("worker_id")
@one_line_errors
def drain(worker_id: str) -> None:
    """Let WORKER_ID finish its current shard, then take no more work.

    Its Celery node stops consuming at once (remote control, which needs a broker that fans
    out: Redis), and its row turns draining, then drained once the shard is over: stop it then.
    `farm resume`, or a restart, puts it back in service.
    """
    from farm.db.models import Worker
    from farm.db.states import WorkerStatus
    from farm.queue.app import celery_node

    farm = Farm()
    worker = _worker_row(farm, worker_id)
    if worker.status in (WorkerStatus.STOPPED, WorkerStatus.LOST):
        raise InputError(f"worker {worker_id} is {worker.status}: it takes no work to drain")
    node = celery_node(worker_id)
    _remote_control(farm, worker_id, "stop taking work", lambda: _stop_consuming(farm.celery, node))
    with farm.sessions.begin() as session:
        worker = session.get(Worker, worker_id)
        if worker.status is not WorkerStatus.DRAINING:
            worker.drain()
        shard = worker.current_shard_id
    then = f"finishes shard {shard}, then " if shard else ""
    click.echo(f"worker {worker_id} is draining: it {then}takes no more work; stop it once drained")


@click.command()
@click.argument("worker_id")
@one_line_errors
def resume(worker_id: str) -> None:
    """Undo `farm drain`: WORKER_ID takes work from its presets' queues again."""
    from farm.db.models import Worker
    from farm.db.states import WorkerStatus
    from farm.queue.app import CONTROL_QUEUE, celery_node, render_queue

    farm = Farm()
    worker = _worker_row(farm, worker_id)
    if worker.status is not WorkerStatus.DRAINING:
        raise InputError(f"worker {worker_id} is {worker.status}, not draining")
    queues = [render_queue(preset) for preset in worker.presets] + [CONTROL_QUEUE]
    node = celery_node(worker_id)
    _remote_control(
        farm, worker_id, "take work again", lambda: _start_consuming(farm.celery, node, queues)
    )
    with farm.sessions.begin() as session:
        session.get(Worker, worker_id).resume()
    click.echo(f"worker {worker_id} takes work again from {', '.join(queues)}")


@click.command()
@click.option(
    "--stuck", is_flag=True, help="Shards whose lease expired, or whose task the broker lost."
)
@click.option("--dry-run", is_flag=True, help="Only say what would be done.")
@one_line_errors
def requeue(stuck: bool, dry_run: bool) -> None:
    """Send stuck shards to their queue again, now: what the reaper does on its schedule.

    A shard whose worker died is requeued (or failed, when its attempts are spent), a queued
    shard whose task the broker lost is sent again, and workers that stopped beating are marked
    lost. Failed and cancelled shards of a finished job are `farm retry JOB`'s business.
    """
    if not stuck:
        raise click.UsageError(
            "say --stuck to requeue the shards of dead workers and lost tasks; "
            "to run a job's failed shards again, use farm retry JOB"
        )
    from workers.reaper import reap

    reaped = reap(Farm(), dry_run=dry_run)

    def ids(values: Sequence[object]) -> str:
        return ", ".join(map(str, values)) or "none"

    verb = "would be " if dry_run else ""
    click.echo(f"shards {verb}requeued (their worker died): {ids(reaped.requeued)}")
    click.echo(f"shards {verb}failed (no attempt left): {ids(reaped.failed)}")
    click.echo(f"shards {verb}sent again (the broker lost their task): {ids(reaped.resent)}")
    click.echo(f"workers {verb}marked lost (no heartbeat): {ids(reaped.lost_workers)}")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@click.command()
@click.option("--delete", is_flag=True, help="Delete them (without it: only list them).")
@click.option(
    "--older-than",
    "older_than_min",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="Minutes: newer objects may belong to a submission still being written.",
)
@one_line_errors
def gc(delete: bool, older_than_min: int) -> None:
    """Objects in storage that no job, character or identity-token row needs any more: listed
    with their size, and deleted with --delete."""
    from datetime import timedelta

    from sqlalchemy import func, select

    from farm.db.models import Character, Job
    from farm.gc import find_garbage

    farm = Farm()
    with farm.sessions() as session:  # also: a database without the farm's schema stops here
        rows = session.scalar(select(func.count()).select_from(Job))
        rows += session.scalar(select(func.count()).select_from(Character))
    if not rows and delete and next(find_garbage(farm, grace=timedelta(0)), None) is not None:
        raise FarmError(
            "the database holds no job and no character while storage holds the farm's objects: "
            "is FARM_DATABASE_URL this farm's database? Nothing was deleted"
        )
    count = total = 0
    for stored in find_garbage(farm, grace=timedelta(minutes=older_than_min)):
        if delete:
            farm.storage.delete(stored.key)
        click.echo(f"{'deleted ' if delete else ''}{stored.key}  {_size(stored.size)}")
        count, total = count + 1, total + stored.size
    objects = f"{count} object{'' if count == 1 else 's'}, {_size(total)}"
    if delete:
        click.echo(f"deleted {objects}")
    else:
        click.echo(f"{objects} no longer needed (farm gc --delete deletes them)")
