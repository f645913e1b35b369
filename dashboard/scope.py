"""Rows as one project sees them: another team's character, job or render does not exist.

Every lookup by id from a URL or a body goes through here. A row of another project answers
404, exactly like a missing one, so ids cannot be probed to learn what other teams have.
"""

from __future__ import annotations

from typing import TypeVar

from flask import abort, request
from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.auth import Principal
from farm.db.models import Account, ApiToken, Character, Job, Render

MAX_ID = 2**31 - 1  # every integer id column; larger ones would overflow in SQL
MAX_PAGE = 100_000

Owned = TypeVar("Owned", Character, ApiToken, Account)


def owned(session: Session, who: Principal, model: type[Owned], row_id: int, what: str) -> Owned:
    row = session.get(model, row_id) if 0 < row_id <= MAX_ID else None
    if row is None or row.project_id != who.project_id:
        abort(404, f"no {what} {row_id}")
    return row


def character_of(session: Session, who: Principal, character_id: int) -> Character:
    character = owned(session, who, Character, character_id, "character")
    if character.deleted:
        abort(404, f"no character {character_id}")
    return character


def job_of(session: Session, who: Principal, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.project_id != who.project_id:
        abort(404, f"no job {job_id}")
    return job


def render_of(session: Session, who: Principal, render_id: int) -> tuple[Render, Job]:
    row = (
        session.execute(
            select(Render, Job)
            .join(Job, Job.id == Render.job_id)
            .where(Render.id == render_id, Job.project_id == who.project_id)
        ).first()
        if 0 < render_id <= MAX_ID
        else None
    )
    if row is None:
        abort(404, f"no render {render_id}")
    return row[0], row[1]


def page_number() -> int:
    """The `page` of a listing's query string, 1 if missing or silly."""
    page = request.args.get("page", 1, type=int) or 1
    return min(max(page, 1), MAX_PAGE)
