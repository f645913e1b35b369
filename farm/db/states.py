"""The states a job, shard, render and worker can be in, and the one table of moves between them.

`str` Enums keep the value readable in SQL, logs and JSON alike. Rows move between states only
through the methods on the models (one row) and `farm.lifecycle` (many rows in one statement);
both look the move up in the tables below, so that the two can never disagree on what a move
may start from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
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
    # A job submitted with `approval: preview`: its preview job renders, then it waits, holding
    # no GPU, until scenes are approved for full quality (farm/approval.py).
    AWAITING_APPROVAL = "awaiting_approval"
    # A producer held the job back (`farm pause`): its shards wait, holding no worker, until it
    # is resumed (farm/scheduling.py).
    PAUSED = "paused"


class ShardStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"  # its job is paused: no worker may claim it


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


@dataclass(frozen=True, init=False)
class Move:
    """A named change of state: from any of `sources` to `target`."""

    sources: frozenset[StrEnum]
    target: StrEnum

    def __init__(self, sources: set[StrEnum], target: StrEnum) -> None:
        object.__setattr__(self, "sources", frozenset(sources))
        object.__setattr__(self, "target", target)


_J, _S, _R, _W = JobStatus, ShardStatus, RenderStatus, WorkerStatus
_LIVE = {_W.STARTING, _W.IDLE, _W.BUSY, _W.DRAINING}

# A job runs from its first shard's start (a later start leaves it running) until no shard is
# open; a retry (`farm retry`) runs it again. A job awaiting approval runs the scenes approved
# ("approve") and awaits again once they are done while scenes remain unapproved ("await").
JOB_MOVES: Mapping[str, Move] = {
    "start": Move({_J.QUEUED, _J.RUNNING}, _J.RUNNING),
    # A paused job ends when the shard it was still running was its last.
    "succeed": Move({_J.RUNNING, _J.PAUSED}, _J.SUCCEEDED),
    "fail": Move({_J.QUEUED, _J.RUNNING, _J.PAUSED}, _J.FAILED),
    "cancel": Move({_J.QUEUED, _J.RUNNING, _J.AWAITING_APPROVAL, _J.PAUSED}, _J.CANCELLED),
    "reopen": Move({_J.FAILED, _J.CANCELLED, _J.SUCCEEDED, _J.AWAITING_APPROVAL}, _J.RUNNING),
    "approve": Move({_J.AWAITING_APPROVAL}, _J.QUEUED),
    "await": Move({_J.QUEUED, _J.RUNNING}, _J.AWAITING_APPROVAL),
    # A paused job resumes where it was: running if a shard of it ever started, else queued.
    "pause": Move({_J.QUEUED, _J.RUNNING}, _J.PAUSED),
    "resume": Move({_J.PAUSED}, _J.RUNNING),
    "resume_unstarted": Move({_J.PAUSED}, _J.QUEUED),
}
# A running shard starts again when a redelivered task takes over from a dead worker.
SHARD_MOVES: Mapping[str, Move] = {
    "start": Move({_S.QUEUED, _S.RUNNING}, _S.RUNNING),
    "renew": Move({_S.RUNNING}, _S.RUNNING),
    "requeue": Move({_S.RUNNING}, _S.QUEUED),
    "interrupt": Move({_S.RUNNING}, _S.QUEUED),  # its worker was told to stop: no attempt
    "succeed": Move({_S.RUNNING}, _S.SUCCEEDED),
    "fail": Move({_S.QUEUED, _S.RUNNING}, _S.FAILED),
    "cancel": Move({_S.QUEUED, _S.RUNNING, _S.PAUSED}, _S.CANCELLED),
    "reopen": Move({_S.FAILED, _S.CANCELLED}, _S.QUEUED),
    # A running shard pauses at its next batch: what it rendered stays done, the rest waits.
    "pause": Move({_S.QUEUED, _S.RUNNING}, _S.PAUSED),
    "resume": Move({_S.PAUSED}, _S.QUEUED),
}
# A running render was left by a dead worker, a failed one is tried again by the next attempt.
RENDER_MOVES: Mapping[str, Move] = {
    "start": Move({_R.QUEUED, _R.RUNNING, _R.FAILED}, _R.RUNNING),
    "finish": Move({_R.RUNNING}, _R.DONE),
    "fail": Move({_R.QUEUED, _R.RUNNING}, _R.FAILED),
    "cancel": Move({_R.QUEUED, _R.RUNNING}, _R.CANCELLED),
    "reopen": Move({_R.FAILED, _R.CANCELLED}, _R.QUEUED),
    "interrupt": Move({_R.RUNNING}, _R.QUEUED),  # waits for its shard's next run
    # Finished with an image the project has, by content hash (farm/reuse.py): never run.
    "reuse": Move({_R.QUEUED}, _R.DONE),
}
WORKER_MOVES: Mapping[str, Move] = {
    "ready": Move({_W.STARTING}, _W.IDLE),
    "take": Move({_W.IDLE}, _W.BUSY),
    "release": Move({_W.BUSY}, _W.IDLE),  # a draining worker releases without a move
    "drain": Move({_W.STARTING, _W.IDLE, _W.BUSY}, _W.DRAINING),
    "resume": Move({_W.DRAINING}, _W.IDLE),
    "stop": Move(_LIVE, _W.STOPPED),
    "lose": Move(_LIVE, _W.LOST),
}


def moved(row: str, status: StrEnum | None, moves: Mapping[str, Move], name: str) -> StrEnum:
    """The state that move `name` takes `row` (e.g. "Shard 12") to from `status`.

    Raises TransitionError, naming the row, where it is and where it was asked to go, when the
    table does not allow the move from there.
    """
    move = moves[name]
    if status not in move.sources:
        raise TransitionError(
            f"{row} is {status}; it cannot become {move.target} "
            f"(only a row that is {' or '.join(sorted(move.sources))} can)"
        )
    return move.target
