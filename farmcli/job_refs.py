"""Job ids as people type them: the 8 characters the dashboard shows, or any longer start.

Every command that takes a job id resolves it here first, so `farm status 3f2a9c1e` and
`farm status <the whole uuid>` are the same command, and a start shared by several jobs ends
the command with one line naming them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from farm.context import Farm


def full_job_id(farm: Farm, ref: str) -> str:
    """The whole id of the one job `ref` starts; InputError (one line) when none or several."""
    from farm.job_names import resolve_job_id

    with farm.sessions() as session:
        return resolve_job_id(session, ref)
