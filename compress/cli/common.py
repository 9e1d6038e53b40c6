"""Options and output shared by the CLI commands."""

from __future__ import annotations

import contextlib
import contextvars
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
_json_flag = click.option("--json", "as_json", is_flag=True,
                          help="Print the result as JSON on stdout (progress goes to stderr).")


def _set_progress(ctx, param, quiet):
    from compress import progress

    progress.set_on(progress.default_for_cli(quiet=quiet), quiet=quiet)
    return quiet


_quiet_flag = click.option(
    "--quiet", "-q", is_flag=True, expose_value=False, callback=_set_progress,
    help="No progress on stderr (errors still print). Progress is on when stderr is a "
         "terminal (one line redrawn per phase, with a bar and ETAs) or with "
         "COMPRESS_PROGRESS=1 (plain lines: a phase's start, each epoch, its end), with "
         "the loss, sparsity, the phase's ETA and the overall ETA.")


def json_option(func):
    """--json (the result as JSON on stdout) and --quiet (no progress on stderr)."""
    return _json_flag(_quiet_flag(func))
_unsafe_flag = click.option(
    "--unsafe", is_flag=True,
    help="Load models with Keras safe_mode off. This EXECUTES Python code stored in the file "
         "(Lambda layers): use only for files you trust.")


def _keep_imports(ctx, param, value):
    if value:
        ctx.meta.setdefault("compress_imports", []).extend(value)
    return value


_import_option = click.option(
    "--import", "imports", multiple=True, expose_value=False, metavar="MODULE",
    callback=_keep_imports,
    help="Import MODULE (a dotted module name or a .py file; repeatable) before loading, "
         "so the custom layers it registers load. This RUNS that module's code.")


def _set_provider(ctx, param, value):
    from compress.runtime import set_provider

    return set_provider(value)  # refused in one line, before any work, if not installed


provider_option = click.option(
    "--provider", type=click.Choice(["cpu", "cuda", "tensorrt"]), default="cpu",
    show_default=True, expose_value=False, callback=_set_provider,
    help="onnxruntime execution provider that verifies and times ONNX artifacts: cuda and "
         "tensorrt need the gpu extra (onnxruntime-gpu) and an NVIDIA GPU.")


def _keep_input_shape(ctx, param, value):
    if value:
        from compress.io import parse_input_shape

        ctx.meta["compress_input_shape"] = parse_input_shape(value)
    return value


_input_shape_option = click.option(
    "--input-shape", "input_shape", default=None, expose_value=False, metavar="D1,D2,...",
    callback=_keep_input_shape,
    help="The shape of one input sample, without the batch dimension, comma-separated "
         "(e.g. --input-shape 28,28,1). Gives a subclassed model (which has no input "
         "signature) its input: it is wrapped into a functional model, keras.Input(shape) "
         "then the model. Default: the shape of the --data samples. A shape that "
         "contradicts the model's is refused.")


def unsafe_option(func):
    """--unsafe and --import MODULE: the two ways a user chooses to run code; and
    --input-shape, how a loaded subclassed model gets its input signature."""
    return _unsafe_flag(_import_option(_input_shape_option(func)))


def input_shape() -> tuple | None:
    """``--input-shape`` as a tuple of ints, or None."""
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("compress_input_shape") if ctx is not None else None
_data_name_option = click.option(
    "--data", "data", default=None, metavar="NAME|DIR|FILE",
    help="Data: digits, mnist5k, animals; npz:PATH (x_train, optional y_train, "
         "x_val/y_val/x_test/y_test; or x, y); PATH.npy (inputs only); PATH.csv (a header "
         "row, one row per sample; --label-column names the labels); or an image folder DIR "
         "(class sub-folders = labelled, flat = unlabelled), resized to the model's input.")


def _keep_data_setting(ctx, param, value):
    if value is not None:
        ctx.meta.setdefault("compress_data", {})[param.name] = value
    return value


_data_settings_options = [
    click.option("--preprocess", default=None, expose_value=False, metavar="NAME",
                 callback=_keep_data_setting,
                 help="Image folders: pixel preprocessing: scale01 (default, [0, 1]; "
                      "raw for a model that rescales pixels itself), tf "
                      "([-1, 1]), caffe, torch, raw, or a keras.applications family "
                      "(mobilenet_v2, resnet50, efficientnet, ...)."),
    click.option("--val-data", default=None, expose_value=False, metavar="DIR",
                 callback=_keep_data_setting,
                 help="Image folders: a folder of validation images (same layout)."),
    click.option("--val-split", default=None, type=float, expose_value=False,
                 callback=_keep_data_setting,
                 help="Image folders: fraction of the images held out for validation "
                      "(default 0.1)."),
    click.option("--label-column", default=None, expose_value=False, metavar="NAME",
                 callback=_keep_data_setting,
                 help="CSV files: the column of labels (class numbers) or regression "
                      "targets; the other columns are the inputs, matched to the model's "
                      "inputs by name or, for one input, its features in file order. "
                      "Without it the rows are unlabelled."),
]


