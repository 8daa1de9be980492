"""One exception type for bad user input: the CLI prints it as one line and exits 2."""

import argparse


class UserError(Exception):
    """Bad input from the user (a config field, a flag, a file). Message is one line."""

    exit_code = 2


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one-line UserErrors (the top-level CLI prints and exits 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")
