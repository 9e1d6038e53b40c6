"""Options and output shared by the CLI commands."""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys

import click

# What a command's options set up around its work and that needs TensorFlow (the training
# context of --checkpoint-dir, --strategy, --keep-last-good): it waits for start_work(),
# which each command calls once its cheap checks have passed, so that a refused command
# answers without importing TensorFlow (well under a second instead of 10 s or more).
_DEFERRED: contextvars.ContextVar = contextvars.ContextVar("compress_cli_deferred",
                                                           default=())

# Paths are click.Path(readable=False): click's own checks (readable, a file or a folder)
# fail with exit 2 and usage lines; the commands refuse such paths in one line, exit 1.
output_option = click.option("-o", "--output", "output", required=True,
                             type=click.Path(readable=False),
                             help="Output file. Refused if it exists, unless --force.")
force_option = click.option("--force", is_flag=True, help="Overwrite an existing output file.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout (progress goes to stderr).")
unsafe_option = click.option(
    "--unsafe", is_flag=True,
    help="Load models with Keras safe_mode off. This EXECUTES Python code stored in the file "
         "(Lambda layers): use only for files you trust.")
data_option = click.option(
    "--data", "data", default=None, metavar="NAME",
    help="Dataset: digits, mnist5k, animals, or npz:PATH (x_train, y_train, optional "
         "x_val/y_val/x_test/y_test).")
seed_option = click.option("--seed", default=0, show_default=True, type=int,
                           callback=lambda ctx, param, value: _check_seed(value),
                           help="Random seed (data split, initialisation, sampling).")


def _check_seed(value: int) -> int:
    """--seed is an unsigned 32-bit integer (NumPy's seeds); refuse others by name."""
    from compress.options import Option

    return Option("seed", int, 0, "", low=0, high=2**32 - 1).check(value, "--seed")


model_argument = click.argument("model", type=click.Path(readable=False))


def common_options(func):
    """--data, --seed, --unsafe, --json and --force, in that order."""
    for deco in reversed([data_option, seed_option, unsafe_option, json_option, force_option]):
        func = deco(func)
    return func


def verbose(as_json: bool) -> int | str:
    """Keras ``verbose`` for fits: the progress bar, unless stdout must stay pure JSON."""
    return 0 if as_json else "auto"


def emit(result: dict, as_json: bool, reports: list | None = None, title: str | None = None,
         lines: list[str] = ()) -> None:
    """Print ``result`` as JSON, or the reports as a table followed by ``lines``."""
    if as_json:
        click.echo(json.dumps(result, indent=2, default=_jsonable))
        return
    from rich.console import Console

    from compress.report import print_table

    console = Console()
    if reports:
        print_table(reports, title=title, console=console)
    for line in lines:
        console.print(line)


def _jsonable(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def progress_to_stderr():
    """A rich Console on stderr for progress bars (keeps stdout clean for --json).

    Lines are never wrapped: a progress line naming a long path stays one line.
    """
    from rich.console import Console

    return Console(file=sys.stderr, soft_wrap=True)


@contextlib.contextmanager
def deferred_until_work(enter):
    """Within the block, :func:`start_work` enters the context manager ``enter()`` returns;
    it stays entered until the block ends.

    Example:

    >>> with deferred_until_work(lambda: TrainingContext(checkpoint_dir="ck")):  # doctest: +SKIP
    ...     command(...)  # its checks run first; start_work() then enters the context
    """
    with contextlib.ExitStack() as stack:
        token = _DEFERRED.set((*_DEFERRED.get(), lambda: stack.enter_context(enter())))
        try:
            yield
        finally:
            _DEFERRED.reset(token)


def start_work() -> None:
    """Every check that needs no TensorFlow has passed: import it, then enter what the
    command's options deferred (:func:`deferred_until_work`). Call it once, before loading
    or building any model."""
    from compress.quiet import import_tensorflow

    import_tensorflow()
    waiting = _DEFERRED.get()
    _DEFERRED.set(())
    for enter in waiting:
        enter()


def refuse_missing(path: str) -> None:
    """Refuse an input path that names nothing, or that this user may not read, before
    TensorFlow is imported.

    Only the cheapest cases: everything else about the file (a link, its type, its
    contents) is :func:`compress.io.load_model`'s to judge, with the same words.
    """
    import os

    from compress.errors import CompressError

    if not os.path.lexists(path):
        raise CompressError(f"{path}: no such file")
    if os.path.exists(path) and not os.access(path, os.R_OK):
        raise CompressError(f"{path}: permission denied (this user cannot read it)")


def load_inputs(model_path: str, data: str | None, seed: int, unsafe: bool,
                single_io: bool = True):
    """Read the data, then seed, load the model (safe mode unless --unsafe) and fit the
    data to it.

    The data is read and checked first, before TensorFlow is imported (:func:`start_work`):
    a bad ``--data`` is refused in well under a second. With ``single_io`` (every command
    but ``inspect``), a model with several inputs or outputs is refused in one line before
    any work.
    """
    from compress import data as data_mod

    refuse_missing(model_path)
    raw = data_mod.load_data(data, seed) if data else None
    start_work()
    from compress import io, training

    training.set_seed(seed)
    model = io.load_model(model_path, unsafe=unsafe)
    if single_io and (len(model.inputs) != 1 or len(model.outputs) != 1):
        from compress.errors import CompressError

        raise CompressError(
            f"{model_path}: model '{model.name}' has {len(model.inputs)} input(s) and "
            f"{len(model.outputs)} output(s); this command supports single-input, "
            "single-output models (compress inspect reports any model)")
    dataset = data_mod.prepare(model, raw) if raw is not None else None
    return model, dataset


def run_model_pass(model_path: str, output: str, data: str | None, seed: int, unsafe: bool,
                   force: bool, as_json: bool, apply, title: str,
                   after_name: str = "after") -> dict:
    """The flow every model-to-model command shares.

    Checks the output path first (nothing is computed for a refused output), loads the
    model and data, measures ``before``, runs ``apply(model, dataset) -> (new_model, info)``,
    saves atomically, measures ``after`` on the saved file, and prints the table or JSON.
    Whether ``--data`` is needed is the pass's own rule (``compress.passes``), checked
    by the command before it calls this.
    """
    from compress import io
    from compress.report import model_report

    io.check_output(output, inputs=[model_path], force=force, suffixes=io.MODEL_SUFFIXES)
    model, dataset = load_inputs(model_path, data, seed, unsafe)
    before = model_report(model, dataset, name="before",
                          path=None if _is_dir(model_path) else model_path)
    new_model, info = apply(model, dataset)
    io.save_model(new_model, output, inputs=[model_path], force=force)
    after = model_report(new_model, dataset, name=after_name, path=output)
    result = {"input": model_path, "output": output, "before": before, "after": after,
              "pass": info}
    lines = [f"wrote {output}"] + [f"  {k}: {v}" for k, v in info.items()
                                   if not isinstance(v, (list, dict))]
    emit(result, as_json, reports=[before, after], title=title, lines=lines)
    return result


def _is_dir(path: str) -> bool:
    import os

    return os.path.isdir(path)
