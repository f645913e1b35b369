"""A CPU worker's cores: its render thread is pinned to them, its bookkeeping is not.

On a GPU box the card renders while the host's cores encode, upload and write SQL. A CPU
worker is given its device the same way: `farm worker --devices cpu:N` hands each worker its
own cores (FARM_WORKER_CORES), and the pool child pins the thread that renders (and with it the
torch threads that thread starts) to them, so two workers never thrash each other's caches.
The threads that only wait on the network and the database (the finisher that stores a batch
while the next one renders, the heartbeat) run on the process's other cores where it has any,
like a GPU host's CPU work beside its card, and on all of them where it has none.

Linux keeps an affinity mask per thread: `sched_setaffinity(0, ...)` sets the calling thread's,
and a thread inherits the mask of the thread that starts it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

WORKER_CORES = "FARM_WORKER_CORES"

# Where bookkeeping threads run, set when the render thread was pinned; None: not pinned.
_bookkeeping_cores: set[int] | None = None


def cores_spec(cores: list[int]) -> str:
    return ",".join(str(core) for core in cores)


def pin_render_thread(env: Mapping[str, str] | None = None) -> set[int] | None:
    """Pin the calling thread to the cores named in FARM_WORKER_CORES; call it before the first
    torch operation, so torch's threads start pinned too. Returns the pinned cores."""
    global _bookkeeping_cores
    spec = (os.environ if env is None else env).get(WORKER_CORES)
    if not spec:
        return None
    cores = {int(core) for core in spec.split(",")}
    process_cores = os.sched_getaffinity(0)
    _bookkeeping_cores = (process_cores - cores) or process_cores
    os.sched_setaffinity(0, cores)
    log.info("render thread pinned to cores %s", sorted(cores))
    return cores


def unpin_thread() -> None:
    """Move the calling thread (a bookkeeping one) off the render thread's cores."""
    if _bookkeeping_cores is not None:
        os.sched_setaffinity(0, _bookkeeping_cores)
