"""8-bit quantization: full-integer TFLite, ONNX int8, Keras int8, quantization-aware training.

:func:`quantize` is the one pass that writes a file: its product is a deployment
artifact (``.tflite``, ``.onnx``, or a Keras-int8 ``.keras``), not a Keras model. It
writes the artifact atomically, runs it in its real runtime (LiteRT, onnxruntime, Keras)
and reports accuracy, file size raw and zipped, and batch-1 latency single- and
multi-threaded, side by side with the float model in the same runtime.

Modes:

- ``int8``: full-integer post-training quantization (Jacob et al. 2018): int8 weights with
  per-channel scales, int8 activations with per-tensor scales calibrated on
  ``calibration_samples`` training samples, int32 biases. TFLite or ONNX (static QDQ).
- ``dynamic``: int8 weights, float activations; needs no data. TFLite or ONNX.
- ``float16``: half-precision weights (TFLite only).
- ``keras-int8``: Keras's own ``model.quantize("int8")`` (Dense/EinsumDense/Embedding);
  saved as ``.keras``; the layers that stayed float are listed.

With ``sparse=True`` (TFLite) the mostly-zero weight tensors of a pruned model are stored
in TFLite's sparse format (CSR values plus column indices): the raw file shrinks with the
sparsity, but the zipped file does not (the indices compress worse than runs of zeros),
the weights are densified in memory when the interpreter prepares, and the file runs on
LiteRT's builtin kernels, because the XNNPACK delegate refuses it.

With ``qat=True`` the model is first fine-tuned for ``epochs`` with fake-quantized
weights and activations (BatchNorm folded), then converted as ``int8`` with each layer's
output quantized on the range it learned (TFLite; :mod:`compress.quantization.qat`).

Example:

>>> from compress.quantization import quantize
>>> info = quantize(model, "model.tflite", data, mode="int8")   # doctest: +SKIP
>>> info["size_ratio"] < 0.3, info["accuracy"] >= info["float_accuracy"] - 0.003  # doctest: +SKIP
(True, True)
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from compress.errors import CompressError
from compress.options import Option, Schema

QUANTIZE_OPTIONS = Schema("quantize", [
    Option("mode", str, "int8", "int8 (full-integer), dynamic (int8 weights), float16, or "
           "keras-int8 (Keras's model.quantize)",
           choices=("int8", "dynamic", "float16", "keras-int8")),
    Option("format", str, None, "artifact format; default from the output suffix "
           "(.tflite, .onnx; .keras for keras-int8)", choices=("tflite", "onnx", "keras")),
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
    Option("sparse", bool, False, "TFLite: store mostly-zero (pruned) weight tensors in "
           "TFLite's sparse format: a smaller raw file (not zipped), densified when the "
           "interpreter prepares; runs on LiteRT's builtin kernels (no XNNPACK), slower"),
    Option("reduce_range", bool, True, "ONNX: 7-bit weights, which keep onnxruntime's x86 "
           "int8 kernels from saturating on CPUs without VNNI"),
    Option("threads", int, 2, "threads of the multi-threaded latency measurement", low=1),
    Option("latency", bool, True, "measure batch-1 latency of both artifacts"),
])

SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx", "keras": ".keras"}


def quantize(model, path, data=None, *, force: bool = False, inputs: tuple = (),
             **options) -> dict:
    """Quantize ``model`` to an 8-bit (or float16) artifact at ``path`` and measure it.

    The input model is never modified. The artifact is written atomically and only
    after it ran in its runtime; on any error nothing is written.

    Example:

    >>> info = quantize(model, "lenet.tflite", ds, mode="int8")      # doctest: +SKIP
    >>> info = quantize(model, "lenet.onnx", ds, calibration="entropy")  # doctest: +SKIP

    Args:
        model: a single-input Keras classifier.
        path: output file: ``.tflite``, ``.onnx``, or ``.keras`` for ``keras-int8``.
        data: a :class:`compress.data.Dataset` prepared for the model, or None. Needed
            for ``int8`` (calibration) and ``qat`` (fine-tuning); its test split gives
            the accuracies.
        force: bool, default False. Overwrite an existing output.
        inputs: files that must never be overwritten (the input model).
        **options: see ``QUANTIZE_OPTIONS``: ``mode="int8"``, ``format=None``,
            ``qat=False``, ``epochs=0``, ``learning_rate=1e-4``,
            ``calibration_samples=256``, ``calibration="minmax"``,
            ``interface="float"``, ``per_channel=True``, ``sparse=False``,
            ``reduce_range=True``, ``threads=2``,
            ``latency=True``.

    Returns:
        A JSON-ready dict: ``path``, ``mode``, ``format``, ``bytes``, ``zipped_bytes``,
        ``float_bytes``, ``float_zipped_bytes``, ``size_ratio``, ``accuracy`` and
        ``float_accuracy`` (in the runtime, test split), ``top1_agreement`` with the
        Keras model, ``latency_ms`` / ``float_latency_ms`` / ``latency_ratio`` keyed by
        thread count, ``weight_zeros`` (fraction of zero weights in the model and in the
        artifact), ``sparse_tensors`` (TFLite: tensors stored in the sparse format),
        plus ``float_layers`` (keras-int8) and ``qat`` details.

    Raises:
        CompressError: bad options, no or misshapen calibration data, an op the format
            cannot quantize (the layer is named), an artifact that fails in its runtime.
    """
    from compress import io

    opts = QUANTIZE_OPTIONS.validate(options)
    out = Path(path)
    fmt = _format(out, opts)
    refuse_keras_quantized(model)
    io.check_output(out, inputs=inputs, force=force, suffixes=(SUFFIXES[fmt],))
    full_integer = opts["mode"] == "int8" or opts["qat"]
    if full_integer and data is None:
        raise CompressError(f"{out}: full-integer int8 calibrates activation ranges on real "
                            "samples and none were given: pass --data NAME (for example "
                            "--data mnist5k), or use --mode dynamic, which needs no data")
    x_cal, x_test, y_test = _arrays(model, data, opts["calibration_samples"])
    info = {"path": str(out), "mode": opts["mode"], "format": fmt, "qat": None}
    if opts["qat"]:
        from compress.quantization.qat import qat_finetune

        epochs = opts["epochs"] or 3
        model, info["qat"] = qat_finetune(model, data, epochs=epochs,
                                          learning_rate=opts["learning_rate"],
                                          per_channel=opts["per_channel"])
        opts["_qat_ranges"] = info["qat"].pop("activation_ranges")
    if fmt == "keras":
        info.update(_keras_int8(model, out, x_test, y_test, opts))
    else:
        info.update(_artifact(model, out, fmt, x_cal, x_test, y_test, opts))
    if info.get("calibration_samples") is None and full_integer:
        info["calibration_samples"] = len(x_cal)
    if "latency_ratio" in info and opts["mode"] in ("int8", "dynamic"):
        info["latency_note"] = latency_note(info["latency_ratio"]["1"])
    return info


def latency_note(ratio: float, cpu: dict | None = None) -> str | None:
    """Why an 8-bit artifact is not faster than float on this CPU (None when it is).

    8-bit kernels beat float ones through instructions that multiply and add four 8-bit
    pairs at once (x86 VNNI, ARM dotprod); without them they widen to 16 bits and do about
    the same work as float, plus the requantization of every output.

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
    if options.get("mode") == "keras-int8":
        return ".keras"
    return SUFFIXES[options.get("format") or "tflite"]


