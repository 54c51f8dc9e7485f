"""The two exception types a user sees as one sentence: bad input, and a training run that had to stop."""


class InputError(ValueError):
    """A bad argument, file or image. The message names what was given and what is allowed.

    It is a `ValueError`, so API callers can catch either; the CLI prints the message alone and exits 2.
    """


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. the loss became NaN). The message says what was kept on disk; exit 1."""
