"""Who may call the farm: projects, API tokens, password accounts and their roles.

Plain functions on a session, with no web framework inside, so that the dashboard, the API and
the CLI (`farm tokens create`) share one set of rules. A token is shown once, when it is made;
the farm keeps only its sha256, which is safe for a 256-bit random secret. A password is
chosen by a person and may be weak, so it gets a slow, salted KDF (scrypt) instead.

A token may expire (`expires`, set when it is made), and then answers 401 with a message that
says so: whoever sends it holds the secret, so telling them costs nothing. A dashboard session
remembers the session generation of its token or account; a logout bumps the generation,
which ends every session opened under the old number, a saved copy of the cookie included.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from farm.db.models import Account, ApiToken, Project, Role
from farm.db.types import utcnow
from farm.errors import FarmError, InputError

TOKEN_PREFIX = "rf_"  # makes a leaked token recognisable to secret scanners and people
PREFIX_SHOWN = 10  # characters of a token kept in clear to tell tokens apart in lists
MIN_PASSWORD = 12
MAX_PASSWORD = 1024  # scrypt hashes any length; a cap keeps a request from costing minutes
# Werkzeug's scrypt parameters: a fraction of a second per login, 32 MiB of memory per guess.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
# Writing last_used on every request would turn reads into writes; a minute is precise enough.
_LAST_USED_EVERY = timedelta(minutes=1)
USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")  # project names too
LIFETIME = re.compile(r"^([1-9][0-9]{0,4})([mhdw])$")  # "90m", "12h", "30d", "8w"
_LIFETIME_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
MAX_LIFETIME = timedelta(days=3650)


class TokenExpiredError(FarmError):
    """A real token past its expiry: a 401 that says so, unlike an unknown one."""

    def __init__(self, token: ApiToken) -> None:
        expires = token.expires.isoformat(timespec="seconds") if token.expires else "?"
        super().__init__(
            f"this API token ({token.prefix}..., {token.name!r}) expired at {expires}; "
            "ask an admin of the project for a new one"
        )


@dataclass(frozen=True)
class Principal:
    """The caller of one request: which project it acts in, with which role, and as whom."""

    kind: str  # "token" or "account"
    id: int
    project_id: int
    project: str
    role: Role
    label: str  # the token's name or the account's username, for the page header and logs
    session_generation: int = 0  # what a dashboard session opened now remembers

    def may(self, needed: Role) -> bool:
        return self.role.allows(needed)


def check_name(value: str, what: str) -> str:
    """Project names and usernames: short, printable, safe in a URL and a log line."""
    if not USERNAME.match(value or ""):
        raise InputError(
            f"{what} {value!r} is not allowed: use 1 to 80 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def parse_role(value: str) -> Role:
    try:
        return Role(value)
    except ValueError:
        raise InputError(
            f"role {value!r} is unknown; choose one of: {', '.join(r.value for r in Role)}"
        ) from None


def ensure_project(session: Session, name: str) -> Project:
    """The project called `name`, created if new (the first admin token makes its project)."""
    project = session.scalars(select(Project).where(Project.name == check_name(name, "project")))
    found = project.first()
    if found is not None:
        return found
    created = Project(name=name)
    session.add(created)
    session.flush()
    return created


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_lifetime(value: str) -> timedelta:
    """`30d`, `12h`, `90m` or `8w` as a duration, for `--expires` and the admin form."""
    found = LIFETIME.match(value.strip().lower())
    lifetime = timedelta(**{_LIFETIME_UNITS[found[2]]: int(found[1])}) if found else None
    if lifetime is None or lifetime > MAX_LIFETIME:
        raise InputError(
            f"expires {value!r} is not a lifetime: write a number and a unit, m(inutes), "
            "h(ours), d(ays) or w(eeks), e.g. 30d, up to 10 years"
        )
    return lifetime


def create_token(
    session: Session,
    project: Project,
    role: Role,
    name: str,
    expires: datetime | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its secret; the secret is returned here once and stored nowhere."""
    name = name.strip()
    if not 1 <= len(name) <= 80:
        raise InputError(f"a token's name needs 1 to 80 characters, got {len(name)}")
    if expires is not None and expires <= utcnow():
        raise InputError(f"expires {expires.isoformat()} is in the past; a token must live a while")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        project_id=project.id,
        name=name,
        role=role,
        prefix=secret[:PREFIX_SHOWN],
        secret_sha256=secret_hash(secret),
        expires=expires,
    )
    session.add(token)
    session.flush()
    return token, secret


