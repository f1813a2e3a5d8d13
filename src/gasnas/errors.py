"""One error type for bad user input: the CLI prints its message on one line and exits 2."""


class GasnasError(Exception):
    """A user-facing error: bad config, bad file, missing data. Never a bug in gasnas."""

    exit_code = 2
