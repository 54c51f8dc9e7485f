"""The one exception type for bad input: a sentence a user can act on."""


class InputError(ValueError):
    """A bad argument, file or image. The message names what was given and what is allowed.

    It is a `ValueError`, so API callers can catch either; the CLI prints the message alone and exits 2.
    """
