"""`/api/v1/me`, `/api/v1/tokens`, `/api/v1/accounts`: who is calling, and an admin's keys to
the project. An admin manages the tokens and accounts of their own project only."""

from __future__ import annotations

from flask import abort
from sqlalchemy import select

from dashboard.api import api, operation
from dashboard.api.schemas import (
    AccountCreate,
    AccountList,
    AccountOut,
    MeOut,
    TokenCreate,
    TokenCreated,
    TokenList,
    TokenOut,
)
from dashboard.context import farm
from dashboard.scope import owned
from dashboard.security import principal
from farm.auth import create_account, create_token, parse_lifetime
from farm.db.models import Account, ApiToken, Project, Role
from farm.db.types import utcnow


def token_out(token: ApiToken) -> TokenOut:
    return TokenOut(
        id=token.id,
        name=token.name,
        role=token.role,
        prefix=token.prefix,
        created=token.created,
        last_used=token.last_used,
        revoked=token.revoked,
        expires=token.expires,
    )


def account_out(account: Account) -> AccountOut:
    return AccountOut(
        id=account.id,
        username=account.username,
        role=account.role,
        created=account.created,
        last_login=account.last_login,
        disabled=account.disabled,
    )


@api.get("/me")
@operation("access", response=MeOut)
def me() -> MeOut:
    """The caller: project, role, and the token's or account's name."""
    who = principal()
    return MeOut(project=who.project, role=who.role, kind=who.kind, name=who.label)


@api.get("/tokens")
@operation("access", role=Role.ADMIN, response=TokenList)
def list_tokens() -> TokenList:
    """The project's tokens (their secrets are not kept, only their first characters)."""
    with farm().sessions() as session:
        tokens = session.scalars(
            select(ApiToken)
            .where(ApiToken.project_id == principal().project_id)
            .order_by(ApiToken.id)
        )
        return TokenList(items=[token_out(token) for token in tokens])


@api.post("/tokens")
@operation("access", role=Role.ADMIN, status=201, response=TokenCreated, body=TokenCreate)
def new_token(body: TokenCreate) -> TokenCreated:
    """Make a token in the project; its secret is in this answer and nowhere else."""
    with farm().sessions.begin() as session:
        project = session.get(Project, principal().project_id)
        expires = utcnow() + parse_lifetime(body.expires_in) if body.expires_in else None
        token, secret = create_token(session, project, body.role, body.name, expires)
        return TokenCreated(**token_out(token).model_dump(), secret=secret)


@api.delete("/tokens/<int:token_id>")
@operation("access", role=Role.ADMIN, status=204)
def revoke_token(token_id: int) -> None:
    """Revoke a token: its calls and the dashboard sessions opened with it stop at once."""
    who = principal()
    if who.kind == "token" and who.id == token_id:
        abort(409, "this is the token of this request; revoke it with another admin token")
    with farm().sessions.begin() as session:
        owned(session, who, ApiToken, token_id, "token").revoke()


@api.get("/accounts")
@operation("access", role=Role.ADMIN, response=AccountList)
def list_accounts() -> AccountList:
    """The project's password accounts."""
    with farm().sessions() as session:
        accounts = session.scalars(
            select(Account).where(Account.project_id == principal().project_id).order_by(Account.id)
        )
        return AccountList(items=[account_out(account) for account in accounts])


@api.post("/accounts")
@operation("access", role=Role.ADMIN, status=201, response=AccountOut, body=AccountCreate)
def new_account(body: AccountCreate) -> AccountOut:
    """Make a password account for a person, who logs in to the dashboard with it."""
    with farm().sessions.begin() as session:
        project = session.get(Project, principal().project_id)
        account = create_account(session, project, body.username, body.password, body.role)
        return account_out(account)


@api.delete("/accounts/<int:account_id>")
@operation("access", role=Role.ADMIN, status=204)
def disable_account(account_id: int) -> None:
    """Disable an account: it cannot log in, and its open sessions end."""
    who = principal()
    if who.kind == "account" and who.id == account_id:
        abort(409, "you cannot disable the account you are logged in with")
    with farm().sessions.begin() as session:
        owned(session, who, Account, account_id, "account").disable()
