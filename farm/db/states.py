"""The states a job, shard, render and worker can be in, stored as their lowercase values.

`str` Enums keep the value readable in SQL, logs and JSON alike; rows move between states only
through the methods on the models, which check the move and set the timestamps that go with it.
"""

from __future__ import annotations

from enum import StrEnum

from farm.errors import FarmError


class TransitionError(FarmError):
    """A row was asked to move to a state it cannot reach from its current one.

    Either a bug, or a race the caller lost (the shard was cancelled or reaped meanwhile): the
    message names the row, where it is and where it was asked to go.
    """


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ShardStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RenderStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class WorkerStatus(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"
    STOPPED = "stopped"
    LOST = "lost"