def refuse_keras_quantized(model) -> None:
    """Refuse a model whose layers Keras already quantized (``model.quantize``, or
    ``--mode keras-int8``): it cannot be quantized again or converted to TFLite, and the
    converter's own error is a page of MLIR."""
    for layer in model.layers:
        policy = getattr(getattr(layer, "dtype_policy", None), "name", "") or ""
        if policy.startswith(("int8", "int4", "float8")):
            raise CompressError(
                f"model '{model.name}' is already quantized by Keras (layer '{layer.name}', "
                f"{policy}); start from the float model it was made from")


def _format(out: Path, opts: dict) -> str:
    if opts["mode"] == "keras-int8":
        if opts["format"] not in (None, "keras"):
            raise CompressError(f"{out}: keras-int8 writes a .keras model, not "
                                f"{opts['format']}")
        if opts["sparse"]:
            raise CompressError(f"{out}: --sparse is TFLite's sparse tensor format; use "
                                ".tflite")
        return "keras"
    fmt = opts["format"] or {v: k for k, v in SUFFIXES.items()}.get(out.suffix.lower())
    if fmt is None:
        raise CompressError(f"{out}: cannot tell the format; use .tflite or .onnx (or pass "
                            "--format)")
    if fmt == "keras":
        raise CompressError(f"{out}: a .keras output needs --mode keras-int8")
    if fmt == "onnx" and opts["mode"] == "float16":
        raise CompressError(f"{out}: float16 is TFLite only; use .tflite, or --mode int8 / "
                            "dynamic for ONNX")
    if opts["qat"] and opts["mode"] != "int8":
        raise CompressError("--qat trains for full-integer int8; use it with --mode int8")
    if opts["sparse"] and fmt != "tflite":
        raise CompressError(f"{out}: --sparse is TFLite's sparse tensor format; use .tflite")
    if opts["sparse"] and opts["qat"]:
        raise CompressError("--sparse cannot be combined with --qat (the QAT ranges are "
                            "applied after conversion); quantize without one of them")
    return fmt


