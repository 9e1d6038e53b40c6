"""YAML recipes: a model, data and an ordered chain of passes, rerunnable as one unit.

A recipe is loaded with ``yaml.safe_load`` and validated in full before anything runs;
each step takes exactly the options of its CLI command and Python function (the same
:class:`compress.options.Schema`), and errors name the field path, e.g.
``steps[2].quantize.mode: must be one of int8, dynamic, float16, keras-int8``.

Example recipe::

    name: han2015
    seed: 0
    data: mnist5k
    model: lenet300            # a builder name (trains the dense baseline first) or a file
    baseline: {epochs: 30, learning_rate: 0.001, callbacks: {early_stopping: {patience: 5}}}
    steps:
      - prune: {method: magnitude, sparsity: 0.9, schedule: gradual, epochs: 10}
      - quantize: {mode: int8}
      - export: {format: onnx}

Example:

>>> from compress.recipes import run_recipe
>>> result = run_recipe("recipes/han2015.yaml", output="out/han", overrides=[
...     "steps[0].prune.sparsity=0.95"])                                # doctest: +SKIP
>>> result["steps"][-1]["after"]["accuracy"]                            # doctest: +SKIP
0.97
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import time
import traceback
from pathlib import Path

from compress.errors import CompressError
from compress.options import Option, Schema

TOP_LEVEL = ("name", "description", "seed", "data", "model", "baseline", "steps", "output",
             "unsafe", "subset", "quick")
STEP_KINDS = ("train", "prune", "share", "distill", "cascade", "quantize", "export")

TRAIN_OPTIONS = Schema("train", [
    Option("epochs", int, 5, "training epochs", low=0),
    Option("learning_rate", float, 1e-3, "learning rate", low=0.0, low_inclusive=False),
    Option("optimizer", str, "adam", "optimizer", choices=("adam", "sgd", "rmsprop")),
    Option("batch_size", int, 64, "batch size", low=1),
])

EXPORT_OPTIONS = Schema("export", [
    Option("format", str, "onnx", "target format", choices=("onnx", "tflite")),
    Option("samples", int, 256, "inputs to verify the artifact on", low=1),
    Option("atol", float, 1e-4, "largest allowed absolute output difference", low=0.0),
])


def _schemas() -> dict:
    """Step kind -> its Schema (imported lazily: each lives beside its pass)."""
    from compress.callbacks.options import CASCADE_OPTIONS
    from compress.distillation import DISTILL_OPTIONS
    from compress.pruning import PRUNE_OPTIONS
    from compress.quantization import QUANTIZE_OPTIONS
    from compress.sharing import SHARE_OPTIONS

    return {"train": TRAIN_OPTIONS, "prune": PRUNE_OPTIONS, "share": SHARE_OPTIONS,
            "distill": DISTILL_OPTIONS, "cascade": CASCADE_OPTIONS,
            "quantize": QUANTIZE_OPTIONS, "export": EXPORT_OPTIONS}


# Step options that belong to the recipe (not to the pass) and are allowed in any step.
_STEP_EXTRAS = ("callbacks",)
_CALLBACK_STEPS = ("train", "distill", "cascade")
# CLI-only options that make no sense inside a recipe step.
_NOT_IN_RECIPES = ("output", "force", "json")


def load_recipe(source, overrides: list[str] = (), quick: bool = False) -> dict:
    """Read a recipe (path or dict), apply overrides, validate it.

    Args:
        source: a recipe file path or an already-parsed dict.
        overrides: ``PATH=VALUE`` strings (``compress run --set``), applied last.
        quick: bool, default False. First apply the recipe's own ``quick`` overrides
            (its reduced form: fewer epochs, a data ``subset``), as ``compress run --quick``.
    """
    import yaml

    if isinstance(source, dict):
        recipe, where = copy.deepcopy(source), "recipe"
    elif not isinstance(source, (str, os.PathLike)):
        raise CompressError(f"recipe: must be a mapping with 'model' and 'steps', got "
                            f"{type(source).__name__}")
    else:
        path = Path(source)
        if not path.exists():
            raise CompressError(f"{path}: no such recipe file")
        if not path.is_file():
            raise CompressError(f"{path}: is a folder, not a recipe file")
        try:
            recipe = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise CompressError(f"{path}: not valid YAML{at}") from exc
        except UnicodeDecodeError as exc:
            raise CompressError(f"{path}: not a text file") from exc
        where = str(path)
    if not isinstance(recipe, dict):
        raise CompressError(f"{where}: a recipe must be a mapping with 'model' and 'steps'")
    quick_form = recipe.get("quick", [])
    if not isinstance(quick_form, list) or not all(isinstance(q, str) for q in quick_form):
        raise CompressError("quick: must be a list of PATH=VALUE strings")
    for item in (list(quick_form) if quick else []) + list(overrides):
        apply_override(recipe, item)
    return validate_recipe(recipe)


_PATH_TOKEN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)|\[(\d+)\]")


def apply_override(recipe: dict, assignment: str) -> None:
    """Apply ``steps[0].prune.sparsity=0.95`` (the value is parsed as YAML) in place."""
    import yaml

    if "=" not in assignment:
        raise CompressError(f"--set {assignment}: must look like PATH=VALUE")
    path, raw = assignment.split("=", 1)
    tokens = []
    pos = 0
    for part in path.strip().split("."):
        for m in _PATH_TOKEN.finditer(part):
            tokens.append(m.group(1) if m.group(1) else int(m.group(2)))
            pos += 1
    if not tokens:
        raise CompressError(f"--set {assignment}: empty path")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node = recipe
    for i, tok in enumerate(tokens[:-1]):
        nxt = tokens[i + 1]
        if isinstance(tok, int):
            if not isinstance(node, list) or tok >= len(node):
                raise CompressError(f"--set {path}: no item [{tok}]")
            node = node[tok]
        else:
            if not isinstance(node, dict):
                raise CompressError(f"--set {path}: '{tok}' is not a mapping")
            node = node.setdefault(tok, [] if isinstance(nxt, int) else {})
    last = tokens[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise CompressError(f"--set {path}: no item [{last}]")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise CompressError(f"--set {path}: parent is not a mapping")
        node[last] = value


def validate_recipe(recipe: dict) -> dict:
    """Check every field; return the recipe with each step's options completed."""
    unknown = [k for k in recipe if k not in TOP_LEVEL]
    if unknown:
        raise CompressError(f"{unknown[0]}: unknown recipe key (known: {', '.join(TOP_LEVEL)})")
    out = dict(recipe)
    if "model" not in recipe:
        raise CompressError("model: missing (a model file or a builder name such as lenet300)")
    if not isinstance(recipe["model"], str):
        raise CompressError(f"model: must be a file path or builder name, got {recipe['model']!r}")
    out["seed"] = Option("seed", int, 0, "").check(recipe.get("seed", 0), "seed")
    data = recipe.get("data")
    if data is not None and not isinstance(data, str):
        raise CompressError(f"data: must be a dataset name, got {data!r}")
    from compress.data import NAMES

    if data is not None and not data.startswith("npz:") and data not in NAMES:
        raise CompressError(f"data: '{data}' is not a dataset (use one of {', '.join(NAMES)} "
                            "or npz:PATH)")
    for key in ("name", "description", "output"):
        if key in recipe and not isinstance(recipe[key], str):
            raise CompressError(f"{key}: must be a string, got {recipe[key]!r}")
    if recipe.get("subset") is not None:
        out["subset"] = Option("subset", int, None, "", low=10).check(recipe["subset"], "subset")
    out["unsafe"] = Option("unsafe", bool, False, "").check(recipe.get("unsafe", False),
                                                             "unsafe")
    from compress.models import BUILDERS

    if recipe["model"] in BUILDERS:
        out["baseline"] = _validate_step_body("train", recipe.get("baseline") or {}, "baseline",
                                              TRAIN_OPTIONS)
    elif recipe.get("baseline") is not None:
        out["baseline"] = _validate_step_body("train", recipe["baseline"] or {}, "baseline",
                                              TRAIN_OPTIONS)
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CompressError("steps: must be a non-empty list of steps")
    schemas = _schemas()
    out["steps"] = []
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise CompressError(f"{where}: each step is a mapping with one key, one of "
                                f"{', '.join(STEP_KINDS)}")
        kind, body = next(iter(step.items()))
        if kind not in STEP_KINDS:
            raise CompressError(f"{where}.{kind}: unknown step (use one of "
                                f"{', '.join(STEP_KINDS)})")
        if (kind in ("train", "prune", "share", "distill", "cascade", "quantize")
                and data is None and _step_needs_data(kind, body)):
            raise CompressError(f"{where}.{kind}: needs data; set 'data' at the top level")
        out["steps"].append({kind: _validate_step_body(kind, body or {}, f"{where}.{kind}",
                                                       schemas[kind])})
    if data is None and recipe["model"] in BUILDERS:
        raise CompressError("data: a builder model needs data to train its baseline")
    # References to files must resolve before anything runs.
    if recipe["model"] not in BUILDERS and not Path(recipe["model"]).exists():
        raise CompressError(f"model: {recipe['model']}: no such file (and not a builder: "
                            f"{', '.join(BUILDERS)})")
    for i, step in enumerate(out["steps"]):
        kind, body = next(iter(step.items()))
        if kind == "distill" and body.get("student") and not Path(body["student"]).exists():
            raise CompressError(f"steps[{i}].distill.student: {body['student']}: no such file")
    return out


