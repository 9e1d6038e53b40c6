"""Export to ONNX and TFLite, verified in the real runtime before anything is reported.

:func:`export_artifact` is the export pass: a Keras model in, the artifact's bytes and
its verification out, nothing written; its options are :data:`EXPORT_OPTIONS`, shared
by ``compress export``, the recipe ``export`` step and the keyword arguments. The
writers :func:`export_onnx`, :func:`export_tflite` and :func:`export` are the same
export followed by an atomic write. ONNX goes through Keras's own
``model.export(format="onnx")`` (``tf2onnx.convert.from_keras`` fails on Keras 3
models), of a wrapper that calls the model in inference mode; TFLite through
``model.export(format="litert")``. Running and measuring artifacts is
:mod:`compress.runtime`.

Example:

>>> from compress.export import export_artifact, export_onnx
>>> content, check = export_artifact(model, data, format="tflite")   # doctest: +SKIP
>>> check = export_onnx(model, "model.onnx", x=x_test[:256])         # doctest: +SKIP
>>> check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0   # doctest: +SKIP
True
"""

from __future__ import annotations

import contextlib
import functools
import re
import tempfile
from pathlib import Path

import numpy as np

from compress import io, progress
from compress.errors import CompressError
from compress.options import Option, Schema
from compress.passes import Pass
from compress.quiet import quiet_output
from compress.report import concrete_shape
from compress.runtime import refuse_keras_quantized, refuse_lookup_tables, verify

FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}
# An ill-conditioned network (a random EfficientNetV2B0 of the model zoo: logits up to 420,
# relative error growing from 1e-7 to 3e-4 through its stage-6 squeeze-and-excitation
# blocks) leaves every float32 evaluation beyond 1e-4 of a float64 copy: on its 16 zoo
# inputs Keras eager 9.7e-4, Keras graph 1.3e-4..4.4e-4 (batch size, threads), onnxruntime
# 6.3e-4 (1.7e-3 without graph optimizations), LiteRT 4.8e-4; the float64 copy itself
# moves 1.4e-4 when its inputs move by float32 rounding. The largest of these is 1.8x
# the Keras distance the check measures; an artifact within 2x of it is as exact as float32
# evaluation gets, and a wrong op is far outside it.
FLOAT32_NOISE_FACTOR = 2.0
# The noise rule serves the default tolerance only: an --atol below it is the user's own
# demand, met by the atol rule or refused.
NOISE_RULE_MIN_ATOL = 1e-4

EXPORT_OPTIONS = Schema("export", [
    Option("format", str, None, "target format; default from the output suffix (.onnx or "
           ".tflite), onnx where there is none", choices=("onnx", "tflite")),
    Option("samples", int, 256, "inputs to verify the artifact on (the data's test split, "
           "else seeded random inputs)", low=1),
    Option("atol", float, 1e-4, "parity tolerance, relative to each output's scale: an "
           "output passes when max|runtime - Keras| <= atol * max(1, max|Keras output|) "
           "(absolute for outputs within [-1, 1]); one beyond it passes when it is within "
           "that of a float64 copy of the model (Keras's own float32 rounding), or, where "
           "Keras's float32 output (eager or compiled predict) is itself further than that "
           "from the float64 copy (an ill-conditioned network) and atol is at least the "
           "default, within 2x Keras's own distance to it; top-1 must agree on every input", low=0.0),
    Option("without_lookups", bool, False, "a model that takes strings: export it from "
           "the outputs of its lookup layers (TextVectorization, StringLookup...) on, which "
           "then run in the input pipeline; the artifact takes their token ids or one-hot "
           "rows"),
    Option("seed", int, 0, "seed of the random verification inputs (without data)",
           cli=False),
])


def export_artifact(model, data=None, *, verbose=0, **options) -> tuple[bytes, dict]:
    """Export ``model`` to ONNX or TFLite bytes, verified in the runtime; write nothing.

    The artifact runs in onnxruntime or LiteRT on :func:`verification_inputs` (the
    data's test split, else seeded random inputs) and must agree with Keras: a max
    absolute difference within ``atol`` (relative to the largest output when that is above
    1) and, for a classifier, top-1 agreement of 100%. Where Keras's own float32 outputs
    are the ones off (a deep network's rounding), the artifact passes when it meets the
    same rule against a float64 copy of the model. Where no float32 evaluation can meet
    it (an ill-conditioned network: Keras's own float32 output, eager or from its compiled
    ``predict``, is beyond ``atol`` of the float64 copy), the artifact passes when it is no further from the float64 copy than
    :data:`FLOAT32_NOISE_FACTOR` times Keras's own distance, with 100% top-1 agreement
    against the copy. ``float64_reference`` says which rule passed it (``rule``:
    ``"atol"`` or ``"keras float32"``) and the distance it allowed (``allowed``).

    Example:

    >>> content, check = export_artifact(model, data, format="onnx")   # doctest: +SKIP
    >>> check["format"], check["bytes"] == len(content)                # doctest: +SKIP
    ('onnx', True)

    Args:
        model: a single-input Keras model (not modified).
        data: a :class:`compress.data.Dataset` prepared for the model, or None.
        **options: see ``EXPORT_OPTIONS``: ``format=None`` (onnx), ``samples=256``,
            ``atol=1e-4``, ``without_lookups=False`` (see
            :func:`compress.runtime.without_lookups`), ``seed=0``.

    Returns:
        ``(content, info)``: the artifact's bytes, and ``format``, ``bytes`` plus the
        verification of :func:`compress.runtime.verify`.

    Raises:
        CompressError: bad options, a failed export, a disagreement beyond ``atol``.
    """
    opts = EXPORT_OPTIONS.validate(options)
    model = io.ensure_signature(model, data)  # a subclassed model: wrapped, with an input
    fmt = opts["format"] or "onnx"
    lookups = None
    if opts["without_lookups"]:
        from compress.data import as_dataset
        from compress.runtime import without_lookups

        data = as_dataset(data, model) if data is not None else None
        model, data, lookups = without_lookups(model, data)
    x = verification_inputs(model, data, opts["samples"], opts["seed"])
    content, check = _exported(model, fmt, x, opts["atol"], where=f"model '{model.name}'")
    info = {"format": fmt, "bytes": len(content), **check}
    if lookups:
        info["lookups_note"] = lookups
    note = unknown_size_note(model, data)
    if note:
        info["input_size_note"] = note
    return content, info


def unknown_size_note(model, data, done: str = "checked and timed") -> str | None:
    """A note when the model's inputs have unknown sizes and no data gives them (``done``:
    what was done on the random inputs)."""
    if data is not None:
        return None
    parts, sizes = [], []
    for t in model.inputs:
        shape = tuple(t.shape)
        if None not in shape[1:]:
            continue
        sizes.append(concrete_shape(shape[1:], t.dtype)[shape[1:].index(None)])
        name = getattr(t, "name", None)
        parts.append(f"'{name}' {shape}" if name and len(model.inputs) > 1 else f"{shape}")
    if not parts:
        return None
    if len(set(sizes)) == 1:
        what = f"{', '.join(parts)} at {sizes[0]} on the unknown axes"
    else:
        what = ", ".join(f"{p} at {s}" for p, s in zip(parts, sizes)) + " on the unknown axes"
    weak = ", a weak check of a sequence model" if min(sizes) == 1 else ""
    return (f"input size unknown: {done} on random inputs of {what}{weak}; pass --data "
            "for the real size")


