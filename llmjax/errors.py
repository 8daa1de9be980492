"""One exception type for bad user input: the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a config field, a flag, a file). Message is one line."""

    exit_code = 2
