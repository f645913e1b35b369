"""The Celery app of a worker process: `celery -A workers.celery_app worker`, as `farm worker`
starts it, one per GPU.

The pipeline is loaded in the pool's child process (`worker_process_init`), once, and kept warm
for every task that child runs; the parent never touches the GPU or the database, so forking it
shares nothing that must not be shared. The child also serves the worker's Prometheus metrics
(FARM_METRICS_PORT + the slot), since the metrics live where the renders happen. Celery's own
loggers write through the farm's handler (farm/logs.py): one format, ids and redaction included.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import warnings

from celery import Task
from celery.exceptions import SecurityWarning
from celery.signals import (
    setup_logging,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutting_down,
)

from farm.context import Farm
from farm.logs import configure_logging, log_context
from farm.metrics import metrics_port, start_metrics_server
from farm.queue.app import FINALIZE_JOB, REAP, RENDER_SHARD, make_celery
from farm.settings import Settings
from workers.routine_logs import quiet_routine_reaps
from workers.runtime import WorkerRuntime

log = logging.getLogger("workers")

PRESETS = [p for p in os.environ.get("FARM_WORKER_PRESETS", "tiny").split(",") if p]
SLOT = os.environ.get("FARM_WORKER_SLOT", "0")

# Celery warns whenever a worker runs as root. The farm's images run their workers as an
# unprivileged user (deploy/), and its tasks are JSON only (no pickle, what makes root
# dangerous to Celery), so a root worker is a developer's box or CI, where the warning says
# nothing to act on.
warnings.filterwarnings("ignore", category=SecurityWarning)
app = make_celery(Settings.from_env(), PRESETS)
_runtime: WorkerRuntime | None = None
# Set in the main process once its consumer takes tasks; the pool children, forked from it,
# share it and report their worker ready only then (workers.runtime).
CONSUMING = multiprocessing.Event()
# Set in the main process when it begins a shutdown (SIGTERM); the pool child, sharing it,
# checkpoints its running batch and hands its shard on instead of finishing it.
STOPPING = multiprocessing.Event()


@worker_ready.connect
def _consuming(**_: object) -> None:
    CONSUMING.set()


@worker_shutting_down.connect
def _stopping(**_: object) -> None:
    STOPPING.set()


@setup_logging.connect
def _configure_logging(loglevel: int | None = None, **_: object) -> None:
    """Connected, so Celery installs no handler of its own, in the worker and in beat."""
    configure_logging(loglevel or logging.INFO, Settings.from_env().log_format)
    quiet_routine_reaps()


@worker_process_init.connect
def _load_presets(**_: object) -> None:
    global _runtime
    farm = Farm()
    port = metrics_port(farm.settings.metrics_port, SLOT)
    if port is not None:  # before the models load: a scrape shows a worker that is starting
        start_metrics_server(port)
    _runtime = WorkerRuntime.start(farm, PRESETS, SLOT, consuming=CONSUMING, stopping=STOPPING)


@worker_process_shutdown.connect
def _stop(**_: object) -> None:
    """A warm shutdown ends the shards whose last batch is still being stored, first."""
    if _runtime is not None:
        _runtime.stop()


def runtime() -> WorkerRuntime:
    if _runtime is None:  # a solo pool runs no worker_process_init
        _load_presets()
    assert _runtime is not None
    return _runtime


@app.task(name=RENDER_SHARD, bind=True, acks_late=True, reject_on_worker_lost=True)
def render_shard(task: Task, shard_id: int) -> str:
    from workers.shard import run_shard

    with log_context(shard=shard_id):
        ended = run_shard(runtime(), shard_id, task.request.id)
    # Acked now, with the last batch still being stored: from here the shard's SQL lease
    # guards it (workers/finisher.py), and the worker takes its next shard.
    return ended.result() if ended.done() else "rendered; ends once stored"


@app.task(name=REAP)
def reap() -> dict[str, list]:
    """The scheduled reap; recorded once done, which is the reaper's liveness
    (farm/queue/beat.py), so a reap that raises is not counted as one that ran."""
    from farm.db.types import utcnow
    from farm.queue.beat import record_reap
    from workers.reaper import reap as reap_now

    worker = runtime()
    reaped = reap_now(worker.farm)
    with worker.farm.sessions.begin() as session:
        record_reap(session, worker.name, worker.farm.settings.reap_interval_s, utcnow())
    return {
        "requeued": reaped.requeued,
        "failed": reaped.failed,
        "lost": reaped.lost_workers,
        "resent": reaped.resent,
    }


@app.task(name=FINALIZE_JOB, acks_late=True)
def finalize(job_id: str, webhook: bool = True) -> list[str]:
    from workers.finalize import finalize_job

    return sorted(finalize_job(runtime().farm, job_id, webhook=webhook).values())