def _suffix(options: dict) -> str:
    return FORMATS[options.get("format") or "onnx"]


PASS = Pass("export", "ONNX or TFLite, verified against Keras in onnxruntime / LiteRT",
            "compress.export:export_artifact", EXPORT_OPTIONS, produces="artifact",
            suffix=_suffix, api="export_artifact", order=10)


def verification_inputs(model, data=None, samples: int = 256, seed: int = 0) -> np.ndarray:
    """The inputs an artifact is verified on: the first ``samples`` of the data's test
    split, or, without data, ``samples`` seeded uniform random inputs in [0, 1).

    ``data`` is anything :func:`compress.data.as_dataset` takes (a Dataset, a
    ``tf.data.Dataset``, arrays, an ``(x, y)`` tuple); only ``samples`` samples are read.

    Example:

    >>> verification_inputs(model, None, samples=8).shape   # doctest: +SKIP
    (8, 28, 28, 1)
    """
    if data is not None:
        from compress.data import as_dataset, fit_to_model

        # inputs only: targets unchecked; an image folder's drawn from every class
        x, _ = as_dataset(data).spread("test", samples)
        return named_inputs(model, fit_to_model(x, model, "test data"))
    rng = np.random.default_rng(seed)
    drawn = [_random_input(model, t, samples, rng) for t in model.inputs]
    if len(model.inputs) > 1:  # several inputs: a dict keyed by input name
        return dict(zip(_input_names(model), drawn))
    return drawn[0]


def _random_input(model, tensor, samples: int, rng) -> np.ndarray:
    """Seeded inputs for ``tensor``, one of ``model``'s inputs: uniform in [0, 1) for a
    float input; for an integer one, ids drawn below the vocabulary of the embedding
    that reads it (uniform [0, 1) cast to integers was all 0: every token a padding
    token, and a masked model gave one output for all of them), pixels in [0, 255] for a
    ``uint8`` input no embedding reads, or 1 for any other integer input no embedding
    reads (a padding mask: every position kept)."""
    shape = (samples,) + concrete_shape(tensor.shape[1:], tensor.dtype)
    dtype = str(getattr(tensor, "dtype", None) or "float32")
    if not dtype.startswith(("int", "uint")):
        return rng.random(shape, dtype=np.float32)
    high = _vocabulary(model, tensor)
    if high is None and dtype == "uint8":  # pixels
        high = 256
    if high is None:
        return np.ones(shape, dtype)
    return rng.integers(0, high, shape).astype(dtype)


def _vocabulary(model, tensor) -> int | None:
    """The largest ``input_dim`` among the embeddings in the layers that read ``tensor``
    directly (KerasHub's token-and-position embedding holds its own), else None.

    >>> import keras
    >>> inp = keras.Input((5,), dtype="int32")
    >>> m = keras.Model(inp, keras.layers.Embedding(30, 4)(inp))
    >>> _vocabulary(m, inp)
    30
    """
    import keras

    found = []
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            tensors = list(node.input_tensors)
            if not any(t is tensor for t in tensors):
                continue
            if isinstance(layer, keras.Model):  # a nested model: follow its own input
                inner = list(getattr(layer, "inputs", None) or [])
                if len(inner) == len(tensors):
                    dim = _vocabulary(layer, inner[[t is tensor for t in tensors].index(True)])
                    found += [dim] if dim else []
                continue
            for sub in [layer, *getattr(layer, "_flatten_layers", list)()]:
                dim = getattr(sub, "input_dim", None)
                if isinstance(dim, int) and dim > 0:
                    found.append(dim)
    return max(found) if found else None


def _input_names(model) -> list[str]:
    from compress.data.arrays import model_inputs

    return [spec[0] for spec in model_inputs(model)]


def named_inputs(model, x):
    """Inputs of a model with several inputs as a dict keyed by input name (a list is
    taken in input order); one input's array is returned as it is.

    >>> named_inputs(model, [x_image, x_extra]).keys()   # doctest: +SKIP
    dict_keys(['image', 'extra'])
    """
    if isinstance(x, (list, tuple)) and len(model.inputs) > 1:
        return dict(zip(_input_names(model), x))
    if isinstance(x, dict) and len(model.inputs) == 1 and len(x) == 1:
        return next(iter(x.values()))
    return x


def format_for(path, options: dict | None = None) -> str:
    """The export format of ``options`` (``format``), else of ``path``'s suffix.

    Example:

    >>> format_for("m.tflite"), format_for("m.bin", {"format": "onnx"})
    ('tflite', 'onnx')
    """
    fmt = (options or {}).get("format")
    if fmt is None and path is not None:
        fmt = {v: k for k, v in FORMATS.items()}.get(Path(path).suffix.lower())
        if fmt is None:
            raise CompressError(f"{path}: cannot tell the format; pass --format or use "
                                ".onnx/.tflite")
    return fmt or "onnx"


def export_onnx(model, path, x: np.ndarray | None = None, force: bool = False,
                inputs: tuple = (), atol: float = 1e-4, opset: int | None = None) -> dict:
    """Export ``model`` to ONNX at ``path`` and verify it in onnxruntime.

    Args:
        model: a Keras model.
        path: output ``.onnx`` file (refused if it exists, unless ``force``).
        x: inputs to verify on (recommended: 256 real samples); None skips the check.
        force: bool, default False. Overwrite an existing file.
        inputs: files that must never be overwritten (the input model).
        atol: float, default 1e-4. Largest allowed absolute difference of outputs.
        opset: ONNX opset, default Keras's choice.

    Returns:
        The verification dict of :func:`compress.runtime.verify` plus ``path`` and
        ``bytes``.
    """
    return _write(model, path, "onnx", x, force, inputs, atol, opset)


def export_tflite(model, path, x: np.ndarray | None = None, force: bool = False,
                  inputs: tuple = (), atol: float = 1e-4) -> dict:
    """Export ``model`` to a float32 TFLite flatbuffer and verify it in LiteRT.

    Same arguments and result as :func:`export_onnx`; quantized variants are in
    :mod:`compress.quantization`.
    """
    return _write(model, path, "tflite", x, force, inputs, atol)


def export(model, path, fmt: str | None = None, **kwargs) -> dict:
    """Export to the format named by ``fmt`` or by the suffix of ``path``."""
    fmt = fmt or {v: k for k, v in FORMATS.items()}.get(Path(path).suffix.lower())
    if fmt == "onnx":
        return export_onnx(model, path, **kwargs)
    if fmt == "tflite":
        return export_tflite(model, path, **kwargs)
    raise CompressError(f"{path}: unknown export format (use .onnx or .tflite)")


