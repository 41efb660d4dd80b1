"""Errors shown to users: one line, no traceback, and an exit code."""

from __future__ import annotations

# Exit codes used by the CLI (documented in `condafuse --help`).
EXIT_OK = 0
EXIT_ERROR = 1  # the operation failed (message on stderr)
EXIT_USAGE = 2  # bad command line (argparse uses 2 as well)
EXIT_NOT_FOUND = 3  # the named environment (archive) does not exist
EXIT_EXISTS = 4  # the environment already exists / is in the way
EXIT_BUSY = 5  # refused because it is mounted / in use
EXIT_INTERRUPTED = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP arrived (a batch system stopping the job): clean up like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.code = 128 + signum


class CondafuseError(Exception):
    """A failure meant for the user. ``str(exc)`` is one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(" ".join(str(message).split("\n")))
        self.code = code
