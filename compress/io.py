"""Load Keras models safely and write outputs atomically, never touching the input.

Example:

>>> from compress import io
>>> model = io.load_model("model.h5")                        # doctest: +SKIP
>>> io.save_model(model, "out.keras", inputs=["model.h5"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

from compress.errors import CompressError, interruptions_held, raise_if_interrupted

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# Limits on what a .keras archive may unpack to, checked on the zip's central directory
# before any byte is inflated (zipfile never returns more than a member's listed size).
# Keras reads config.json (and metadata.json) whole into memory, and a model's is a few
# MB at most; it extracts assets/ to a temporary folder. Keras stores members
# uncompressed, and deflate alone packs real weights well under 100:1, so a large member
# that claims more is a decompression bomb, not a model.
MAX_CONFIG_BYTES = 32 * 2**20
MAX_ASSETS_BYTES = 2**30
MAX_EXPANSION = 100
EXPANSION_FLOOR = 64 * 2**20


def load_model(path: str | os.PathLike, unsafe: bool = False):
    """Load a Keras model from ``.keras``, ``.h5``/``.hdf5`` or a SavedModel folder.

    The file is opened read-only and never modified. ``safe_mode`` stays on unless
    ``unsafe=True``: with it off, Keras deserializes ``Lambda`` layers, which executes
    Python code stored in the file, so pass it only for files you trust. A SavedModel's
    graph is code too: without ``unsafe`` any op outside a pure-math allow-list (file I/O,
    Python calls, unknown ops; :mod:`compress.graph_safety`) is refused before TensorFlow
    loads it. A ``.keras`` archive whose members would unpack to more than the limits
    above is refused before Keras reads it. A file saved with a loss loads compiled with
    that loss and its metrics (the model's own task, :mod:`compress.task`, which passes
    fine-tune on); one without stays uncompiled. The loss is read in the same safe mode
    as the model: a loss that cannot be read safely (a Lambda) leaves the model
    uncompiled, and the task is then inferred from its output.

    Args:
        path: the model file or SavedModel directory.
        unsafe: bool, default False. Allow code execution from the file or folder
            (``--unsafe``).

    Returns:
        A ``keras.Model``.

    Raises:
        CompressError: one line naming the file and what is wrong with it.
    """
    p = check_model_file(path)
    if p.is_dir():
        return _load_saved_model_dir(p, unsafe)

    import keras

    from compress.layers import register_layers

    register_layers()  # the toolkit's own layers load without custom_objects

    try:
        model = keras.models.load_model(p, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises many types; turn each into one line.
        raise CompressError(f"{p}: {_explain_load_error(exc)}") from exc
    refuse_stateful(model, str(p))
    if unsafe:
        mark_unsafe(model)  # copies made by the passes may rebuild its Lambdas
    _compile_as_saved(model, p, unsafe)
    return model


def refuse_stateful(model, where: str = "model") -> None:
    """Refuse a model with stateful recurrent layers, in one line: they carry their state
    from one call to the next and take batches of exactly one size, so no pass can
    calibrate, fine-tune or verify them with its own batches (each pass failed with
    Keras's "the batch size of the input sequences must be the same").

    Raises:
        CompressError: naming the stateful layers and the way round.
    """
    layers = [la.name for la in model._flatten_layers(include_self=False, recursive=True)
              if getattr(la, "stateful", False)]
    if layers:
        raise CompressError(
            f"{where}: stateful recurrent layers ({', '.join(layers[:4])}) carry state "
            "between calls and take one fixed batch size, which compression cannot "
            "calibrate or verify with; compress a copy built with stateful=False (the "
            "same weights: model.get_weights()), then load its weights into your "
            "stateful model")


def parse_input_shape(text: str) -> tuple:
    """``--input-shape``: one sample's shape, comma-separated positive integers.

    >>> parse_input_shape("28,28,1")
    (28, 28, 1)
    >>> parse_input_shape("28x28")
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: --input-shape '28x28': give one sample's shape as comma-separated positive integers, without the batch dimension (e.g. 28,28,1)
    """
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CompressError(f"--input-shape '{text}': give one sample's shape as "
                            "comma-separated positive integers, without the batch dimension "
                            "(e.g. 28,28,1)")
    return tuple(int(p) for p in parts)


def with_input_signature(model, shape: tuple | None = None, sample: tuple | None = None,
                         where: str = "model"):
    """``(model, note)``: a subclassed model (no ``inputs``) wrapped into a functional one,
    ``keras.Input(shape)`` then the model, so that every pass can read its input signature;
    any other model as it is (``note`` None).

    The shape is ``shape`` (``--input-shape``), else ``sample`` (the data's sample shape).
    A ``shape`` that contradicts the model's inputs, or that the model cannot be called on,
    is refused in one line.

    Example:

    >>> wrapped, note = with_input_signature(subnet, (28, 28, 1))   # doctest: +SKIP
    >>> wrapped.inputs[0].shape                                      # doctest: +SKIP
    (None, 28, 28, 1)
    """
    import keras

    inputs = _inputs_or_none(model)
    if inputs is not None:
        if shape is not None:
            if len(inputs) != 1:
                raise CompressError(f"{where}: --input-shape gives one input but model "
                                    f"'{model.name}' has {len(inputs)}")
            have = tuple(inputs[0].shape[1:])
            if len(have) != len(shape) or any(h is not None and h != s
                                              for h, s in zip(have, shape)):
                raise CompressError(f"{where}: --input-shape {','.join(map(str, shape))} "
                                    f"contradicts model '{model.name}', whose input is "
                                    f"{tuple(have)}")
        return model, None
    shape = shape or sample
    if shape is None:
        raise CompressError(f"{where}: model '{model.name}' is subclassed and has no input "
                            "signature; give --input-shape D1,D2,... (one sample's shape, "
                            "e.g. 28,28,1) or --data")
    inp = keras.Input(tuple(shape), name="input")
    try:
        out = model(inp)
    except Exception as exc:  # noqa: BLE001 - the model refuses this shape, in its own words
        raise CompressError(f"{where}: model '{model.name}' cannot take inputs of shape "
                            f"{tuple(shape)} ({' '.join(str(exc).split())[:200]})") from None
    wrapped = keras.Model(inp, out, name=model.name)
    if getattr(model, "compiled", False) and getattr(model, "loss", None) is not None:
        try:
            metrics = (model.get_compile_config() or {}).get("metrics") or []
            wrapped.compile(optimizer="adam", loss=model.loss, metrics=metrics)
        except Exception:  # noqa: BLE001, S110 - the task is then inferred from the output
            pass
    if loaded_unsafely(model):
        mark_unsafe(wrapped)
    return wrapped, (f"subclassed model '{model.name}' ({type(model).__name__}) wrapped into "
                     f"a functional model with input shape {tuple(shape)}; the output file "
                     "holds it as a layer (load it with the same --import)")


def ensure_signature(model, data=None):
    """``model``, or for a subclassed one (no input signature) the functional wrapper of
    :func:`with_input_signature` with the sample shape of ``data`` (a Dataset, arrays or
    an ``(x, y)`` tuple of one input): the passes' Python API calls it first.

    >>> ensure_signature(subnet, x_train).inputs[0].shape   # doctest: +SKIP
    (None, 28, 28, 1)
    """
    if _inputs_or_none(model) is not None:
        return model
    sample = None
    try:
        x = data[0] if isinstance(data, tuple) else data
        if hasattr(x, "shape"):
            sample = tuple(x.shape[1:])
        elif hasattr(x, "sample_shape"):
            sample = tuple(x.sample_shape)
    except Exception:  # noqa: BLE001, S110 - no shape to be had: the refusal says what to give
        pass
    return with_input_signature(model, None, sample, where=f"model '{model.name}'")[0]


def _inputs_or_none(model):
    try:
        inputs = model.inputs
    except AttributeError:
        return None
    return inputs or None


def check_model_type(path: str | os.PathLike) -> Path:
    """That ``path`` can be reached and is of a model type (a suffix or a folder), reading
    nothing: the commands say this before what else they lack (a ``.tflite`` given to
    ``quantize`` is not "missing --data").

    >>> check_model_type(__file__)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: ...: unsupported model file type '.py' (expected .keras, .h5, .hdf5 or a SavedModel folder)
    """
    p = Path(path)
    try:
        os.stat(p)
    except OSError as exc:
        raise CompressError(f"{p}: {_why_unreachable(p, exc)}") from None
    if not p.is_dir() and p.suffix.lower() not in MODEL_SUFFIXES:
        raise CompressError(f"{p}: unsupported model file type '{p.suffix}' "
                            f"(expected {', '.join(MODEL_SUFFIXES)} or a SavedModel folder)")
    return p


def check_model_file(path: str | os.PathLike) -> Path:
    """Every check of a model file that needs no TensorFlow: it exists and can be read,
    its type, and its container (a ``.keras`` zip's members and sizes, an HDF5 signature).
    A SavedModel folder is only checked to exist here (its graph is checked on load).
    The CLI calls it before importing TensorFlow, so a corrupt file is refused at once.

    Example:

    >>> check_model_file("missing.keras")
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: missing.keras: no such file
    """
    p = check_model_type(path)
    if p.is_dir():
        return p
    if p.stat().st_size == 0:
        raise CompressError(f"{p}: empty file, not a Keras model")
    _check_container(p)
    return p


def _saved_compile_config(p: Path) -> dict | None:
    """The compile settings a ``.keras`` or ``.h5`` file was saved with (None: none)."""
    import json

    try:
        if p.suffix.lower() == ".keras":
            with zipfile.ZipFile(p) as zf:
                config = json.loads(zf.read("config.json"))
            return config.get("compile_config") or None
        import h5py

        with h5py.File(p, "r") as f:
            raw = f.attrs.get("training_config")
        if raw is None:
            return None
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        config["optimizer"] = config.pop("optimizer_config", None)
        return config
    except Exception:  # noqa: BLE001 - the model itself loaded; its loss is optional
        return None


def _compile_as_saved(model, p: Path, unsafe: bool) -> None:
    """Compile ``model`` with the loss and metrics its file carries, read in the user's
    safe mode; leave it uncompiled when it carries none, or one that cannot be read.

    Not ``load_model(compile=True)``: Keras fails on its own ``.h5`` files' string losses
    (``"mse"``), and a compile failure would refuse a model that loads fine.
    """
    config = _saved_compile_config(p)
    if not config or config.get("loss") is None:
        return
    import keras

    # Keras has no public form of this scope (load_model's safe_mode= is per call).
    from keras.src.saving.serialization_lib import SafeModeScope

    def read(module, value):
        if isinstance(value, str):
            module.get(value)  # an unknown name raises here, not in a pass
            return value
        if isinstance(value, dict):
            # round trip: a model copy (clone_model) rebuilds it from its config
            obj = module.deserialize(value)
            module.deserialize(keras.saving.serialize_keras_object(obj))
            return obj
        raise ValueError(f"unsupported entry {type(value).__name__}")

    def each(module, value):  # one entry, or a dict / list of them (several outputs)
        if isinstance(value, dict) and "class_name" not in value:
            return {k: each(module, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [each(module, v) for v in value]
        return read(module, value)

    try:
        with SafeModeScope(not unsafe):
            loss = each(keras.losses, config["loss"])
            metrics = config.get("metrics") or []
            metrics = each(keras.metrics, metrics) if isinstance(metrics, (list, dict)) \
                else []
            weights = config.get("loss_weights")
            extra = {"loss_weights": weights} if isinstance(weights, (dict, list)) else {}
            try:
                optimizer = keras.optimizers.deserialize(config["optimizer"])
            except Exception:  # noqa: BLE001 - the optimizer is not the task: Keras's default
                optimizer = "rmsprop"
            model.compile(optimizer=optimizer, loss=loss, metrics=metrics, **extra)
    except Exception:  # noqa: BLE001, S110 - an unreadable loss: the task is inferred instead
        pass


# Models the user loaded with --unsafe (and copies of them), without an attribute hung on
# Keras's objects: a weak set, so a model is forgotten when it is gone.
_UNSAFE_MODELS: weakref.WeakSet = weakref.WeakSet()


def mark_unsafe(model) -> None:
    """Remember that ``model`` came from a file the user trusted (``--unsafe``)."""
    _UNSAFE_MODELS.add(model)


def loaded_unsafely(model) -> bool:
    """Whether ``model`` (or the model it was copied from) was loaded with ``--unsafe``."""
    return model in _UNSAFE_MODELS


def _why_unreachable(p: Path, exc: OSError) -> str:
    """Why ``os.stat`` failed, in the user's words (``Path.exists`` says False to all)."""
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (a link in this path points back to itself)"
    if exc.errno == errno.ENOENT and p.is_symlink():
        return f"broken symbolic link (it points to {os.readlink(p)}, which does not exist)"
    if exc.errno == errno.ENOENT:
        return "no such file"
    if exc.errno == errno.ENOTDIR:
        return "no such file (a folder in this path is a file)"
    if exc.errno == errno.EACCES:
        return "permission denied (cannot reach this file)"
    return f"cannot read ({exc.strerror})"


def _check_container(p: Path) -> None:
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise CompressError(f"{p}: cannot read ({exc.strerror})") from None
    if p.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(p):
            raise CompressError(f"{p}: not a valid .keras archive (truncated or corrupt file)")
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
                _check_member_names(p, names)
                _check_unpacked_sizes(p, zf.infolist())  # before testzip inflates anything
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CompressError(f"{p}: corrupt .keras archive ({exc})") from exc
        if bad is not None:
            raise CompressError(f"{p}: corrupt .keras archive (bad member {bad})")
        if "config.json" not in names:
            raise CompressError(f"{p}: .keras archive has no config.json, not a Keras model")
        return
    if head != _HDF5_SIGNATURE:
        raise CompressError(f"{p}: not an HDF5 file (a {p.suffix} model must be HDF5)")
    import h5py

    try:
        with h5py.File(p, "r") as f:
            has_config = "model_config" in f.attrs
    except OSError as exc:
        raise CompressError(f"{p}: corrupt or truncated HDF5 file") from exc
    if not has_config:
        raise CompressError(f"{p}: HDF5 file holds weights only, no model architecture "
                            "(save the whole model with model.save)")


def _check_member_names(p: Path, names: list) -> None:
    """Refuse a member whose name points outside the archive (absolute, or a ``..`` step).

    Keras writes relative names only. It extracts an archive with assets to a temporary
    folder and skips such names with a warning; an archive that holds them was made to
    attack a reader, and is refused before anything is extracted.
    """
    for name in names:
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or ".." in parts or re.match(r"[A-Za-z]:", name):
            shown = name if len(name) <= 80 else name[:77] + "..."
            raise CompressError(f"{p}: archive member '{shown}' points outside the archive "
                                "(an absolute or '..' name); Keras never writes one, refusing "
                                "this file")


def _check_unpacked_sizes(p: Path, members: list) -> None:
    """Refuse a zip bomb from its central directory, before a byte is inflated."""
    for info in members:
        if info.filename in ("config.json", "metadata.json") and \
                info.file_size > MAX_CONFIG_BYTES:
            raise CompressError(f"{p}: {info.filename} unpacks to {_space(info.file_size)} "
                                f"(a model's is under {_space(MAX_CONFIG_BYTES)}); refusing to "
                                "read it")
        if info.file_size > EXPANSION_FLOOR and \
                info.file_size > MAX_EXPANSION * max(info.compress_size, 1):
            raise CompressError(f"{p}: member {info.filename} unpacks to "
                                f"{_space(info.file_size)} from {_space(info.compress_size)} "
                                f"(over {MAX_EXPANSION}:1), a decompression bomb; refusing "
                                "to read it")
    assets = sum(i.file_size for i in members if i.filename.startswith("assets/"))
    if assets > MAX_ASSETS_BYTES:
        raise CompressError(f"{p}: assets/ unpacks to {_space(assets)} (limit "
                            f"{_space(MAX_ASSETS_BYTES)}); refusing to extract it")


def _explain_load_error(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    low = text.lower()
    if "lambda" in low and ("safe_mode" in low or "unsafe" in low):
        return ("contains a Lambda layer, whose code Keras only runs with safe_mode off; "
                "pass --unsafe (unsafe=True) only if you trust this file")
    if "unknown layer" in low or "could not locate" in low or "not a known" in low:
        found = re.search(r"(?:could not locate (?:class|function)|unknown layer:?)\s*"
                          r"['\"`]([^'\"`]+)['\"`]", text, re.IGNORECASE)
        name = f"'{found.group(1)}'" if found else _quoted_name(text)
        return (f"unknown custom layer or object {name}: import the module that defines it "
                "(--import MODULE or --import file.py) and register it with "
                "@keras.saving.register_keras_serializable").strip()
    if "truncated" in low or "unable to open" in low or "bad zip" in low:
        return "corrupt or truncated model file"
    return f"could not load the model ({text[:200]})"


def import_modules(specs) -> list:
    """Import the user's modules (dotted names or ``.py`` paths) before a model loads, so
    that the custom layers they register with ``@keras.saving.register_keras_serializable``
    deserialize. This runs the modules' code: only on the user's explicit ``--import``
    (or a recipe's ``import:`` with ``--unsafe``).

    Example:

    >>> import_modules(["my_layers", "./blocks.py"])   # doctest: +SKIP
    [<module 'my_layers' ...>, <module 'blocks' ...>]

    Raises:
        CompressError: a module that is missing or fails on import: its own error, one line.
    """
    import importlib
    import importlib.util
    import sys

    modules = []
    for spec in specs:
        spec = str(spec)
        try:
            if spec.endswith(".py") or os.sep in spec or "/" in spec:
                path = Path(spec)
                if not path.is_file():
                    raise CompressError(f"--import {spec}: no such file")
                name = re.sub(r"\W", "_", path.stem)
                found = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(found)
                sys.modules[name] = module
                try:
                    found.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(name, None)
                    raise
            else:
                module = importlib.import_module(spec)
        except CompressError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code, their error
            text = " ".join(str(exc).split())[:200]
            raise CompressError(f"--import {spec}: {type(exc).__name__}: {text}") from None
        modules.append(module)
    return modules


def _quoted_name(text: str) -> str:
    for quote in ("'", '"', "`"):
        parts = text.split(quote)
        if len(parts) >= 3:
            return f"'{parts[1]}'"
    return ""


def _NamedSignature(*args, **kwargs):
    """A ``keras.layers.TFSMLayer`` whose dict of inputs reaches the signature as keyword
    arguments (TFSMLayer passes one positional argument, which suits one input only)."""
    import keras

    class NamedSignature(keras.layers.TFSMLayer):
        def call(self, inputs, training=False, **kw):
            if isinstance(inputs, dict):
                return self.call_endpoint_fn(**inputs, **kw)
            return super().call(inputs, training=training, **kw)

    return NamedSignature(*args, **kwargs)


def _load_saved_model_dir(p: Path, unsafe: bool = False):
    if not (p / "saved_model.pb").is_file():
        raise CompressError(f"{p}: is a directory but not a SavedModel (no saved_model.pb)")
    if not unsafe:
        _check_saved_model_graph(p)
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(p))
        fn = loaded.signatures["serving_default"]
        specs = fn.structured_input_signature[1]
        if len(specs) == 1:
            spec = next(iter(specs.values()))
            layer = keras.layers.TFSMLayer(str(p), call_endpoint="serving_default")
            inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name)
        else:  # a signature takes its inputs by name
            layer = _NamedSignature(str(p), call_endpoint="serving_default")
            inputs = {name: keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name,
                                        name=name) for name, spec in specs.items()}
        outputs = layer(inputs)
        if isinstance(outputs, dict) and len(outputs) == 1:
            outputs = next(iter(outputs.values()))
        # An inference-only wrapper: inspect and export work, passes that edit layers do not.
        return keras.Model(inputs, outputs, name=p.name)
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{p}: could not load the SavedModel ({' '.join(str(exc).split())[:200]})"
                            ) from exc


