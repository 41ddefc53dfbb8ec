"""The one root of metalens's own errors.

An expected mistake (a bad value, a missing or corrupt file, an unreachable endpoint) raises a
subclass of `MetalensError` whose message names what was wrong, the value seen and what would be
accepted. The CLI prints such an error as one line and exits 2; anything else is a bug.
"""

from __future__ import annotations


class MetalensError(Exception):
    """Base class of every error metalens raises on purpose."""


class DataError(MetalensError, ValueError):
    """An input file or value is malformed (the message names `file:line` where there is one)."""


class DataTypeError(DataError, TypeError):
    """An input value of the wrong type (a string where a list was expected, a number where a string was)."""
