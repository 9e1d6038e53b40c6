"""The one exception type users see: a one-line message that says what and where."""

import contextlib
import signal


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


class Terminated(KeyboardInterrupt):
    """A SIGTERM (``kill``, a job scheduler, a container stopping), handled like Ctrl-C.

    A ``KeyboardInterrupt`` so that every clean-up written for Ctrl-C (temporary files,
    half-written outputs, a recipe's report) runs for it too; the CLI tells the two apart
    by their exit codes, 130 for Ctrl-C and 143 (128 + 15) for SIGTERM.

    Example:

    >>> isinstance(Terminated(), KeyboardInterrupt), Terminated.exit_code
    (True, 143)
    """

    exit_code = 128 + signal.SIGTERM
    what = "terminated (SIGTERM)"


# What the CLI says and returns for each signal it handles.
INTERRUPT_EXIT_CODE = {signal.SIGINT: 128 + signal.SIGINT, signal.SIGTERM: Terminated.exit_code}
INTERRUPT_WHAT = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: Terminated.what}


class _Interrupt:
    """Remembers a Ctrl-C or SIGTERM so that it cannot be lost.

    Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and when that
    is a finaliser (TensorFlow runs many ``__del__`` methods) the exception is printed as
    "Exception ignored" and dropped: the run would go on and write its output as if the
    user had not pressed Ctrl-C. The CLI installs :meth:`handler` for SIGINT and SIGTERM;
    training and the atomic writers call :func:`raise_if_interrupted` at their checkpoints,
    so a swallowed interrupt is raised again at the next batch or before any output is
    renamed into place. Inside :func:`interruptions_held` the handler only remembers.
    """

    def __init__(self):
        self.signum = None
        self.held = 0

    @property
    def pending(self) -> bool:
        return self.signum is not None

    @pending.setter
    def pending(self, value: bool) -> None:
        if not value:
            self.signum = None
        elif self.signum is None:
            self.signum = signal.SIGINT

    def handler(self, signum, frame):
        self.signum = signum
        if not self.held:
            raise interruption(signum)


INTERRUPT = _Interrupt()


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception that stands for signal ``signum``: :class:`Terminated` for SIGTERM."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def raise_if_interrupted() -> None:
    """Raise the pending Ctrl-C (``KeyboardInterrupt``) or SIGTERM (:class:`Terminated`)
    that arrived under the CLI's handler, if any."""
    if INTERRUPT.pending:
        raise interruption(INTERRUPT.signum)


@contextlib.contextmanager
def interruptions_held():
    """Let a block finish before a Ctrl-C or SIGTERM caught by the CLI's handler acts.

    Writers run in it: an output being written (and the temporary files of the library
    writing it) is finished or removed, never left half-done by a signal that landed in
    the middle of a clean-up. The signal is raised as soon as the block ends.

    Example:

    >>> with interruptions_held():
    ...     pass  # a SIGTERM here waits for the end of the block
    """
    INTERRUPT.held += 1
    try:
        yield
    finally:
        INTERRUPT.held -= 1
    if not INTERRUPT.held:
        raise_if_interrupted()
