"""The one exception type for mistakes a user can fix, and how the CLIs report them.

A `UserError` ends a command with exit status 2 and a single `error: ...` line
on stderr that names the file, key, row or column and says what to do. Anything
else is a bug in plaintune (or the environment) and exits 1 with a traceback.
"""
from __future__ import annotations

import argparse
import signal
import sys
import traceback
from typing import Callable, NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input: config, data file, checkpoint, model name."""


class Interrupted(KeyboardInterrupt):
    """Training stopped on a signal (Ctrl-C's SIGINT, or SIGTERM from Colab, SLURM, Kubernetes).

    A KeyboardInterrupt, so code that handles Ctrl-C handles both; the exit
    status is the shell's 128 + signal number (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported like every other user error: one `error:` line
    (naming --help), exit status 2."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run_cli(body: Callable[[], int], debug: bool = False) -> int:
    """Run a command body and turn its outcome into an exit status.

    `UserError` -> 2 with one line; `KeyboardInterrupt` -> 130, or 128 + the
    signal number for `Interrupted` (the trainer has already saved a resumable
    checkpoint by then); anything else -> 1 with a traceback, since that is a
    bug worth reporting.
    """
    try:
        return body()
    except UserError as err:
        if debug:
            traceback.print_exc()
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        print("interrupted", file=sys.stderr)
        return err.exit_status if isinstance(err, Interrupted) else EXIT_INTERRUPTED
