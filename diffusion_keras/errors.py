"""The one exception type the CLIs turn into a one-line message and exit code 2."""


class UsageError(ValueError):
    """Bad input a user can fix; the message says what was wrong and what to do."""


class NonFiniteSamples(UsageError):
    """A model sampled NaN or infinite values: its weights diverged."""
