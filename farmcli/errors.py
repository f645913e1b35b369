"""One-line errors for every `farm` command. Errors from outside input end the command with one
line on stderr and exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click
from sqlalchemy.exc import DBAPIError

from farm.errors import FarmError
from farm.settings import Settings


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except FarmError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
        except DBAPIError as error:  # the database is set up or reached wrongly, not a bug
            click.echo(f"error: {database_problem(error)}", err=True)
            sys.exit(2)

    return wrapper


def database_problem(error: DBAPIError) -> str:
    """What an operator can do about a database error: migrate, or fix the URL or the server."""
    from farm.db.migrate import current, head

    said = str(error.orig).strip().splitlines()[0] if str(error.orig).strip() else repr(error.orig)
    try:
        at = current(Settings.from_env().database_url)
    except DBAPIError:
        return f"cannot reach the database ({said}); check FARM_DATABASE_URL and the server"
    expected = head()
    if at != expected:
        schema = "has no farm schema" if at is None else f"is at revision {at}, not {expected}"
        return f"the database {schema}: run `farm db upgrade`"
    return f"the database refused: {said}"
