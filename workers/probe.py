"""Probes for a worker container, answered from SQL alone: `python -m workers.probe --startup`.

Why SQL and not Celery: `celery inspect ping` goes through the broker to the worker, and a
worker in the middle of a shard (minutes of GPU work) may not answer in time. A probe that
kills a busy worker throws away its shard and minutes of model loading, and the next pod
loads the same models again. The worker's heartbeat thread writes `last_heartbeat` every few
seconds whatever the render loop is doing, so SQL says whether the process lives without
disturbing it.

- `--startup`: this host's worker process(es) registered, loaded their presets and consume
  their queues (status idle, busy or draining: a row turns idle only once its Celery consumer
  has started, see `workers.runtime`) and beat recently. Until then Kubernetes waits, for as
  long as the startup probe allows: loading SDXL takes minutes.
- `--liveness`: every worker row of this host beat within `--max-age` seconds (a row still
  loading its presets is given `--start-timeout` instead). A row the reaper marked lost, or one
  that stopped, fails: that process can no longer take work until it registers again, which a
  restart does. A database that cannot be reached passes: restarting a GPU worker does not
  mend a database, and would cost the shard in flight. For the same reason a worker that has
  loaded its presets but waits for its broker stays alive: it beats while it waits.
- `--migrated`: the database schema is at this code's head; init containers wait on it, so
  pods never start against a schema that a migration job has yet to bring up to date.

Worker rows are named `<hostname>:<device label>` (`workers.runtime.worker_name`); in a pod
the hostname is the pod's name, so the rows of this pod are the ones whose id starts with it.
Each run prints one line and exits 0 (pass) or 1 (fail).
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from farm.db.models import Worker
from farm.db.states import WorkerStatus
from farm.db.types import utcnow
from farm.errors import FarmError

MAX_AGE_S = 120.0  # a dozen missed heartbeats (workers.runtime.HEARTBEAT_S is 10 s)
START_TIMEOUT_S = 1800.0  # a prefork child that restarts loads its presets again
LOADED = (WorkerStatus.IDLE, WorkerStatus.BUSY, WorkerStatus.DRAINING)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1


def host_workers(session: Session, hostname: str) -> list[Worker]:
    """The worker rows of `hostname`; `autoescape` keeps a `_` in a name from matching any
    character, so `pod_1` never answers for `podX1`."""
    query = select(Worker).where(Worker.id.startswith(f"{hostname}:", autoescape=True))
    return list(session.scalars(query.order_by(Worker.id)))


def _age_s(worker: Worker, now: datetime) -> float:
    return max((now - worker.last_heartbeat).total_seconds(), 0.0)


def _describe(workers: Sequence[Worker], now: datetime) -> str:
    return ", ".join(f"{w.id} {w.status} (beat {_age_s(w, now):.0f}s ago)" for w in workers)


def check_startup(
    session: Session,
    hostname: str,
    *,
    expected: int = 1,
    max_age_s: float = MAX_AGE_S,
    now: datetime | None = None,
) -> Verdict:
    """Started when `expected` processes of this host have loaded their presets and beat
    recently; a fresh beat keeps the row of a process that died before a restart from
    passing for the one still loading."""
    now = now or utcnow()
    workers = host_workers(session, hostname)
    if not workers:
        return Verdict(False, f"waiting: no worker registered as {hostname}:*")
    ready = [w for w in workers if w.status in LOADED and _age_s(w, now) <= max_age_s]
    if len(ready) >= expected:
        return Verdict(True, f"started: {_describe(ready, now)}")
    return Verdict(
        False, f"waiting: {len(ready)} of {expected} worker(s) ready: {_describe(workers, now)}"
    )


def check_liveness(
    session: Session,
    hostname: str,
    *,
    max_age_s: float = MAX_AGE_S,
    start_timeout_s: float = START_TIMEOUT_S,
    now: datetime | None = None,
) -> Verdict:
    """Alive while every row of this host is live and beating; see the module's docstring."""
    now = now or utcnow()
    workers = host_workers(session, hostname)
    if not workers:
        return Verdict(False, f"dead: no worker registered as {hostname}:*")
    for w in workers:
        age = _age_s(w, now)
        if w.status is WorkerStatus.LOST:
            return Verdict(False, f"dead: {w.id} was marked lost; it must register again")
        if w.status is WorkerStatus.STOPPED:
            return Verdict(False, f"dead: {w.id} stopped (beat {age:.0f}s ago)")
        if w.status is WorkerStatus.STARTING and age > start_timeout_s:
            return Verdict(False, f"dead: {w.id} still loading after {age:.0f}s")
        if w.status in LOADED and age > max_age_s:
            return Verdict(
                False, f"dead: {w.id} {w.status}, last beat {age:.0f}s ago (limit {max_age_s:g}s)"
            )
    return Verdict(True, f"alive: {_describe(workers, now)}")


