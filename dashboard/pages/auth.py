"""Logging in with an API token or a password account, and out."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from dashboard.context import farm
from dashboard.security import log_in, log_out, public, safe_next
from farm.auth import authenticate_password, authenticate_token

auth = Blueprint("auth", __name__)


@auth.route("/login", methods=["GET", "POST"])
@public
def login() -> str | Response | tuple[str, int]:
    if request.method == "GET":
        return render_template("login.html", next=request.args.get("next", ""))
    form = request.form
    with farm().sessions.begin() as session:
        if form.get("token"):
            who = authenticate_token(session, form["token"].strip())
        else:
            who = authenticate_password(
                session, form.get("username", "").strip(), form.get("password", "")
            )
    if who is None:
        message = "That token or username and password did not match a live login."
        return render_template("login.html", next=form.get("next", ""), error=message), 401
    log_in(who)
    flash(f"Logged in as {who.label} ({who.role} in {who.project}).")
    return redirect(safe_next(form.get("next")))


@auth.post("/logout")
def logout() -> Response:
    log_out()
    return redirect(url_for("auth.login"))
