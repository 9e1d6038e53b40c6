"""Reading and checking a recipe: every field validated before anything runs.

Each step takes exactly the options of its pass (the same
:class:`compress.options.Schema` as its CLI command and Python function), and the step
kinds and their rules (does it need data, does it take callbacks) come from the pass
registry, :mod:`compress.passes`. Errors name the field path, e.g.
``steps[2].quantize.mode: must be one of int8, dynamic, float16, keras-int8``.

Example:

>>> recipe = load_recipe({"model": "lenet300", "data": "digits",
...                       "steps": [{"prune": {"sparsity": 0.5}}]})
>>> recipe["steps"][0]["prune"]["sparsity"], recipe["baseline"]["epochs"]
(0.5, 5)
>>> load_recipe({"model": "lenet300", "data": "digits", "steps": [{"prun": {}}]})
Traceback (most recent call last):
...
compress.errors.CompressError: steps[0].prun: unknown step (use one of train, export, prune, share, quantize, distill, cascade)
"""

from __future__ import annotations

import copy
import errno
import os
from pathlib import Path

from compress import passes
from compress.callbacks.from_config import check_callbacks
from compress.errors import CompressError
from compress.options import Option, Schema, quoted, shortened
from compress.recipes.overrides import apply_override
from compress.recipes.yaml_reader import read_yaml

TOP_LEVEL = ("name", "description", "seed", "data", "model", "baseline", "steps", "output",
             "unsafe", "subset", "quick", "preprocess", "val_data", "val_split", "label_column",
             "import")
# Step keys that belong to the recipe, not to the pass: Keras callbacks for passes that
# take them, which model the step starts from (the previous step's, or the baseline), and
# the step's name in the report.
STEP_EXTRAS = Schema("step", [
    Option("from", str, "previous", "the model this step starts from: the previous step's "
           "result or the baseline", choices=("previous", "baseline")),
    Option("name", str, None, "the step's name in the report (default: its kind)"),
])
# CLI-only options that make no sense inside a recipe step.
_NOT_IN_RECIPES = ("output", "force", "json", "unsafe")
# A recipe is a few KB; a larger file is not one (and is not read into memory whole).
MAX_RECIPE_BYTES = 2**20
# NumPy's seeds are unsigned 32-bit integers.
SEED = Option("seed", int, 0, "", low=0, high=2**32 - 1)


def step_kinds() -> list[str]:
    """The recipe step kinds: every registered pass."""
    return passes.names()


def load_recipe(source, overrides: list[str] = (), quick: bool = False,
                unsafe: bool = False) -> dict:
    """Read a recipe (path or dict), apply overrides, validate it.

    Args:
        source: a recipe file path or an already-parsed dict.
        overrides: ``PATH=VALUE`` strings (``compress run --set``), applied last.
        quick: bool, default False. First apply the recipe's own ``quick`` overrides
            (its reduced form: fewer epochs, a data ``subset``), as ``compress run --quick``.
        unsafe: bool, default False. The user's own ``--unsafe``: only then may a recipe
            say ``unsafe: true`` (load its model files with Keras safe mode off).
    """
    if isinstance(source, dict):
        recipe, where = copy.deepcopy(source), "recipe"
    elif not isinstance(source, (str, os.PathLike)):
        raise CompressError(f"recipe: must be a mapping with 'model' and 'steps', got "
                            f"{type(source).__name__}")
    else:
        path = Path(source)
        recipe = read_yaml(_read_recipe_text(path), str(path))
        where = str(path)
    if not isinstance(recipe, dict):
        raise CompressError(f"{where}: a recipe must be a mapping with 'model' and 'steps'")
    quick_form = recipe.get("quick", [])
    if not isinstance(quick_form, list) or not all(isinstance(q, str) for q in quick_form):
        raise CompressError("quick: must be a list of PATH=VALUE strings")
    for item in (list(quick_form) if quick else []) + list(overrides):
        apply_override(recipe, item)
    try:
        out = validate_recipe(recipe, unsafe=unsafe)
    except CompressError as exc:
        raise path_hint(exc, recipe, source) from None
    return out


def path_hint(exc: CompressError, recipe: dict, source) -> CompressError:
    """``exc``, or a copy saying where relative paths are read when it names a file
    missing from the working directory that lies in the recipe's folder (a recipe kept
    beside its model or data, run from elsewhere)."""
    if isinstance(source, dict) or not isinstance(source, (str, os.PathLike)):
        return exc
    folder = Path(source).parent
    beside = _beside_recipe(recipe, folder)
    if beside is None or f"{beside}: no such" not in str(exc):
        return exc
    return CompressError(f"{exc}; {beside} is in the recipe's folder ({folder}), but "
                         f"relative paths in a recipe are read from the working directory "
                         f"({Path.cwd()})")