def _arrays(model, data, n: int):
    """Calibration samples and the test split, fitted to the model (or refused)."""
    from compress.data import fit_to_model

    if data is None:
        return None, None, None
    x_cal = fit_to_model(np.asarray(data.representative(n)), model, "calibration data")
    x_test = fit_to_model(np.asarray(data.x_test), model, "test data")
    return x_cal.astype(np.float32), x_test.astype(np.float32), np.asarray(data.y_test)


def _check_inputs(model, x_test, seed: int = 0) -> np.ndarray:
    if x_test is not None:
        return x_test[:256]
    shape = tuple(d or 1 for d in model.inputs[0].shape[1:])
    return np.random.default_rng(seed).random((64,) + shape, dtype=np.float32)


def _artifact(model, out: Path, fmt: str, x_cal, x_test, y_test, opts: dict) -> dict:
    from compress import export, io
    from compress.training import predict

    mode = opts["mode"]
    x_check = _check_inputs(model, x_test)
    expected = np.argmax(predict(model, x_check), -1)
    flatbuffer = None
    if fmt == "tflite":  # convert first: an unsupported op is reported before anything else
        from compress.quantization.tflite import convert

        ranges = (opts.get("_qat_ranges") or None) if opts["qat"] else None
        flatbuffer = convert(model, mode, representative=x_cal,
                             int8_io=opts["interface"] == "int8",
                             per_channel=opts["per_channel"], activation_ranges=ranges,
                             sparse=opts["sparse"])
    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder) / f"float{SUFFIXES[fmt]}"
        try:
            if fmt == "onnx":
                export.export_onnx(model, float_path, x=x_check)
            else:
                export.export_tflite(model, float_path, x=x_check)
        except CompressError:
            raise
        except Exception as exc:  # the runtime refuses the float reference itself
            raise CompressError(f"{out}: the float {fmt} reference does not run "
                                f"({' '.join(str(exc).split())[:200]})") from exc
        with io.atomic_path(out) as tmp:
            if fmt == "tflite":
                tmp.write_bytes(flatbuffer)
            else:
                from compress.quantization.onnx import quantize_onnx

                quantize_onnx(float_path, tmp, mode, representative=x_cal,
                              calibration=opts["calibration"],
                              per_channel=opts["per_channel"],
                              reduce_range=opts["reduce_range"])
            info = _measure(tmp, float_path, x_check, expected, x_test, y_test, opts)
            info["weight_zeros"] = {"model": _zero_fraction(_model_kernels(model)),
                                    "artifact": _zero_fraction(_artifact_weights(tmp, fmt))}
    info["calibration"] = (opts["calibration"] if fmt == "onnx" else "minmax") \
        if mode == "int8" else None
    info["interface"] = opts["interface"] if fmt == "tflite" and mode == "int8" else "float"
    if fmt == "tflite":
        from compress.export import sparse_tensor_count

        info["sparse_tensors"] = sparse_tensor_count(flatbuffer)
    return info


