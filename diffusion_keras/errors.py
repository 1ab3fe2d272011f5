"""The exceptions the CLIs turn into a one-line message and exit code 2, and how messages count."""


class UsageError(ValueError):
    """Bad input a user can fix; the message says what was wrong and what to do."""


class NonFiniteSamples(UsageError):
    """A model sampled NaN or infinite values: its weights diverged."""


def counted(count, noun):
    """'1 image', '2 images': a count in a message."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
