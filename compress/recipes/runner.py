"""Running a recipe: the model, then each step's pass, with a report of every step.

Every step is a registered pass (:mod:`compress.passes`) run the same way: the pass gets
the current model (or the baseline, with ``from: baseline``), the data and its options;
a model result is saved as ``stepN-KIND.keras``, an artifact's bytes as
``stepN-KIND.SUFFIX``; each is measured before and after. The runner is the only place
that writes, and it writes only files of its own names.

Example:

>>> result = run_recipe("recipes/han2015-lenet300.yaml", output="out/han",
...                     overrides=["steps[0].prune.sparsity=0.95"])     # doctest: +SKIP
>>> result["steps"][-1]["after"]["accuracy"]                            # doctest: +SKIP
0.97
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import time
import traceback
from pathlib import Path

from compress import passes
from compress.errors import CompressError, Terminated
from compress.quiet import quiet_output
from compress.recipes.checks import STEP_EXTRAS, load_recipe, path_hint

# The files a run writes; --force replaces these and nothing else in the folder.
_OWN_FILE = re.compile(r"(step\d+-[a-z0-9_-]+\.(keras|h5|tflite|onnx)|report\.(json|md)|"
                       r"report-accuracy-size\.png|report-sparsity\.png)")


def run_recipe(source, output: str | os.PathLike | None = None, overrides: list[str] = (),
               force: bool = False, verbose: int | str = 0, progress=None,
               quick: bool = False, unsafe: bool = False, start=None) -> dict:
    """Run a recipe; write artifacts, ``report.json``, ``report.md`` and plots to ``output``.

    Args:
        source: a recipe file path, YAML already parsed into a dict.
        output: the output folder (default: the recipe's ``output``, else ``recipe-out``).
        overrides: ``PATH=VALUE`` strings, as ``compress run --set``.
        force: bool, default False. Reuse a non-empty output folder: the files this run
            writes are replaced, nothing else in it is touched.
        quick: bool, default False. Run the recipe's reduced ``quick`` form.
        unsafe: bool, default False. The user's ``--unsafe``: load model files with Keras
            safe mode off (a recipe's own ``unsafe: true`` is refused without it).
        verbose: Keras ``verbose`` for training steps.
        progress: optional callable ``progress(message)`` for step announcements.
        start: optional callable, called once the recipe and the output folder have passed
            their checks, to import TensorFlow (default
            :func:`compress.quiet.import_tensorflow`; the CLI's also enters its training
            context): a refused recipe never waits for TensorFlow.

    Returns:
        The report dict (also written to ``output/report.json``). A step that fails
        leaves the finished steps' artifacts and a report saying where and why, then
        raises :class:`CompressError`.
    """
    with quiet_output():  # checking callbacks imports Keras: keep TensorFlow's chatter off
        recipe = load_recipe(source, overrides, quick=quick, unsafe=unsafe)
    out = Path(output or recipe.get("output") or "recipe-out")
    inputs = input_files(recipe)
    _check_output_dir(out, force, inputs)
    try:  # NumPy only: a bad data file is refused before TensorFlow
        raw = _read_data(recipe)
    except CompressError as exc:
        raise path_hint(exc, recipe, source) from None
    say = progress or (lambda msg: None)
    if start is None:
        from compress.quiet import import_tensorflow as start
    start()
    from compress import io, training
    from compress.training_context import current_context

    _guard_last_good(current_context(), inputs)

    io.import_modules(recipe.get("import", []))  # allowed only with --unsafe (checks.py)
    from compress.report import model_report

    # A model file that cannot be loaded (corrupt, or code refused in safe mode) or does
    # not fit the data is refused like every command's input: before the output folder
    # is created or cleaned, so a refused recipe writes nothing.
    say(f"loading {recipe['model']}")
    loaded, dataset = _read_model_file(recipe, raw)
    _prepare_output_dir(out, force, inputs)

    seed = recipe["seed"]
    training.set_seed(seed)
    result = {"recipe": recipe.get("name", str(source) if not isinstance(source, dict)
                                   else "recipe"),
              "seed": seed, "data": recipe.get("data"), "model": recipe["model"],
              "output": str(out), "status": "running", "steps": []}
    started = time.perf_counter()
    said = []

    def data_notes(*sources):
        # what reading and fitting the data found (skipped files, a class folder missing,
        # pixels scaled for the model, one-hot labels): said once, kept in the report
        for found in sources:
            for note in getattr(found, "notes", None) or []:
                if note not in said:
                    said.append(note)
                    say(note)
        if said:
            result["data_notes"] = list(said)

    data_notes(raw, dataset)  # before any training: a warning here may stop the run
    try:
        baseline, dataset = _initial_model(recipe, raw, loaded, dataset, verbose)
        data_notes(dataset)
        base = model_report(baseline, dataset, name="baseline")
        base_path = out / "step0-baseline.keras"
        io.save_model(baseline, base_path, force=True, inputs=inputs)
        result["baseline"] = {**base, "artifact": str(base_path)}
        current = baseline
        for i, step in enumerate(recipe["steps"]):
            kind, opts = next(iter(step.items()))
            where = f"steps[{i}].{kind}"
            say(where)
            t0 = time.perf_counter()
            source_model = baseline if opts.get("from") == "baseline" else current
            before = model_report(source_model, dataset, name=f"before {kind}", latency=False)
            try:
                new, info, artifact, after = _run_step(kind, opts, source_model, dataset,
                                                       out / f"step{i + 1}-{kind}", recipe,
                                                       verbose, inputs)
            except CompressError as exc:
                raise CompressError(f"{where}: {exc}") from exc
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise CompressError(f"{where}: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:300]}") from exc
            if new is not None:
                current = new
            if isinstance(info, dict) and info.get("verified") is False:
                # an artifact that disagrees with its float model: said as the standalone
                # command says it, in the run's output and at the top of its report
                warning = (f"{where}: the artifact disagrees with its float model "
                           f"({info.get('agreement', 'not verified')})")
                result.setdefault("warnings", []).append(warning)
            result["steps"].append({"step": where, "kind": kind, "options": _jsonable(opts),
                                    "info": info, "artifact": artifact, "before": before,
                                    "after": after, "seconds": time.perf_counter() - t0})
        result["status"] = "finished"
    except CompressError as exc:
        result["status"] = "failed"
        result["error"] = str(exc)
        _write_reports(out, result, time.perf_counter() - started)
        raise
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated)
        result["status"] = "interrupted"
        result["error"] = ("terminated (SIGTERM)" if isinstance(exc, Terminated)
                           else "interrupted by the user")
        _write_reports(out, result, time.perf_counter() - started)
        raise
    _write_reports(out, result, time.perf_counter() - started)
    return result


def _guard_last_good(context, inputs: list) -> None:
    """Refuse a ``--keep-last-good`` file that is one the recipe reads (its model), and
    keep it from ever being written over one: the command line checks only its own
    arguments, and a run's are in the recipe."""
    last = context.keep_last_good
    if not last:
        return
    for given in inputs:
        if os.path.realpath(given) == os.path.realpath(last):
            raise CompressError(f"{last}: --keep-last-good is a file the recipe reads "
                                f"({given}); give another path")
    context.inputs = list(context.inputs) + list(inputs)


def _run_step(kind: str, opts: dict, model, dataset, stem: Path, recipe: dict, verbose,
              inputs: list = ()):
    """Run one pass and write its result; ``(new model or None, info, path, after)``.
    ``inputs``: the recipe's files (:func:`input_files`), never written over."""
    from compress import io
    from compress.report import model_report

    spec = passes.get(kind)
    name = opts.get("name") or kind
    kwargs = {k: v for k, v in opts.items() if k not in STEP_EXTRAS.options}
    callbacks = kwargs.pop("callbacks", None)
    if spec.takes_callbacks:
        kwargs["callbacks"] = _callbacks(callbacks)
    if spec.loads_files:
        kwargs["unsafe"] = recipe["unsafe"]
    result, info = spec.run(model, dataset, verbose=verbose, **kwargs)
    if spec.produces == "model":
        path = stem.with_suffix(".keras")
        io.save_model(result, path, force=True, inputs=inputs)
        return result, info, str(path), model_report(result, dataset, name=name, path=path)
    path = io.write_artifact(stem.with_suffix(spec.artifact_suffix(kwargs)), result,
                             inputs=inputs, force=True)
    return None, info, str(path), _artifact_report(path, info, dataset, name, model)


def input_files(recipe: dict) -> list[Path]:
    """Every file the recipe reads (its model, its data, a step's student or teacher): any
    string value of the recipe that names an existing file, with or without a ``npz:``
    style prefix.

    >>> input_files({"model": "lenet300", "data": "npz:/nonexistent.npz", "steps": []})
    []
    """
    found = []

    def walk(value):
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)
        elif isinstance(value, str) and value:
            for text in (value, value.split(":", 1)[-1]):
                try:
                    if Path(text).is_file():
                        found.append(Path(text))
                        break
                except (OSError, ValueError):  # a name the file system cannot hold
                    break

    walk(recipe)
    return found


def _check_output_dir(out: Path, force: bool, inputs: list = ()) -> None:
    """Refuse an output folder the run could not use, without touching it: a file, a
    non-empty folder without ``force``, a folder where ``force`` would replace one of the
    recipe's ``inputs`` (a file named as a run's output: ``step1-prune.keras``), or a
    place where no folder can be made."""
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out}: output exists and is not a folder")
    if out.is_dir():
        if not force and any(out.iterdir()):
            raise CompressError(f"{out}: output folder is not empty; pass --force to reuse it")
        for given in inputs:
            real = Path(os.path.realpath(given))
            if real.parent == Path(os.path.realpath(out)) and _OWN_FILE.fullmatch(real.name):
                raise CompressError(
                    f"{out}: the recipe reads {given} from this folder, and --force replaces "
                    "the files named as a run's outputs in it; copy the file elsewhere or "
                    "write to another folder (-o)")
        folder = out
    else:  # the nearest folder that exists: the run creates the rest
        folder = out.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise CompressError(f"{out}: cannot create the output folder ({folder} is a file)")
    try:  # a real probe: permissions, read-only mounts and pseudo file systems
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise CompressError(f"{out}: folder {folder} is not writable ({exc.strerror})"
                            ) from exc


