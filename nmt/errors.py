"""The exception types for mistakes a user can make (the CLI prints each as one line), and what
to do with stdout once writing to it failed."""

import os
import sys


class NmtError(Exception):
    """A user-caused error: bad path, bad config, corrupt input. Printed without a traceback."""


class UsageError(NmtError):
    """A command line that does not fit together (flags that exclude each other, a value out of
    range): exit status 2, as for any other usage error."""


def drop_stdout() -> None:
    """Point stdout at /dev/null after it failed (a closed pipe, a full disk), so that the flush at
    exit does not fail again after the one error line."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not a real file (a test's capture)
        return
    os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
