"""The one exception type for bad user input.

The command line turns a :class:`BadInput` into a single ``error: ...`` line and a
non-zero exit, so every message must name the file (and line) and say what to do.
"""


class BadInput(Exception):
    """Input the user can fix: a missing or corrupt file, a malformed annotation row."""