def _step_needs_data(kind: str, body) -> bool:
    if kind in ("train", "distill", "cascade"):
        return True
    body = body or {}
    if kind == "prune":
        return body.get("method", "magnitude") != "magnitude" or bool(body.get("epochs"))
    if kind == "share":
        return bool(body.get("epochs"))
    if kind == "quantize":
        return body.get("mode", "int8") == "int8" or bool(body.get("qat"))
    return False


def _validate_step_body(kind: str, body, where: str, schema: Schema) -> dict:
    if not isinstance(body, dict):
        raise CompressError(f"{where}: must be a mapping of options, got {body!r}")
    body = dict(body)
    extras = {k: body.pop(k) for k in list(body) if k in _STEP_EXTRAS}
    if extras.get("callbacks") is not None and kind not in _CALLBACK_STEPS:
        raise CompressError(f"{where}.callbacks: only {', '.join(_CALLBACK_STEPS)} steps and "
                            "the baseline take callbacks")
    for key in _NOT_IN_RECIPES:
        if key in body:
            raise CompressError(f"{where}.{key}: not a recipe option (the recipe runner "
                                "names outputs)")
    values = schema.validate(body, path=where)
    if "callbacks" in extras:
        from compress.callbacks.cascade import build_callbacks

        build_callbacks(extras["callbacks"], f"{where}.callbacks")  # validates every field
        values["callbacks"] = extras["callbacks"]
    return values


