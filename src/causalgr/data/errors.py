"""The one error type for bad input data: its message is a single line naming file, row and column."""


class DataError(ValueError):
    """Bad input data. `str(err)` is one line fit to show a user as is (the CLI does, exit code 2)."""