def _write(model, path, fmt: str, x, force: bool, inputs, atol: float,
           opset: int | None = None) -> dict:
    """Check the output first, export and verify in memory, then write atomically."""
    out = io.check_output(path, inputs=inputs, force=force, suffixes=(FORMATS[fmt],))
    if x is not None and not isinstance(x, np.ndarray):  # a tf.data.Dataset, (x, y), ...
        x = verification_inputs(model, x)
    content, check = _exported(model, fmt, x, atol, where=str(out), opset=opset)
    io.write_bytes(out, content)
    return {"path": str(out), "bytes": len(content), **check}


def _exported(model, fmt: str, x, atol: float, where: str, opset: int | None = None
              ) -> tuple[bytes, dict]:
    """The artifact's bytes and its verification on ``x`` (None skips it)."""
    from compress.training import check_finite

    check_finite(model)
    if fmt == "tflite":
        refuse_keras_quantized(model)
    refuse_lookup_tables(model, fmt)
    reference = model
    model, notes = export_copy(model, fmt)
    _ensure_called(model)
    kwargs = {"opset_version": opset} if opset and fmt == "onnx" else {}
    keras_format = {"onnx": "onnx", "tflite": "litert"}[fmt]
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder) / f"model{FORMATS[fmt]}"
        try:
            with progress.phase("export", detail=f"{where} to {fmt}"), quiet_output():
                if fmt == "onnx":  # traced in inference mode (see _inference_only)
                    _inference_only(model).export(
                        str(tmp), format="onnx", verbose=False,
                        input_signature=_input_signature(model), **kwargs)
                else:  # Keras's LiteRT export traces model(x, training=False) itself
                    model.export(str(tmp), format=keras_format, verbose=False, **kwargs)
        except Exception as exc:
            if fmt == "onnx":
                raise CompressError(f"{where}: ONNX export failed ({_one_line(exc)})") from exc
            content = None  # TFLite: the builtin-ops converter below names the op and layer
        else:
            content = tmp.read_bytes()
            if fmt == "onnx":
                content = unscoped_onnx(content, model.name)
    if fmt == "tflite":
        from compress.runtime import flex_ops

        if content is None or flex_ops(content):  # Keras failed or kept TensorFlow ops
            try:
                with progress.phase("export", detail=f"{where} to tflite, builtin ops"), \
                        quiet_output():
                    content = builtin_tflite(model, notes=notes)
            except CompressError as exc:
                if content is None:
                    raise CompressError(f"{where}: {exc}") from None
                # else keep Keras's file: its verification names the Flex ops
    check = _verified(model, content, fmt, x, atol, where)
    if fmt == "tflite" and x is not None:
        from compress.runtime import xnnpack_refused

        refused = xnnpack_refused(content)
        if refused:
            check = {**check, "xnnpack_refused": refused}
    if notes:
        check = {**check, "export_copy": "; ".join(notes)}
        if x is not None and model is not reference:
            from compress.agreement import max_abs_diff, named_outputs
            from compress.training import predict

            copy, ref = named_outputs(predict(model, x)), named_outputs(predict(reference, x))
            check["copy_max_abs_diff"] = max(max_abs_diff(copy[k], ref[k]) for k in ref)
    return content, check


@contextlib.contextmanager
def new_axes_expanded():
    """Within the block, a TensorFlow tensor indexed with ``None`` (``mask[:, None, :, :]``,
    as KerasHub's Llama, Mistral, Qwen and Phi-3 attention widen their masks) inserts
    that axis with ``tf.expand_dims``, not with a ``StridedSlice`` whose ``new_axis_mask``
    LiteRT's builtin kernel cannot run on the masks' run-time shapes (the conversion then
    needed the Flex delegate). Indexes of slices and ``None`` only; any other index is
    left to TensorFlow. The tensor class is restored when the block ends.

    Example:

    >>> with new_axes_expanded():                     # doctest: +SKIP
    ...     archive.add_endpoint("serve", model.__call__, input_signature=specs)
    """
    import tensorflow as tf

    original = tf.Tensor.__getitem__

    def getitem(tensor, spec):
        parts = spec if isinstance(spec, tuple) else (spec,)
        if not any(p is None for p in parts) or \
                not all(p is None or isinstance(p, slice) for p in parts):
            return original(tensor, spec)
        kept = tuple(p for p in parts if p is not None)
        out = original(tensor, kept) if any(p != slice(None) for p in kept) else tensor
        for axis, part in enumerate(parts):  # slices keep their axes: positions line up
            if part is None:
                out = tf.expand_dims(out, axis)
        return out

    tf.Tensor.__getitem__ = getitem
    try:
        yield
    finally:
        tf.Tensor.__getitem__ = original


#: Why an artifact has a fixed batch size of 1 (:func:`convert`'s fallback).
FIXED_BATCH_NOTE = ("converted with a fixed batch size of 1 (run it one sample at a time): "
                    "with a free batch size the converter kept {what}, which LiteRT's "
                    "builtin kernels cannot run, as its shapes were computed at run time")


def saved_model_converter(model, folder: str, batch: int | None = None) -> tuple:
    """``(converter, copy, specs)``: the TFLite export copy of ``model``
    (:func:`compress.export.export_copy`: float32, no grouped convolutions, recurrent
    layers unrolled) written to ``folder`` as a SavedModel with one ``serve`` endpoint (one
    named argument per input, so the signature keeps the names; ``batch``: the batch
    size, None for a free one), a ``TFLiteConverter`` from it, and the copy's ``(name,
    shape, dtype)`` inputs."""

    from compress.data.arrays import model_inputs

    model, _ = export_copy(model, "tflite")
    specs = model_inputs(model)
    _ensure_called(model)
    with new_axes_expanded():
        return _archived_converter(model, folder, batch, specs)


