"""The two exception types the rest of the package relies on: a user's mistake and a candidate's failure.

:class:`UserError` is a mistake a user can fix. Every user-facing error names *where* (a file, a command-line
flag or a spec string), *which field* and *what was expected*, so the CLI can print it on one line and exit
with status 2 instead of showing a traceback. :class:`CandidateError` is one candidate's own failure, which
the search records and survives; every other exception is a bug and stops it.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class UserError(Exception):
    """A bad input: ``source`` (file or flag), ``field`` and what was expected instead."""

    def __init__(self, source: str, field: str, expected: str) -> None:
        self.source = str(source)
        self.field = field
        self.expected = expected
        where = f"{self.source}: " if self.source else ""
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}{what}{expected}")


class CandidateError(RuntimeError):
    """One candidate's own failure (NaN loss, out of memory, a conversion the converter refused).

    The reason is the message. The search records such a trial as failed and goes on; any other exception
    is a bug and stops the worker.
    """


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """A ' (did you mean 'x'?)' suffix for an unknown name, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
