"""Waiting for the broker before a worker starts: one line naming the URL that cannot be
reached, then retries with a backoff and a reminder now and then, and a line when it answers.

Left to itself, each Celery worker retried a broker it could not reach with a two-line error
per attempt, or nothing at all where logs went unread, and an operator could not tell a worker
waiting for its broker from one waiting for work. The URL is shown as the logs show any URL:
with a password masked, when it has one (farm/logs.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kombu import Connection
from kombu.exceptions import OperationalError

from farm.logs import redact

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
FIRST_WAIT_S = 1.0
MAX_WAIT_S = 60.0
REMIND_EVERY_S = 600.0


def broker_answers(url: str) -> str | None:
    """None when the broker takes a connection; else why not, in a few words."""
    try:
        with Connection(url, connect_timeout=CONNECT_TIMEOUT_S) as connection:
            connection.ensure_connection(max_retries=1, interval_start=0, interval_step=0)
    except (OperationalError, OSError) as error:
        said = str(error).strip().splitlines()
        return said[0] if said else type(error).__name__
    return None


def wait_for_broker(
    url: str,
    *,
    stopped: Callable[[], bool] = lambda: False,
    answers: Callable[[str], str | None] = broker_answers,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Return once the broker at `url` answers (True), or once `stopped()` (False). The
    embedded broker is a file of this machine's and always answers."""
    if url.startswith("sqla+sqlite:"):
        return True
    problem = answers(url)
    if problem is None:
        return True
    shown = redact(url)
    log.warning(
        "cannot reach the broker at %s (%s); retrying, every %.0f s at most",
        shown,
        problem,
        MAX_WAIT_S,
    )
    started = reminded = clock()
    wait = FIRST_WAIT_S
    while problem is not None:
        until = clock() + wait
        while clock() < until:  # in slices, so that a SIGTERM is not kept waiting
            if stopped():
                return False
            sleep(min(0.5, until - clock()))
        wait = min(wait * 2, MAX_WAIT_S)
        problem = answers(url)
        if problem is not None and clock() - reminded >= REMIND_EVERY_S:
            reminded = clock()
            log.warning(
                "still cannot reach the broker at %s after %.0f min (%s)",
                shown,
                (reminded - started) / 60,
                problem,
            )
    log.warning("the broker at %s answered after %.0f s", shown, clock() - started)
    return True