def _measure(path: Path, float_path: Path, x_check, expected, x_test, y_test,
             opts: dict) -> dict:
    from compress import export
    from compress.report import zipped_size

    try:
        got = export.run_artifact(path, x_check)
    except Exception as exc:
        raise CompressError(f"quantized model failed to run in its runtime "
                            f"({' '.join(str(exc).split())[:200]}); nothing written") from exc
    info = {
        "bytes": path.stat().st_size, "zipped_bytes": zipped_size(path),
        "float_bytes": float_path.stat().st_size, "float_zipped_bytes": zipped_size(float_path),
        "top1_agreement": float(np.mean(np.argmax(got, -1) == expected)),
        "agreement_samples": len(x_check),
    }
    info["size_ratio"] = info["bytes"] / info["float_bytes"]
    if x_test is not None:
        info["accuracy"] = export.artifact_accuracy(path, x_test, y_test)
        info["float_accuracy"] = export.artifact_accuracy(float_path, x_test, y_test)
    if opts["latency"]:
        shape = tuple(x_check.shape[1:])
        info["latency_ms"], info["float_latency_ms"], info["latency_ratio"] = {}, {}, {}
        for threads in sorted({1, opts["threads"]}):
            # Other processes share the CPU: alternate quantized and float rounds, so that
            # a busy spell slows both, and keep each one's best round.
            q = f = float("inf")
            for _ in range(3):
                q = min(q, export.runtime_latency_ms(path, shape, threads=threads))
                f = min(f, export.runtime_latency_ms(float_path, shape, threads=threads))
            info["latency_ms"][str(threads)] = q
            info["float_latency_ms"][str(threads)] = f
            info["latency_ratio"][str(threads)] = q / f
    return info


def _keras_int8(model, out: Path, x_test, y_test, opts: dict) -> dict:
    from compress import io
    from compress.quantization.keras_int8 import keras_int8
    from compress.report import keras_latency_ms, saved_size, zipped_size
    from compress.training import accuracy, predict

    quantized, float_layers = keras_int8(model)
    x_check = _check_inputs(model, x_test)
    with io.atomic_path(out) as tmp:
        quantized.save(tmp)
        reloaded = io.load_model(tmp)
        info = {"bytes": tmp.stat().st_size, "zipped_bytes": zipped_size(tmp)}
    info["float_bytes"], info["float_zipped_bytes"] = saved_size(model)
    info["size_ratio"] = info["bytes"] / info["float_bytes"]
    info["float_layers"] = float_layers
    info["top1_agreement"] = float(np.mean(np.argmax(predict(reloaded, x_check), -1) ==
                                           np.argmax(predict(model, x_check), -1)))
    if x_test is not None:
        info["accuracy"] = accuracy(reloaded, x_test, y_test)
        info["float_accuracy"] = accuracy(model, x_test, y_test)
    if opts["latency"]:
        shape = tuple(x_check.shape[1:])
        q, f = keras_latency_ms(reloaded, shape), keras_latency_ms(model, shape)
        info["latency_ms"], info["float_latency_ms"] = {"1": q}, {"1": f}
        info["latency_ratio"] = {"1": q / f}
    info["weight_zeros"] = {"model": _zero_fraction(_model_kernels(model)),
                            "artifact": _zero_fraction(_model_kernels(reloaded))}
    return info


def _model_kernels(model) -> list[np.ndarray]:
    return [np.asarray(w) for w in model.weights if len(w.shape) >= 2]


def _artifact_weights(path: Path, fmt: str) -> list[np.ndarray]:
    if fmt == "onnx":
        from compress.quantization.onnx import weight_arrays
    else:
        from compress.quantization.tflite import weight_arrays
    return weight_arrays(path)


def _zero_fraction(arrays: list[np.ndarray]) -> float:
    total = sum(a.size for a in arrays)
    return float(sum(a.size - np.count_nonzero(a) for a in arrays) / total) if total else 0.0


__all__ = ["QUANTIZE_OPTIONS", "quantize", "suffix_for"]
