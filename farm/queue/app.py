"""The Celery app, built from `Settings` (never at import time), tuned for long GPU tasks.

A shard takes minutes on a GPU; the defaults of Celery are tuned for short tasks and would lose
or duplicate work when a worker dies. Hence: acknowledge after the work (`acks_late`), take one
task at a time (prefetch 1), give a task back when its worker process is lost
(`reject_on_worker_lost`, with the redelivery cap counted in SQL by the task itself), and a
visibility timeout longer than the longest shard, so Redis does not hand a running shard to a
second worker.
"""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from farm.settings import Settings

RENDER_SHARD = "farm.render_shard"
FINALIZE_JOB = "farm.finalize_job"
REAP = "farm.reap"
# Finalize and reaper tasks; any worker may take them. Finalize is seconds of CPU (a job's comic
# and exports), which a render worker spends with its device idle.
CONTROL_QUEUE = "farm.control"
MAX_PRIORITY = 9
PRIORITY_SEP = ":"  # Redis keeps priority step N of queue Q in the list "Q:N" (step 0 in "Q")
# A pool child loads its presets before it reports up (minutes for SDXL from a network disk);
# Celery's default of 4 s kills every such child, and the next, in a loop.
PRESET_LOAD_TIMEOUT_S = 1800.0


def render_queue(preset: str) -> str:
    return f"render.{preset}"


def celery_node(worker_id: str) -> str:
    """The Celery node name of the worker whose SQL row is `worker_id`.

    A worker has two names: its row, `host:cpu0` (`workers.runtime.worker_name`), and the node
    that `farm worker` starts with `--hostname cpu0@host` (`workers.supervisor`). Remote control
    (`farm drain`) addresses the node.
    """
    hostname, _, label = worker_id.rpartition(":")
    return f"{label}@{hostname}"


def _queue(name: str) -> Queue:
    """A queue on its own direct exchange: a task sent to one queue lands in that one only
    (queues left on the default exchange would share its routing key and get every task)."""
    return Queue(
        name,
        Exchange(name, type="direct"),
        routing_key=name,
        queue_arguments={"x-max-priority": MAX_PRIORITY},
    )


def make_celery(settings: Settings, presets: list[str] | None = None) -> Celery:
    """The farm's Celery app. `presets` names the render queues this process consumes."""
    app = Celery("farm", broker=settings.broker_url, set_as_current=False)
    queues = [_queue(CONTROL_QUEUE)] + [_queue(render_queue(p)) for p in presets or []]
    transport_options = {}
    on_redis = settings.broker_url.startswith(("redis://", "rediss://"))
    if on_redis:
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_s,
            # Redis emulates priorities with one list per step; 0 is served first.
            "queue_order_strategy": "priority",
            "priority_steps": list(range(MAX_PRIORITY + 1)),
            "sep": PRIORITY_SEP,
        }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_proc_alive_timeout=PRESET_LOAD_TIMEOUT_S,
        task_ignore_result=True,
        task_default_queue=CONTROL_QUEUE,
        task_queues=queues,
        task_queue_max_priority=MAX_PRIORITY,
        task_default_priority=5,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        # Events let Flower (and `celery events`) follow each task from the moment it is sent,
        # with the readable arguments that `farm.queue.outbox.send_shards` gives it. They need a
        # broker that fans out; on the embedded SQL broker nobody could read them.
        worker_send_task_events=on_redis,
        task_send_sent_event=on_redis,
        beat_schedule={
            "reap-expired-leases": {
                "task": REAP,
                "schedule": settings.reap_interval_s,
                # With every worker scaled to zero, unclaimed reaps must not pile up.
                "options": {"expires": settings.reap_interval_s},
            },
        },
    )
    return app
