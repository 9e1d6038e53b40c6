"""The one exception type users see: a one-line message that says what and where."""


class CompressError(Exception):
    """A user-facing failure: bad input, refused overwrite, a check that did not pass.

    The message is one line naming the file, option or field and what is wrong. The
    CLI prints it as ``error: <message>`` and exits with code 1 (usage errors are
    click's exit code 2). The Python API raises it as is.

    Example:

    >>> raise CompressError("model.h5: not a Keras model file")
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: model.h5: not a Keras model file
    """

    exit_code = 1

    def __init__(self, message: str):
        # Keep it to one line whatever the cause said.
        super().__init__(" ".join(str(message).split()))
