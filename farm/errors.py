"""Errors the farm raises on purpose.

Everything that comes from outside (a story file, a photo, a request) and is wrong raises
`InputError` with a message meant for the person who sent it: the CLI prints it on one line and
the API answers it with a 4xx. Anything else escaping is a bug and is reported as one.
"""


class FarmError(Exception):
    """Base of the farm's own errors."""


class InputError(FarmError, ValueError):
    """Bad input from outside; the message names the field, the value and the fix."""


class ModelNotFoundError(FarmError, FileNotFoundError):
    """A preset's weights are not on this machine; the message says what to fetch and where."""
