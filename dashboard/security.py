"""Who is calling, what they may do, and the defences every request passes through.

Every route needs a logged-in principal unless it is marked `@public`: forgetting a check then
closes a page instead of opening it. A request authenticates with an `Authorization: Bearer`
token (pipelines) or with the signed session cookie of a dashboard login (people). The cookie
names the token or account and the session generation it was opened under; a logout bumps
that generation in the database, so a saved copy of the cookie is refused too, as is any
session of a token that was revoked or expired or an account that was disabled. Requests on
a session must carry the session's CSRF token in the form or an `X-CSRF-Token` header; bearer
requests are exempt, since a browser never adds that header by itself. Every answer carries
headers that keep pages from running foreign scripts, being framed or sniffed.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    g,
    jsonify,
    redirect,
    request,
    session,
    url_for,
)

from dashboard.context import farm
from farm.auth import (
    Principal,
    TokenExpiredError,
    account_principal,
    authenticate_token,
    end_sessions,
    token_principal,
)
from farm.db.models import Role

View = TypeVar("View", bound=Callable[..., Any])

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"

# Scripts and styles only from this origin (no inline ones: the pages' JS lives in static/);
# images may also come from object storage, whose presigned URLs are on another host.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob: https: "
    "http:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def public(view: View) -> View:
    """Mark a route that answers without a login (the login page, health checks, the schema)."""
    view.public = True  # type: ignore[attr-defined]
    return view


def principal() -> Principal:
    """The caller of this request; routes run only once one is known (see `_require_login`)."""
    return g.principal


def require_role(needed: Role) -> None:
    if not principal().may(needed):
        abort(403, f"your role {principal().role} may not do this; it needs {needed} or above")


def requires(needed: Role) -> Callable[[View], View]:
    """A page for `needed` roles and above."""

    def wrap(view: View) -> View:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            require_role(needed)
            return view(*args, **kwargs)

        return checked  # type: ignore[return-value]

    return wrap


def log_in(who: Principal) -> None:
    """Start a fresh session for `who`: nothing from before the login survives, not even the
    CSRF token, so a token planted in the browser beforehand is useless afterwards."""
    session.clear()
    session.permanent = True
    session["principal"] = [who.kind, who.id, who.session_generation]
    csrf_token()


def log_out() -> None:
    """End this login everywhere: this browser's cookie, and every saved copy of it."""
    who = g.get("principal")
    if who is not None:
        with farm().sessions.begin() as db:
            end_sessions(db, who)
    session.clear()


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if token is None:
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site only, never another host, and nothing
    that cannot stand in a Location header (a CR or LF there would be a 500, or worse)."""
    if target and target.isprintable() and target.startswith("/") and not target.startswith("//"):
        parts = urlsplit(target)
        if not parts.scheme and not parts.netloc and "\\" not in target:
            return target
    return url_for("jobs.index")


def init_app(app: Flask) -> None:
    app.before_request(_load_principal)
    app.before_request(_require_login)
    app.before_request(_check_csrf)
    app.after_request(_security_headers)
    # Globals rather than context: the templates' imported macros see globals only.
    app.add_template_global(csrf_token)
    app.add_template_global(Role, "Role")
    app.context_processor(lambda: {"current": g.get("principal")})


def _load_principal() -> Response | None:
    g.principal = None
    g.bearer = False
    g.refusal = None
    if request.endpoint == "static":
        return None  # stylesheets and scripts: no database round trip for them
    header = request.headers.get("Authorization")
    if header is not None:
        # A request that names a token is judged on it alone: no falling back to a cookie.
        g.bearer = True
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and secret.strip():
            try:
                with farm().sessions.begin() as db:
                    g.principal = authenticate_token(db, secret.strip())
            except TokenExpiredError as expired:
                g.refusal = str(expired)
        return None
    remembered = session.get("principal")
    if not remembered:
        return None
    who = None
    if len(remembered) == 3:  # a cookie from before session generations ends here
        kind, row_id, generation = remembered
        with farm().sessions() as db:
            find = token_principal if kind == "token" else account_principal
            who = find(db, row_id, generation)
    if who is None:  # logged out, revoked, expired or disabled since: the session ends now
        session.clear()
    g.principal = who
    return None


def _require_login() -> Response | None:
    if request.endpoint is None or request.endpoint == "static" or g.principal is not None:
        return None  # no route matched (a 404 follows), or the CSS and JS of the login page
    if getattr(current_app.view_functions[request.endpoint], "public", False):
        return None
    if g.bearer or request.path.startswith("/api/"):
        refusal = g.refusal or "authentication required: send Authorization: Bearer <token>"
        response = jsonify(error=refusal)
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="render-farm"'
        return response
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def _check_csrf() -> None:
    if request.method not in UNSAFE_METHODS or g.bearer:
        return
    sent = request.headers.get(CSRF_HEADER) or request.form.get(CSRF_FIELD) or ""
    expected = session.get(CSRF_FIELD) or ""
    if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, "the form's security token is missing or expired; reload the page and retry")


def _security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Referrer-Policy", "same-origin")
    if g.get("principal") is not None or "principal" in session:
        headers.setdefault("Cache-Control", "private, no-store")
        headers.add("Vary", "Cookie")
    return response
