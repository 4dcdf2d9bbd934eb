"""The one exception type for user-facing mistakes (bad input, unknown name, missing data).

The CLI prints these as a single clear line and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
    """A problem the user can fix: the message says what and where."""
