"""The one exception type for errors a user can cause (bad config, bad data).

Its message is one line that names the offending file or config key and says what to do,
so nobody needs a traceback to understand it. `bioflow.cli` and the workflow scripts print
it and exit non-zero.
"""


class BioflowError(Exception):
    """A user error: bad config or bad input data."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        if self.problems:
            message = f"{message}: " + " | ".join(self.problems)
        super().__init__(message)