def check_migrated(database_url: str) -> Verdict:
    from farm.db.migrate import current, head

    at, expected = current(database_url), head()
    if at == expected:
        return Verdict(True, f"migrated: database at {at}")
    return Verdict(False, f"waiting: database at {at or 'no revision'}, this code needs {expected}")


def _one_line(error: BaseException) -> str:
    """The driver's message, first line only: the probe prints one line, and the message
    names the host and port but never the password."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:300]


def probe(
    mode: str,
    database_url: str,
    hostname: str,
    *,
    expected: int = 1,
    max_age_s: float = MAX_AGE_S,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Verdict:
    from farm.db.session import make_engine, session_factory

    try:
        if mode == "migrated":
            return check_migrated(database_url)
        engine = make_engine(database_url)
        try:
            with session_factory(engine)() as session:
                if mode == "startup":
                    return check_startup(session, hostname, expected=expected, max_age_s=max_age_s)
                return check_liveness(
                    session, hostname, max_age_s=max_age_s, start_timeout_s=start_timeout_s
                )
        finally:
            engine.dispose()
    except SQLAlchemyError as error:
        if mode == "liveness":
            return Verdict(True, f"unknown: database unusable ({_one_line(error)}); not judged")
        return Verdict(False, f"waiting: database unusable ({_one_line(error)})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workers.probe",
        description="Startup and liveness of this host's farm workers, read from SQL.",
    )
    modes = parser.add_mutually_exclusive_group(required=True)
    for name, text in (
        ("startup", "pass once this host's workers have loaded their presets"),
        ("liveness", "pass while this host's workers beat"),
        ("migrated", "pass once the database schema is at this code's head"),
    ):
        modes.add_argument(f"--{name}", dest="mode", action="store_const", const=name, help=text)
    parser.add_argument(
        "--max-age",
        type=float,
        default=MAX_AGE_S,
        metavar="S",
        help=f"oldest acceptable heartbeat of a loaded worker (default {MAX_AGE_S:g})",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=START_TIMEOUT_S,
        metavar="S",
        help=f"longest a worker may load its presets (default {START_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--expected",
        type=int,
        default=1,
        metavar="N",
        help="worker processes this host runs: one per GPU (default 1)",
    )
    parser.add_argument("--hostname", help="whose workers (default: this machine's name)")
    parser.add_argument("--database-url", help="default: FARM_DATABASE_URL, as the farm reads it")
    args = parser.parse_args(argv)

    try:
        if args.database_url is None:
            from farm.settings import Settings

            args.database_url = Settings.from_env().database_url
        verdict = probe(
            args.mode,
            args.database_url,
            args.hostname or socket.gethostname(),
            expected=args.expected,
            max_age_s=args.max_age,
            start_timeout_s=args.start_timeout,
        )
    except FarmError as error:  # a bad FARM_* setting: the pod cannot work as configured
        verdict = Verdict(False, f"error: {error}")
    print(verdict.line, flush=True)
    return verdict.exit_code


if __name__ == "__main__":
    sys.exit(main())