def data_option(func):
    """--data, the image-folder settings --preprocess, --val-data, --val-split, and the CSV
    setting --label-column."""
    for deco in reversed([_data_name_option, *_data_settings_options]):
        func = deco(func)
    return func


def data_settings() -> dict:
    """The data settings given on the command line (``preprocess``, ``val_data``,
    ``val_split``, ``label_column``), as :func:`compress.data.load_data` keywords."""
    ctx = click.get_current_context(silent=True)
    return dict(ctx.meta.get("compress_data", {})) if ctx is not None else {}


def read_data(data: str | None, seed: int):
    """``--data`` read and checked (no TensorFlow), with its settings; None without it.

    Its notes (skipped image files) go to stderr, one line each.
    """
    from compress import data as data_mod

    settings = data_settings()
    if not data:
        if settings:
            from compress.errors import CompressError

            flag = "--" + next(iter(settings)).replace("_", "-")
            what = "a CSV file; give --data PATH.csv" if flag == "--label-column" else \
                "an image folder; give --data DIR"
            raise CompressError(f"{flag} applies to --data ({what})")
        return None
    raw = data_mod.load_data(data, seed, **settings)
    for note in getattr(raw, "notes", []):
        click.echo(note, err=True)
    return raw
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
    """Keras ``verbose`` for fits: none with ``--json`` (stdout stays pure JSON) or
    ``--quiet``; none either where :mod:`compress.progress` shows the fit on stderr
    instead (progress on); else Keras's own output: its bar in a terminal, one plain line
    per epoch when stdout is piped (Keras's ``"auto"`` would write the bar's colour codes
    and carriage returns into the log), and those lines on stderr: stdout holds the
    report alone (``compress prune ... > report.txt``)."""
    from compress import progress

    if as_json or progress.is_quiet():
        return 0
    if progress.is_on():
        return 0
    if progress.isatty(sys.stdout):
        return "auto"
    progress.keras_lines_to_stderr()
    return 2


def emit(result: dict, as_json: bool, reports: list | None = None, title: str | None = None,
         lines: list[str] = ()) -> None:
    """Print ``result`` as JSON, or the reports as a table followed by ``lines``."""
    if as_json:
        from compress.report import finite_json

        click.echo(finite_json(result))
        return
    from rich.console import Console

    from compress.report import print_table

    console = Console()
    if reports:
        print_table(reports, title=title, console=console)
    for line in lines:
        console.print(line)


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
    from compress import progress
    from compress.quiet import import_tensorflow

    progress.say("starting TensorFlow")
    import_tensorflow()
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("compress_imports"):  # --import: before any load
        from compress.io import import_modules

        import_modules(ctx.meta["compress_imports"])
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
                single_io: bool = True, echo_note: bool = True):
    """Read the data, then seed, load the model (safe mode unless --unsafe) and fit the
    data to it. With ``echo_note=False`` the command says itself what became of a wrapped
    subclassed model (the note is still in ``ctx.meta["compress_input_note"]``).

    The data is read and checked first, before TensorFlow is imported (:func:`start_work`):
    a bad ``--data`` is refused in well under a second. Models with several inputs or
    outputs are taken by every command (``single_io`` is kept for callers and ignored). A
    subclassed model is wrapped into a functional one with the ``--input-shape`` or the
    data's sample shape (:func:`compress.io.with_input_signature`); a note says so.
    """
    from compress import data as data_mod

    refuse_missing(model_path)
    raw = read_data(data, seed)
    from compress import io

    io.check_model_file(model_path)  # a corrupt file is refused before TensorFlow loads
    from compress import progress

    with progress.phase("loading", detail=model_path, fixed=True):  # the first line
        start_work()
        from compress import training

        training.set_seed(seed)
        model = io.load_model(model_path, unsafe=unsafe)
    sample = _sample_shape(raw)
    model, note = io.with_input_signature(model, input_shape(), sample, where=model_path)
    if note:
        if echo_note:
            click.echo(f"note: {note}", err=True)
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.meta["compress_input_note"] = note
    dataset = data_mod.prepare(model, raw) if raw is not None else None
    said = list(getattr(raw, "notes", None) or [])
    for note in getattr(dataset, "notes", None) or []:  # what fitting to the model found
        if note not in said:
            click.echo(note, err=True)
    return model, dataset


def _sample_shape(raw):
    """The shape of one sample of in-memory data with one input (None otherwise)."""
    from compress.data import Columns

    try:
        x = getattr(raw, "x_train", None)
        if isinstance(x, Columns):  # a CSV table: its columns side by side
            return raw.sample_shape
        return tuple(x.shape[1:]) if hasattr(x, "shape") else None
    except Exception:  # noqa: BLE001 - a stream: no shape without reading it
        return None


