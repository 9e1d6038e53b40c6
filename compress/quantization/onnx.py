"""ONNX int8: static QDQ quantization calibrated on real samples, dynamic quantization, and
float16 (half weights and compute, float32 inputs and outputs: the GPU form).

The float model is exported with :func:`compress.export.export_artifact` (Keras's own ONNX
export), pre-processed with onnxruntime's ``quant_pre_process`` (shape inference and
graph fusions such as Conv+BatchNorm) and quantized with ``onnxruntime.quantization``.
QDQ models run in onnxruntime on CPU and are the form GPU execution providers
(TensorRT, CUDA) consume.

Example:

>>> from compress.quantization.onnx import quantize_onnx
>>> quantize_onnx(model, "float.onnx", "int8.onnx", "int8", x_train[:256])   # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from compress import progress
from compress.errors import CompressError
from compress.quiet import quiet_output

MODES = ("int8", "dynamic", "float16")
CALIBRATION = ("minmax", "entropy", "percentile")


def quantize_onnx(float_path, out_path, mode: str = "int8",
                  representative: np.ndarray | None = None, calibration: str = "minmax",
                  per_channel: bool = True, reduce_range: bool = True,
                  batch_size: int = 16, layout: str = "cpu",
                  keep_float: list | None = None, layer_names: list | None = None) -> list:
    """Quantize the float ONNX file at ``float_path`` into ``out_path``; returns the names
    of the nodes kept float because onnxruntime refused their int8 form (usually []).

    Args:
        float_path: a float32 ``.onnx`` file.
        out_path: where to write the quantized model (the caller makes it atomic).
        mode: str, default ``"int8"``. ``"int8"`` (static QDQ: int8 weights and
            activations), ``"dynamic"`` (int8 weights, activations quantized at run
            time) or ``"float16"`` (:func:`to_float16`; no data needed).
        representative: calibration samples shaped like the model input (static only).
        calibration: str, default ``"minmax"``. ``"minmax"``, ``"entropy"`` or
            ``"percentile"`` (static only).
        per_channel: bool, default True. Per-channel weight scales.
        reduce_range: bool, default True. 7-bit weights: onnxruntime's x86 int8 kernels
            multiply with ``VPMADDUBSW``, whose int16 sums saturate with full 8-bit
            weights on CPUs without VNNI (a small CNN measured 81% instead of 90%).
            Turn off for VNNI CPUs and GPU execution providers.
        batch_size: int, default 16. Calibration batch size.
        layout: str, default ``"cpu"``. ``"gpu"`` (static int8 only): the layout GPU
            runtimes want (TensorRT takes only zero points of 0): symmetric activations,
            symmetric per-channel weights, full 8-bit (``per_channel`` and
            ``reduce_range`` are then True and False), QDQ.
        keep_float: list of layer names or None. Static int8: their nodes stay float
            (:mod:`compress.quantization.float_front`).
        layer_names: the names of every layer of the model (any depth), which tell apart
            layers whose converted scopes look alike (``dense`` and ``dense_1``).
    """
    from onnxruntime import quantization as q

    if mode not in MODES:
        raise CompressError(f"mode '{mode}': ONNX supports {', '.join(MODES)}")
    if mode == "float16":
        Path(out_path).write_bytes(to_float16(Path(float_path).read_bytes()))
        return
    if mode == "int8" and (representative is None or len(representative) == 0):
        raise CompressError("static int8 ONNX needs calibration data: pass --data NAME, "
                            "or use mode dynamic (no data needed)")
    if layout not in ("cpu", "gpu"):
        raise CompressError(f"layout '{layout}': must be cpu or gpu")
    if layout == "gpu" and mode != "int8":
        raise CompressError("layout gpu is the static int8 layout; use mode int8")
    symmetric = layout == "gpu"
    if symmetric:
        per_channel, reduce_range = True, False
    kept: list = []
    with tempfile.TemporaryDirectory() as folder:
        pre = Path(folder) / "pre.onnx"
        try:
            with quiet_output():
                q.shape_inference.quant_pre_process(str(float_path), str(pre),
                                                    skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing only optimises; use the raw export
            pre = Path(float_path)
        try:
            with quiet_output():
                if mode == "dynamic":
                    q.quantize_dynamic(str(pre), str(out_path), per_channel=per_channel,
                                       reduce_range=reduce_range,
                                       weight_type=q.QuantType.QInt8)
                else:
                    method = {"minmax": q.CalibrationMethod.MinMax,
                              "entropy": q.CalibrationMethod.Entropy,
                              "percentile": q.CalibrationMethod.Percentile}[calibration]
                    reader = _Reader(str(pre), representative if isinstance(
                        representative, dict) else np.asarray(representative), batch_size,
                        equal=calibration != "minmax")
                    excluded = []
                    if keep_float:
                        from compress.quantization.float_front import onnx_nodes

                        excluded = onnx_nodes(pre, keep_float, layer_names)
                        if not excluded:  # never a silent no-op
                            raise CompressError(
                                f"--keep-float: no ONNX node belongs to the layers "
                                f"{', '.join(keep_float[:4])}")
                    for _ in range(_RETRIES + 1):
                        reader.rewind()
                        q.quantize_static(
                            str(pre), str(out_path), reader, quant_format=q.QuantFormat.QDQ,
                            nodes_to_exclude=excluded + kept,
                            per_channel=per_channel, reduce_range=reduce_range,
                            activation_type=q.QuantType.QInt8,
                            weight_type=q.QuantType.QInt8, calibrate_method=method,
                            extra_options={"ActivationSymmetric": symmetric,
                                           "WeightSymmetric": True})
                        more = _refused_nodes(pre, out_path, reader, kept)
                        if not more:
                            break
                        kept += more
        except CompressError:
            raise
        except Exception as exc:
            raise CompressError(f"ONNX {mode} quantization failed "
                                f"({' '.join(str(exc).split())[:200]}); try mode dynamic "
                                "or --format tflite") from exc
    compact_names(out_path)
    return kept


#: Times a static int8 model onnxruntime refuses to run is quantized again with the
#: refused kind of node kept float (:func:`_refused_nodes`).
_RETRIES = 3


def _refused_nodes(float_path, out_path, reader, kept: list) -> list:
    """The float graph's nodes to keep float when onnxruntime refuses to run the int8
    model at ``out_path`` on the first calibration batch because of one of its fused int8
    nodes: every node of that node's kind (Bloom's layer norms, exported as
    GlobalAveragePool, fail as QLinearGlobalAveragePool "parameter out of computation
    range"), or [] when it runs (or fails for another reason, reported by the caller's
    own check)."""
    import re

    import onnx
    import onnxruntime as ort

    reader.rewind()
    batch = reader.get_next()
    reader.rewind()
    try:
        with quiet_output():
            session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])
            session.run(None, batch)
        return []
    except Exception as exc:  # noqa: BLE001 - only a refused fused node is acted on
        found = re.search(r"running (\w+) node\. Name:'([^']+)'", str(exc))
    if not found:
        return []
    graph = onnx.load(str(float_path), load_external_data=False).graph
    kind = next((n.op_type for n in graph.node if n.name == found.group(2)), None)
    return [n.name for n in graph.node if kind and n.op_type == kind and n.name not in kept]


#: Suffixes onnxruntime's quantizer appends to the names of the tensors it adds (weights
#: made int8, their scales and zero points, the outputs of QuantizeLinear/DequantizeLinear).
QUANTIZER_SUFFIXES = ("_quantized", "_scale", "_zero_point", "_QuantizeLinear_Output",
                      "_DequantizeLinear_Output")


def compact_names(path) -> None:
    """Give the tensors the quantizer added short names (``q0``, ``q1``, ...) and its
    QuantizeLinear/DequantizeLinear nodes none, in the file at ``path``.

    Each added tensor is named after the original one, whose path (tf2onnx's
    ``functional_1/functional_1/block/.../ReadVariableOp:0``) is then repeated in up to six
    names per node: a small transformer's int8 file was 1.17x its float file (112 KB of
    its 174 KB were node records), 0.55x after. The model's own tensors and nodes, its
    inputs and outputs keep their names, so a viewer still shows the Keras layers. A
    short name the graph already uses is skipped. A graph with subgraphs (If, Loop) is
    left as it is.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in graph.node for a in node.attribute):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names = {}
    taken = {n for node in graph.node for n in [*node.input, *node.output]} | \
        {t.name for t in graph.initializer}  # a short name must not be one of these

    def short(name):
        if not name or name in keep or not name.endswith(QUANTIZER_SUFFIXES):
            return name
        if name not in names:
            i = len(names)
            while f"q{i}" in taken:
                i += 1
            names[name] = f"q{i}"
            taken.add(names[name])
        return names[name]

    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.name = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    for tensor in graph.initializer:
        tensor.name = short(tensor.name)
    for info in graph.value_info:
        info.name = short(info.name)
    onnx.save(model, str(path))