def _beside_recipe(recipe, folder: Path) -> str | None:
    """A relative path in ``recipe`` that is missing from the working directory but
    exists in the recipe's ``folder`` (a recipe kept beside its model, run from
    elsewhere), or None."""
    values = [recipe]
    while values:
        value = values.pop()
        if isinstance(value, dict):
            values.extend(value.values())
        elif isinstance(value, list):
            values.extend(value)
        elif isinstance(value, str) and value and not Path(value).is_absolute():
            try:
                if not Path(value).exists() and (folder / value).exists():
                    return value
            except (OSError, ValueError):  # a name the file system cannot hold
                continue
    return None


def _read_recipe_text(path: Path) -> str:
    """The recipe file's text, or one line saying why it cannot be a recipe."""
    try:
        size = os.stat(path).st_size
    except ValueError:  # a NUL in the name: no file can have it
        raise CompressError(f"{str(path)!r}: not a file name (it holds a NUL)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise CompressError(f"{path}: symbolic link loop (a link in this path points "
                                "back to itself)") from None
        if exc.errno == errno.ENOENT and path.is_symlink():
            raise CompressError(f"{path}: broken symbolic link (it points to "
                                f"{os.readlink(path)}, which does not exist)") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CompressError(f"{path}: no such recipe file") from None
        raise CompressError(f"{path}: cannot read ({exc.strerror})") from None
    if path.is_dir():
        raise CompressError(f"{path}: is a folder, not a recipe file")
    if not path.is_file():
        raise CompressError(f"{path}: not a regular file, not a recipe file")
    if size > MAX_RECIPE_BYTES:
        raise CompressError(f"{path}: {size} bytes, too large for a recipe (limit "
                            f"{MAX_RECIPE_BYTES}); refusing to read it")
    try:
        return path.read_text()
    except UnicodeDecodeError as exc:
        raise CompressError(f"{path}: not a text file") from exc
    except OSError as exc:
        raise CompressError(f"{path}: cannot read ({exc.strerror})") from None


def validate_recipe(recipe: dict, unsafe: bool = False) -> dict:
    """Check every field; return the recipe with each step's options completed.

    Args:
        recipe: the parsed recipe.
        unsafe: bool, default False. Whether the user passed ``--unsafe`` (see
            :func:`load_recipe`).
    """
    unknown = [k for k in recipe if k not in TOP_LEVEL]
    if unknown:
        raise CompressError(f"{shortened(unknown[0])}: unknown recipe key "
                            f"(known: {', '.join(TOP_LEVEL)})")
    out = dict(recipe)
    if "model" not in recipe:
        raise CompressError("model: missing (a model file or a builder name such as lenet300)")
    if not isinstance(recipe["model"], str):
        raise CompressError("model: must be a file path or builder name, got "
                            f"{quoted(recipe['model'])}")
    out["seed"] = SEED.check(recipe.get("seed", 0), "seed")
    data = recipe.get("data")
    if data is not None and not isinstance(data, str):
        raise CompressError(f"data: must be a dataset name, got {quoted(data)}")
    from compress.data import NAMES, is_data_name
    from compress.data.folders import preprocess_mode

    if data is not None and not is_data_name(data):
        raise CompressError(f"data: {quoted(data)} is not a dataset (use one of {', '.join(NAMES)}, "
                            "npz:PATH, PATH.npy, PATH.csv or an image folder)")
    for key in ("preprocess", "val_data", "val_split", "label_column"):  # settings of 'data'
        if recipe.get(key) is not None and data is None:
            what = "a CSV file" if key == "label_column" else "an image folder"
            raise CompressError(f"{key}: applies to 'data' ({what}); set 'data'")
    if recipe.get("label_column") is not None and not isinstance(recipe["label_column"], str):
        raise CompressError(f"label_column: must be a column name, got "
                            f"{quoted(recipe['label_column'])}")
    if recipe.get("preprocess") is not None:
        preprocess_mode(str(recipe["preprocess"]))
    if recipe.get("val_split") is not None:
        out["val_split"] = Option("val_split", float, None, "", low=0.0, high=1.0,
                                  low_inclusive=False, high_inclusive=False).check(
            recipe["val_split"], "val_split")
    for key in ("name", "description", "output"):
        if key in recipe and not isinstance(recipe[key], str):
            raise CompressError(f"{key}: must be a string, got {quoted(recipe[key])}")
    if recipe.get("subset") is not None:
        out["subset"] = Option("subset", int, None, "", low=10).check(recipe["subset"], "subset")
    out["unsafe"] = Option("unsafe", bool, False, "").check(recipe.get("unsafe", False),
                                                             "unsafe")
    if out["unsafe"] and not unsafe:
        raise CompressError("unsafe: a recipe cannot turn Keras safe mode off by itself; "
                            "pass --unsafe on the command line if you trust its model files")
    out["unsafe"] = bool(unsafe)
    imports = recipe.get("import") or []
    imports = [imports] if isinstance(imports, str) else imports
    if not isinstance(imports, list) or not all(isinstance(m, str) and m for m in imports):
        raise CompressError("import: must be a module name or .py path, or a list of them")
    if imports and not unsafe:  # importing runs the module's code, as --import does
        raise CompressError("import: a recipe cannot run Python modules by itself; pass "
                            "--unsafe on the command line if you trust them (or --import "
                            "MODULE)")
    out["import"] = imports
    from compress.models import BUILDERS

    train = passes.get("train")
    builder = recipe["model"] in BUILDERS
    if builder or recipe.get("baseline") is not None:
        out["baseline"] = _validate_step(train, recipe.get("baseline") or {}, "baseline",
                                         out["seed"], data)
    steps = recipe.get("steps")
    if not isinstance(steps, list) or not steps:
        raise CompressError("steps: must be a non-empty list of steps")
    kinds = step_kinds()
    out["steps"] = []
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        if not isinstance(step, dict) or len(step) != 1:
            raise CompressError(f"{where}: each step is a mapping with one key, one of "
                                f"{', '.join(kinds)}")
        kind, body = next(iter(step.items()))
        if kind not in kinds:
            raise CompressError(f"{where}.{shortened(kind)}: unknown step (use one of {', '.join(kinds)})")
        out["steps"].append({kind: _validate_step(passes.get(kind), body, f"{where}.{kind}",
                                                  out["seed"], data)})
    if data is None and builder:
        raise CompressError("data: a builder model needs data to train its baseline")
    # References to files must resolve before anything runs.
    if not builder and not Path(recipe["model"]).exists():
        raise CompressError(f"model: {recipe['model']}: no such file (and not a builder: "
                            f"{', '.join(BUILDERS)})")
    from compress.data.named import data_file

    file = data_file(data) if data is not None else None
    if file is not None and not file.exists():  # --check said "valid", run refused it
        raise CompressError(f"data: {file}: no such data file")
    if recipe.get("val_data") is not None and not Path(str(recipe["val_data"])).is_dir():
        raise CompressError(f"val_data: {recipe['val_data']}: no such folder")
    return out



def _validate_step(spec, body, where: str, seed: int, data) -> dict:
    """One step's mapping: the pass's options, the recipe's extras, the data rule, files."""
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise CompressError(f"{where}: must be a mapping of options, got {quoted(body)}")
    body = dict(body)
    for key in _NOT_IN_RECIPES:
        if key in body and key not in spec.schema.options:
            hint = ("pass --unsafe to compress run" if key == "unsafe"
                    else "the recipe runner names outputs")
            raise CompressError(f"{where}.{key}: not a recipe step option ({hint})")
    callbacks = body.pop("callbacks", None)
    extras = STEP_EXTRAS.validate({k: body.pop(k) for k in list(body)
                                   if k in STEP_EXTRAS.options}, path=where)
    if "seed" in spec.schema.options and "seed" not in body:
        body["seed"] = seed  # the recipe's seed, unless the step sets its own
    values = spec.schema.validate(body, path=where)
    spec.require_data(values, data, where=where)
    if spec.check is not None:  # combinations the pass refuses: before anything runs
        try:
            spec.check(values)
        except CompressError as exc:
            raise CompressError(f"{where}: {str(exc).removeprefix(spec.name + ': ')}") from None
    for name, option in spec.schema.options.items():
        if getattr(option, "file", False) and values.get(name) and \
                not Path(values[name]).exists():
            raise CompressError(f"{where}.{name}: {values[name]}: no such file")
    if callbacks is not None:
        if not spec.takes_callbacks:
            takers = [p.name for p in passes.all_passes() if p.takes_callbacks]
            raise CompressError(f"{where}.callbacks: only {', '.join(takers)} steps and the "
                                "baseline take callbacks")
        check_callbacks(callbacks, f"{where}.callbacks")
        values["callbacks"] = callbacks
    if where != "baseline":
        values.update(extras)
    return values
