"""Exception types shared by ssogen's modules; the CLI maps ``exit_code`` to the process exit status."""


class SsogenError(Exception):
    """Base of every error ssogen reports to the user (message only, no traceback)."""

    exit_code = 1


class UsageError(SsogenError):
    """Bad settings or input: the user must change the command line or config."""

    exit_code = 2


class PublishError(SsogenError):
    """Publishing a dataset folder to the Hub failed."""


class WriteError(SsogenError):
    """Writing into a folder failed (no space, a quota, read-only, a file-size limit): the path and the cause."""
