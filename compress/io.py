"""Load Keras models safely and write outputs atomically, never touching the input.

Example:

>>> from compress import io
>>> model = io.load_model("model.h5")                        # doctest: +SKIP
>>> io.save_model(model, "out.keras", inputs=["model.h5"])   # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path

from compress.errors import CompressError, raise_if_interrupted

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def load_model(path: str | os.PathLike, unsafe: bool = False):
    """Load a Keras model from ``.keras``, ``.h5``/``.hdf5`` or a SavedModel folder.

    The file is opened read-only and never modified. ``safe_mode`` stays on unless
    ``unsafe=True``: with it off, Keras deserializes ``Lambda`` layers, which executes
    Python code stored in the file, so pass it only for files you trust. The model is
    loaded uncompiled; passes compile what they train.

    Args:
        path: the model file or SavedModel directory.
        unsafe: bool, default False. Allow code execution from the file (``--unsafe``).

    Returns:
        A ``keras.Model``.

    Raises:
        CompressError: one line naming the file and what is wrong with it.
    """
    p = Path(path)
    if not p.exists():
        raise CompressError(f"{p}: no such file")
    if p.is_dir():
        return _load_saved_model_dir(p)
    if p.suffix.lower() not in MODEL_SUFFIXES:
        raise CompressError(f"{p}: unsupported model file type '{p.suffix}' "
                            f"(expected {', '.join(MODEL_SUFFIXES)} or a SavedModel folder)")
    if p.stat().st_size == 0:
        raise CompressError(f"{p}: empty file, not a Keras model")
    _check_container(p)

    import keras

    from compress.layers import register_layers

    register_layers()  # the toolkit's own layers load without custom_objects

    try:
        model = keras.models.load_model(p, compile=False, safe_mode=not unsafe)
    except Exception as exc:  # Keras raises many types; turn each into one line.
        raise CompressError(f"{p}: {_explain_load_error(exc)}") from exc
    if unsafe:
        mark_unsafe(model)  # copies made by the passes may rebuild its Lambdas
    return model


# Models the user loaded with --unsafe (and copies of them), without an attribute hung on
# Keras's objects: a weak set, so a model is forgotten when it is gone.
_UNSAFE_MODELS: weakref.WeakSet = weakref.WeakSet()


def mark_unsafe(model) -> None:
    """Remember that ``model`` came from a file the user trusted (``--unsafe``)."""
    _UNSAFE_MODELS.add(model)


def loaded_unsafely(model) -> bool:
    """Whether ``model`` (or the model it was copied from) was loaded with ``--unsafe``."""
    return model in _UNSAFE_MODELS


def _check_container(p: Path) -> None:
    with open(p, "rb") as f:
        head = f.read(8)
    if p.suffix.lower() == ".keras":
        if not zipfile.is_zipfile(p):
            raise CompressError(f"{p}: not a valid .keras archive (truncated or corrupt file)")
        try:
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
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
                "and register it with @keras.saving.register_keras_serializable").strip()
    if "truncated" in low or "unable to open" in low or "bad zip" in low:
        return "corrupt or truncated model file"
    return f"could not load the model ({text[:200]})"


def _quoted_name(text: str) -> str:
    for quote in ("'", '"', "`"):
        parts = text.split(quote)
        if len(parts) >= 3:
            return f"'{parts[1]}'"
    return ""


def _load_saved_model_dir(p: Path):
    if not (p / "saved_model.pb").exists():
        raise CompressError(f"{p}: is a directory but not a SavedModel (no saved_model.pb)")
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(p))
        fn = loaded.signatures["serving_default"]
        spec = next(iter(fn.structured_input_signature[1].values()))
        layer = keras.layers.TFSMLayer(str(p), call_endpoint="serving_default")
        inputs = keras.Input(shape=tuple(spec.shape[1:]), dtype=spec.dtype.name)
        outputs = layer(inputs)
        if isinstance(outputs, dict):
            outputs = next(iter(outputs.values()))
        # An inference-only wrapper: inspect and export work, passes that edit layers do not.
        return keras.Model(inputs, outputs, name=p.name)
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"{p}: could not load the SavedModel ({' '.join(str(exc).split())[:200]})"
                            ) from exc


def check_output(path: str | os.PathLike, inputs: list | tuple = (), force: bool = False,
                 suffixes: tuple | None = None) -> Path:
    """Check that ``path`` may be written, before any work is done.

    Refuses, with one line each: a path that is an existing directory, a path equal to
    one of ``inputs`` (the input is never overwritten, even with ``force``), an existing
    file without ``force``, a missing or unwritable parent folder, and a suffix outside
    ``suffixes``.
    """
    out = Path(path)
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
    parent = out.parent if str(out.parent) else Path(".")
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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success.

    A failure or interruption (Ctrl-C) inside the block removes the temporary file, so
    no half-written output is ever left under the final name.
    """
    out = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=f".partial{out.suffix.lower()}",
                                   dir=out.parent if str(out.parent) else ".")
    except OSError as exc:
        raise CompressError(f"{out}: cannot write in {out.parent} ({exc.strerror})") from exc
    os.close(fd)
    os.unlink(tmp)  # writers (Keras, converters) create the file themselves
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if not tmp_path.exists():
            raise CompressError(f"{out}: the writer produced no file")
        raise_if_interrupted()
        try:
            os.replace(tmp_path, out)
        except OSError as exc:
            raise CompressError(f"{out}: cannot write ({exc.strerror})") from exc
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                import shutil

                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
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

    Args:
        model: the Keras model.
        path: output file; its suffix picks the format.
        inputs: files that must not be overwritten (the input model).
        force: bool, default False. Overwrite an existing output.
    """
    out = check_output(path, inputs=inputs, force=force, suffixes=MODEL_SUFFIXES)
    with atomic_path(out) as tmp:
        deployable(model).save(tmp)
    return out


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
        return fresh
    except Exception:  # noqa: BLE001 - subclassed models without get_config
        return model
