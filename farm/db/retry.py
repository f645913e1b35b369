"""Running a transaction again when it lost a race for its rows."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sqlalchemy.orm.exc import StaleDataError

log = logging.getLogger(__name__)

LOST_RACE_TRIES = 5

P = ParamSpec("P")
T = TypeVar("T")


def retried_on_lost_race(transaction: Callable[P, T]) -> Callable[P, T]:
    """Run a transaction again when another process changed its rows first.

    The version columns of jobs and shards turn a race (two workers starting the first shards
    of a job at once, a cancel clicked while a worker starts the job) into a StaleDataError
    instead of one writer silently undoing the other; a fresh read then decides again. Where
    a transaction locks its rows first (PostgreSQL, FOR UPDATE) this never fires.
    """

    @functools.wraps(transaction)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        for _ in range(LOST_RACE_TRIES - 1):
            try:
                return transaction(*args, **kwargs)
            except StaleDataError as error:
                log.info("%s lost a race, trying again: %s", transaction.__name__, error)
        return transaction(*args, **kwargs)

    return run
