"""The one exception type for mistakes a user can fix, and how the CLIs report them.

A `UserError` ends a command with exit status 2 and a single `error: ...` line
on stderr that names the file, key, row or column and says what to do. Anything
else is a bug in plaintune (or the environment) and exits 1 with a traceback.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, NoReturn, Sequence

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


class UserError(Exception):
    """A problem with the user's input: config, data file, checkpoint, model name."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a config, kept as data until it is printed: the key (dotted, '' for the
    config as a whole), what is wrong and how to fix it, and where the value came from (a file and
    line, the command line, a Python call)."""

    key: str
    message: str
    origin: str = ""

    def __str__(self) -> str:
        where = f"{self.origin}: " if self.origin else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"


class ConfigError(UserError):
    """Every problem with a config at once; the message is formatted from them, never parsed again."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        origins = {p.origin for p in self.problems}
        count = f"{len(self.problems)} problems: " if len(self.problems) > 1 else ""
        if len(origins) == 1 and len(self.problems) > 1 and self.problems[0].origin:
            body = "; ".join(str(Problem(p.key, p.message)) for p in self.problems)
            super().__init__(f"{self.problems[0].origin}: {count}{body}")
        else:
            super().__init__(count + "; ".join(map(str, self.problems)))


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


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


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
    except BrokenPipeError:
        # the reader went away (`python -m plaintune.config | head`): no traceback, and none at exit
        # either when Python flushes stdout again (the shell's status for SIGPIPE)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