def _prepare_output_dir(out: Path, force: bool, inputs: list = ()) -> None:
    _check_output_dir(out, force, inputs)
    if out.is_dir() and force:
        for child in out.iterdir():  # an earlier run's files, never anything else
            if _OWN_FILE.fullmatch(child.name) and child.is_file() and not child.is_symlink():
                child.unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompressError(f"{out}: cannot create the output folder ({exc.strerror})"
                            ) from exc


def _read_data(recipe: dict):
    """The recipe's data, read and checked (NumPy only), or None."""
    from compress import data as data_mod

    if not recipe.get("data"):
        return None
    try:
        return data_mod.load_data(recipe["data"], recipe["seed"], **{
            k: recipe[k] for k in ("preprocess", "val_data", "val_split", "label_column")
            if recipe.get(k) is not None})
    except CompressError as exc:
        raise CompressError(f"data: {exc}") from exc


def _read_model_file(recipe: dict, raw):
    """A recipe's model file, loaded (safe mode unless --unsafe) with the data fitted to
    it: ``(model, dataset)``; ``(None, None)`` for a builder."""
    from compress import data as data_mod
    from compress import io
    from compress.models import BUILDERS

    if recipe["model"] in BUILDERS:
        return None, None
    try:
        model = io.load_model(recipe["model"], unsafe=recipe["unsafe"])
    except CompressError as exc:
        raise CompressError(f"model: {exc}") from exc
    x = getattr(raw, "x_train", None)  # a subclassed model: wrapped with the data's shape
    sample = tuple(x.shape[1:]) if hasattr(x, "shape") else None
    model, _ = io.with_input_signature(model, None, sample, where=f"model {recipe['model']}")
    subset = recipe.get("subset")
    if raw is not None and subset:  # before the stream is made: an image folder draws
        raw = raw.take(subset, max(1, subset // 2))  # files of every class (in class order)
    dataset = data_mod.prepare(model, raw) if raw is not None else None
    return model, dataset


def _initial_model(recipe: dict, raw, loaded, dataset, verbose):
    """The baseline: a builder trained on the data, or the loaded file (trained if asked)."""
    from compress import data as data_mod
    from compress.models import build
    from compress.train import train

    subset = recipe.get("subset")
    baseline = dict(recipe.get("baseline") or {})
    callbacks = _callbacks(baseline.pop("callbacks", None))
    if loaded is None:
        raw = raw.take(subset, max(1, subset // 2)) if subset else raw
        model = build(recipe["model"], input_shape=raw.sample_shape,
                      num_classes=raw.num_classes)
        dataset = data_mod.prepare(model, raw)
        train(model, dataset, verbose=verbose, callbacks=callbacks, in_place=True, **baseline)
        return model, dataset
    model = loaded
    if recipe.get("baseline"):
        model, _ = train(model, dataset, verbose=verbose, callbacks=callbacks, **baseline)
    return model, dataset


def _callbacks(mapping) -> list:
    if not mapping:
        return []
    from compress.callbacks.from_config import build_callbacks

    return build_callbacks(mapping)


def _artifact_report(path: Path, info: dict, dataset, name: str, model) -> dict:
    """A report of a deployed artifact (.tflite/.onnx/.keras), measured in its runtime and
    scored on the task of ``model`` (the model it was made from): accuracy for a
    classifier, MSE/MAE for a regressor, never an argmax of a one-unit output."""
    from compress import runtime
    from compress.report import zipped_size
    from compress.task import resolve

    rep = {"name": f"{name} ({path.suffix[1:]})", "file_bytes": path.stat().st_size,
           "zipped_bytes": zipped_size(path)}
    if path.suffix in (".tflite", ".onnx") and dataset is not None:
        if info.get("lookups_note"):  # without_lookups: it takes the lookups' outputs
            _, dataset, _ = runtime.without_lookups(model, dataset)
        outputs = runtime.run_artifact(path, dataset.x_test)
        if dataset.y_test is not None:
            rep.update(resolve(model, y=dataset.y_test).score(outputs, dataset.y_test))
        else:  # no labels: fidelity to the model it was made from
            from compress.agreement import comparison
            from compress.training import predict

            classifier = resolve(model).is_classifier
            rep["fidelity"] = comparison(outputs, predict(model, dataset.x_test), classifier)
        # LiteRT or onnxruntime: a row of its own, not beside Keras's predict latency
        rep["runtime_latency_ms"] = runtime.runtime_latency_ms(path, dataset.sample_shape,
                                                               threads=1, runs=30)
    elif "accuracy" in info:
        rep["accuracy"] = info["accuracy"]
    return rep


def _jsonable(value):
    from compress.report import finite_json

    return json.loads(finite_json(value, indent=None))


def _write_reports(out: Path, result: dict, seconds: float) -> None:
    from compress import io
    from compress.report import finite_json, markdown_table, plot_recipe

    result["seconds"] = seconds
    io.write_bytes(out / "report.json", finite_json(result).encode())
    reports = ([result["baseline"]] if "baseline" in result else []) + \
        [s["after"] for s in result["steps"]]
    status = f"Status: **{result['status']}**" + (f" — {result['error']}"
                                                  if result.get("error") else "")
    setting = (f"Seed {result['seed']}, data `{result['data']}`, model `{result['model']}`, "
               f"{seconds:.0f} s.")
    lines = [f"# Recipe report: {result['recipe']}", "", status, "", setting, ""]
    if result.get("warnings"):
        lines += ["Warnings:", ""] + [f"- **{w}**" for w in result["warnings"]] + [""]
    if result.get("data_notes"):
        lines += ["Data:", ""] + [f"- {note}" for note in result["data_notes"]] + [""]
    if reports:
        lines += ["## Steps", "", markdown_table(reports), ""]
        try:
            plot_recipe(reports, out / "report-accuracy-size.png", out / "report-sparsity.png",
                        title=result["recipe"])
            lines += ["![accuracy vs size](report-accuracy-size.png)", "",
                      "![per-layer sparsity](report-sparsity.png)", ""]
        except Exception:  # noqa: BLE001 - a plot must never hide the report itself
            lines += ["_(plots failed: " + traceback.format_exc(limit=1).splitlines()[-1]
                      + ")_", ""]
    for s in result["steps"]:
        lines += [f"### {s['step']}", "", f"Artifact: `{s['artifact']}`, {s['seconds']:.1f} s.",
                  "",
                  "```json", json.dumps(s["info"], indent=1, default=str)[:2000], "```", ""]
    io.write_bytes(out / "report.md", "\n".join(lines).encode())