def run_recipe(source, output: str | os.PathLike | None = None, overrides: list[str] = (),
               force: bool = False, verbose: int | str = 0, progress=None,
               quick: bool = False) -> dict:
    """Run a recipe; write artifacts, ``report.json``, ``report.md`` and plots to ``output``.

    Args:
        source: a recipe file path, YAML already parsed into a dict.
        output: the output folder (default: the recipe's ``output``, else ``recipe-out``).
        overrides: ``PATH=VALUE`` strings, as ``compress run --set``.
        force: bool, default False. Reuse a non-empty output folder.
        quick: bool, default False. Run the recipe's reduced ``quick`` form.
        verbose: Keras ``verbose`` for training steps.
        progress: optional callable ``progress(message)`` for step announcements.

    Returns:
        The report dict (also written to ``output/report.json``). A step that fails
        leaves the finished steps' artifacts and a report saying where and why, then
        raises :class:`CompressError`.
    """
    recipe = load_recipe(source, overrides, quick=quick)
    out = Path(output or recipe.get("output") or "recipe-out")
    _prepare_output_dir(out, force)
    say = progress or (lambda msg: None)

    from compress.quiet import import_tensorflow

    import_tensorflow()
    from compress import io, training
    from compress.report import model_report

    seed = recipe["seed"]
    training.set_seed(seed)
    result = {"recipe": recipe.get("name", str(source) if not isinstance(source, dict)
                                   else "recipe"),
              "seed": seed, "data": recipe.get("data"), "model": recipe["model"],
              "output": str(out), "status": "running", "steps": []}
    started = time.perf_counter()
    ctx = _Context(out, recipe, verbose)
    try:
        say(f"loading {recipe['model']}")
        model, dataset = _initial_model(recipe, ctx)
        base = model_report(model, dataset, name="baseline")
        base_path = out / "step0-baseline.keras"
        io.save_model(model, base_path, force=True)
        result["baseline"] = {**base, "artifact": str(base_path)}
        current = model
        for i, step in enumerate(recipe["steps"]):
            kind, opts = next(iter(step.items()))
            where = f"steps[{i}].{kind}"
            say(f"{where}")
            t0 = time.perf_counter()
            before = model_report(current, dataset, name=f"before {kind}", latency=False)
            try:
                current, info, artifact, after = _STEPS[kind](current, dataset, opts, i, ctx)
            except CompressError as exc:
                raise CompressError(f"{where}: {exc}") from exc
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                raise CompressError(f"{where}: {type(exc).__name__}: "
                                    f"{' '.join(str(exc).split())[:300]}") from exc
            result["steps"].append({"step": where, "kind": kind, "options": _jsonable(opts),
                                    "info": info, "artifact": artifact, "before": before,
                                    "after": after, "seconds": time.perf_counter() - t0})
        result["status"] = "finished"
    except CompressError as exc:
        result["status"] = "failed"
        result["error"] = str(exc)
        _write_reports(out, result, time.perf_counter() - started)
        raise
    except KeyboardInterrupt:
        result["status"] = "interrupted"
        result["error"] = "interrupted by the user"
        _write_reports(out, result, time.perf_counter() - started)
        raise
    _write_reports(out, result, time.perf_counter() - started)
    return result


