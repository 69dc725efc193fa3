"""The one exception type for mistakes a user can fix, and how the CLIs report them.

A `UserError` ends a command with exit status 2 and a single `error: ...` line
on stderr that names the file, key, row or column and says what to do. Anything
else is a bug in plaintune (or the environment) and exits 1 with a traceback.
"""
from __future__ import annotations

import sys
import traceback
from typing import Callable

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input: config, data file, checkpoint, model name."""


def run_cli(body: Callable[[], int], debug: bool = False) -> int:
    """Run a command body and turn its outcome into an exit status.

    `UserError` -> 2 with one line; `KeyboardInterrupt` -> 130 (the trainer has
    already saved a resumable checkpoint by then); anything else -> 1 with a
    traceback, since that is a bug worth reporting.
    """
    try:
        return body()
    except UserError as err:
        if debug:
            traceback.print_exc()
        message = " ".join(str(err).split("\n"))
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
