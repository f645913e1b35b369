"""Errors as their callers read them: `{"error": "..."}` with the right 4xx for the API, a page
with the same message for people.

`InputError` is the farm's "your input is wrong" and always becomes a 400 with its message;
`TransitionError` and `StaleDataError` are races lost against a worker or another user (a job
ended or changed meanwhile), a 409: reading again and retrying is the fix. Anything else is a
bug: logged with its traceback, answered without one.
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, jsonify, render_template, request
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from farm.db.states import TransitionError
from farm.errors import InputError

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but \t \n \r
RACE_LOST = "the row changed while this request ran (a worker updated it); read it and retry"


def wants_json() -> bool:
    return request.path.startswith("/api/") or request.accept_mimetypes.best in (
        "application/json",
        "text/event-stream",
    )


def error_response(status: int, message: str) -> tuple[Response | str, int]:
    if wants_json():
        return jsonify(error=message), status
    return render_template("error.html", status=status, message=message), status


def init_app(app: Flask) -> None:
    app.before_request(_refuse_control_characters)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(InputError, lambda error: error_response(400, str(error)))
    app.register_error_handler(TransitionError, lambda error: error_response(409, str(error)))
    app.register_error_handler(StaleDataError, lambda _: error_response(409, RACE_LOST))
    app.register_error_handler(Exception, _bug)


def _refuse_control_characters() -> tuple[Response | str, int] | None:
    """A NUL or another control character in the path, the query or a form field is a 400
    before any view runs: PostgreSQL refuses NUL in text (a 500 deep in a query), and no name,
    id or setting of the farm holds one. A form's text may hold tabs and line breaks."""
    places = [("the path", request.path, _CONTROL)]
    for key, value in request.args.items(multi=True):
        places.append((f"query {key!r}", f"{key}={value}", _CONTROL))
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        for key, value in request.form.items(multi=True):
            places.append((f"field {key!r}", f"{key}={value}", _CONTROL_IN_TEXT))
    for where, text, pattern in places:
        found = pattern.search(text)
        if found is not None:
            char = found.group()
            name = "NUL" if char == "\x00" else f"U+{ord(char):04X}"
            return error_response(400, f"{where} holds a control character ({name}); remove it")
    return None


def _http_error(error: HTTPException) -> Response | HTTPException:
    if error.code is None or error.code < 400:
        return error  # a redirect raised as an exception goes on as it is
    message = error.description or error.name
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config["MAX_CONTENT_LENGTH"] // (1024 * 1024)
        message = f"the upload is larger than the {limit} MB limit; send fewer or smaller files"
    response = current_app.make_response(error_response(error.code, message))
    for name, value in error.get_headers():  # Allow on a 405, for one
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _bug(error: Exception) -> tuple[Response | str, int]:
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, InternalServerError.description)