class _Context:
    def __init__(self, out: Path, recipe: dict, verbose):
        self.out, self.recipe, self.verbose = out, recipe, verbose
        self.teacher = None  # the model before the first compression step

    def artifact(self, index: int, kind: str, suffix: str) -> Path:
        return self.out / f"step{index + 1}-{kind}{suffix}"


def _prepare_output_dir(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise CompressError(f"{out}: output exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CompressError(f"{out}: output folder is not empty; pass --force to reuse it")
        for child in out.iterdir():
            if child.name.startswith("step") or child.name.startswith("report") or \
                    child.name.endswith(".png"):
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise CompressError(f"{out}: output folder is not writable")


def _initial_model(recipe: dict, ctx: _Context):
    from compress import data as data_mod
    from compress import io, training
    from compress.models import BUILDERS, build

    name = recipe["model"]
    data_name = recipe.get("data")
    subset = recipe.get("subset")
    if name in BUILDERS:
        raw = data_mod.load_data(data_name, recipe["seed"])
        raw = raw.take(subset, max(1, subset // 2)) if subset else raw
        model = build(name, input_shape=raw.sample_shape, num_classes=raw.num_classes)
        dataset = data_mod.prepare(model, raw)
        _train(model, dataset, recipe["baseline"], ctx)
    else:
        model = io.load_model(name, unsafe=recipe["unsafe"])
        dataset = data_mod.prepare(model, data_mod.load_data(data_name, recipe["seed"])) \
            if data_name else None
        if dataset is not None and subset:
            dataset = dataset.take(subset, max(1, subset // 2))
        if recipe.get("baseline"):
            _train(model, dataset, recipe["baseline"], ctx)
    ctx.teacher = training.copy_model(model)
    return model, dataset


def _train(model, dataset, opts: dict, ctx: _Context):
    from compress import training

    callbacks = _callbacks(opts)
    training.compile_classifier(model, learning_rate=opts["learning_rate"],
                                optimizer=opts["optimizer"])
    training.fit(model, dataset, epochs=opts["epochs"], batch_size=opts["batch_size"],
                 callbacks=callbacks, verbose=ctx.verbose)


def _callbacks(opts: dict) -> list:
    if not opts.get("callbacks"):
        return []
    from compress.callbacks.cascade import build_callbacks

    return build_callbacks(opts["callbacks"])


def _pass_kwargs(opts: dict) -> dict:
    return {k: v for k, v in opts.items() if k not in _STEP_EXTRAS}


def _finish_model_step(model, dataset, kind, index, ctx, info):
    from compress import io
    from compress.report import model_report

    path = ctx.artifact(index, kind, ".keras")
    io.save_model(model, path, force=True)
    after = model_report(model, dataset, name=kind, path=path)
    return model, info, str(path), after


def _step_train(model, dataset, opts, index, ctx):
    _train(model, dataset, opts, ctx)
    return _finish_model_step(model, dataset, "train", index, ctx, {"epochs": opts["epochs"]})


def _step_prune(model, dataset, opts, index, ctx):
    from compress.pruning import prune

    # With distill: true the teacher is this step's input model (prune's own rule).
    new, info = prune(model, dataset, verbose=ctx.verbose, **_pass_kwargs(opts))
    return _finish_model_step(new, dataset, "prune", index, ctx, info)


def _step_share(model, dataset, opts, index, ctx):
    from compress.sharing import share

    new, info = share(model, dataset, **_pass_kwargs(opts))
    return _finish_model_step(new, dataset, "share", index, ctx, info)


def _step_distill(model, dataset, opts, index, ctx):
    from compress import io
    from compress.distillation import distill
    from compress.distillation.students import make_student

    student = io.load_model(opts["student"]) if opts.get("student") else None
    student = make_student(model, student=student, width=opts.get("width"),
                           depth=opts.get("depth"))
    new, info = distill(model, student, dataset, temperature=opts["temperature"],
                        alpha=opts["alpha"], epochs=opts["epochs"],
                        learning_rate=opts["learning_rate"], batch_size=opts["batch_size"],
                        callbacks=_callbacks(opts), feature_pairs=opts.get("feature_pairs"),
                        teacher_outputs=opts["teacher_outputs"],
                        augment=opts.get("augment", "none"), shift=opts.get("shift", 2),
                        verbose=ctx.verbose)
    return _finish_model_step(new, dataset, "distill", index, ctx, info)


def _step_cascade(model, dataset, opts, index, ctx):
    from compress.callbacks.cascade import cascade_train

    new, info = cascade_train(model, dataset, seed=ctx.recipe["seed"], verbose=ctx.verbose,
                              callbacks=_callbacks(opts), **_pass_kwargs(opts))
    return _finish_model_step(new, dataset, "cascade", index, ctx, info)


def _step_quantize(model, dataset, opts, index, ctx):
    from compress.quantization import SUFFIXES, quantize

    kwargs = _pass_kwargs(opts)
    fmt = kwargs.get("format") or ("keras" if kwargs["mode"] == "keras-int8" else "tflite")
    path = ctx.artifact(index, "quantize", SUFFIXES[fmt])
    info = quantize(model, path, dataset, force=True, **kwargs)
    after = _artifact_report(path, info, dataset, "quantize")
    return model, info, str(path), after


def _step_export(model, dataset, opts, index, ctx):
    import numpy as np

    from compress import export

    fmt = opts["format"]
    path = ctx.artifact(index, "export", export.FORMATS[fmt])
    if dataset is not None:
        x = dataset.x_test[:opts["samples"]]
    else:
        shape = tuple(model.inputs[0].shape[1:])
        x = np.random.default_rng(0).random((opts["samples"],) + shape, dtype=np.float32)
    info = export.export(model, path, fmt=fmt, x=x, force=True, atol=opts["atol"])
    after = _artifact_report(path, info, dataset, "export")
    return model, info, str(path), after


def _artifact_report(path: Path, info: dict, dataset, name: str) -> dict:
    """A report of a deployed artifact (.tflite/.onnx/.keras), measured in its runtime."""
    from compress import export
    from compress.report import zipped_size

    rep = {"name": f"{name} ({path.suffix[1:]})", "file_bytes": path.stat().st_size,
           "zipped_bytes": zipped_size(path)}
    if path.suffix in (".tflite", ".onnx") and dataset is not None:
        rep["accuracy"] = export.artifact_accuracy(path, dataset.x_test, dataset.y_test)
        rep["latency_ms"] = export.runtime_latency_ms(path, dataset.sample_shape, threads=1,
                                                      runs=30)
    elif "accuracy" in info:
        rep["accuracy"] = info["accuracy"]
    return rep


_STEPS = {"train": _step_train, "prune": _step_prune, "share": _step_share,
          "distill": _step_distill, "cascade": _step_cascade, "quantize": _step_quantize,
          "export": _step_export}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _write_reports(out: Path, result: dict, seconds: float) -> None:
    from compress import io
    from compress.report import markdown_table

    result["seconds"] = seconds
    io.write_bytes(out / "report.json",
                   json.dumps(result, indent=2, default=str).encode())
    reports = ([result["baseline"]] if "baseline" in result else []) + \
        [s["after"] for s in result["steps"]]
    status = f"Status: **{result['status']}**" + (f" — {result['error']}"
                                                  if result.get("error") else "")
    setting = (f"Seed {result['seed']}, data `{result['data']}`, model `{result['model']}`, "
               f"{seconds:.0f} s.")
    lines = [f"# Recipe report: {result['recipe']}", "", status, "", setting, ""]
    if reports:
        lines += ["## Steps", "", markdown_table(reports), ""]
        try:
            _plots(out, result, reports)
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


def _plots(out: Path, result: dict, reports: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compress.report import plot_reports

    plot_reports(reports, out / "report-accuracy-size.png",
                 title=f"{result['recipe']}: accuracy vs size per step")
    layered = [r for r in [result.get("baseline")] + [s["after"] for s in result["steps"]]
               if r and r.get("layers")]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for r in layered:
        ax.plot([row["layer"] for row in r["layers"]],
                [100 * row["sparsity"] for row in r["layers"]], marker="o", label=r["name"])
    ax.set_ylabel("sparsity (%)")
    ax.set_title("per-layer sparsity")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "report-sparsity.png", dpi=100)
    plt.close(fig)
