"""The ``compress`` command line: one click group, one module per command.

Commands are found lazily (``compress --help`` imports no TensorFlow): each module
``compress/cli/<name>.py`` defines ``command``, a ``click.Command`` that imports the
heavy libraries inside its body.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback
import warnings

import click

from compress import __version__
from compress.errors import (
    INTERRUPT,
    INTERRUPT_EXIT_CODE,
    INTERRUPT_WHAT,
    CompressError,
    Terminated,
)

# Commands that are not passes; every pass command comes from the registry
# (compress.passes), in its order, between inspect and run.
_FIRST, _LAST = ("inspect",), ("run", "launch", "demo")


def command_names() -> list[str]:
    """Every command, in ``--help`` order."""
    from compress import passes

    return list(_FIRST) + [p.name for p in passes.all_passes() if p.cli] + list(_LAST)


def training_command_names() -> list[str]:
    """Commands that train: they get --checkpoint-dir, --strategy and --keep-last-good."""
    from compress import passes

    return [p.name for p in passes.all_passes() if p.cli and p.trains] + ["run"]


class _Group(click.Group):
    """Loads command modules on demand; any failure is one line and exit 1 (130 on Ctrl-C,
    143 on SIGTERM)."""

    def list_commands(self, ctx):
        return [name for name in command_names() if self._load(name) is not None]

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name):
        if name not in command_names():
            return None
        try:
            module = importlib.import_module(f"compress.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"compress.cli.{name}":
                raise
            module = None
        if module is not None:
            command = module.command
        else:  # a pass without a module of its own: the generic model-to-model command
            from compress import passes
            from compress.cli.pass_command import pass_command

            spec = passes.find(name)
            if spec is None:
                return None
            command = pass_command(spec)
        if name in training_command_names() and \
                not any(p.name == "checkpoint_dir" for p in command.params):
            _add_training_options(command)
        return command

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug")) or os.environ.get("COMPRESS_DEBUG") == "1"
        INTERRUPT.pending = False
        previous = _handle_signals()
        try:
            with _printable_paths(), _known_warnings(debug):
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated)
            _exit_interrupted(ctx, exc)
        except (click.exceptions.ClickException, click.exceptions.Exit,
                click.exceptions.Abort):
            raise
        except CompressError as exc:
            if INTERRUPT.pending:  # it failed because it was being stopped: say so
                _exit_interrupted(ctx, exc)
            if debug:
                traceback.print_exc()
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - an unforeseen failure: one line, exit 1
            if INTERRUPT.pending:
                _exit_interrupted(ctx, exc)
            if debug:
                traceback.print_exc()
            command = ctx.invoked_subcommand or "COMMAND"
            click.echo(f"error: unexpected {type(exc).__name__}: "
                       f"{' '.join(str(exc).split())[:300]} (the input is untouched; "
                       f"'compress --debug {command} ...' shows the traceback)", err=True)
            ctx.exit(1)
        finally:
            INTERRUPT.pending = False  # handled here; later calls in this process start clean
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def _handle_signals() -> dict:
    """Install the CLI's handler for Ctrl-C and SIGTERM; return the handlers it replaced.

    Only where Python's defaults are in place (a test runner or an embedding program that
    set its own keeps it), and only in the main thread, where Python runs handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for signum, default in ((signal.SIGINT, signal.default_int_handler),
                            (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, INTERRUPT.handler)
    return previous


def _exit_interrupted(ctx, exc: BaseException) -> None:
    """One line and the signal's exit code: 130 for Ctrl-C, 143 for SIGTERM."""
    signum = INTERRUPT.signum or (signal.SIGTERM if isinstance(exc, Terminated)
                                  else signal.SIGINT)
    click.echo(f"error: {INTERRUPT_WHAT[signum]}; the input is untouched and no partial output "
               "was left", err=True)
    ctx.exit(INTERRUPT_EXIT_CODE[signum])


@contextlib.contextmanager
def _printable_paths():
    """Let stdout print any path the user gave, even one that is not valid UTF-8.

    Such a name reaches Python as a string with lone surrogates (PEP 383); printing
    ``wrote NAME`` to a strict UTF-8 stdout would fail after the output was written.
    ``surrogateescape`` writes the name's own bytes back, as ``ls`` does.
    """
    stream = sys.stdout
    errors = getattr(stream, "errors", None)
    if errors != "strict" or not hasattr(stream, "reconfigure"):
        yield
        return
    try:
        stream.reconfigure(errors="surrogateescape")
    except (ValueError, OSError):  # a stream that cannot change: leave it
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(errors=errors)


def _add_training_options(command: click.Command) -> None:
    """Give a training command --checkpoint-dir (resume), --strategy (tf.distribute) and
    --keep-last-good (where the last good weights go when a loss turns NaN)."""
    command.params.append(click.Option(
        ["--checkpoint-dir"], default=None, type=click.Path(readable=False),
        help="Back up training every epoch to this folder; run the same command again to "
             "resume after an interruption (Keras BackupAndRestore, written atomically)."))
    command.params.append(click.Option(
        ["--strategy"], type=click.Choice(["none", "mirrored", "multiworker"]), default="none",
        show_default=True,
        help="Distribute training with tf.distribute: mirrored = data-parallel over this "
             "machine's devices; multiworker = over the processes TF_CONFIG names (the "
             "chief writes; see 'compress launch' for local workers)."))
    command.params.append(click.Option(
        ["--keep-last-good"], default=None, metavar="FILE",
        type=click.Path(readable=False),
        help="If a loss turns NaN or infinite, save the model being trained as it was at "
             "the end of its last good epoch to FILE (.keras or .h5); the command still "
             "fails and writes no output."))
    callback = command.callback

    def run_with_training_options(*args, checkpoint_dir=None, strategy="none",
                                  keep_last_good=None, **kwargs):
        from compress import io
        from compress.cli.common import deferred_until_work

        if checkpoint_dir is not None and os.path.lexists(checkpoint_dir) and \
                not os.path.isdir(checkpoint_dir):
            raise CompressError(f"{checkpoint_dir}: --checkpoint-dir is a file, not a folder "
                                "(give a folder; it is created if missing)")
        if keep_last_good is not None:
            output = kwargs.get("output")
            if output and os.path.abspath(output) == os.path.abspath(keep_last_good):
                raise CompressError(f"{keep_last_good}: --keep-last-good must differ from "
                                    "the output path")
            inputs = [kwargs.get(k) for k in ("model", "student", "recipe")]
            io.check_output(keep_last_good, inputs=[i for i in inputs if i],
                            force=bool(kwargs.get("force")), suffixes=io.MODEL_SUFFIXES)

        def training_context():  # needs TensorFlow: entered once the command's checks passed
            from compress.training_context import TrainingContext

            # The command and its options are the backups' identity (a changed re-run is
            # refused, not resumed).
            return TrainingContext(checkpoint_dir=checkpoint_dir, keep_last_good=keep_last_good,
                                   strategy=strategy, force=bool(kwargs.get("force")),
                                   command=command.name, options=dict(kwargs))

        with contextlib.ExitStack() as worker:
            if strategy == "multiworker":  # TF_CONFIG checked now; other workers write nothing
                from compress.cli.launch import as_worker

                kwargs, keep_last_good = as_worker(worker, kwargs, keep_last_good)
            with deferred_until_work(training_context):
                return callback(*args, **kwargs)

    command.callback = run_with_training_options


#: Python warnings of the libraries that say nothing about the user's model or command
#: (``--debug`` shows them): Keras's softmax-over-one-position warning, raised by the one-
#: token probe inputs an attention model is traced and timed with; NumPy's notice on
#: Keras's ONNX bridge; TensorFlow's notice that tf.lite.Interpreter moves to LiteRT;
#: Keras's note that a file's optimizer state is not loaded (the toolkit never resumes it).
KNOWN_WARNINGS = (
    (UserWarning, r"You are using a softmax over axis"),
    (FutureWarning, r"In the future `np.object` will be defined"),
    (UserWarning, r"\s*Warning: tf.lite.Interpreter is deprecated"),
    # a file saved with its optimizer's state, loaded without compiling (never trained on)
    (UserWarning, r"Skipping variable loading for optimizer"),
    # weights no output depends on, left as they are (a backbone's untied LM head)
    (UserWarning, r"Gradients do not exist for variables"),
)


@contextlib.contextmanager
def _known_warnings(debug: bool):
    """Silence :data:`KNOWN_WARNINGS` for one command (all of them with ``--debug``)."""
    if debug:
        yield
        return
    with warnings.catch_warnings():
        for category, message in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="compress")
@click.option("--debug", is_flag=True, help="Show full tracebacks and TensorFlow logs.")
def main(debug: bool) -> None:
    """Make trained Keras models small and fast: prune, share, quantize, distill, export.

    Every command reads a model (.keras, .h5, or a SavedModel folder), never modifies it,
    writes its output atomically, refuses to overwrite without --force, and prints a
    before/after report (--json for machine-readable output).

    \b
    Examples:
      compress inspect model.h5 --data mnist5k
      compress export model.keras --format onnx -o model.onnx --data mnist5k
      compress demo
    """
    if debug:
        os.environ["COMPRESS_DEBUG"] = "1"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def run() -> None:  # pragma: no cover - console entry point alias
    sys.exit(main())


def entry() -> None:
    """The ``compress`` program (console script and ``python -m compress.cli``): ``main``,
    then, once a command has finished and said so, Ctrl-C and SIGTERM are ignored while
    the interpreter shuts down (TensorFlow's exit handlers take a moment): a signal then
    would turn a finished command, its output written and its report printed, into exit
    130 with nothing said. In-process callers (tests, programs embedding the CLI) call
    ``main`` and keep their handlers.
    """
    try:
        main(prog_name="compress")
    except SystemExit as done:
        if done.code in (0, None) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
