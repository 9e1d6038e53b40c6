"""Export to ONNX and TFLite, then run the artifact in its real runtime and compare.

One public function per format (:func:`export_onnx`, :func:`export_tflite`), the
runners (:func:`run_onnx`, :func:`run_tflite`), the check (:func:`verify`) and runtime
latency (:func:`runtime_latency_ms`). ONNX goes through Keras's own
``model.export(format="onnx")`` (``tf2onnx.convert.from_keras`` fails on Keras 3 models);
TFLite through ``model.export(format="litert")``. Each export is written atomically and
verified on real inputs before it is reported.

Example:

>>> from compress.export import export_onnx
>>> check = export_onnx(model, "model.onnx", x=x_test[:256])   # doctest: +SKIP
>>> check["max_abs_diff"] <= 1e-4 and check["top1_agreement"] == 1.0   # doctest: +SKIP
True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compress import io
from compress.errors import CompressError
from compress.quiet import quiet_output

FORMATS = {"onnx": ".onnx", "tflite": ".tflite"}


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
        The verification dict of :func:`verify` plus ``path`` and ``bytes``.
    """
    out = io.check_output(path, inputs=inputs, force=force, suffixes=(".onnx",))
    _ensure_called(model)
    kwargs = {"opset_version": opset} if opset else {}
    with io.atomic_path(out) as tmp:
        try:
            with quiet_output():
                model.export(str(tmp), format="onnx", verbose=False, **kwargs)
        except Exception as exc:
            raise CompressError(f"{out}: ONNX export failed ({_one_line(exc)})") from exc
        check = _verified(model, tmp, x, atol, out)
    return {"path": str(out), "bytes": out.stat().st_size, **check}


def export_tflite(model, path, x: np.ndarray | None = None, force: bool = False,
                  inputs: tuple = (), atol: float = 1e-4) -> dict:
    """Export ``model`` to a float32 TFLite flatbuffer and verify it in LiteRT.

    Same arguments and result as :func:`export_onnx`; quantized variants are in
    :mod:`compress.quantization`.
    """
    out = io.check_output(path, inputs=inputs, force=force, suffixes=(".tflite",))
    from compress.quantization import refuse_keras_quantized

    refuse_keras_quantized(model)
    _ensure_called(model)
    with io.atomic_path(out) as tmp:
        try:
            with quiet_output():
                model.export(str(tmp), format="litert", verbose=False)
        except Exception as exc:
            raise CompressError(f"{out}: TFLite export failed ({_one_line(exc)})") from exc
        check = _verified(model, tmp, x, atol, out)
    return {"path": str(out), "bytes": out.stat().st_size, **check}


def export(model, path, fmt: str | None = None, **kwargs) -> dict:
    """Export to the format named by ``fmt`` or by the suffix of ``path``."""
    fmt = fmt or {v: k for k, v in FORMATS.items()}.get(Path(path).suffix.lower())
    if fmt == "onnx":
        return export_onnx(model, path, **kwargs)
    if fmt == "tflite":
        return export_tflite(model, path, **kwargs)
    raise CompressError(f"{path}: unknown export format (use .onnx or .tflite)")


def _ensure_called(model) -> None:
    """Keras refuses to export a freshly loaded model that was never called; call it once."""
    shape = tuple(d or 1 for d in model.inputs[0].shape[1:])
    model(np.zeros((1,) + shape, dtype=model.inputs[0].dtype or "float32"), training=False)


def _verified(model, artifact: Path, x, atol, shown: Path) -> dict:
    if x is None:
        return {}
    check = verify(model, artifact, x)
    if check["max_abs_diff"] > atol or check["top1_agreement"] < 1.0:
        raise CompressError(
            f"{shown}: exported model disagrees with Keras (max abs diff "
            f"{check['max_abs_diff']:.2e} > {atol:.0e} or top-1 agreement "
            f"{check['top1_agreement']:.2%} < 100%); nothing written")
    return check


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())[:300]


