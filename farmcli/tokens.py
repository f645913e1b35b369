"""`farm tokens`: API tokens from the command line, above all the first admin token of a project.

Everyone else gets their token or account from an admin, in the dashboard or through the API;
the first admin has nobody to ask, so this command (run where the database is reachable) is
how a studio starts.
"""

from __future__ import annotations

import click

from farm.db.models import Role
from farm.settings import Settings
from farmcli.errors import one_line_errors


def _farm():
    """The farm, once its database is migrated: the first token is often made on a new farm."""
    from farm.context import Farm
    from farm.db.migrate import current, head
    from farm.errors import FarmError

    settings = Settings.from_env()
    at, expected = current(settings.database_url), head()
    if at != expected:
        raise FarmError(
            f"the database is at revision {at or 'none'}, this farm expects {expected}; "
            "run `farm db upgrade` first"
        )
    return Farm(settings)


@click.group()
def tokens() -> None:
    """API tokens: bearer tokens for pipelines, and logins for the dashboard."""


@tokens.command("create")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    required=True,
    help="viewer reads, artist also submits, admin also manages tokens and workers.",
)
@click.option("--project", required=True, help="The team's project, created if new.")
@click.option("--name", default=None, help="What the token is for (default: '<role> token').")
@click.option(
    "--expires",
    default=None,
    metavar="LIFETIME",
    help="How long it lives: 90m, 12h, 30d or 8w (default: until revoked).",
)
@one_line_errors
def tokens_create(role: str, project: str, name: str | None, expires: str | None) -> None:
    """Make a token and print its secret, which is shown this once and stored only hashed."""
    from farm.auth import create_token, ensure_project, parse_lifetime
    from farm.db.types import utcnow

    ends = utcnow() + parse_lifetime(expires) if expires is not None else None
    farm = _farm()
    try:
        with farm.sessions.begin() as session:
            token, secret = create_token(
                session,
                ensure_project(session, project),
                Role(role),
                name or f"{role} token",
                ends,
            )
            token_id = token.id
    finally:
        farm.close()
    until = f", expires {ends.isoformat(timespec='seconds')}" if ends else ""
    click.echo(
        f"token {token_id} ({role} in project {project!r}{until}); keep it secret:", err=True
    )
    click.echo(secret)


@tokens.command("list")
@click.option("--project", default=None, help="Only this project's tokens.")
@one_line_errors
def tokens_list(project: str | None) -> None:
    """Every token: id, project, role, state, the start of its secret, when last used and
    when it expires, name."""
    from sqlalchemy import select

    from farm.db.models import ApiToken, Project

    farm = _farm()
    try:
        with farm.sessions() as session:
            query = select(ApiToken, Project.name).join(Project).order_by(ApiToken.id)
            if project is not None:
                query = query.where(Project.name == project)
            rows = session.execute(query).all()
    finally:
        farm.close()
    for token, project_name in rows:
        used = token.last_used.isoformat(timespec="seconds") if token.last_used else "never"
        state = "revoked" if token.revoked else "expired" if token.expired() else "live"
        ends = token.expires.isoformat(timespec="seconds") if token.expires else "never"
        click.echo(
            f"{token.id:5d} {project_name:16} {token.role:7} {state:8} {token.prefix}... "
            f"used {used}  expires {ends}  {token.name}"
        )


@tokens.command("revoke")
@click.argument("token_id", type=int)
@one_line_errors
def tokens_revoke(token_id: int) -> None:
    """Refuse TOKEN_ID from now on (dashboard sessions opened with it end too)."""
    from farm.db.models import ApiToken
    from farm.errors import InputError

    farm = _farm()
    try:
        with farm.sessions.begin() as session:
            token = session.get(ApiToken, token_id)
            if token is None:
                raise InputError(f"no token {token_id}; `farm tokens list` shows them")
            token.revoke()
    finally:
        farm.close()
    click.echo(f"token {token_id} revoked")