def _names(value) -> bool:
    """A non-empty list of names (layers left alone): printed, not only in --json."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _plain(value) -> str:
    return ", ".join(value) if _names(value) else str(value)


def run_model_pass(model_path: str, output: str, data: str | None, seed: int, unsafe: bool,
                   force: bool, as_json: bool, apply, title: str,
                   after_name: str = "after", task_options: dict | None = None) -> dict:
    """The flow every model-to-model command shares.

    Checks the output path first (nothing is computed for a refused output), loads the
    model and data, measures ``before``, runs ``apply(model, dataset) -> (new_model, info)``,
    saves atomically, measures ``after`` on the saved file, and prints the table or JSON.
    Whether ``--data`` is needed is the pass's own rule (``compress.passes``), checked
    by the command before it calls this. Both reports score the model's own task
    (:func:`compress.task.resolve`, with ``task_options``' ``loss``/``metrics``), so
    they compare like with like: accuracy for a classifier, MSE for a regression.
    """
    from compress import io
    from compress.report import few_samples_note, model_report, paired_latency_ms

    io.check_output(output, inputs=[model_path], force=force, suffixes=io.MODEL_SUFFIXES)
    model, dataset = load_inputs(model_path, data, seed, unsafe)
    task = None
    if dataset is not None:
        from compress.task import resolve, sample_targets

        task = resolve(model, (task_options or {}).get("loss"),
                       (task_options or {}).get("metrics"), y=sample_targets(dataset, "test"))
    from compress import progress

    with progress.phase("measuring", detail=model_path):
        # Sizes of the model saved as the output will be (no optimizer state, the output's
        # format): the input file's own Adam slots (two float copies of every weight)
        # credited compression with 0.40x at sparsity 0.
        saved_as = ".h5" if str(output).endswith(".h5") else ".keras"
        # latency: timed with the output's, in turns (paired_latency_ms), at the end
        before = model_report(model, dataset, name="before", task=task, reference=model,
                              saved_as=saved_as, latency=False)
    input_note = _input_size_note(model_path, before, saved_as)
    progress.expect("saving", 2)  # saved, then measured like the input
    new_model, info = apply(model, dataset)
    with progress.phase("saving", detail=output):
        io.save_model(new_model, output, inputs=[model_path], force=force)
        with io.undone_on_failure(output):
            after = model_report(new_model, dataset, name=after_name, path=output, task=task,
                                 reference=model, latency=False)
            # in alternating rounds: load from other work on the machine falls on both
            before["latency_ms"], after["latency_ms"] = paired_latency_ms(model, new_model)
    result = {"input": model_path, "output": output, "before": before, "after": after,
              "pass": info}
    lines = [f"wrote {output}"] + [f"  {k}: {_plain(v)}" for k, v in info.items()
                                   if not isinstance(v, (list, dict)) or _names(v)]
    if (info.get("bn_recalibrate") or {}).get("layers"):
        lines.append(f"  bn_recalibrate: {recalibration_line(info['bn_recalibrate'])}")
    if task is not None and "task" not in info:
        lines.append(f"  task: {task.describe()}")
    if input_note:
        result["input_size_note"] = input_note
        lines.append(f"  note: {input_note}")
    if few := few_samples_note(after):  # a small image folder's tenth: how coarse scores are
        lines.append(f"  note: {few}")
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("compress_input_note"):  # a wrapped subclassed model
        result["input_note"] = ctx.meta["compress_input_note"]
        lines.append(f"  note: {result['input_note']}")
    emit(result, as_json, reports=[before, after], title=title, lines=lines)
    return result


def _input_size_note(model_path, before: dict, saved_as: str) -> str | None:
    """A line when the input file's size differs by more than 5% from the model saved as
    the output is (``before``'s sizes): its optimizer state, or another format."""
    import os

    if _is_dir(model_path) or not os.path.isfile(model_path):
        return None
    size = os.path.getsize(model_path)
    if abs(size - before["file_bytes"]) <= 0.05 * before["file_bytes"]:
        return None
    return (f"the input file is {size / 1024:,.1f} KB and the model saved as the output is "
            f"(without optimizer state, {saved_as}) {before['file_bytes'] / 1024:,.1f} KB; "
            "the sizes compare the latter, so the change is the compression's own")


def recalibration_line(out: dict) -> str:
    """``info["bn_recalibrate"]`` in words: a change of the score that comes from the
    re-estimated BatchNorm statistics, not from the pass, must be visible.

    >>> recalibration_line({"layers": 6, "samples": 1024, "val_before": {"accuracy": 0.5625},
    ...                     "val_after": {"accuracy": 0.9722}})
    'BatchNorm statistics of 6 layers re-estimated on 1024 training samples (validation accuracy 56.25% -> 97.22% from that alone)'
    """
    text = (f"BatchNorm statistics of {out['layers']} layer{'s' if out['layers'] != 1 else ''}"
            f" re-estimated on {out['samples']} training samples")
    before, after = out.get("val_before") or {}, out.get("val_after") or {}
    key = next((k for k in before if k in after), None)
    if key is None:
        return text

    def shown(value):
        return f"{value:.2%}" if key == "accuracy" or key.endswith(" accuracy") \
            else f"{value:.4g}"
    if out.get("reverted"):
        return (f"{text}: validation {key} {shown(before[key])} -> {shown(after[key])}, "
                "worse, so the pruned model keeps the statistics it had")
    return (f"{text} (validation {key} {shown(before[key])} -> {shown(after[key])} "
            "from that alone)")


def _is_dir(path: str) -> bool:
    import os

    return os.path.isdir(path)
