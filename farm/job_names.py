"""What people call a job: its name, its short id, and the file names its downloads carry.

A UUID is right for a URL (unguessable) and wrong for a person: the dashboard shows its first
8 characters, so those 8 (or any longer start) must work wherever the CLI takes a job id, and a
start shared by several jobs is an error that lists them rather than a guess. Downloads carry
the job's name (`newton-ch1-comic.pdf`, `newton-ch1-0003-v2.png`), so a folder of downloads
from many jobs still says what each file is.
"""

from __future__ import annotations

import re
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Job
from farm.errors import InputError

SHORT_ID = 8  # the characters of a job id the dashboard and the CLI show
MAX_SLUG = 60
_LISTED_MATCHES = 10
_ID_START = re.compile(r"[0-9a-fA-F-]{1,36}")
_NOT_SLUG = re.compile(r"[^a-z0-9]+")


def short_id(job_id: str) -> str:
    return job_id[:SHORT_ID]


def default_name(title: str | None, character: str, when: datetime) -> str:
    """The story's title, or its character and the day it was submitted."""
    return title.strip() if title and title.strip() else f"{character} {when:%Y-%m-%d}"


def file_stem(name: str, job_id: str) -> str:
    """The job's name as a file name's start: lower case ASCII words joined by dashes
    ("Newton ch.1" -> "newton-ch-1"); a name with no such word falls back on the short id."""
    slug = _NOT_SLUG.sub("-", name.casefold()).strip("-")[:MAX_SLUG].rstrip("-")
    return slug or f"job-{short_id(job_id)}"


def resolve_job_id(session: Session, ref: str, project_id: int | None = None) -> str:
    """The full id of the job that `ref` (a whole id or its start) names, within `project_id`
    when one is given; InputError when none or several jobs match, listing those."""
    ref = ref.strip()
    if not _ID_START.fullmatch(ref):
        raise InputError(f"no job {ref!r}")
    where = [Job.id.startswith(ref.casefold(), autoescape=True)]
    if project_id is not None:
        where.append(Job.project_id == project_id)
    matches = session.execute(
        select(Job.id, Job.name, Job.status)
        .where(*where)
        .order_by(Job.created.desc(), Job.id)
        .limit(_LISTED_MATCHES + 1)
    ).all()
    exact = [job_id for job_id, _, _ in matches if job_id == ref.casefold()]
    if exact or len(matches) == 1:
        return (exact or [matches[0][0]])[0]
    if not matches:
        raise InputError(f"no job {ref!r}")
    listed = "; ".join(
        f"{job_id} {name!r} ({status})" for job_id, name, status in matches[:_LISTED_MATCHES]
    )
    more = "; and more" if len(matches) > _LISTED_MATCHES else ""
    raise InputError(
        f"job id {ref!r} is ambiguous, it starts several jobs: {listed}{more}; give more of it"
    )