def _check_saved_model_graph(p: Path) -> None:
    """Refuse a SavedModel whose graph holds an op outside the allow-list, by name."""
    from compress.graph_safety import read_saved_model, unsafe_ops

    try:
        found = unsafe_ops(read_saved_model(p))
    except (OSError, ValueError) as exc:
        raise CompressError(f"{p}: could not read saved_model.pb "
                            f"({' '.join(str(exc).split())[:200]})") from exc
    if not found:
        return
    ops = list(dict.fromkeys(op for op, _ in found))
    named = ", ".join(f"'{op}'" for op in ops[:3]) + (f" and {len(ops) - 3} more"
                                                       if len(ops) > 3 else "")
    raise CompressError(
        f"{p}: the SavedModel's graph runs op {named} (in {found[0][1]}), outside the pure "
        "math ops it may run without --unsafe (file I/O, Python and unknown ops act on this "
        "machine); pass --unsafe only if you trust this folder")


def check_output(path: str | os.PathLike, inputs: list | tuple = (), force: bool = False,
                 suffixes: tuple | None = None) -> Path:
    """Check that ``path`` may be written, before any work is done.

    Refuses, with one line each: a name the file system cannot hold (longer than its
    NAME_MAX, or not encodable), a path that is an existing directory, a path equal to one
    of ``inputs`` (the input is never overwritten, even with ``force``), an existing file
    without ``force``, a missing or unwritable parent folder (a real write probe), and a
    suffix outside ``suffixes``. Any name that passes can be written: the temporary file
    beside it (:func:`atomic_path`) has a short name of its own.
    """
    out = Path(path)
    parent = out.parent if str(out.parent) else Path(".")
    _check_name(out, parent)
    try:
        _check_target(out, inputs, force, suffixes)
    except OSError as exc:  # a path too long as a whole, a loop of links, ...
        raise CompressError(f"{out}: cannot be written ({exc.strerror})") from exc
    if not parent.is_dir():
        raise CompressError(f"{out}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CompressError(f"{out}: folder {parent} is not writable")
    try:  # a real probe: permissions, read-only mounts and pseudo file systems
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise CompressError(f"{out}: folder {parent} is not writable ({exc.strerror})"
                            ) from exc
    return out


def _check_target(out: Path, inputs, force: bool, suffixes) -> None:
    if out.is_dir():
        raise CompressError(f"{out}: output path is a directory; give a file name")
    for item in inputs:
        if item is not None and Path(item).exists() and out.exists() and \
                os.path.samefile(out, item):
            raise CompressError(f"{out}: output is the input file; choose another output path")
        if item is not None and Path(item).resolve() == out.resolve():
            raise CompressError(f"{out}: output is the input file; choose another output path")
    if suffixes and out.suffix.lower() not in suffixes:
        raise CompressError(f"{out}: output must end with {' or '.join(suffixes)}")
    if out.exists() and not force:
        raise CompressError(f"{out}: already exists; pass --force to overwrite")


def _check_name(out: Path, parent: Path) -> None:
    """The output's name and its temporary file's name must fit the folder's file system."""
    try:
        name = os.fsencode(out.name)
    except UnicodeEncodeError as exc:
        raise CompressError(f"{out}: the name cannot be encoded as a file name "
                            f"({exc.reason})") from exc
    if not name or out.name in (".", ".."):
        raise CompressError(f"{out}: give a file name")
    name_max = _name_max(parent)
    longest = max(len(name), len(os.fsencode(_temp_name("XXXXXXXX", out))))
    if longest > name_max:
        shown = out if len(out.name) <= 60 else out.parent / f"{out.name[:40]}...{out.name[-12:]}"
        raise CompressError(f"{shown}: the file name is {len(name)} bytes; this file system "
                            f"allows {name_max}")


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, that ``folder``'s file system allows."""
    try:
        return os.pathconf(folder if folder.is_dir() else ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer
        return 255


# The temporary file of an output: short and fixed, whatever the output's name, so any
# name the file system allows can be written (one 251 bytes long included).
_TEMP_PREFIX = ".tmp-"


def _temp_name(random: str, out: Path) -> str:
    return f"{_TEMP_PREFIX}{random}{_temp_suffix(out)}"


def _temp_suffix(out: Path) -> str:
    # Writers pick the format from the suffix (Keras: .keras or .h5, lower case only).
    suffix = out.suffix.lower()
    return f".partial{suffix}" if len(suffix) <= 16 else ".partial"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needs_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A failure inside the block (a full disk included) is one line, and the temporary file
    is removed: no half-written output is ever left, under the final name or another. A
    Ctrl-C or SIGTERM that arrives while the block writes waits for it to finish (a
    library's own clean-up cannot be cut short), then the temporary file is removed and
    the interrupt goes on.

    Args:
        path: the output.
        needs_bytes: int or None. The size about to be written, when it is known: refused
            up front when the folder's file system has less free space.
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if needs_bytes is not None:
        check_free_space(out, needs_bytes)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_temp_suffix(out), dir=folder)
    except OSError as exc:
        raise CompressError(f"{out}: cannot write in {folder} ({exc.strerror})") from exc
    os.close(fd)
    os.unlink(tmp)  # writers (Keras, converters) create the file themselves
    tmp_path = Path(tmp)
    try:
        try:
            with interruptions_held():
                yield tmp_path
        except OSError as exc:  # ENOSPC, EIO, EDQUOT, ... from the writer
            raise CompressError(f"{out}: cannot write ({_reason(exc)}); nothing was written"
                                ) from exc
        if not tmp_path.exists():
            raise CompressError(f"{out}: the writer produced no file")
        raise_if_interrupted()
        try:
            os.replace(tmp_path, out)
        except OSError as exc:
            raise CompressError(f"{out}: cannot write ({_reason(exc)})") from exc
    finally:
        _remove(tmp_path)


@contextlib.contextmanager
def undone_on_failure(path: str | os.PathLike) -> Iterator[None]:
    """Remove the output ``path``, written just before, when the block fails or is
    interrupted: the commands measure their report on the written file, and a command
    that exits non-zero leaves no output behind.

    >>> with undone_on_failure("out.keras"):   # doctest: +SKIP
    ...     after = model_report(model, data, path="out.keras")
    """
    try:
        yield
    except BaseException:
        _remove(Path(path))
        raise


def _remove(tmp_path: Path) -> None:
    with contextlib.suppress(OSError):
        if tmp_path.is_dir() and not tmp_path.is_symlink():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists() or tmp_path.is_symlink():
            tmp_path.unlink()


def _reason(exc: OSError) -> str:
    """An OSError in a few words, on one line: its strerror, else its message."""
    text = " ".join(str(exc.strerror or exc).split())
    return text[:200] or type(exc).__name__


# Room kept free beyond what is written: file-system blocks, the folder's own entry.
_SPACE_MARGIN = 16 * 1024


def check_free_space(path: str | os.PathLike, needs_bytes: int) -> None:
    """Refuse in one line when ``path``'s folder has less free space than ``needs_bytes``.

    Example:

    >>> check_free_space("out.keras", 2**50)                 # doctest: +SKIP
    Traceback (most recent call last):
    compress.errors.CompressError: out.keras: not enough free space in . (about 1024.0 TiB
    needed, 12.3 GiB free)
    """
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:  # no answer (a pseudo file system): the write itself will tell
        return
    if needs_bytes + _SPACE_MARGIN > free:
        raise CompressError(f"{out}: not enough free space in {folder} (about "
                            f"{_space(needs_bytes + _SPACE_MARGIN)} needed, {_space(free)} free)")


def _space(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (refused up front if the disk cannot hold it)."""
    with atomic_path(path, needs_bytes=len(data)) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_artifact(path: str | os.PathLike, content: bytes, inputs: list | tuple = (),
                   force: bool = False, suffixes: tuple = ()) -> Path:
    """The one writer of a pass's artifact: :func:`check_output`, then written atomically.

    Example:

    >>> content, info = quantize(model, ds, mode="int8")                # doctest: +SKIP
    >>> write_artifact("model.tflite", content, inputs=["model.keras"])  # doctest: +SKIP
    PosixPath('model.tflite')
    """
    out = check_output(path, inputs=inputs, force=force, suffixes=suffixes)
    return write_bytes(out, content)


def save_model(model, path: str | os.PathLike, inputs: list | tuple = (), force: bool = False
               ) -> Path:
    """Save ``model`` to ``.keras`` or ``.h5`` atomically, after :func:`check_output`.

    The folder must have room for the file (checked first: from the weights for a
    ``.keras``, exactly for an ``.h5``); a write that fails anyway (a disk that fills
    meanwhile) is one line, and nothing is left behind.
    An ``.h5`` is built in memory and written by Python: HDF5 writing to a disk that fills
    under it leaves its library in a state that crashes the process (SIGSEGV) at exit.

    Args:
        model: the Keras model.
        path: output file; its suffix picks the format.
        inputs: files that must not be overwritten (the input model).
        force: bool, default False. Overwrite an existing output.
    """
    out = check_output(path, inputs=inputs, force=force, suffixes=MODEL_SUFFIXES)
    model = inline_shared(deployable(model))
    if out.suffix.lower() != ".keras":
        write_bytes(out, _hdf5_bytes(model))  # its exact size is checked against the disk
        return out
    with atomic_path(out, needs_bytes=_file_bytes(model)) as tmp:
        model.save(tmp)
    return out


def _hdf5_bytes(model) -> bytes:
    """``model`` as the bytes of the ``.h5`` file ``model.save`` would write."""
    import io as _bytes_io

    import h5py

    # Keras's public save writes .h5 only to a path; its saver also takes an open h5py
    # file, here one in memory (h5py's file-object driver).
    from keras.src.legacy.saving import legacy_h5_format

    buffer = _bytes_io.BytesIO()
    with h5py.File(buffer, "w") as f:
        legacy_h5_format.save_model_to_hdf5(model, f)
    return buffer.getvalue()


def _file_bytes(model) -> int:
    """About the size of ``model``'s file: its weights, a tenth more, and the format's
    own few kilobytes per weight and for the architecture."""
    import numpy as np

    total = 0
    for weight in model.weights:
        try:
            itemsize = np.dtype(weight.dtype).itemsize
        except TypeError:  # a dtype NumPy does not name (bfloat16): at most 4 bytes
            itemsize = 4
        total += int(np.prod(weight.shape)) * itemsize
    return total + total // 10 + 4096 * len(model.weights) + 32 * 1024


def inline_shared(model):
    """``model``, or, when a layer is used both inside one of its nested functional models
    and outside it (a KerasHub CausalLM's head reuses its backbone's token embedding, and a
    rebuilt copy keeps that as a plain functional model), the same computation as one
    flat graph: the nested models' layers called in place. Keras saves such a layer once
    and loads the outer use as a second, empty layer ("expected 2 variables, but received
    0"); in one graph it is an ordinary shared layer. Models of their own class (which
    rebuild the sharing from their config) are returned as they are.

    Example:

    >>> flat = inline_shared(pruned_causal_lm)      # doctest: +SKIP
    """
    import keras
    from keras import tree
    from keras.src.models.functional import Functional

    if type(model) is not Functional:  # a class of its own rebuilds its sharing itself
        return model
    nested = [la for la in model.layers if isinstance(la, Functional)]
    inner = {id(x) for m in nested for x in m._flatten_layers(include_self=False)}
    if not any(id(la) in inner for la in model.layers if not isinstance(la, Functional)):
        return model

    def inlined(op):
        if not isinstance(op, Functional):
            return op

        def call(inputs, *args, **kwargs):
            return op._run_through_graph(op._standardize_inputs(inputs), operation_fn=inlined)
        return call

    fresh = tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype, name=t.name),
        model._inputs_struct)
    outputs = model._run_through_graph(fresh, operation_fn=inlined)
    flat = keras.Model(fresh, tree.pack_sequence_as(model._outputs_struct,
                                                    tree.flatten(outputs)),
                       name=model.name)
    return flat  # uncompiled, as deployable's copy: no optimizer state in the file


def deployable(model):
    """The model without its optimizer state, which ``.keras`` files would otherwise carry.

    A compiled model saves its optimizer's slots (Adam: two dense copies of every weight),
    which triples the file and hides pruning's zeros from zip. An uncompiled clone with
    the same weights saves only the model; models that cannot be cloned are returned as is.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    import keras

    try:
        # Not clone_model: Keras 3 compiles a clone of a compiled model.
        config = keras.saving.serialize_keras_object(model)
        config.pop("compile_config", None)
        fresh = keras.saving.deserialize_keras_object(config)
        fresh.set_weights(model.get_weights())
    except Exception:  # noqa: BLE001 - subclassed models without get_config
        return model
    from compress.layer_state import copy_assets

    copy_assets(model, fresh)  # vocabularies: the file would hold empty ones
    return fresh
