"""Bad input data: a `CausalgrError` whose one line names the file, row and column."""

from causalgr.errors import CausalgrError


class DataError(CausalgrError):
    """Bad input data. `str(err)` is one line fit to show a user as is (the CLI does, exit code 2)."""
