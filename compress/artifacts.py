"""What a deployed artifact holds: a ``.tflite`` or ``.onnx`` file read without TensorFlow.

:func:`summary` reads the file's own structure (LiteRT's flatbuffer schema, ``onnx``'s
protobuf): its inputs and outputs (name, shape, type, int8 scale and zero point), its
operators by kind, and its stored weights by type (tensors, values, bytes; per-channel
or per-tensor scales for int8), plus the file and zipped sizes. ``compress inspect``
prints it for an artifact, with its batch-1 latency in its runtime. Nothing here scores
accuracy: that needs the Keras model's task, which ``quantize`` and ``export`` check
against.

Example:

>>> s = summary("model.tflite")          # doctest: +SKIP
>>> s["weights"]["int8"]["values"], s["ops"]["FULLY_CONNECTED"]   # doctest: +SKIP
(266200, 3)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from compress.errors import CompressError

SUFFIXES = (".tflite", ".onnx")


def is_artifact(path) -> bool:
    """Whether ``path`` names a ``.tflite`` or ``.onnx`` file (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES


def summary(path) -> dict:
    """The structure of the ``.tflite`` or ``.onnx`` file at ``path`` (see the module)."""
    from compress.report import zipped_size

    p = Path(path)
    try:
        content = p.read_bytes()
    except OSError as exc:
        raise CompressError(f"{p}: cannot read ({exc.strerror})") from None
    if not content:
        raise CompressError(f"{p}: empty file")
    fmt = "onnx" if p.suffix.lower() == ".onnx" else "tflite"
    try:
        body = structure(content, fmt)
    except CompressError as exc:
        raise CompressError(f"{p}: {exc}") from None
    return {"file": str(p), "format": fmt, "file_bytes": len(content),
            "zipped_bytes": zipped_size(p), **body}


def structure(content: bytes, fmt: str) -> dict:
    """Inputs, outputs, operators and stored weights of a ``fmt`` (``"tflite"`` or
    ``"onnx"``) artifact's bytes."""
    try:
        return _tflite(content) if fmt == "tflite" else _onnx(content)
    except CompressError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line, not a traceback
        raise CompressError(f"not a readable {fmt} file ({type(exc).__name__})") from None


def quantized_share(weights: dict) -> float:
    """The fraction of stored weight values held in 8 bits or fewer (int8, uint8, int4);
    the ``index`` arrays of sparse tensors place values and are not counted."""
    total = sum(w["values"] for k, w in weights.items() if k != "index")
    small = sum(w["values"] for k, w in weights.items() if k in ("int8", "uint8", "int4",
                                                                 "uint4"))
    return small / total if total else 0.0


def _weights_entry(table: dict, dtype: str, values: int, nbytes: int, channels: int = 0):
    row = table.setdefault(dtype, {"tensors": 0, "values": 0, "bytes": 0})
    row["tensors"] += 1
    row["values"] += values
    row["bytes"] += nbytes
    if channels:
        key = "per_channel" if channels > 1 else "per_tensor"
        row[key] = row.get(key, 0) + 1


def _tflite(content: bytes) -> dict:
    from ai_edge_litert import schema_py_generated as schema

    if len(content) < 8 or content[4:8] != b"TFL3":
        raise CompressError("not a TFLite flatbuffer (no TFL3 identifier)")
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    ops_by_code = {v: k for k, v in vars(schema.BuiltinOperator).items()
                   if not k.startswith("_")}
    model = schema.Model.GetRootAs(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = ops_by_code.get(builtin, str(builtin))
        if name == "CUSTOM":
            name = f"CUSTOM:{(code.CustomCode() or b'?').decode(errors='replace')}"
        codes.append(name)
    ops, weights, sparse = Counter(), {}, 0
    graph = model.Subgraphs(0)

    def tensor_info(index):
        t = graph.Tensors(index)
        shape = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
        info = {"name": (t.Name() or b"").decode(errors="replace"),
                "shape": [int(d) if d >= 0 else None for d in np.atleast_1d(shape)]
                if t.ShapeLength() else [],
                "dtype": types.get(t.Type(), str(t.Type())).lower()}
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scales = q.ScaleAsNumpy()
            info["quantization"] = {"scale": float(scales[0]) if len(scales) == 1 else
                                    [float(s) for s in scales],
                                    "zero_point": int(q.ZeroPointAsNumpy()[0])}
        return info

    for s in range(model.SubgraphsLength()):
        g = model.Subgraphs(s)
        for i in range(g.OperatorsLength()):
            ops[codes[g.Operators(i).OpcodeIndex()]] += 1
        for i in range(g.TensorsLength()):
            t = g.Tensors(i)
            sparse += t.Sparsity() is not None
            buf = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
            nbytes = 0 if buf is None else (buf.DataLength() or int(buf.Size()))
            if not nbytes:
                continue  # an activation, not a stored weight
            q = t.Quantization()
            values = int(np.prod(t.ShapeAsNumpy())) if t.ShapeLength() else 1
            dtype = types.get(t.Type(), str(t.Type())).lower()
            if t.Sparsity() is not None:  # the buffer holds the kept values only
                values, index = _sparse_storage(t, nbytes, dtype, schema)
                _weights_entry(weights, "index", index[0], index[1], 0)
            _weights_entry(weights, dtype, values, nbytes,
                           q.ScaleLength() if q is not None else 0)
    return {"inputs": [tensor_info(graph.Inputs(i)) for i in range(graph.InputsLength())],
            "outputs": [tensor_info(graph.Outputs(i)) for i in range(graph.OutputsLength())],
            "ops": dict(ops.most_common()), "weights": weights, "sparse_tensors": sparse}


def _sparse_storage(t, nbytes: int, dtype: str, schema) -> tuple[int, tuple[int, int]]:
    """``(values stored, (index entries, index bytes))`` of a TFLite tensor in the sparse
    format: its buffer holds the kept values only, and the segments and indices that
    place them are arrays in the file's structure (uint8, uint16 or int32 each)."""
    sizes = {schema.Int32VectorT: 4, schema.Uint16VectorT: 2, schema.Uint8VectorT: 1}
    params = schema.SparsityParametersT.InitFromObj(t.Sparsity())
    entries = index = 0
    for dim in params.dimMetadata or []:
        for vec in (dim.arraySegments, dim.arrayIndices):
            if vec is not None and getattr(vec, "values", None) is not None:
                entries += len(vec.values)
                index += len(vec.values) * sizes.get(type(vec), 4)
    try:
        width = np.dtype(dtype).itemsize
    except TypeError:
        width = 1
    return nbytes // width, (entries, index)


def _onnx(content: bytes) -> dict:
    import onnx
    from onnx import helper

    model = onnx.load_model_from_string(content)
    graph = model.graph
    init = {t.name for t in graph.initializer}

    def value_info(v):
        t = v.type.tensor_type
        return {"name": v.name,
                "shape": [d.dim_value if d.HasField("dim_value") else None
                          for d in t.shape.dim],
                "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    weights = {}
    scales = {}  # a QDQ graph's weight scales: per-channel when the scale is a vector
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in init and len(node.input) > 1:
            scales[node.input[0]] = node.input[1]
    dims = {t.name: list(t.dims) for t in graph.initializer}
    for t in graph.initializer:
        dtype = helper.tensor_dtype_to_np_dtype(t.data_type)
        values = int(np.prod(t.dims)) if t.dims else 1
        channels = 0
        if t.name in scales:
            shape = dims.get(scales[t.name], [])
            channels = int(np.prod(shape)) if shape else 1
        _weights_entry(weights, dtype.name, values, values * dtype.itemsize, channels)
    ops = Counter(n.op_type for n in graph.node)
    external = sum(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    return {"external_data": external,
            "inputs": [value_info(v) for v in graph.input if v.name not in init],
            "outputs": [value_info(v) for v in graph.output],
            "ops": dict(ops.most_common()), "weights": weights,
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                         default=None)}


def sample_shapes(s: dict):
    """The per-sample input shape(s) for a latency run, unknown sizes filled as for Keras
    models (:func:`compress.report.concrete_shape`: 32 on image axes, else 1), or None
    when an input is not numeric."""
    from compress.report import concrete_shape

    shapes = {}
    for i in s["inputs"]:
        if not np.issubdtype(np.dtype(i["dtype"]), np.number):
            return None
        shapes[i["name"]] = concrete_shape(tuple(i["shape"][1:]), i["dtype"])
    if len(shapes) == 1:
        return next(iter(shapes.values()))
    return shapes


def lines(s: dict) -> list[str]:
    """``s`` as text lines for the terminal."""
    out = [f"{s['format']} file: {s['file_bytes']:,} bytes ({s['zipped_bytes']:,} zipped)"
           + (f", opset {s['opset']}" if s.get("opset") else "")]
    for kind in ("inputs", "outputs"):
        for t in s[kind]:
            shape = "x".join("?" if d is None else str(d) for d in t["shape"]) or "scalar"
            q = t.get("quantization")
            qtext = (f", scale {q['scale']:.4g}, zero point {q['zero_point']}"
                     if q and not isinstance(q["scale"], list) else "")
            out.append(f"  {kind[:-1]} {t['name']}: {t['dtype']} {shape}{qtext}")
    total = sum(w["bytes"] for w in s["weights"].values()) or 1
    out.append("stored weights:")
    for dtype, w in sorted(s["weights"].items(), key=lambda kv: -kv[1]["bytes"]):
        scales = ", ".join(f"{w[k]} {k.replace('_', '-')}" for k in ("per_channel", "per_tensor")
                           if w.get(k))
        out.append(f"  {dtype:<8} {w['values']:>12,} values {w['bytes']:>12,} bytes "
                   f"{w['bytes'] / total:6.1%}  ({w['tensors']} tensors"
                   + (f"; scales: {scales}" if scales else "") + ")")
    if s.get("sparse_tensors"):
        out.append(f"  {s['sparse_tensors']} tensors in TFLite's sparse format")
    ops = ", ".join(f"{k} {v}" for k, v in s["ops"].items())
    out.append(f"operators ({sum(s['ops'].values())}): {ops}")
    if s.get("external_data"):
        out.append(f"  {s['external_data']} tensors stored outside the file (external data)")
    if "latency_ms" in s:
        out.append(f"latency b=1, 1 thread: {s['latency_ms']:.3f} ms ({s['runtime']})"
                   + (f" at input size {s['latency_input']}" if "latency_input" in s else ""))
    if s.get("latency_not_measured"):
        out.append(f"latency not measured: {s['latency_not_measured']}")
    return out