def _archived_converter(model, folder: str, batch, specs) -> tuple:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    if len(specs) == 1:
        shape, dtype = specs[0][1], specs[0][2] or "float32"
        archive.add_endpoint("serve", functools.partial(model.__call__, training=False),
                             input_signature=[tf.TensorSpec((batch,) + shape, dtype)])
    else:
        names = [name for name, _, _ in specs]

        def serve(*tensors):
            return model(dict(zip(names, tensors)), training=False)
        archive.add_endpoint("serve", serve, input_signature=[
            tf.TensorSpec((batch,) + shape, dtype or "float32", name=name)
            for name, shape, dtype in specs])
    with quiet_output():
        archive.write_out(folder, verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(folder), model, specs


def explain_conversion(exc: Exception, model, mode: str) -> str:
    """One line: which layer holds the op the converter refused, and what to do instead."""
    text = " ".join(str(exc).split())
    # the longest name that matches: "conv2d_4_1/convolution" is layer conv2d_4 (Keras adds
    # the call's _1), not conv2d
    layer = max((lay.name for lay in model.layers
                 if re.search(rf"[/\"'(]{re.escape(lay.name)}[/\"'_)]", text)),
                key=len, default=None)
    op = re.search(r"'(tf\.\w+|tfl\.\w+)'", text)
    what = f"op {op.group(1)}" if op else "an op"
    where = f" in layer '{layer}'" if layer else ""
    if op and op.group(1).startswith("tf."):  # a TensorFlow op with no TFLite builtin at all
        return (f"TFLite {mode} conversion failed: {what}{where} has no TFLite builtin "
                "kernel; use --format onnx, or replace the layer")
    if not op and not any(w in text.lower() for w in ("legaliz", "not supported", "unsupported",
                                                     "kernel", "quantiz")):
        return f"TFLite {mode} conversion failed ({text[:240]})"  # the converter's own words
    fallback = ("use mode dynamic (float activations) or --format onnx"
                if mode == "int8" else "use --format onnx")
    return (f"TFLite {mode} conversion failed: {what}{where} has no {mode} TFLite kernel; "
            f"{fallback}")


def free_or_fixed_batch(convert_at, notes: list | None = None) -> bytes:
    """``convert_at(None)`` (a TFLite conversion at a free batch size); when that graph
    leaves a TensorFlow op the builtin kernels cannot take (shapes TensorFlow computes at
    run time: keras.io's U-Net decoder, a recurrent loop too long to unroll),
    ``convert_at(1)``, where every shape is known, with :data:`FIXED_BATCH_NOTE` appended
    to ``notes``. The free-batch error is raised when both fail."""
    try:
        return convert_at(None)
    except CompressError as exc:
        op = re.search(r"op (tf\.\w+)( in layer '[^']+')?", str(exc))
        if not op or "has no TFLite builtin kernel" not in str(exc):
            raise
        try:
            flatbuffer = convert_at(1)
        except CompressError:
            raise exc from None  # the free-batch failure names the op as well
        if notes is not None:
            notes.append(FIXED_BATCH_NOTE.format(what=f"{op.group(1)}{op.group(2) or ''}"))
        return flatbuffer


def builtin_tflite(model, notes: list | None = None) -> bytes:
    """``model`` as a float32 TFLite flatbuffer of builtin ops only (no Flex ops), at a
    free batch size or else at batch 1 (:func:`free_or_fixed_batch`)."""

    def at(batch):
        import tensorflow as tf

        with tempfile.TemporaryDirectory() as folder:
            converter, copy, _ = saved_model_converter(model, folder, batch)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
            try:
                with quiet_output():
                    return converter.convert()
            except Exception as exc:
                raise CompressError(explain_conversion(exc, copy, "float32")) from exc

    return free_or_fixed_batch(at, notes)


def _policy(layer):
    """``layer``'s dtype policy; for a ``DTypePolicyMap`` (a Keras-quantized KerasHub
    layer's, "map_float32": its sublayers' quantized policies by path), its default."""
    import keras

    policy = layer.dtype_policy
    if isinstance(policy, keras.dtype_policies.DTypePolicyMap):
        return policy.default_policy
    return policy


def export_copy(model, fmt: str = "tflite"):
    """``model``, or an equivalent copy that the converters can express, and why.

    The copy computes in float32 (a ``mixed_float16`` model: its float16 kernels stay in
    the artifact as TFLite Flex ops or fail ONNX parity), runs channel-grouped
    convolutions as depthwise convolutions (``groups == channels``, as in ConvNeXt) or
    as one convolution with a block-diagonal kernel (Keras runs them through a nested
    XLA function that tf2onnx writes as an invalid graph), and folds ``Normalization``
    into a ``Rescaling`` with constant per-channel scale and offset (tf2onnx turns its
    captured mean and variance into missing graph inputs). For ONNX, the exact GELU
    activation is written with ``erf`` (TensorFlow's uses ``Erfc``, which onnxruntime
    rejects), also in the layers custom layers own (KerasHub's ViT MLP), and constant
    tensors kept by layers (ViT's position ids) become arrays (tf2onnx would make them
    graph inputs). Nested models are copied too; a layer that needs no change and that
    its config cannot rebuild is shared. The outputs agree with ``model``'s to float
    rounding (float16 rounding for a mixed-precision model); the artifact is verified against the copy it was made from,
    and the copy's own difference from ``model`` is reported (``copy_max_abs_diff``).

    Example:

    >>> copy, notes = export_copy(model)       # doctest: +SKIP
    >>> notes                                  # doctest: +SKIP
    ['exported through a float32 copy (the model computes in mixed_float16)']

    Returns:
        ``(model_or_copy, notes)``; ``notes`` is empty when ``model`` is exported as is.
    """
    import keras

    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth") and \
            not isinstance(model, keras.Sequential):
        return model, []
    layers = list(_all_layers(model))
    policies = sorted({_policy(la).name for la in layers
                       if _policy(la).name not in ("float32",)
                       and not _policy(la).quantization_mode})
    grouped = [la.name for la in layers if getattr(la, "groups", 1) > 1
               and type(la).__name__ in ("Conv1D", "Conv2D", "Conv3D")]
    norms = [la.name for la in layers if type(la).__name__ == "Normalization"]
    # exact GELU anywhere, also inside custom layers (KerasHub's ViT MLP builds its Dense)
    gelus = [la.name for la in _sublayers(model) if fmt == "onnx" and _exact_gelu(la)]
    rnns = [la.name for la in layers if fmt == "tflite" and _unrollable(la)]
    augments = [la.name for la in layers if fmt == "onnx" and _augmentation(la)]
    constants = _constant_arguments(model) if fmt == "onnx" else []
    mels = [la.name for la in layers if fmt == "onnx" and _spectrogram_layer(la)]
    if not (policies or grouped or norms or gelus or rnns or augments or constants or mels):
        return model, []
    pairs = []
    copy = _copy_model(model, pairs, bool(policies), fmt)
    for old, new in pairs:
        weights = [] if type(old).__name__ == "Normalization" else old.get_weights()
        if getattr(old, "groups", 1) > 1 and getattr(new, "groups", 1) == 1 and weights:
            weights = _grouped_weights(old, new, weights)
        if weights:
            new.set_weights([np.asarray(w, np.float32) if policies else w for w in weights])
    shared = {id(la) for la in _sublayers(model)}  # layers the copy reuses: never changed
    for layer in _sublayers(copy):
        if fmt == "onnx" and id(layer) not in shared:
            if _exact_gelu(layer):  # also the layers custom layers build in build()
                layer.activation = _gelu_erf
            _constants_as_arrays(layer)
    if constants:
        _constant_arguments(copy, replace=True)
    notes = [note for names, note in (
        (policies, ("exported through a float32 copy (the model computes in "
                    f"{', '.join(policies)})")),
        (grouped, f"grouped convolutions run as depthwise/full ones ({len(grouped)}: "
                  + ", ".join(grouped[:3]) + (", ...)" if len(grouped) > 3 else ")")),
        (norms, f"Normalization folded into constant scale and offset ({', '.join(norms)})"),
        (gelus, f"GELU written with erf ({len(gelus)} layers)"),
        (augments, ("augmentation layers, which pass inputs through at inference, left out "
                    f"of the ONNX copy ({', '.join(augments)})")),
        (constants, ("constant tensors the graph's operations take written as ONNX "
                     f"constants ({', '.join(constants[:3])}"
                     + (", ...)" if len(constants) > 3 else ")"))),
        (rnns, ("recurrent layers unrolled over their time steps, which TFLite's builtin "
                f"ops then run ({', '.join(rnns)})")),
        (mels, ("the STFT of MelSpectrogram written as a strided convolution with DFT "
                "kernels (tf2onnx converts no FFT whose real and imaginary parts are used; "
                f"{', '.join(mels)})"))) if names]
    return copy, notes


def _spectrogram_layer(layer) -> bool:
    """A ``MelSpectrogram`` on (batch, samples) audio: its STFT is Keras's RFFT, whose
    real and imaginary parts tf2onnx cannot convert (an invalid RFFT node)."""
    return type(layer).__name__ == "MelSpectrogram" and \
        len(getattr(layer, "input", None).shape if hasattr(layer, "input") else ()) == 2


def stft_by_convolution(layer, inputs):
    """``(real, imag)`` of Keras's ``stft`` as a ``MelSpectrogram`` layer calls it (center
    padding by reflection, the periodic window centred in ``fft_length``, one frame every
    ``sequence_stride`` samples): one strided convolution per part, its kernels the
    window times the DFT basis. The same numbers as the RFFT, in ops ONNX has.

    Example:

    >>> real, imag = stft_by_convolution(mel_layer, audio)   # doctest: +SKIP
    """
    import keras

    ops = keras.ops
    n, length = int(layer.fft_length), int(layer.sequence_length)
    x = ops.pad(inputs, [(0, 0), (n // 2, n // 2)], mode="reflect")
    i = np.arange(length)
    if layer.window == "hann":
        window = 0.5 - 0.5 * np.cos(2 * np.pi * i / length)
    elif layer.window == "hamming":
        window = 0.54 - 0.46 * np.cos(2 * np.pi * i / length)
    elif layer.window is None:
        window = np.ones(length)
    else:
        window = np.asarray(layer.window, np.float64)
    left = (n - length) // 2
    window = np.pad(window, (left, n - length - left))
    angle = 2 * np.pi * np.outer(np.arange(n), np.arange(n // 2 + 1)) / n
    real_kernel = (window[:, None] * np.cos(angle))[:, None, :].astype("float32")
    imag_kernel = (-window[:, None] * np.sin(angle))[:, None, :].astype("float32")
    x = ops.expand_dims(x, -1)
    step = int(layer.sequence_stride)
    return (ops.conv(x, real_kernel, strides=step, padding="valid"),
            ops.conv(x, imag_kernel, strides=step, padding="valid"))


_CONVOLUTION_MEL = []


def _convolution_mel_class():
    """A ``MelSpectrogram`` whose STFT is :func:`stft_by_convolution` (export copies only;
    never saved)."""
    if not _CONVOLUTION_MEL:
        import keras

        class ConvolutionMelSpectrogram(keras.layers.MelSpectrogram):
            def _spectrogram(self, inputs):
                ops = keras.ops
                real, imag = stft_by_convolution(self, inputs)
                spec = ops.sqrt(ops.add(ops.square(real), ops.square(imag)))
                return ops.power(spec, self.mag_exp)

        _CONVOLUTION_MEL.append(ConvolutionMelSpectrogram)
    return _CONVOLUTION_MEL[0]


def _activation(layer):
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", None)


def _exact_gelu(layer) -> bool:
    """Whether ``layer`` applies Keras's exact GELU (TensorFlow writes it with ``Erfc``)."""
    return _activation(layer) == "gelu" and not getattr(layer, "approximate", False)


def _sublayers(model):
    """Every layer of ``model`` at any depth: nested models and the layers that custom
    layers own (KerasHub's blocks)."""
    return model._flatten_layers(include_self=False, recursive=True)


def _gelu_erf(x):
    """Exact GELU, ``x * (1 + erf(x / sqrt(2))) / 2``: ONNX has Erf but no Erfc."""
    import keras

    return 0.5 * x * (1.0 + keras.ops.erf(x * 0.7071067811865476))


def _all_layers(model):
    import keras

    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def _copy_model(model, pairs, to_float32: bool, fmt: str):
    import keras

    def clone(op):
        if isinstance(op, keras.Model):
            return _copy_model(op, pairs, to_float32, fmt)
        if not isinstance(op, keras.layers.Layer):
            try:
                return op.__class__.from_config(op.get_config())
            except Exception:  # noqa: BLE001 - a stateless op is reused as it is
                return op
        from compress.layer_state import layer_config

        try:
            config = layer_config(op)  # its own config, or one read back (Llama decoders)
        except ValueError as exc:
            if _rewritten_inside(op, to_float32, fmt):
                raise CompressError(f"{exc}, so no {fmt} export copy can be made") from None
            return op  # nothing in it changes: the copy shares it as it is
        if to_float32 and "dtype" in config:
            config["dtype"] = "float32"
        kind = type(op).__name__
        if fmt == "onnx" and _activation(op) == "gelu" and \
                not getattr(op, "approximate", False) and "activation" in config:
            config["activation"] = _gelu_erf
        if fmt == "onnx" and _augmentation(op):  # its random ops are no valid ONNX
            return keras.layers.Identity(name=op.name)
        if fmt == "tflite" and _unrollable(op):
            config = _unrolled(config)
        if kind == "Normalization":
            new = _folded_normalization(op, config)
        elif fmt == "onnx" and _spectrogram_layer(op):
            new = _convolution_mel_class().from_config(config)
        elif kind in ("Conv1D", "Conv2D", "Conv3D") and op.groups > 1:
            new = _ungrouped(op, config)
        else:
            try:
                new = _from_config(op.__class__, config)
            except Exception as exc:  # noqa: BLE001 - a layer its config cannot rebuild
                if _rewritten_inside(op, to_float32, fmt):
                    raise CompressError(
                        f"layer '{op.name}' ({kind}): its config does not rebuild it, so "
                        f"no {fmt} export copy can be made ({_one_line(exc)[:160]})") from None
                return op  # nothing in it changes: the copy shares it as it is
        pairs.append((op, new))
        return new

    if isinstance(model, keras.Sequential):
        layers = [clone(la) for la in model.layers]
        inp = model.inputs[0]
        return keras.Sequential([keras.Input(shape=inp.shape[1:], dtype=inp.dtype)] + layers,
                                name=model.name)
    return keras.models.clone_model(model, clone_function=clone)


#: Keras's random augmentation layers: inputs pass through unchanged at inference, but
#: their traced graph keeps the random ops (StatelessRandomUniformV2), which tf2onnx
#: writes into an ONNX graph onnxruntime rejects. RandomCrop is not one: it may resize.
AUGMENTATION = ("AugMix", "CutMix", "MixUp", "RandAugment")


def _augmentation(layer) -> bool:
    """Whether ``layer`` is a random augmentation layer (identity at inference).

    >>> import keras
    >>> _augmentation(keras.layers.RandomFlip()), _augmentation(keras.layers.RandomCrop(8, 8))
    (True, False)
    """
    kind = type(layer).__name__
    return type(layer).__module__.startswith("keras") and kind != "RandomCrop" and (
        kind.startswith("Random") or kind in AUGMENTATION)


#: Time steps up to which a recurrent layer is unrolled for TFLite (a longer sequence
#: would make a graph of that many copies of the cell).
MAX_UNROLL = 256
#: ConvLSTM too: its TensorList loop converts in float, but TensorFlow 2.21's full-integer
#: converter crashes the process on it (a segmentation fault); unrolled, it converts.
_RECURRENT = ("LSTM", "GRU", "SimpleRNN", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D")


def _unrollable(layer) -> bool:
    """Whether ``layer`` is a Keras LSTM/GRU/SimpleRNN/ConvLSTM (or a Bidirectional one)
    that runs as a loop over a fixed number of time steps (at most :data:`MAX_UNROLL`). Keras 3
    writes that loop as TensorList ops, which TFLite has no builtin kernel for (the
    converter's fused LSTM only recognises Keras 2's); unrolled, every step is plain
    MatMul/Add/Sigmoid/Tanh ops that TFLite runs, in float and in int8.

    Example:

    >>> import keras
    >>> rnn = keras.layers.LSTM(4)
    >>> _ = keras.Sequential([keras.Input((6, 3)), rnn])
    >>> _unrollable(rnn), _unrollable(keras.layers.Dense(4))
    (True, False)
    """
    kind = type(layer).__name__
    cells = [layer.forward_layer, layer.backward_layer] if kind == "Bidirectional" else \
        [layer] if kind in _RECURRENT else []
    if not cells or any(type(c).__name__ not in _RECURRENT or c.unroll for c in cells):
        return False
    try:
        first = layer.input
        # a masked input (Embedding(mask_zero=True) before it) comes as [inputs, mask]
        first = first[0] if isinstance(first, (list, tuple)) else first
        steps = first.shape[1]
    except (AttributeError, ValueError, IndexError, TypeError):  # no input to read it from
        return False
    return steps is not None and steps <= MAX_UNROLL


def _unrolled(config: dict) -> dict:
    """A recurrent layer's config (a Bidirectional's, its two layers') with ``unroll``."""
    config = dict(config)
    for key in ("layer", "backward_layer"):
        inner = config.get(key)
        if isinstance(inner, dict) and isinstance(inner.get("config"), dict):
            config[key] = {**inner, "config": {**inner["config"], "unroll": True}}
    if "unroll" in config:
        config["unroll"] = True
    return config


def _from_config(cls, config: dict):
    """``cls.from_config(config)``, retried without the keys its constructor does not
    take: KerasHub's ``ViTPatchingAndEmbedding`` writes derived sizes (``num_patches``,
    ``num_positions``) into its config that its ``__init__`` refuses."""
    import inspect

    import keras

    try:
        return cls.from_config(config)
    except (TypeError, ValueError):
        taken = set(inspect.signature(keras.layers.Layer.__init__).parameters)
        for klass in cls.__mro__:
            if klass is keras.layers.Layer or "__init__" not in vars(klass):
                continue
            params = inspect.signature(klass.__init__).parameters
            taken |= set(params)
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                break
        return cls.from_config({k: v for k, v in config.items() if k in taken})


def _constant_arguments(model, replace: bool = False) -> list:
    """The operations of a functional ``model`` (nested ones too) called with a constant
    tensor among their arguments (``x + pos`` where ``pos`` is a tensor built once: a
    fixed positional encoding); with ``replace``, those tensors become NumPy arrays in the
    graph's nodes (only ever on an export copy). A captured tensor becomes an extra ONNX
    graph input that nothing feeds; an array is a constant of the traced function."""
    import keras
    import tensorflow as tf
    from keras.src import tree

    def constant(x) -> bool:
        return isinstance(x, tf.Tensor) and not isinstance(x, (tf.Variable, keras.Variable))

    found = []
    for node in [n for nodes in getattr(model, "_nodes_by_depth", {}).values() for n in nodes]:
        arguments = node.arguments
        if not any(constant(x) for x in arguments._flat_arguments):
            continue
        found.append(getattr(node.operation, "name", "?"))
        if replace:
            arguments.args, arguments.kwargs = arguments.convert(
                lambda x: np.asarray(x) if constant(x) else x)
            arguments._flat_arguments = tree.flatten((arguments.args, arguments.kwargs))
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _constant_arguments(layer, replace)
    return found


def _constants_as_arrays(layer) -> None:
    """Constant tensors a layer keeps (ViT's ``position_ids``) as NumPy arrays: the
    traced function then holds them as constants, where a captured tensor becomes an
    extra ONNX graph input that nothing feeds."""
    import keras
    import tensorflow as tf

    for key, value in list(vars(layer).items()):
        if isinstance(value, tf.Tensor) and not isinstance(value, (tf.Variable,
                                                                   keras.Variable)):
            setattr(layer, key, np.asarray(value))


def _rewritten_inside(layer, to_float32: bool, fmt: str) -> bool:
    """Whether the export copy must change ``layer`` or a layer it owns."""
    inner = [layer, *_sublayers(layer)]
    return (to_float32 and any(la.dtype_policy.name != "float32" for la in inner)) or \
        (fmt == "onnx" and any(_exact_gelu(la) for la in inner))


def _folded_normalization(op, config):
    import keras

    mean = np.asarray(keras.ops.convert_to_numpy(op.mean), np.float64)
    std = np.maximum(np.sqrt(np.asarray(keras.ops.convert_to_numpy(op.variance), np.float64)),
                     keras.backend.epsilon())
    scale, offset = (std, mean) if op.invert else (1.0 / std, -mean / std)
    return keras.layers.Rescaling(scale.astype(np.float32), offset.astype(np.float32),
                                  name=op.name, dtype=config.get("dtype"))


def _ungrouped(op, config):
    import keras

    rank = int(type(op).__name__[-2])
    in_ch = int(op.kernel.shape[-2]) * op.groups
    if op.groups == in_ch == op.filters and rank in (1, 2):
        cls = keras.layers.DepthwiseConv1D if rank == 1 else keras.layers.DepthwiseConv2D
        keep = ("name", "kernel_size", "strides", "padding", "data_format", "dilation_rate",
                "activation", "use_bias", "dtype", "trainable")
        return cls(depth_multiplier=1, **{k: config[k] for k in keep if k in config})
    config["groups"] = 1
    return op.__class__.from_config(config)


def _grouped_weights(old, new, weights):
    """A grouped kernel as a depthwise kernel, or block-diagonal in a full kernel."""
    kernel = weights[0]
    if type(new).__name__.startswith("Depthwise"):
        return [np.swapaxes(kernel, -1, -2)] + weights[1:]
    groups, cin_g, cout = old.groups, kernel.shape[-2], kernel.shape[-1]
    full = np.zeros(kernel.shape[:-2] + (cin_g * groups, cout), kernel.dtype)
    per = cout // groups
    for g in range(groups):
        full[..., g * cin_g:(g + 1) * cin_g, g * per:(g + 1) * per] = \
            kernel[..., g * per:(g + 1) * per]
    return [full] + weights[1:]


def _inference_only(model):
    """``model`` as a Keras model that calls it with ``training=False``, for ONNX export.

    Keras's ONNX export traces ``model.__call__`` without ``training``, and in a
    functional model the layers then take it from the call context, which the first
    layer built with ``training=True`` in its call sets for all the layers after it:
    keras.io's image classifier (``RandomFlip`` and ``RandomRotation`` first, whose call
    defaults to ``training=True``) exported every BatchNormalization with batch
    statistics, 13 logits away from ``predict``. The LiteRT export and ``predict``
    pass ``training=False``; so does this wrapper. Its ONNX inputs and outputs have the
    names the model's own export gives them; its own name, which tf2onnx puts before
    every node and weight name, is one letter (named as the model, it repeated the
    model's name in each of them: MobileNetV2's file grew 12 KB, its fp16 file from
    0.519x to 0.525x of float32).

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> _inference_only(model).inner is model
    True
    """
    import keras

    class InferenceOnly(keras.Model):
        def __init__(self, inner):
            super().__init__(name="k")  # a prefix of every ONNX name: keep it short
            self.inner = inner
            self.built = True

        def call(self, inputs):
            return self.inner(inputs, training=False)

    return InferenceOnly(model)


def unscoped_onnx(content: bytes, model_name: str) -> bytes:
    """The ONNX bytes with the scope prefix tf2onnx writes before every node, tensor and
    weight name removed: the export wrapper's (``k_1/``, :func:`_inference_only`) and then
    the model's own (``mobilenetv2_0.35_96_1/``), so that names start with the Keras layer
    (``block_1_expand_1/convolution``). Inputs and outputs keep their names. Every
    reference is renamed by the same rule, in subgraphs too; where a shortened name would
    equal another name in the graph, nothing is renamed.

    Those prefixes were 3-4% of MobileNetV2's float32 file, and as names do not halve,
    they kept its float16 file at 0.521x the float32 one.

    Example:

    >>> import onnx
    >>> graph = onnx.helper.make_graph(
    ...     [onnx.helper.make_node("Relu", ["x"], ["k_1/net_1/relu_1/Relu:0"],
    ...                            name="k_1/net_1/relu_1/Relu")], "g",
    ...     [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
    ...     [onnx.helper.make_tensor_value_info("k_1/net_1/relu_1/Relu:0",
    ...                                         onnx.TensorProto.FLOAT, [1])])
    >>> out = onnx.load_from_string(unscoped_onnx(
    ...     onnx.helper.make_model(graph).SerializeToString(), "net"))
    >>> out.graph.node[0].name
    'relu_1/Relu'
    """
    import re

    import onnx

    proto = onnx.load_from_string(content)
    # the scope anywhere (loop bodies flatten it: ``..._k_1_net_1_lstm_1_while_...``), then
    # a wrapper scope left at the start
    scope = re.compile(r"(?<![A-Za-z0-9])k(?:_\d+)?([/_])" + re.escape(model_name)
                       + r"(?:_\d+)?\1")
    start = re.compile(r"^k(?:_\d+)?/")
    graphs, stack = [], [proto.graph]
    while stack:  # the main graph and every subgraph (If, Loop, Scan bodies)
        graph = stack.pop()
        graphs.append(graph)
        for node in graph.node:
            for attr in node.attribute:
                stack.extend([attr.g] if attr.type == onnx.AttributeProto.GRAPH else
                             list(attr.graphs))
    kept = {v.name for v in proto.graph.input} | {v.name for v in proto.graph.output}

    def names(graph):
        for node in graph.node:
            yield node.name
            yield from node.input
            yield from node.output
        yield from (t.name for t in graph.initializer)
        yield from (t.values.name for t in graph.sparse_initializer)
        yield from (v.name for v in [*graph.value_info, *graph.input, *graph.output])

    every = {n for g in graphs for n in names(g) if n}
    renamed = {n: start.sub("", scope.sub("", n)) for n in every if n not in kept}
    renamed = {k: v for k, v in renamed.items() if v != k}
    if not renamed or not _distinct(every, renamed):
        return content

    def new(name):
        return renamed.get(name, name)

    for graph in graphs:
        for node in graph.node:
            node.name = new(node.name)
            node.input[:] = [new(n) for n in node.input]
            node.output[:] = [new(n) for n in node.output]
        for tensor in graph.initializer:
            tensor.name = new(tensor.name)
        for tensor in graph.sparse_initializer:
            tensor.values.name = new(tensor.values.name)
        for info in [*graph.value_info, *graph.input, *graph.output]:
            info.name = new(info.name)
    return proto.SerializeToString()


def _distinct(every: set, renamed: dict) -> bool:
    """Whether renaming by ``renamed`` keeps all of ``every``'s names distinct."""
    after = [renamed.get(n, n) for n in every]
    return len(set(after)) == len(after) and "" not in after


def _input_signature(model):
    """The input signature Keras's own export reads from ``model`` (batch size None)."""
    from keras.src.export.export_utils import get_input_signature

    return get_input_signature(model)


def _ensure_called(model) -> None:
    """Keras refuses to export a freshly loaded model that was never called; call it once
    (unknown sizes filled as :func:`compress.report.concrete_shape` does: 32 on image
    axes, where 1 made a 3x3 convolution's output size negative)."""
    from compress.data.arrays import model_inputs
    from compress.report import concrete_shape

    zeros = {name: np.zeros((1,) + concrete_shape(shape, dtype), dtype=dtype or "float32")
             for name, shape, dtype in model_inputs(model)}
    model(zeros if len(zeros) > 1 else next(iter(zeros.values())), training=False)


def _verified(model, content: bytes, fmt: str, x, atol: float, where: str) -> dict:
    if x is None:
        return {}
    with progress.phase("verification", detail=f"the {fmt} export in "
                        f"{'LiteRT' if fmt == 'tflite' else 'onnxruntime'}"):
        try:
            check = verify(model, content, x, fmt=fmt)
        except CompressError as exc:  # named by the model, not by the bytes in memory
            raise CompressError(f"{where}: {fmt} export: "
                                f"{str(exc).split(': ', 1)[-1]}; nothing written") from None
    # Parity relative to each output's scale: atol is absolute for outputs within [-1, 1]
    # (probabilities, most logits) and relative to the largest output beyond, since
    # float32 rounding grows with it (ResNet50's logits: 1.2e-4 at a scale of 3.9).
    outputs = check.get("outputs") or {None: check}
    failed = []
    for name, one in outputs.items():
        one["tolerance"] = atol * max(1.0, one.get("max_abs_output", 1.0))
        top1 = one.get("top1_agreement")  # classifiers only: one unit always "agrees"
        if not one["max_abs_diff"] <= one["tolerance"] or (top1 is not None and top1 < 1.0):
            failed.append(name)
    # Keras's own float32 output is rounded too (ResNet50's softmax: 1.2e-4 off the exact
    # result); the artifact passes when it is within the tolerance of a float64 copy, or
    # where Keras's float32 is itself beyond that, within 2x Keras's distance to the copy.
    exact = _against_float64(model, content, fmt, x, {
        name: "top1_agreement" in one for name, one in outputs.items()}) if failed else None
    for name in failed:
        one = outputs[name]
        scale, tolerance, top1 = one.get("max_abs_output", 1.0), one["tolerance"], \
            one.get("top1_agreement")
        ex = (exact or {}).get(name)
        noise = atol >= NOISE_RULE_MIN_ATOL
        rule = float64_rule(ex, tolerance, noise) if ex else None
        if rule:
            one["float64_reference"] = {**ex, **rule}
            continue
        agreement = f", top-1 agreement {top1:.2%} < 100%" if top1 is not None and \
            top1 < 1.0 else ""
        which = f" output '{name}'" if name is not None else ""
        versus = (f"; against a float64 copy: artifact {ex['max_abs_diff']:.2e} > "
                  f"{_allowed(ex, tolerance, noise):.2e} allowed (Keras float32 "
                  f"{ex['keras_max_abs_diff']:.2e}; {FLOAT32_NOISE_FACTOR:g}x that where "
                  f"beyond the tolerance)"
                  + (f", top-1 {ex['top1_agreement']:.2%}" if ex.get("top1_agreement", 1.0)
                     < 1.0 else "") if ex else "")
        over = ">" if one["max_abs_diff"] > tolerance else "<="
        raise CompressError(
            f"{where}: exported model disagrees with Keras{which} (max abs diff "
            f"{one['max_abs_diff']:.2e} {over} {tolerance:.2e} = atol {atol:g} x max(1, "
            f"output scale {scale:.3g}){agreement}; SQNR {one['sqnr_db']:.1f} dB{versus}); "
            "nothing written")
    return check


def float64_rule(exact: dict, tolerance: float, noise: bool = True) -> dict | None:
    """Which float64 rule an artifact beyond ``tolerance`` of Keras passes, or None.

    ``exact`` holds the artifact's (``max_abs_diff``, ``top1_agreement``) and Keras's
    float32 (``keras_max_abs_diff``) distances to a float64 copy of the model. Rule
    ``"atol"``: the artifact is within ``tolerance`` of the copy. Rule ``"keras float32"``:
    Keras's own float32 output is beyond ``tolerance`` of the copy (no float32 evaluation
    gets closer), and the artifact is within :data:`FLOAT32_NOISE_FACTOR` times that.
    Either needs 100% top-1 agreement with the copy. A model whose Keras float32 output is
    within ``tolerance`` of the copy gets no more than ``tolerance``; so does every model
    with ``noise=False`` (a tolerance the user set below the default).

    Example:

    >>> float64_rule({"max_abs_diff": 6e-4, "keras_max_abs_diff": 9.7e-4}, 1e-4)
    {'rule': 'keras float32', 'allowed': 0.00194}
    >>> float64_rule({"max_abs_diff": 6e-4, "keras_max_abs_diff": 8e-5}, 1e-4) is None
    True
    >>> float64_rule({"max_abs_diff": 9e-5, "keras_max_abs_diff": 8e-5}, 1e-4)
    {'rule': 'atol', 'allowed': 0.0001}
    """
    if exact.get("top1_agreement", 1.0) < 1.0:
        return None
    allowed = _allowed(exact, tolerance, noise)
    if exact["max_abs_diff"] > allowed:
        return None
    return {"rule": "atol" if exact["max_abs_diff"] <= tolerance else "keras float32",
            "allowed": allowed}


def _allowed(exact: dict, tolerance: float, noise: bool = True) -> float:
    """``tolerance``, or where Keras's float32 output is beyond it from the float64 copy,
    :data:`FLOAT32_NOISE_FACTOR` times Keras's distance."""
    keras32 = exact["keras_max_abs_diff"]
    return tolerance if keras32 <= tolerance or not noise else FLOAT32_NOISE_FACTOR * keras32


def _against_float64(model, content: bytes, fmt: str, x, classifier: dict
                     ) -> dict | None:
    """Per output (``classifier``: ``{name: bool}``; one output is named None), the
    artifact's and Keras's float32 outputs compared with a float64 copy of ``model``
    (``max_abs_diff``, ``top1_agreement`` of the artifact), or None where no float64 copy
    can be made (a model that does not compute in float32, a layer its config cannot
    rebuild in float64). Keras's float32 is evaluated both ways Keras runs a model, an
    eager call and the compiled ``predict``, which round differently (a random ResNet50's
    softmax: 9.0e-5 and 1.0e-4 off the copy); ``keras_modes`` holds both distances and
    ``keras_max_abs_diff`` the larger, the float32 noise the artifact is judged against."""
    import keras

    from compress.agreement import comparison, max_abs_diff, named_outputs
    from compress.runtime import run_artifact
    from compress.training import predict

    if not (hasattr(model, "_nodes_by_depth") or isinstance(model, keras.Sequential)) or \
            any(la.dtype_policy.name != "float32" for la in _sublayers(model)):
        return None

    def clone(op):
        if isinstance(op, keras.Model):
            return keras.models.clone_model(op, clone_function=clone)
        config = op.get_config()
        if "dtype" in config:
            config["dtype"] = "float64"
        return _from_config(op.__class__, config)

    try:
        copy = keras.models.clone_model(model, clone_function=clone)
        weights = model.get_weights()
        if [w.shape for w in copy.get_weights()] != [w.shape for w in weights]:
            return None
        copy.set_weights([np.asarray(w, np.float64) for w in weights])
        names = [str(n) for n in classifier]
        exact = named_outputs(predict(copy, x), names)
    except Exception:  # noqa: BLE001 - no float64 copy: the float32 check stands alone
        return None
    keras32 = {"eager": named_outputs(predict(model, x), names)}
    try:  # Keras's compiled predict (tf.function, XLA where Keras picks it) rounds apart
        keras32["predict"] = named_outputs(model.predict(x, verbose=0), names)
    except Exception:  # noqa: BLE001, S110 - the eager outputs stand alone
        pass
    got = named_outputs(run_artifact(content, x, fmt=fmt), names)
    out = {}
    for key, name in zip(classifier, names):
        want = np.asarray(exact[name], np.float64)
        one = comparison(np.asarray(got[name], np.float64), want, classifier[key])
        modes = {mode: max_abs_diff(np.asarray(outs[name], np.float64), want)
                 for mode, outs in keras32.items()}
        out[key] = {"max_abs_diff": one["max_abs_diff"],
                    "keras_max_abs_diff": max(modes.values()), "keras_modes": modes,
                    **({"top1_agreement": one["top1_agreement"]}
                       if "top1_agreement" in one else {})}
    return out


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]
