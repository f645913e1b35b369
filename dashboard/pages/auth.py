"""Logging in with an API token or a password account, and out."""

from __future__ import annotations

from flask import Blueprint, flash, make_response, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from dashboard.context import farm
from dashboard.errors import error_response, wants_json
from dashboard.ratelimit import client_address, login_limits, retry_message
from dashboard.security import log_in, log_out, public, safe_next
from farm.auth import TokenExpiredError, authenticate_password, authenticate_token

auth = Blueprint("auth", __name__)


@auth.route("/login", methods=["GET", "POST"])
@public
def login() -> str | Response | tuple[str, int]:
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    form = request.form
    address = client_address()
    username = None if form.get("token") else form.get("username", "").strip()
    wait_s = login_limits().wait_s(address, username)
    if wait_s:
        return _too_many(wait_s)
    message = "That token or username and password did not match a live login."
    try:
        with farm().sessions.begin() as session:
            if form.get("token"):
                who = authenticate_token(session, form["token"].strip())
            else:
                who = authenticate_password(session, username or "", form.get("password", ""))
    except TokenExpiredError as expired:
        who, message = None, str(expired)
    if who is None:
        login_limits().failed(address, username)
        return render_template("login.html", next=form.get("next", ""), error=message), 401
    log_in(who)
    flash(f"Logged in as {who.label} ({who.role} in {who.project}).")
    return redirect(safe_next(form.get("next")))


def _too_many(wait_s: int) -> Response:
    message = retry_message(wait_s)
    if wants_json():
        response = make_response(error_response(429, message))
    else:
        page = render_template("login.html", next=request.form.get("next", ""), error=message)
        response = make_response(page, 429)
    response.headers["Retry-After"] = str(wait_s)
    return response


@auth.post("/logout")
def logout() -> Response:
    log_out()
    return redirect(url_for("auth.login"))
