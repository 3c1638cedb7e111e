"""The one root of every error a user can fix.

Each user-facing exception in the package derives from :class:`RobustarError`, so an entry
point catches one type and prints one line (``str(err)``) with ``err.exit_code``; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class RobustarError(Exception):
    """An error the user can fix: the message says what is wrong and what to do."""

    exit_code: int = 2
