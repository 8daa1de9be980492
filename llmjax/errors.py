"""The exceptions the CLI turns into one line and an exit code: bad user input (2), a run that
failed on its own terms (1)."""

import argparse


class UserError(Exception):
    """Bad input from the user (a config field, a flag, a file). Message is one line."""

    exit_code = 2


class RunFailed(RuntimeError):
    """A run that started and failed on its own terms (e.g. its loss diverged). One line."""

    exit_code = 1


class ArgParser(argparse.ArgumentParser):
    """argparse whose errors are one-line UserErrors (the top-level CLI prints and exits 2)."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(f"{self.prog}: {message}")
