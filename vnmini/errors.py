"""The one error type users see.

Every bad input (missing or corrupt file, wrong format, bad flag value, vocab
mismatch...) raises :class:`VnminiError` with a single line that names the file
or flag and says what to do. The CLI turns it into that line on stderr and exit
code 2; Python users can catch it.
"""

from __future__ import annotations


class VnminiError(Exception):
    """A user-facing error: one line, names the file or flag and the fix."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller passed.
        super().__init__(" ".join(str(message).split()))