def run_onnx(path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Outputs of the ONNX model at ``path`` for ``x``, run in onnxruntime (CPU)."""
    session = onnx_session(path, threads)
    inp = session.get_inputs()[0]
    x = np.asarray(x, dtype=_onnx_dtype(inp.type))
    return session.run(None, {inp.name: x})[0]


def onnx_session(path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _onnx_dtype(type_name: str):
    return {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
            "tensor(float16)": np.float16}.get(type_name, np.float32)


def tflite_interpreter(path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {}
    if has_sparse_tensors(path):  # XNNPACK refuses weights densified at run time
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return Interpreter(model_path=str(path), num_threads=threads, **kwargs)


def has_sparse_tensors(path) -> bool:
    """Whether the ``.tflite`` file at ``path`` stores a tensor in TFLite's sparse format.

    Such files (written with ``Optimize.EXPERIMENTAL_SPARSITY``) densify their weights
    with ``DENSIFY`` ops, which the default XNNPACK delegate refuses, so they run on
    LiteRT's builtin kernels.

    Example:

    >>> has_sparse_tensors("pruned-sparse.tflite")   # doctest: +SKIP
    True
    """
    try:
        return sparse_tensor_count(Path(path).read_bytes()) > 0
    except Exception:  # noqa: BLE001 - not a readable flatbuffer: the interpreter will say so
        return False


def sparse_tensor_count(content: bytes) -> int:
    """How many tensors of a ``.tflite`` flatbuffer are stored in TFLite's sparse format."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    count = 0
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        count += sum(graph.Tensors(t).Sparsity() is not None
                     for t in range(graph.TensorsLength()))
    return count
    return False


def run_tflite(path, x: np.ndarray, threads: int | None = None, batch_size: int = 256
               ) -> np.ndarray:
    """Outputs of the TFLite model at ``path`` for float inputs ``x``, in LiteRT.

    Integer input/output interfaces are handled: inputs are quantized with the input
    tensor's scale and zero point, outputs dequantized, so callers always see floats.
    """
    interp = tflite_interpreter(path, threads)
    outs = []
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start:start + batch_size])
        outs.append(_invoke_tflite(interp, chunk))
    return np.concatenate(outs)


def _invoke_tflite(interp, x: np.ndarray) -> np.ndarray:
    inp = interp.get_input_details()[0]
    if tuple(inp["shape"]) != tuple(x.shape):
        interp.resize_tensor_input(inp["index"], list(x.shape))
        with quiet_output():  # LiteRT announces its XNNPACK delegate on stderr
            interp.allocate_tensors()
        inp = interp.get_input_details()[0]
    elif not getattr(interp, "_compress_allocated", False):
        with quiet_output():
            interp.allocate_tensors()
    interp._compress_allocated = True
    dtype = inp["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = inp["quantization"]
        x = np.clip(np.round(x / scale + zero), np.iinfo(dtype).min, np.iinfo(dtype).max)
    interp.set_tensor(inp["index"], x.astype(dtype))
    interp.invoke()
    out = interp.get_output_details()[0]
    y = interp.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero = out["quantization"]
        y = (y.astype(np.float32) - zero) * scale
    return y.astype(np.float32)


def run_artifact(path, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Run an ``.onnx`` or ``.tflite`` file on ``x`` in its runtime."""
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return run_onnx(path, x, threads)
    if suffix == ".tflite":
        return run_tflite(path, x, threads)
    raise CompressError(f"{path}: not an .onnx or .tflite file")


def verify(model, artifact, x: np.ndarray) -> dict:
    """Compare the artifact's outputs with the Keras model's on ``x``.

    Returns:
        ``{"samples", "max_abs_diff", "top1_agreement"}``.
    """
    from compress.training import predict

    expected = predict(model, x)
    got = run_artifact(artifact, x)
    if got.shape != expected.shape:
        raise CompressError(f"{artifact}: output shape {got.shape} differs from Keras "
                            f"{expected.shape}")
    return {
        "samples": len(x),
        "max_abs_diff": float(np.max(np.abs(got - expected))) if len(x) else 0.0,
        "top1_agreement": float(np.mean(np.argmax(got, -1) == np.argmax(expected, -1))),
    }


def artifact_accuracy(path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an exported artifact, measured in its runtime."""
    return float(np.mean(np.argmax(run_artifact(path, x), -1) == y))


def runtime_latency_ms(path, sample_shape: tuple, batch: int = 1, threads: int = 1,
                       runs: int = 100) -> float:
    """Median latency of one ``batch``-sized call of the artifact in its runtime."""
    from compress.report import latency_ms

    x = np.random.default_rng(0).random((batch,) + tuple(sample_shape), dtype=np.float32)
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        session = onnx_session(path, threads)
        inp = session.get_inputs()[0]
        feed = {inp.name: x.astype(_onnx_dtype(inp.type))}
        return latency_ms(lambda _: session.run(None, feed), None, runs=runs)
    interp = tflite_interpreter(path, threads)
    _invoke_tflite(interp, x)  # resize and allocate once
    inp = interp.get_input_details()[0]
    xi = x
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero = inp["quantization"]
        xi = np.clip(np.round(x / scale + zero), -128, 127)
    xi = xi.astype(inp["dtype"])

    def call(_):
        interp.set_tensor(inp["index"], xi)
        interp.invoke()

    return latency_ms(call, None, runs=runs)