def to_float16(content: bytes) -> bytes:
    """A float32 ONNX model's bytes as float16 weights and compute, with float32 inputs
    and outputs, through onnxruntime's own converter (``onnxruntime.transformers.float16``,
    ``keep_io_types=True``), checked by ``onnx.checker``.

    Example:

    >>> half = to_float16(Path("model.onnx").read_bytes())   # doctest: +SKIP
    >>> len(half) / Path("model.onnx").stat().st_size < 0.52   # doctest: +SKIP
    True
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    try:
        with quiet_output():
            half = convert_float_to_float16(onnx.load_from_string(content),
                                            keep_io_types=True)
        topological_sort(half.graph)  # the converter appends its input casts at the end
        onnx.checker.check_model(half)
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"ONNX float16 conversion failed "
                            f"({' '.join(str(exc).split())[:200]})") from exc
    return half.SerializeToString()


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the nodes producing its inputs
    (``onnx.checker`` requires it); a cycle or an input nothing produces is refused."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise CompressError("the float16 ONNX graph has a cycle or an input no node "
                                "produces")
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


def even_batch(n: int, batch_size: int) -> int:
    """The largest batch size up to ``batch_size`` that divides ``n`` samples evenly.

    onnxruntime's histogram calibrators (entropy, percentile) stack the outputs of every
    batch into one array: a shorter last batch made it fail ("inhomogeneous shape") for
    any sample count that is not a multiple of the batch size.

    >>> even_batch(256, 64), even_batch(1293, 64), even_batch(55, 64)
    (64, 3, 55)
    """
    return next(b for b in range(max(1, min(batch_size, n)), 0, -1) if n % b == 0)


class _Reader(CalibrationDataReader):
    """Feeds calibration batches to onnxruntime's calibrator."""

    def __init__(self, model_path: str, x: np.ndarray, batch_size: int, equal: bool = False):
        import onnx
        import onnx.helper

        n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
        if equal:  # entropy/percentile stack every batch's outputs into one array
            batch_size = even_batch(n, batch_size)

        graph = onnx.load(model_path, load_external_data=False).graph
        initializers = {i.name for i in graph.initializer}
        self.name = next(i.name for i in graph.input if i.name not in initializers)
        # each input in the graph's own element type (token ids stay int32)
        types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(
            i.type.tensor_type.elem_type) for i in graph.input}
        if isinstance(x, dict):  # several inputs, keyed by input name (as exported)
            self.batches = [{k: np.asarray(v[i:i + batch_size], types.get(k, np.float32))
                             for k, v in x.items()} for i in range(0, n, batch_size)]
        else:
            x = np.asarray(x, types.get(self.name, np.float32))
            self.batches = [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        progress.update(self.pos, len(self.batches), "batch")  # the conversion's display
        batch = self.batches[self.pos - 1]
        return batch if isinstance(batch, dict) else {self.name: batch}

    def rewind(self):
        self.pos = 0


def weight_arrays(artifact) -> list[np.ndarray]:
    """The weight initializers (rank >= 2) stored in an ``.onnx`` file or its bytes."""
    import onnx
    from onnx import numpy_helper

    if isinstance(artifact, (bytes, bytearray, memoryview)):
        model = onnx.load_from_string(bytes(artifact))
    else:
        model = onnx.load(str(artifact))
    return [numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) >= 2]
