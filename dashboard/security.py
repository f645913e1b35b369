"""Who is calling, what they may do, and the defences every request passes through.

Every route needs a logged-in principal unless it is marked `@public`: forgetting a check then
closes a page instead of opening it. A request authenticates with an `Authorization: Bearer`
token (pipelines) or with the signed session cookie of a dashboard login (people). Requests on
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
from farm.auth import Principal, account_principal, authenticate_token, token_principal
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
    session["principal"] = [who.kind, who.id]
    csrf_token()


def log_out() -> None:
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
    if request.endpoint == "static":
        return None  # stylesheets and scripts: no database round trip for them
    header = request.headers.get("Authorization")
    if header is not None:
        # A request that names a token is judged on it alone: no falling back to a cookie.
        g.bearer = True
        scheme, _, secret = header.partition(" ")
        if scheme.lower() == "bearer" and secret.strip():
            with farm().sessions.begin() as db:
                g.principal = authenticate_token(db, secret.strip())
        return None
    remembered = session.get("principal")
    if not remembered:
        return None
    kind, row_id = remembered
    with farm().sessions() as db:
        who = (token_principal if kind == "token" else account_principal)(db, row_id)
    if who is None:  # revoked or disabled since the login: the session ends now
        session.clear()
    g.principal = who
    return None


def _require_login() -> Response | None:
    if request.endpoint is None or request.endpoint == "static" or g.principal is not None:
        return None  # no route matched (a 404 follows), or the CSS and JS of the login page
    if getattr(current_app.view_functions[request.endpoint], "public", False):
        return None
    if g.bearer or request.path.startswith("/api/"):
        response = jsonify(error="authentication required: send Authorization: Bearer <token>")
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
