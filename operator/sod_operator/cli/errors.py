"""The one error type `sodctl` commands raise for bad input."""


class UsageError(Exception):
    """Bad input from the user: printed as a single line, exit code 2."""