def authenticate_token(session: Session, secret: str) -> Principal | None:
    """The principal of a live token, or None for an unknown or revoked one (the caller says
    401 without telling which: that would help someone guessing). Raises TokenExpiredError
    for an expired one. Notes the use, at most once a minute so reads stay reads."""
    if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    token = session.scalars(
        select(ApiToken).where(ApiToken.secret_sha256 == secret_hash(secret))
    ).first()
    if token is None or token.revoked is not None:
        return None
    now = utcnow()
    if token.expired(now):
        raise TokenExpiredError(token)
    if token.last_used is None or now - token.last_used > _LAST_USED_EVERY:
        token.last_used = now
    return _principal(session, token)


def token_principal(session: Session, token_id: int, generation: int) -> Principal | None:
    """The principal of a dashboard session opened with a token under `generation`, while the
    token lives and no logout has ended that generation."""
    token = session.get(ApiToken, token_id)
    if token is None or token.revoked is not None or token.expired():
        return None
    if token.session_generation != generation:
        return None
    return _principal(session, token)


def end_sessions(session: Session, who: Principal) -> None:
    """End every dashboard session of `who`'s token or account, this one and saved copies."""
    row = session.get(ApiToken if who.kind == "token" else Account, who.id)
    if row is not None and row.session_generation == who.session_generation:
        row.session_generation += 1


def hash_password(password: str) -> str:
    """`scrypt$N$r$p$salt$hash`, the parameters kept so they can be raised later."""
    _check_password(password)
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(
        ["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(digest)]
    )


def verify_password(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt" or len(password) > MAX_PASSWORD:
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# Checked against when the username is unknown, so that a login takes as long either way and
# does not tell which usernames exist.
_DUMMY_HASH = (
    "scrypt$32768$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


def create_account(
    session: Session, project: Project, username: str, password: str, role: Role
) -> Account:
    username = check_name(username, "username")
    if session.scalars(select(Account.id).where(Account.username == username)).first():
        raise InputError(f"username {username!r} is taken; choose another")
    account = Account(
        project_id=project.id, username=username, password_hash=hash_password(password), role=role
    )
    session.add(account)
    session.flush()
    return account


def authenticate_password(session: Session, username: str, password: str) -> Principal | None:
    account = session.scalars(select(Account).where(Account.username == username)).first()
    if account is None or account.disabled is not None:
        verify_password(password, _DUMMY_HASH)
        return None
    if not verify_password(password, account.password_hash):
        return None
    account.last_login = utcnow()
    return _principal(session, account)


def account_principal(session: Session, account_id: int, generation: int) -> Principal | None:
    """The principal of a dashboard session opened with a password under `generation`, while
    the account lives and no logout has ended that generation."""
    account = session.get(Account, account_id)
    if account is None or account.disabled is not None:
        return None
    if account.session_generation != generation:
        return None
    return _principal(session, account)


def _principal(session: Session, row: ApiToken | Account) -> Principal:
    kind, label = ("token", row.name) if isinstance(row, ApiToken) else ("account", row.username)
    project = session.get(Project, row.project_id)
    assert project is not None, f"{kind} {row.id} names project {row.project_id}, which is gone"
    return Principal(
        kind, row.id, row.project_id, project.name, row.role, label, row.session_generation
    )


def _check_password(password: str) -> None:
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InputError(
            f"a password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters, got {len(password)}; "
            "a few unrelated words make a good one"
        )


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # scrypt needs 128 * n * r * p bytes; OpenSSL's default cap (32 MiB) is just below that.
    memory = 128 * n * r * p
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=2 * memory, dklen=32)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()
