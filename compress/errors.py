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


class _Interrupt:
    """Remembers a Ctrl-C so that it cannot be lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and when that
    is a finaliser (TensorFlow runs many ``__del__`` methods) the exception is printed as
    "Exception ignored" and dropped: the run would go on and write its output as if the
    user had not pressed Ctrl-C. The CLI installs :meth:`handler` for SIGINT; training and
    the atomic writers call :func:`raise_if_interrupted` at their checkpoints, so a swallowed
    interrupt is raised again at the next batch or before any output is renamed into place.
    """

    def __init__(self):
        self.pending = False

    def handler(self, signum, frame):
        self.pending = True
        raise KeyboardInterrupt


INTERRUPT = _Interrupt()


def raise_if_interrupted() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived under the CLI's handler."""
    if INTERRUPT.pending:
        raise KeyboardInterrupt
