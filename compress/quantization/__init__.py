"""8-bit quantization: full-integer TFLite, ONNX int8, Keras int8, quantization-aware training.

:func:`quantize` is a pass whose product is a deployment artifact, not a Keras model: it
returns the artifact's bytes (``.tflite``, ``.onnx``, or a Keras-int8 ``.keras`` file)
and a report, and writes nothing; front-ends write the bytes (:func:`format_for` gives
the format of an output path). The report comes from running the bytes in their real
runtime (LiteRT, onnxruntime, Keras): accuracy, size raw and zipped, and batch-1
latency single- and multi-threaded, side by side with the float model in the same
runtime.

Modes:

- ``int8``: full-integer post-training quantization (Jacob et al. 2018): int8 weights with
  per-channel scales, int8 activations with per-tensor scales calibrated on
  ``calibration_samples`` training samples, int32 biases. TFLite or ONNX (static QDQ).
- ``dynamic``: int8 weights, float activations; needs no data. TFLite or ONNX.
- ``float16``: half-precision weights (TFLite: float16 weights dequantized at load; ONNX:
  float16 weights and compute with float32 inputs and outputs, the form GPUs run).
- ``keras-int8``: Keras's own ``model.quantize("int8")`` (Dense/EinsumDense/Embedding);
  a ``.keras`` file; the layers that stayed float are listed.
- ``keras-int4``, ``gptq``, ``awq``: Keras's own ``model.quantize("int4")`` and its GPTQ
  and AWQ (4-bit, groups of 128; calibrated on ``calibration_samples`` training samples,
  the model's layers one chain), a ``.keras`` file; ``info["exports"]`` says in one line
  per format what the project's TFLite and ONNX export does with it
  (:mod:`compress.quantization.keras_modes`).
- ``int4``: weight-only, symmetric per-channel 4-bit grid (``[-7, 7] * max|w_c| / 7``),
  every kernel snapped in Keras and exported as a float artifact (its accuracy, not its
  size: no runtime here stores 4-bit convolution weights).

``rounding="gptq"`` (modes ``int8`` and ``int4``) rounds the kernels column by column with
second-order compensation (GPTQ, :mod:`compress.quantization.gptq`) onto exactly the grid
the converter then uses (per-channel ``max|w_c| / 127``; onnxruntime's 7-bit ``/ 64`` with
``reduce_range``), so the artifact's int8 weights are the GPTQ codes.

With ``sparse=True`` (TFLite) the mostly-zero weight tensors of a pruned model are stored
in TFLite's sparse format (CSR values plus column indices): the raw file shrinks with the
sparsity, but the zipped file does not (the indices compress worse than runs of zeros),
the weights are densified in memory when the interpreter prepares, and the file runs on
LiteRT's builtin kernels, because the XNNPACK delegate refuses it.

With ``equalize=True`` and/or ``bias_correction=True`` (int8) the artifact is converted
from a copy prepared as in Nagel et al. 2019 (BatchNorm folded, cross-layer equalization
with ReLU6 made ReLU, biases corrected for the weights' rounding error;
:mod:`compress.quantization.equalize`); the float reference stays the input model, and
``info["equalization"]`` gives the copy's float difference. ``per_channel=False`` (CLI
``--per-tensor``) is where they matter. ``debug_layers=True`` adds ``layer_sqnr``: each
int8 op's SQNR against its float copy, lowest first
(:mod:`compress.quantization.debug`).

With ``qat=True`` the model is first fine-tuned for ``epochs`` with fake-quantized
weights and activations (BatchNorm folded), then converted as ``int8`` with each layer's
output quantized on the range it learned (TFLite; :mod:`compress.quantization.qat`).
As in every mode, the agreement and the float scores are the input model's (what the
user ships today); ``info["qat"]["trained_float_agreement"]`` is the artifact's against
the QAT-trained float model.

Example:

>>> from compress import io
>>> from compress.quantization import quantize
>>> content, info = quantize(model, data, mode="int8")   # doctest: +SKIP
>>> io.write_bytes("model.tflite", content)              # doctest: +SKIP
>>> info["size_ratio"] < 0.3, info["accuracy"] >= info["float_accuracy"] - 0.003  # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compress.data import as_dataset
from compress.errors import CompressError
from compress.options import Option, Schema
from compress.passes import Pass
from compress.quantization.keras_modes import KERAS_MODES
from compress.runtime import refuse_keras_quantized, refuse_lookup_tables
from compress.task import TASK_OPTIONS

QUANTIZE_OPTIONS = Schema("quantize", [
    Option("mode", str, "int8", "int8 (full-integer), dynamic (int8 weights), float16, "
           "int4 (weights on a per-channel 4-bit grid, stored as float), or Keras's own "
           "model.quantize, written as .keras: keras-int8, keras-int4, gptq, awq (4-bit, "
           "calibrated on --data)",
           choices=("int8", "dynamic", "float16", "keras-int8", "keras-int4", "int4", "gptq",
                    "awq")),
    Option("rounding", str, "nearest", "weight rounding onto the converter's grid: nearest, "
           "or gptq (column by column with second-order compensation from layer Hessians "
           "on the calibration samples; modes int8 and int4)", choices=("nearest", "gptq")),
    Option("format", str, None, "artifact format; default from the output suffix "
           "(.tflite, .onnx; .keras for keras-int8), else tflite",
           choices=("tflite", "onnx", "keras")),
    Option("qat", bool, False, "quantization-aware fine-tuning (fake-quantized weights and "
           "activations, BatchNorm folded) before int8 conversion"),
    Option("epochs", int, 0, "QAT fine-tuning epochs (0 with --qat means 3)", low=0),
    Option("learning_rate", float, 1e-4, "QAT fine-tuning learning rate", low=0.0,
           low_inclusive=False),
    Option("calibration_samples", int, 256, "training samples used to calibrate "
           "activation ranges", low=1),
    Option("calibration", str, "minmax", "ONNX calibration method (TFLite calibrates "
           "min/max)", choices=("minmax", "entropy", "percentile")),
    Option("interface", str, "float", "TFLite int8 model input/output type: float, or int8 "
           "for integer-only devices", choices=("float", "int8")),
    Option("per_channel", bool, True, "per-channel weight scales; per-tensor if off, which "
           "keeps a k-means-shared model's code book (fewer int8 codes, smaller zipped file)"),
    Option("equalize", bool, False, "int8: cross-layer equalization on a copy before "
           "conversion (BatchNorm folded, ReLU6 made ReLU, channel ranges balanced; Nagel "
           "et al. 2019): for per-tensor int8 of depthwise-separable networks"),
    Option("bias_correction", bool, False, "int8: on a copy, correct each layer's bias for "
           "the mean output error of rounding its weights, measured on the calibration data"),
    Option("debug_layers", bool, False, "int8 TFLite: per-layer SQNR of the artifact "
           "(TFLite's QuantizationDebugger on the calibration data), worst layers listed"),
    Option("keep_float", list, None, "int8 TFLite/ONNX: the ops of these layers stay "
           "float, the rest int8 (comma-separated names, class names or regular "
           "expressions, as --layers; layers inside custom layers too, as a KerasHub "
           "decoder's 'self_attention'): for the part of a model whose int8 form loses "
           "most (--debug-layers ranks them). 'auto': while the artifact fails its check, "
           "keep float one more layer, the worst in TFLite's per-op debugger (at most 4)",
           flag="--keep-float"),
    Option("sparse", bool, False, "TFLite: store mostly-zero (pruned) weight tensors in "
           "TFLite's sparse format: a smaller raw file (not zipped), densified when the "
           "interpreter prepares; runs on LiteRT's builtin kernels (no XNNPACK), slower"),
    Option("reduce_range", bool, True, "ONNX: 7-bit weights, which keep onnxruntime's x86 "
           "int8 kernels from saturating on CPUs without VNNI"),
    Option("layout", str, "cpu", "ONNX int8 layout: cpu (asymmetric activations, 7-bit "
           "weights per --reduce-range) or gpu (what TensorRT and CUDA take: symmetric "
           "activations and per-channel weights, zero points 0, full 8-bit)",
           choices=("cpu", "gpu")),
    Option("strict", bool, False, "refuse an artifact that fails its check against the "
           "float model (exit 1, nothing written) instead of writing it with a warning: "
           "for scripts that ship what they get"),
    Option("threads", int, 2, "threads of the multi-threaded latency measurement", low=1),
    Option("latency", bool, True, "measure batch-1 latency of both artifacts"),
    Option("exports", bool, True, "modes keras-int4, gptq, awq: also try the project's "
           "TFLite and ONNX export of the result and say in one line each what happens"),
    Option("without_lookups", bool, False, "a model that takes strings: quantize it from "
           "the outputs of its lookup layers (TextVectorization, StringLookup...) on, which "
           "then run in the input pipeline; the artifact takes their token ids or one-hot "
           "rows"),
    *TASK_OPTIONS,
    Option("seed", int, 0, "seed of QAT's training and of the random agreement inputs "
           "(without data)", cli=False),
])

SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx", "keras": ".keras"}
# Inputs the artifact's top-1 agreement with Keras is measured on (export's rule).
_AGREEMENT_SAMPLES = 256
NEEDS_DATA = ("full-integer int8 calibrates activation ranges on real samples and none were "
              "given: pass --data NAME (for example --data mnist5k), or use mode dynamic, "
              "which needs no data")


def quantize(model, data=None, *, verbose: int | str = 0, **options) -> tuple[bytes, dict]:
    """Quantize ``model`` to an 8-bit (or float16) artifact and measure it; write nothing.

    The input model is never modified. The artifact is returned only after it ran in its
    runtime.

    Example:

    >>> content, info = quantize(model, ds, mode="int8")                     # doctest: +SKIP
    >>> content, info = quantize(model, ds, format="onnx", calibration="entropy")  # doctest: +SKIP

    Args:
        model: a single-input Keras classifier.
        data: a :class:`compress.data.Dataset` prepared for the model, or None. Needed
            for ``int8`` (calibration) and ``qat`` (fine-tuning); its test split gives
            the accuracies.
        verbose: Keras ``verbose`` of the QAT fine-tuning, default 0.
        **options: see ``QUANTIZE_OPTIONS``: ``mode="int8"``, ``format=None``
            (``tflite``; ``keras`` for ``keras-int8``), ``qat=False``, ``epochs=0``,
            ``learning_rate=1e-4``, ``calibration_samples=256``,
            ``calibration="minmax"``, ``interface="float"``, ``per_channel=True``,
            ``equalize=False``, ``bias_correction=False``, ``debug_layers=False``,
            ``sparse=False``, ``reduce_range=True``, ``threads=2``, ``latency=True``,
            ``seed=0``.

    Returns:
        ``(content, info)``: the artifact's bytes, and a JSON-ready dict: ``mode``,
        ``format``, ``bytes``, ``zipped_bytes``, ``float_bytes``,
        ``float_zipped_bytes``, ``size_ratio``, ``accuracy`` and ``float_accuracy``
        (in the runtime, test split), ``top1_agreement`` with the input Keras model,
        ``latency_ms`` / ``float_latency_ms`` / ``latency_ratio`` keyed by thread
        count, ``weight_zeros`` (fraction of zero weights in the model and in the
        artifact), ``sparse_tensors`` (TFLite: tensors stored in the sparse format),
        plus ``float_layers`` (keras-int8) and ``qat`` details.

    Raises:
        CompressError: bad options, no or misshapen calibration data, an op the format
            cannot quantize (the layer is named), an artifact that fails in its runtime.
    """
    from compress.export import unknown_size_note, verification_inputs
    from compress.training import check_finite

    opts = QUANTIZE_OPTIONS.validate(options)
    from compress.io import ensure_signature

    model = ensure_signature(model, data)  # a subclassed model: wrapped, with an input
    fmt = artifact_format(opts)
    refuse_keras_quantized(model)
    lookups = None
    if opts["without_lookups"]:
        from compress.runtime import without_lookups

        data = as_dataset(data, model) if data is not None else None
        model, data, lookups = without_lookups(model, data)
    if fmt != "keras":
        refuse_lookup_tables(model, fmt)
    require_data(opts, data)
    data = as_dataset(data, model)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    check_finite(model)  # NaN weights would quantize to garbage that "agrees" with NaN
    x_cal, x_test, y_test = _arrays(model, data, opts["calibration_samples"])
    x_check = verification_inputs(model, data, _AGREEMENT_SAMPLES, opts["seed"])
    from compress.task import resolve

    # The model's own task decides what agreement and scores mean (top-1 and accuracy for
    # a classifier; SQNR and MSE for a regression, whose one unit always "agrees").
    opts["_task"] = resolve(model, opts["loss"], opts["metrics"], y=y_test)
    info = {"mode": opts["mode"], "format": fmt, "qat": None, "task": opts["_task"].kind}
    size_note = unknown_size_note(model, data) if fmt != "keras" else None
    if size_note:
        info["input_size_note"] = size_note
    # Every reported number compares with the user's float model (what ships today), not
    # with a copy made on the way (QAT-trained, equalized, GPTQ-rounded, int4-snapped).
    original = model
    if opts["qat"]:
        from compress import training
        from compress.quantization.qat import qat_finetune

        epochs = opts["epochs"] or 3
        training.set_seed(opts["seed"])  # the same call gives the same QAT model
        model, info["qat"] = qat_finetune(model, data, epochs=epochs,
                                          learning_rate=opts["learning_rate"],
                                          per_channel=opts["per_channel"], verbose=verbose,
                                          task=opts["_task"])
        opts["_qat_ranges"] = info["qat"].pop("activation_ranges")
        trained = model
    if opts["equalize"] or opts["bias_correction"]:  # on a copy; the float reference stays
        from compress.quantization.equalize import prepare_for_int8

        model, info["equalization"] = prepare_for_int8(model, x_cal, x_test, y_test, fmt,
                                                       opts)
    if fmt in ("tflite", "onnx") and opts["mode"] == "int8":
        from compress.quantization.float_front import float_front

        # an input normalization whose features one int8 input scale cannot hold: float
        opts["_keep_float"], front = float_front(
            model, x_cal, int8_io=fmt == "tflite" and opts["interface"] == "int8")
        if front:  # kept float, or (an int8 interface) a warning that it cannot be
            info["float_front" if opts["_keep_float"] else "float_front_warning"] = front
        if opts["keep_float"] and opts["keep_float"] != [AUTO]:  # named by the user
            info["kept_float_layers"] = _kept_float_layers(model, opts["keep_float"])
            opts["_keep_float"] = (opts["_keep_float"] or []) + info["kept_float_layers"]
    if opts["mode"] == "int4" or opts["rounding"] == "gptq":
        from compress.quantization.gptq import grid_model

        model, info["rounding"] = grid_model(model, x_cal, fmt, opts)
    if fmt == "keras":
        content, measured = _keras_int8(model, x_check, x_test, y_test, opts, x_cal)
    elif opts["mode"] == "int4":
        from compress.quantization.gptq import int4_artifacts
        from compress.training import predict

        content, float_content, note = int4_artifacts(model, original, data, fmt, opts)
        measured = _measure(content, float_content, fmt, x_check,
                            predict(original, x_check), x_test, y_test, opts)
        measured["storage"] = note
    else:
        content, measured = _artifact(model, data, fmt, x_cal, x_check, x_test, y_test,
                                      opts, reference=original)
        if opts["keep_float"] == [AUTO]:
            content, measured, info["keep_float_auto"] = _auto_keep_float(
                model, data, fmt, x_cal, x_check, x_test, y_test, opts, original, content,
                measured)
            info["kept_float_layers"] = info["keep_float_auto"]["layers"]
    info.update(measured)
    if opts["strict"] and not info.get("verified", True):
        raise CompressError(strict_refusal(info))
    if fmt in ("tflite", "onnx") and opts["mode"] in ("int8", "dynamic"):
        info.update(_stored_in_int8(content, fmt, opts["mode"]))
        if info.get("size_ratio", 0) > 1:
            info["larger_than_float"] = _larger_note(content, fmt, info)
    if opts["qat"]:  # the artifact against the QAT-trained float model it was converted from
        info["qat"].update(_qat_float_agreement(content, fmt, trained, x_check, opts))
    if opts["debug_layers"]:
        from compress.quantization.debug import layer_sqnr

        info["layer_sqnr"] = layer_sqnr(model, x_cal, per_channel=opts["per_channel"])
    if info.get("calibration_samples") is None and needs_data(opts):
        info["calibration_samples"] = _length(x_cal)
    if "latency_ratio" in info and opts["mode"] in ("int8", "dynamic") and \
            not info.get("nothing_quantized"):  # a float file: no int8 kernel to explain
        info["latency_note"] = latency_note(info["latency_ratio"]["1"],
                                            sparse_tensors=info.get("sparse_tensors", 0))
    if lookups:
        info["lookups_note"] = lookups
    return content, info


def strict_refusal(info: dict) -> str:
    """The one line ``strict`` ends with when the artifact failed its check.

    >>> strict_refusal({"mode": "int8", "format": "tflite", "agreement_samples": 256,
    ...                 "agreement": "SQNR -3.9 dB (relative L2 error 156.00%) is below 20 dB"})
    '--strict: the int8 tflite artifact disagrees with its float model on 256 inputs (SQNR -3.9 dB (relative L2 error 156.00%) is below 20 dB); nothing was written'
    """
    what = f"the {info['mode']} {info['format']} artifact"
    agreement = info.get("agreement", "")
    if agreement.startswith("not verified"):
        return f"--strict: {what} is {agreement}; nothing was written"
    return (f"--strict: {what} disagrees with its float model on "
            f"{info.get('agreement_samples', 0)} inputs ({agreement}); nothing was written")


def needs_data(options: dict) -> list[str]:
    """The quantize options that need data: full-integer int8 calibrates, QAT trains.

    >>> needs_data({"mode": "dynamic"}), needs_data({"mode": "int8"})
    ([], ['mode int8'])
    """
    return [reason for reason, on in (
        (f"mode {options.get('mode', 'int8')}",
         options.get("mode", "int8") in ("int8", "gptq", "awq")),
        ("rounding gptq", options.get("rounding") == "gptq"),
        ("qat", bool(options.get("qat")))) if on]


def require_data(options: dict, data) -> None:
    """Refuse ``options`` that need data when ``data`` (a dataset or its name) is None.

    Front-ends call it with the data's name, before loading anything.
    """
    if needs_data(options) and data is None:
        mode = options.get("mode")
        raise CompressError(NEEDS_DATA if mode not in ("gptq", "awq") else
                            f"mode {mode} calibrates Keras's {mode.upper()} on real samples "
                            "and none were given: pass --data NAME (for example --data "
                            "mnist5k), or use mode keras-int4, which needs no data")


def latency_note(ratio: float, cpu: dict | None = None,
                 sparse_tensors: int = 0) -> str | None:
    """Why an 8-bit artifact is not faster than float on this CPU (None when it is).

    8-bit kernels beat float ones through instructions that multiply and add four 8-bit
    pairs at once (x86 VNNI, ARM dotprod); without them they widen to 16 bits and do about
    the same work as float, plus the requantization of every output. A file with
    ``sparse_tensors`` (``--sparse``) first has LiteRT rebuild each dense weight at run
    time (a ``DENSIFY`` op), outside the XNNPACK delegate: that is its cost.

    >>> latency_note(2.3, {"name": "X", "int8_dot_product": True}, sparse_tensors=3)[:60]
    'int8 is 2.30x the float latency on this CPU (X): the file st'

    >>> latency_note(0.5) is None
    True
    >>> latency_note(1.5, {"name": "X", "features": ["avx2"], "int8_dot_product": False})
    'int8 is 1.50x the float latency on this CPU (X): it has no 8-bit dot-product ...'
    """
    if ratio < 0.9:
        return None
    from compress.report import cpu_info

    cpu = cpu or cpu_info()
    head = f"int8 is {ratio:.2f}x the float latency on this CPU ({cpu['name']})"
    if sparse_tensors:
        return (f"{head}: the file stores {sparse_tensors} weight tensor(s) in the sparse "
                "format (--sparse), which LiteRT turns back into dense ones with DENSIFY ops "
                "that run outside the XNNPACK delegate. Leave out --sparse for speed; keep it "
                "where the file's size matters more")
    if cpu["int8_dot_product"] is False:
        return (f"{head}: it has no 8-bit dot-product instructions (x86 VNNI, ARM dotprod), "
                "so its int8 kernels do about the work of float ones. The smaller file still "
                "holds; the speed-up needs such a CPU, an NPU/DSP, or a GPU (TensorRT)")
    return (f"{head}, which has 8-bit dot-product instructions: per-op work (requantizing "
            "every output, quantizing the input) can outweigh the cheaper multiplies in "
            "small layers; check the per-layer times in the runtime's profiler")


def suffix_for(options: dict) -> str:
    """The artifact suffix that ``options`` produce (``.tflite`` unless said otherwise).

    Example:

    >>> suffix_for({"mode": "keras-int8"}), suffix_for({"format": "onnx"})
    ('.keras', '.onnx')
    """
    if options.get("mode") in KERAS_MODES:
        return ".keras"
    return SUFFIXES[options.get("format") or "tflite"]


def format_for(path, options: dict) -> str:
    """The format of an artifact written to ``path``: ``options``' ``format``, else the
    path's suffix (``keras`` for ``keras-int8``); refusals name ``path``.

    Front-ends call it before loading anything, then check the output's suffix with
    ``SUFFIXES[fmt]``.

    Example:

    >>> format_for("m.onnx", {"mode": "int8"}), format_for("m.keras", {"mode": "keras-int8"})
    ('onnx', 'keras')
    """
    fmt = options.get("format")
    if fmt is None and options.get("mode") not in KERAS_MODES:
        fmt = {v: k for k, v in SUFFIXES.items()}.get(Path(path).suffix.lower())
        if fmt is None:
            raise CompressError(f"{path}: cannot tell the format; use .tflite or .onnx (or "
                                "pass --format)")
    return artifact_format({**options, "format": fmt}, where=str(path))


def artifact_format(options: dict, where: str = "quantize") -> str:
    """The artifact format that ``options`` produce, or a one-line refusal naming ``where``.

    Example:

    >>> artifact_format({"mode": "dynamic"}), artifact_format({"mode": "keras-int8"})
    ('tflite', 'keras')
    """
    mode, fmt = options.get("mode", "int8"), options.get("format")
    sparse, qat = options.get("sparse"), options.get("qat")
    from compress.quantization.gptq import check_rounding

    if mode not in KERAS_MODES:  # Keras's own modes choose their own weights
        check_rounding(options)
    from compress.quantization.equalize import check_options

    check_options(options)
    if mode in KERAS_MODES:
        if fmt not in (None, "keras"):
            raise CompressError(f"{where}: {mode} writes a .keras model (Keras's own "
                                f"quantized layers), not {fmt}; use .keras")
        if sparse:
            raise CompressError(f"{where}: --sparse is TFLite's sparse tensor format; use "
                                ".tflite")
        if (options.get("rounding") or "nearest") != "nearest" or qat:
            raise CompressError(f"{where}: mode {mode} is Keras's own quantizer; --rounding "
                                "gptq and --qat apply to modes int8/int4 (use --mode gptq "
                                "for Keras's GPTQ)")
        return "keras"
    fmt = fmt or "tflite"
    if fmt == "keras":
        raise CompressError(f"{where}: a .keras output needs one of Keras's own modes: "
                            + ", ".join(KERAS_MODES))
    if qat and mode != "int8":
        raise CompressError("--qat trains for full-integer int8; use it with mode int8")
    if sparse and fmt != "tflite":
        raise CompressError(f"{where}: --sparse is TFLite's sparse tensor format; use .tflite")
    if sparse and qat:
        raise CompressError("--sparse cannot be combined with --qat (the QAT ranges are "
                            "applied after conversion); quantize without one of them")
    keep = options.get("keep_float") or []
    keep = [k.strip() for k in keep.split(",")] if isinstance(keep, str) else list(keep)
    if AUTO in keep and len(keep) > 1:
        raise CompressError(f"{where}: --keep-float auto picks the layers itself; give "
                            "auto alone, or layer names")
    if options.get("keep_float") and (mode != "int8" or fmt not in ("tflite", "onnx")
                                      or options.get("interface") == "int8"):
        raise CompressError(f"{where}: --keep-float leaves layers float inside an int8 "
                            "TFLite or ONNX artifact with a float interface; use mode int8 "
                            "with a .tflite or .onnx output (not --interface int8)")
    if options.get("interface", "float") == "int8" and (fmt != "tflite" or mode != "int8"):
        raise CompressError(f"{where}: --interface int8 gives a full-integer TFLite model "
                            "int8 inputs and outputs; use mode int8 with a .tflite output "
                            "(an ONNX QDQ model takes and gives float)")
    if (options.get("calibration") or "minmax") != "minmax" and (fmt != "onnx"
                                                                 or mode != "int8"):
        raise CompressError(f"{where}: --calibration {options['calibration']} is "
                            "onnxruntime's static int8 calibration; TFLite calibrates min/max "
                            "(drop it, or write a static int8 .onnx)")
    if options.get("layout", "cpu") == "gpu" and (fmt != "onnx" or mode != "int8"):
        raise CompressError(f"{where}: --layout gpu is the static int8 ONNX layout; use mode "
                            "int8 with an .onnx output")
    if options.get("layout") == "gpu" and options.get("per_channel") is False:
        raise CompressError("--layout gpu quantizes weights per channel; drop --per-tensor")
    return fmt


#: ``--keep-float auto``: the word, and the most layers it keeps float (one more per
#: conversion) before it reports the artifact as it stands.
AUTO = "auto"
AUTO_KEEP_FLOAT_LAYERS = 4


def _auto_keep_float(model, data, fmt, x_cal, x_check, x_test, y_test, opts: dict,
                     original, content: bytes, measured: dict) -> tuple:
    """``--keep-float auto``: while the int8 artifact fails its check against the float
    model, keep float one more layer and convert again. The layers come in the order of
    TFLite's per-op debugger (:func:`compress.quantization.debug.layer_sqnr`, run once on
    the all-int8 conversion: lowest SQNR first; for ONNX too, as the same calibration
    loses in the same places); a layer whose float ops do not make the check better
    (:func:`_quality`) is put back. At most :data:`AUTO_KEEP_FLOAT_LAYERS` layers are
    kept, and at most twice as many tried.

    Returns ``(content, measured, report)``: the artifact kept, its measurements, and
    ``layers`` (kept float), ``put_back`` (tried, no better float), ``conversions``,
    ``verified``, ``ranked_by``, and a ``note`` when it found nothing to do or no fix.
    """
    from compress.layer_state import all_layers
    from compress.quantization.debug import layer_sqnr

    report = {"layers": [], "conversions": 1, "verified": bool(measured.get("verified")),
              "put_back": [], "ranked_by": "TFLite's per-op quantization debugger"}
    if measured.get("verified"):
        report["note"] = "the all-int8 artifact passed its check: no layer kept float"
        return content, measured, report
    if str(measured.get("agreement", "")).startswith("not verified"):
        report["note"] = ("the float model gives the same output for every check input: "
                          "no layer kept float would make a check against it mean anything")
        return content, measured, report
    names = {la.name for la in all_layers(model) if la is not model}
    base = list(opts.get("_keep_float") or [])
    try:
        ranked = layer_sqnr(model, x_cal, per_channel=opts["per_channel"])["layers"]
    except CompressError as exc:
        report["note"] = f"no layer ranking, so none kept float ({exc})"
        return content, measured, report
    candidates = [n for n in dict.fromkeys(r["layer"] for r in ranked)
                  if n in names and n not in base]
    kept: list = []
    tried = 0
    while candidates and len(kept) < AUTO_KEEP_FLOAT_LAYERS and tried < \
            2 * AUTO_KEEP_FLOAT_LAYERS and not measured.get("verified"):
        layer, tried = candidates.pop(0), tried + 1
        opts["_keep_float"] = base + kept + [layer]
        try:
            new_content, new = _artifact(model, data, fmt, x_cal, x_check, x_test, y_test,
                                         opts, reference=original)
        except CompressError:  # its ops were folded into others: nothing of its own
            continue
        report["conversions"] += 1
        if _quality(new) <= _quality(measured):
            report["put_back"].append(layer)  # no better with it float
            continue
        kept.append(layer)
        content, measured = new_content, new
    opts["_keep_float"] = base + kept
    report.update(layers=kept, verified=bool(measured.get("verified")))
    if not measured.get("verified"):
        report["note"] = (f"still disagrees with the float model after {tried} layer(s) "
                          "tried float; name more with --keep-float, or try QAT (--qat) or "
                          "--mode float16")
    return content, measured, report


def _quality(measured: dict) -> tuple:
    """How an artifact's check went, to compare two: passed, then top-1 agreement (a
    classifier's), then SQNR against the float model.

    >>> flagged = {"verified": False, "top1_agreement": 0.5, "sqnr_db": 60.0}
    >>> _quality(flagged) < _quality({"verified": True, "top1_agreement": 0.95})
    True
    """
    return (bool(measured.get("verified")), measured.get("top1_agreement", 0.0),
            measured.get("sqnr_db", 0.0))


def _kept_float_layers(model, selectors) -> list:
    """The names of the layers of ``model`` (at any depth, sublayers of custom layers
    too) that ``--keep-float`` selects (:func:`compress.layers.select_layers`)."""
    from compress.layer_state import all_layers
    from compress.layers import select_layers

    layers = [la for la in all_layers(model) if la is not model]
    names = list(dict.fromkeys(la.name for la in layers))
    for selector in selectors:
        try:
            select_layers(layers, [selector], "", model.name)
        except CompressError:
            raise CompressError(f"--keep-float '{selector}': matches no layer of model "
                                f"'{model.name}' (its layers: {', '.join(names[:8])}"
                                f"{', ...' if len(names) > 8 else ''})") from None
    return list(dict.fromkeys(la.name for la in select_layers(layers, selectors, "",
                                                               model.name)))


def classifiers(task):
    """Whether top-1 agreement means something: a bool, or per output a dict
    ``{output name: bool}`` (a model with several outputs)."""
    tasks = getattr(task, "tasks", None)
    if tasks:
        return {name: t.is_classifier for name, t in tasks.items()}
    return task.is_classifier


def _length(x) -> int:
    from compress.data.arrays import length

    return length(x)


#: The most test samples of a stream (tf.data, an image folder) an artifact is scored on.
STREAM_TEST_SAMPLES = 10_000


def _arrays(model, data, n: int):
    """Calibration samples and the test split, fitted to the model (or refused)."""
    from compress.data import fit_to_model
    from compress.data.arrays import as_input

    if data is None:
        return None, None, None
    # Only n calibration samples are read. The artifact is scored in its runtime on
    # arrays: the whole test split of in-memory data, at most STREAM_TEST_SAMPLES of a
    # stream (its first ones; the report says so). Targets are None for unlabelled data.
    from compress.data.streaming import StreamDataset
    from compress.export import named_inputs

    x_t, y_t = data.head("test", STREAM_TEST_SAMPLES if isinstance(data, StreamDataset)
                         else None)
    if isinstance(data, StreamDataset) and _length(x_t) == STREAM_TEST_SAMPLES:
        data.notes.append(f"data {data.name}: the int8 artifact is scored on the first "
                          f"{STREAM_TEST_SAMPLES} test samples of the stream")
    if len(model.inputs) > 1 or len(model.outputs) > 1:  # dicts keyed by input name
        x_cal = named_inputs(model, fit_to_model(data.representative(n), model,
                                                 "calibration data"))
        x_test = named_inputs(model, fit_to_model(x_t, model, "test data"))

        def f32(x):
            return {k: as_input(np.asarray(v)) for k, v in x.items()} \
                if isinstance(x, dict) else as_input(np.asarray(x))
        return f32(x_cal), f32(x_test), y_t
    x_cal = fit_to_model(np.asarray(data.representative(n)), model, "calibration data")
    x_test = fit_to_model(np.asarray(x_t), model, "test data")
    y_test = None if y_t is None else np.asarray(y_t)
    # numbers as float32, strings (a text model's, mode keras-int8) as they are
    return as_input(np.asarray(x_cal)), as_input(np.asarray(x_test)), y_test



def _artifact(model, data, fmt: str, x_cal, x_check, x_test, y_test, opts: dict,
              reference=None) -> tuple[bytes, dict]:
    """The TFLite or ONNX artifact's bytes, measured next to the float export of
    ``reference`` (the user's model, before QAT, equalization or GPTQ rounding) when
    given, else of ``model``; its agreement is with ``reference``'s Keras outputs."""
    from compress import progress
    from compress.export import export_artifact
    from compress.training import predict

    mode = opts["mode"]
    progress.expect("conversion", 2)  # the plan: overall ETA
    progress.expect("export", 1)
    progress.expect("verification", 2, runs=2)  # the float reference's, then the artifact's
    expected = predict(model if reference is None else reference, x_check)
    flatbuffer, conversion_notes = None, []
    if fmt == "tflite":  # convert first: an unsupported op is reported before anything else
        from compress.quantization.tflite import convert

        ranges = (opts.get("_qat_ranges") or None) if opts["qat"] else None
        with progress.phase("conversion", unit="sample", detail=f"{mode} TFLite"
                            + (f", calibrating on {_length(x_cal)} samples" if x_cal is not None
                               and mode == "int8" else "")):
            flatbuffer = convert(model, mode, representative=x_cal,
                                 int8_io=opts["interface"] == "int8",
                                 per_channel=opts["per_channel"], activation_ranges=ranges,
                                 sparse=opts["sparse"], notes=conversion_notes,
                                 keep_float=opts.get("_keep_float"))
    try:
        float_content, float_info = export_artifact(
            model if reference is None else reference, data, format=fmt,
            samples=_AGREEMENT_SAMPLES, seed=opts["seed"])
        source = float_content  # ONNX quantizes this export: the GPTQ-rounded one if any
        if fmt == "onnx" and reference is not None:
            source = export_artifact(model, data, format=fmt, samples=_AGREEMENT_SAMPLES,
                                     seed=opts["seed"])[0]
    except CompressError:
        raise
    except Exception as exc:  # the runtime refuses the float reference itself
        raise CompressError(f"the float {fmt} reference does not run "
                            f"({' '.join(str(exc).split())[:200]})") from exc
    refused: list = []
    if fmt == "tflite":
        content = flatbuffer
    else:
        from compress.quantization.float_front import layer_names
        from compress.quantization.onnx import quantize_onnx

        with tempfile.TemporaryDirectory() as folder:  # onnxruntime quantizes files
            float_path, out = Path(folder) / "float.onnx", Path(folder) / "quantized.onnx"
            float_path.write_bytes(source)
            with progress.phase("conversion", unit="batch", detail=f"ONNX {mode}"):
                refused = quantize_onnx(float_path, out, mode, representative=x_cal,
                              calibration=opts["calibration"],
                              per_channel=opts["per_channel"],
                              reduce_range=opts["reduce_range"], layout=opts["layout"],
                              keep_float=opts.get("_keep_float") if mode == "int8" else None,
                              layer_names=layer_names(model))
            content = out.read_bytes()
    with progress.phase("verification", detail=f"the {mode} {fmt} artifact in "
                        f"{'LiteRT' if fmt == 'tflite' else 'onnxruntime'}"):
        info = _measure(content, float_content, fmt, x_check, expected, x_test, y_test, opts)
    if fmt == "onnx" and refused:
        info["kept_float"] = (f"{len(refused)} node(s) like '{refused[0]}' kept float: "
                              "onnxruntime refused to run their int8 form")
    copy_notes = [n for n in (float_info.get("export_copy") or "").split("; ") if n]
    copy_notes += [n for n in conversion_notes if n not in copy_notes]  # fixed batch size
    if copy_notes:  # e.g. a mixed_float16 model quantized via float32
        info["export_copy"] = "; ".join(copy_notes)
    # "model": the user's (rounding onto a grid can zero weights that were not zero)
    user = model if reference is None else reference
    info["weight_zeros"] = {"model": _zero_fraction(_model_kernels(user)),
                            "artifact": _zero_fraction(_artifact_weights(content, fmt))}
    info["calibration"] = (opts["calibration"] if fmt == "onnx" else "minmax") \
        if mode == "int8" else None
    info["interface"] = opts["interface"] if fmt == "tflite" and mode == "int8" else "float"
    if fmt == "tflite":
        from compress.runtime import sparse_tensor_count

        info["sparse_tensors"] = sparse_tensor_count(content)
        if info["sparse_tensors"]:  # a default Interpreter(...) fails on it: say how to load
            info["xnnpack_refused"] = (f"its {info['sparse_tensors']} sparse weight "
                                       "tensor(s), densified at run time")
    return content, info


def _measure(content: bytes, float_content: bytes, fmt: str, x_check, expected, x_test,
             y_test, opts: dict) -> dict:
    from compress import runtime

    try:
        got = runtime.run_artifact(content, x_check, fmt=fmt)
    except Exception as exc:
        raise CompressError(f"quantized model failed to run in its runtime "
                            f"({' '.join(str(exc).split())[:200]}); nothing written") from exc
    suffix = SUFFIXES[fmt]
    info = {
        "bytes": len(content), "zipped_bytes": _zipped_size(content, suffix),
        "float_bytes": len(float_content),
        "float_zipped_bytes": _zipped_size(float_content, suffix),
        **runtime.comparison(got, expected, classifiers(opts["_task"])),
        "agreement_samples": _length(x_check),
    }
    info["verified"], info["agreement"] = runtime.agreement_summary(info)
    if isinstance(got, dict) and len(got) == len(info.get("outputs") or ()):
        # which artifact output is which of the model's (compared in this order): a
        # TFLite file names them output_0, output_1... and its interpreter's
        # get_output_details() lists them in an order of its own
        info["artifact_outputs"] = dict(zip(info["outputs"], got))
    info["size_ratio"] = info["bytes"] / info["float_bytes"]
    refused = runtime.xnnpack_refused(content) if fmt == "tflite" else None
    if refused:
        info["xnnpack_refused"] = refused
    if x_test is not None and y_test is not None:  # the task's own scores, in the runtime
        task = opts["_task"]
        scores = task.score(runtime.run_artifact(content, x_test, fmt=fmt), y_test)
        float_scores = task.score(runtime.run_artifact(float_content, x_test, fmt=fmt),
                                  y_test)
        if "outputs" in scores:  # several outputs: "outputs" holds the agreement checks
            info["output_scores"] = scores.pop("outputs")
            info["float_output_scores"] = float_scores.pop("outputs")
        info.update(scores)
        info.update({f"float_{k}": v for k, v in float_scores.items()})
    if opts["latency"]:
        shape = ({k: tuple(v.shape[1:]) for k, v in x_check.items()}
                 if isinstance(x_check, dict) else tuple(x_check.shape[1:]))
        info["latency_ms"], info["float_latency_ms"], info["latency_ratio"] = {}, {}, {}
        for threads in sorted({1, opts["threads"]}):
            # Other processes share the CPU: alternate quantized and float rounds, so that
            # a busy spell slows both, and keep each one's best round.
            q = f = float("inf")
            for _ in range(3):
                q = min(q, runtime.runtime_latency_ms(content, shape, threads=threads,
                                                      fmt=fmt))
                f = min(f, runtime.runtime_latency_ms(float_content, shape, threads=threads,
                                                      fmt=fmt))
            info["latency_ms"][str(threads)] = q
            info["float_latency_ms"][str(threads)] = f
            info["latency_ratio"][str(threads)] = q / f
    return info


def _qat_float_agreement(content: bytes, fmt: str, trained, x_check, opts: dict) -> dict:
    """The artifact's agreement with the QAT-trained float model (``trained_float_*``):
    the report's own agreement is with the user's float model."""
    from compress import runtime
    from compress.training import predict

    check = runtime.comparison(runtime.run_artifact(content, x_check, fmt=fmt),
                               predict(trained, x_check), classifiers(opts["_task"]))
    return {"trained_float_agreement": runtime.agreement_summary(check)[1],
            **{f"trained_float_{k}": v for k, v in check.items()
               if k in ("top1_agreement", "sqnr_db")}}


def _keras_int8(model, x_check, x_test, y_test, opts: dict, x_cal=None
                ) -> tuple[bytes, dict]:
    """The ``.keras`` file's bytes of Keras's own quantizer (``opts["mode"]``), measured
    reloaded from them."""
    from compress import io
    from compress.quantization.keras_modes import complete_save, keras_quantize
    from compress.report import keras_latency_ms, saved_size, zipped_size
    from compress.runtime import agreement_summary, comparison
    from compress.training import predict

    mode = opts["mode"]
    quantized, layers = keras_quantize(model, mode, x_cal)
    with tempfile.TemporaryDirectory() as folder:  # Keras saves to and loads from files
        path = Path(folder) / "quantized.keras"
        with complete_save(quantized):
            quantized.save(path)
        content = path.read_bytes()
        try:
            reloaded = io.load_model(path)
        except Exception as exc:  # Keras wrote a file it cannot read: say so, write nothing
            text = " ".join(str(exc).split()).replace(f"{path}: ", "")
            # custom layers that own Dense/Embedding layers build them again, in float,
            # from their config: the int8 weights then do not fit
            owners = [la.name for la in quantized.layers
                      if not type(la).__module__.startswith(("keras", "compress"))
                      and any(getattr(sub, "quantization_mode", None)
                              for sub in la._flatten_layers(include_self=False))]
            why = (f": custom layers ({', '.join(owners[:4])}) build the layers they own "
                   "in float from their config, so the int8 weights do not fit them; use "
                   "--mode int8 with a .tflite or .onnx output" if owners else "")
            raise CompressError(f"mode {mode}: the .keras file Keras saved does not load back "
                                f"({text[:160]}){why}; nothing written") from exc
        info = {"bytes": len(content), "zipped_bytes": zipped_size(path)}
    info["float_bytes"], info["float_zipped_bytes"] = saved_size(model)
    info["size_ratio"] = info["bytes"] / info["float_bytes"]
    info["float_layers"] = layers["float"]
    info["quantized_layers"] = layers["quantized"]
    if layers.get("notes"):  # e.g. a mixed_float16 model, quantized through a float32 copy
        info["export_copy"] = "; ".join(layers["notes"])
    if mode != "keras-int8" and opts["exports"]:
        from compress.quantization.keras_modes import export_outcomes

        info["exports"] = export_outcomes(reloaded, opts["seed"])
    task = opts["_task"]
    info.update(comparison(predict(reloaded, x_check), predict(model, x_check),
                           classifiers(task)))
    info["agreement_samples"] = _length(x_check)
    info["verified"], info["agreement"] = agreement_summary(info)
    if x_test is not None and y_test is not None:
        info.update(task.evaluate(reloaded, x_test, y_test))
        info.update({f"float_{k}": v for k, v in task.evaluate(model, x_test, y_test).items()})
    if opts["latency"]:
        # one input: the check inputs' sample shape (unknown sizes made concrete); several
        # (a dict by name): each input's own shape and dtype
        shape = None if isinstance(x_check, dict) else tuple(x_check.shape[1:])
        q, f = keras_latency_ms(reloaded, shape), keras_latency_ms(model, shape)
        info["latency_ms"], info["float_latency_ms"] = {"1": q}, {"1": f}
        info["latency_ratio"] = {"1": q / f}
    info["weight_zeros"] = {"model": _zero_fraction(_model_kernels(model)),
                            "artifact": _zero_fraction(_model_kernels(reloaded))}
    return content, info


def _zipped_size(content: bytes, suffix: str) -> int:
    """Zipped size of in-memory artifact bytes (the report measures files)."""
    from compress.report import zipped_size

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"model{suffix}"
        path.write_bytes(content)
        return zipped_size(path)


def _model_kernels(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights if len(w.shape) >= 2]


def _stored_in_int8(content: bytes, fmt: str, mode: str) -> dict:
    """The share of the artifact's stored weight values in 8 bits, and a warning when it
    is none: the converter may leave a model in float (TFLite's dynamic-range mode keeps
    tensors under 1,024 values float) and the artifact is then the float model."""
    from compress.artifacts import quantized_share, structure

    share = quantized_share(structure(content, fmt)["weights"])
    out = {"int8_weight_share": share}
    if share == 0:
        why = (": TFLite's dynamic-range mode keeps weight tensors under 1,024 values in "
               "float" if fmt == "tflite" and mode == "dynamic" else "")
        out["nothing_quantized"] = (f"no weight is stored in 8 bits{why}; this artifact is "
                                    "the float model (use the full-integer mode, int8, for "
                                    "small layers)" if mode == "dynamic" else
                                    f"no weight is stored in 8 bits{why}")
    return out


def _larger_note(content: bytes, fmt: str, info: dict) -> str:
    """Why a quantized file came out larger than its float one: its weights are a small
    part of it, and every op's tensors carry quantization parameters (an unrolled LSTM:
    one set per time step; a small model's QDQ nodes).

    >>> _larger_note(b"", "tflite", {"size_ratio": 1.5, "zipped_bytes": 9,
    ...              "float_zipped_bytes": 10})  # no readable file: no breakdown
    'the file is 1.50x its float one (zipped 0.90x)'
    """
    from compress.artifacts import structure

    try:
        s = structure(content, fmt)
        ops = sum(s["ops"].values())
        weights = sum(w["bytes"] for w in s["weights"].values())
        where = (f": its weights are {weights:,} of its {len(content):,} bytes; the rest is "
                 f"the graph of {ops:,} ops and their tensors' quantization parameters")
    except Exception:  # noqa: BLE001 - an explanation must never fail the command
        where = ""
    zipped = info["zipped_bytes"] / max(1, info["float_zipped_bytes"])
    return (f"the file is {info['size_ratio']:.2f}x its float one (zipped {zipped:.2f}x)"
            f"{where}")


def _artifact_weights(content: bytes, fmt: str) -> list[np.ndarray]:
    if fmt == "onnx":
        from compress.quantization.onnx import weight_arrays
    else:
        from compress.quantization.tflite import weight_arrays
    return weight_arrays(content)


def _zero_fraction(arrays: list[np.ndarray]) -> float:
    total = sum(a.size for a in arrays)
    return float(sum(a.size - np.count_nonzero(a) for a in arrays) / total) if total else 0.0


PASS = Pass("quantize", "8-bit artifacts: full-integer or dynamic int8 and float16 TFLite "
            "and ONNX, Keras int8, QAT", "compress.quantization:quantize", QUANTIZE_OPTIONS,
            needs_data=needs_data, trains=True, produces="artifact", suffix=suffix_for,
            order=40)


__all__ = ["QUANTIZE_OPTIONS", "SUFFIXES", "format_for", "needs_data", "quantize",
           "require_data", "suffix_for"]
