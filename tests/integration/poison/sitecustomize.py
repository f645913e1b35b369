"""Test-only: the worker processes of the integration tests die in a poisoned shard.

Python imports `sitecustomize` from the path at start-up. The integration tests put this folder
first on the PYTHONPATH of the workers they start and name a marker in FARM_TEST_POISON; a shard
with the marker in a prompt then ends its process with `os._exit(9)` right after its claim, as a
crashing CUDA kernel or the OOM killer would: a task that always kills its worker. Nothing of
this is in the farm's code, and a worker started without the variable is untouched.
"""

import os
import sys

_MARK = os.environ.get("FARM_TEST_POISON")

if _MARK:
    import workers.shard

    _render = workers.shard._render

    def _render_or_die(
        runtime: workers.shard.WorkerRuntime,
        run: workers.shard.ShardRun,
        claim: workers.shard.Claim,
    ) -> None:
        if any(_MARK in planned.prompt for planned in claim.renders):
            print(f"poison: shard {run.shard_id} kills process {os.getpid()}", file=sys.stderr)
            sys.stderr.flush()
            os._exit(9)
        _render(runtime, run, claim)

    workers.shard._render = _render_or_die
