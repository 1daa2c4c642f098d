"""Errors that shb reports to users. Each message says what is wrong, where, and how to fix it."""


class ShbError(Exception):
    """Base class for errors shown to the user without a traceback."""

    exit_code = 1


class UsageError(ShbError):
    """Bad input from the user (suite, flags, head names): exit code 2."""

    exit_code = 2


class SuiteError(UsageError):
    """A suite failed validation; ``problems`` lists every problem as "pointer: message"."""

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(f"{self.path}: {len(self.problems)} problem(s)\n{lines}")


class ModelNotFound(UsageError):
    """Model weights could not be found; the message names the model, where shb looked and how to supply it."""


class DatabaseBusy(ShbError):
    """Another shb process holds the database."""
