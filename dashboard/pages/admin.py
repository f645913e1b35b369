"""The admin page: the project's API tokens and password accounts, made and revoked here."""

from __future__ import annotations

from flask import Blueprint, Response, abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select

from dashboard.context import farm
from dashboard.scope import owned
from dashboard.security import principal, requires
from farm.auth import create_account, create_token, parse_lifetime, parse_role
from farm.db.models import Account, ApiToken, Project, Role
from farm.db.types import utcnow
from farm.errors import InputError

admin = Blueprint("admin", __name__, url_prefix="/admin")


def _page(status: int = 200, **extra: object) -> tuple[str, int]:
    who = principal()
    with farm().sessions() as session:
        tokens = list(
            session.scalars(
                select(ApiToken).where(ApiToken.project_id == who.project_id).order_by(ApiToken.id)
            )
        )
        accounts = list(
            session.scalars(
                select(Account).where(Account.project_id == who.project_id).order_by(Account.id)
            )
        )
    page = render_template(
        "admin.html", tokens=tokens, accounts=accounts, roles=[r.value for r in Role], **extra
    )
    return page, status


@admin.get("/")
@requires(Role.ADMIN)
def index() -> tuple[str, int]:
    return _page()


@admin.post("/tokens")
@requires(Role.ADMIN)
def new_token() -> tuple[str, int]:
    """The secret is shown in this answer only (not flashed: the session cookie is signed, not
    encrypted, and would carry it around)."""
    try:
        with farm().sessions.begin() as session:
            project = session.get(Project, principal().project_id)
            role = parse_role(request.form.get("role", ""))
            lifetime = request.form.get("expires", "").strip()
            expires = utcnow() + parse_lifetime(lifetime) if lifetime else None
            name = request.form.get("name", "")
            token, secret = create_token(session, project, role, name, expires)
            made = (token.name, secret)
    except InputError as error:
        return _page(400, error=str(error))
    return _page(201, new_secret=made)


@admin.post("/tokens/<int:token_id>/revoke")
@requires(Role.ADMIN)
def revoke_token(token_id: int) -> Response:
    who = principal()
    if who.kind == "token" and who.id == token_id:
        abort(409, "this is the token you are logged in with; use another admin login")
    with farm().sessions.begin() as session:
        owned(session, who, ApiToken, token_id, "token").revoke()
    flash(f"Token {token_id} revoked.")
    return redirect(url_for("admin.index"))


@admin.post("/accounts")
@requires(Role.ADMIN)
def new_account() -> Response | tuple[str, int]:
    form = request.form
    try:
        with farm().sessions.begin() as session:
            project = session.get(Project, principal().project_id)
            account = create_account(
                session,
                project,
                form.get("username", "").strip(),
                form.get("password", ""),
                parse_role(form.get("role", "")),
            )
            username = account.username
    except InputError as error:
        return _page(400, error=str(error))
    flash(f"Account {username} made.")
    return redirect(url_for("admin.index"))


@admin.post("/accounts/<int:account_id>/disable")
@requires(Role.ADMIN)
def disable_account(account_id: int) -> Response:
    who = principal()
    if who.kind == "account" and who.id == account_id:
        abort(409, "you cannot disable the account you are logged in with")
    with farm().sessions.begin() as session:
        owned(session, who, Account, account_id, "account").disable()
    flash(f"Account {account_id} disabled.")
    return redirect(url_for("admin.index"))
