"""Run an exported artifact (ONNX or TFLite) in its real runtime, compare it, time it.

An artifact is a file path or the artifact's bytes in memory (what the export and
quantize passes return): onnxruntime and LiteRT both load either. For bytes the format
is the ``fmt`` argument or sniffed from the content: TFLite flatbuffers carry the
``TFL3`` identifier at bytes 4:8, ONNX files are a ``ModelProto`` whose first field
(``ir_version``) every writer puts first. :func:`run_artifact` gives float outputs
whatever the artifact's interface (int8 inputs and outputs are quantized and
dequantized), :func:`verify` compares them with the Keras model's, and
:func:`runtime_latency_ms` times one call.

Example:

>>> from compress.runtime import run_artifact, verify
>>> y = run_artifact("model.tflite", x_test[:256])                   # doctest: +SKIP
>>> verify(model, content, x_test[:256], fmt="onnx")["top1_agreement"]  # doctest: +SKIP
1.0
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from compress.agreement import (  # noqa: F401 - re-exported: runtime.verify's checks
    MIN_SQNR_DB,
    MIN_TOP1_AGREEMENT,
    agreement_summary,
    comparison,
    max_abs_diff,
    output_comparison,
    rel_l2_error,
    sqnr_db,
    top1_agreement,
)
from compress.errors import CompressError
from compress.quiet import quiet_output

SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}
# A protobuf's first byte is its first field's tag: field 1 (ir_version), varint.
_ONNX_FIRST_BYTE = 0x08


def artifact_format(artifact, fmt: str | None = None) -> str:
    """``"onnx"`` or ``"tflite"``: ``fmt`` when given, else the content or the file suffix.

    Example:

    >>> artifact_format("model.onnx"), artifact_format(b"\\x1c\\x00\\x00\\x00TFL3")
    ('onnx', 'tflite')

    Args:
        artifact: a path (``.onnx``, ``.tflite``) or the artifact's bytes.
        fmt: str or None, default None. ``"onnx"`` or ``"tflite"``.

    Raises:
        CompressError: a format that cannot be told, or that is not onnx or tflite.
    """
    if fmt is not None:
        if fmt not in SUFFIXES.values():
            raise CompressError(f"{_name(artifact)}: unknown artifact format '{fmt}' "
                                "(use onnx or tflite)")
        return fmt
    if _is_bytes(artifact):
        content = bytes(artifact[:8])
        if content[4:8] == b"TFL3":
            return "tflite"
        if content[:1] == bytes([_ONNX_FIRST_BYTE]):
            return "onnx"
        raise CompressError(f"{_name(artifact)}: not a TFLite or ONNX model; pass its format")
    found = SUFFIXES.get(Path(artifact).suffix.lower())
    if found is None:
        raise CompressError(f"{artifact}: not an .onnx or .tflite file")
    return found


# Dtype-policy name prefixes of Keras's quantized layers (keras/src/dtype_policies:
# QUANTIZATION_MODES): "int8_from_float32", "int4/128_from_float32",
# "gptq/4/128_from_float32", "awq/4/128_from_float32", "float8_from_float32".
KERAS_QUANTIZED_PREFIXES = ("int8", "int4", "float8", "gptq", "awq")


def keras_quantized_layer(model):
    """``(layer, policy name)`` of the first layer, at any depth (a KerasHub task model's
    backbone, a nested model), that Keras quantized, or None for a float model.

    Example:

    >>> keras_quantized_layer(model) is None                  # doctest: +SKIP
    True
    >>> model.quantize("int8"); keras_quantized_layer(model)  # doctest: +SKIP
    (<Dense name=fc1, built=True>, 'int8_from_float32')
    """
    for layer in _all_layers(model):
        policy = getattr(layer, "dtype_policy", None)
        name = str(getattr(policy, "name", "") or "")
        if getattr(policy, "quantization_mode", None) or \
                name.startswith(KERAS_QUANTIZED_PREFIXES):
            return layer, name
    return None


def _all_layers(model) -> list:
    """``model`` and every layer in it, at any depth (nested models, custom layers)."""
    from compress.layer_state import all_layers

    return all_layers(model)


def refuse_keras_quantized(model) -> None:
    """Refuse a model any of whose layers, nested ones included, Keras already quantized
    (``model.quantize`` int8, int4, float8, GPTQ or AWQ, or modes ``keras-int8``,
    ``keras-int4``, ``gptq``, ``awq``): it cannot be quantized again or converted to
    TFLite, and the converter's own error is a page of MLIR.

    Example:

    >>> refuse_keras_quantized(float_model)   # doctest: +SKIP
    >>> refuse_keras_quantized(int8_model)    # doctest: +SKIP
    Traceback (most recent call last):
    CompressError: model 'm' is already quantized by Keras (layer 'fc1', int8_from_float32); ...

    Raises:
        CompressError: one line naming the model, the layer and its dtype policy.
    """
    found = keras_quantized_layer(model)
    if found is not None:
        layer, policy = found
        raise CompressError(
            f"model '{model.name}' is already quantized by Keras (layer '{layer.name}', "
            f"{policy}); start from the float model it was made from")



def float_dtype(config: dict) -> dict:
    """``config`` (a layer's ``get_config()``, changed in place and returned) with a Keras
    quantized dtype policy (``model.quantize``'s ``int8_from_float32``...) replaced by the
    float policy it was made from: for a freshly initialised copy of the architecture (a
    distillation student), whose float weights must be trainable.

    Example:

    >>> float_dtype({"dtype": {"class_name": "QuantizedDTypePolicy",
    ...                        "config": {"mode": "int8", "source_name": "float32"}}})
    {'dtype': 'float32'}
    """
    dtype = config.get("dtype")
    if isinstance(dtype, dict) and "Quantized" in str(dtype.get("class_name", "")):
        config["dtype"] = (dtype.get("config") or {}).get("source_name") or "float32"
    return config

#: Keras preprocessing layers that look values up in a hash table or take strings: their
#: TensorFlow ops have no TFLite builtin kernel and no ONNX runtime takes them.
LOOKUP_LAYERS = ("StringLookup", "IntegerLookup", "TextVectorization", "Hashing",
                 "HashedCrossing")


def refuse_lookup_tables(model, fmt: str) -> None:
    """Refuse, in one line, a model holding a lookup-table preprocessing layer, before a
    converter fails on it (TFLite's message suggested ONNX, where it fails too).

    Raises:
        CompressError: naming the layer and what to do.
    """
    layer = next((la for la in _all_layers(model) if type(la).__name__ in LOOKUP_LAYERS),
                 None)
    if layer is not None:
        raise CompressError(
            f"model '{model.name}': layer '{layer.name}' ({type(layer).__name__}) looks values "
            f"up in a table, which neither TFLite's builtin ops nor onnxruntime run; {fmt} needs "
            "the model without it: add --without-lookups to start the artifact at its "
            "output (the layer then runs in your input pipeline)")



def without_lookups(model, data=None):
    """``model`` from the outputs of its lookup layers on, for an artifact, and ``data``
    run through those layers: ``(body, data, note)``.

    A model that takes strings (a ``TextVectorization``, a ``StringLookup`` on a column)
    cannot become a TFLite or ONNX artifact as a whole: no builtin op looks a string up.
    Its numeric part can. Each lookup layer that reads a model input directly becomes an
    input of ``body``, named after the layer and shaped as its output (token ids, one-hot
    rows); model inputs read only by lookup layers are dropped, the others kept. The
    lookup layers then run in the input pipeline (``model.get_layer(name)``, which holds
    the vocabulary), and the artifact takes what they give.

    Example:

    >>> body, data, note = without_lookups(text_model, dataset)   # doctest: +SKIP
    >>> [t.name for t in body.inputs]                             # doctest: +SKIP
    ['text_vectorization']

    Args:
        model: a functional Keras model.
        data: a :class:`compress.data.Dataset` of arrays prepared for ``model``, or None.

    Returns:
        ``(body, data, note)``: a new functional model with the weights of ``model``;
        ``data`` with each split's inputs mapped (None stays None); a one-line note.

    Raises:
        CompressError: no lookup layer, one that does not read a model input directly
            (deeper in the graph or in a nested model), or streamed data.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from compress.layer_state import copy_assets, model_input
    from compress.training import copy_model

    if data is not None and getattr(data, "streaming", False):
        raise CompressError("--without-lookups maps the data through the lookup layers in "
                            "memory; give arrays (an .npz), not a stream")
    original = model
    lookups = [la for la in getattr(model, "layers", []) if type(la).__name__ in LOOKUP_LAYERS]
    inside = {id(sub) for la in lookups for sub in _all_layers(la)}  # a TextVectorization's
    deeper = [la for la in _all_layers(model) if type(la).__name__ in LOOKUP_LAYERS
              and id(la) not in inside]
    if not lookups and not deeper:
        raise CompressError(f"model '{model.name}': --without-lookups: it has no lookup layer "
                            f"({', '.join(LOOKUP_LAYERS)}); leave the option out")
    read = {}  # lookup layer name -> the model input it reads
    for layer in lookups:
        source = model_input(layer, model)
        if source is None:
            deeper.append(layer)
            continue
        read[layer.name] = source
    if deeper:
        la = deeper[0]
        raise CompressError(f"model '{model.name}': --without-lookups takes lookup layers that "
                            f"read a model input directly; '{la.name}' ({type(la).__name__}) "
                            "sits deeper in the graph: build the model with it first")
    # A functional model cut at its lookups' outputs adds nodes to their layers: built on
    # a private copy, never on the user's model (a later pass would meet those nodes).
    model = copy_model(model)
    lookups = [model.get_layer(la.name) for la in lookups]
    read = {la.name: model.inputs[[id(t) for t in original.inputs].index(id(read[la.name]))]
            for la in lookups}
    consumers: dict = {}
    for layer in model.layers:
        for node in getattr(layer, "_inbound_nodes", []):
            for t in node.input_tensors:
                consumers.setdefault(id(t), set()).add(layer.name)
    kept = [t for t in model.inputs
            if not consumers.get(id(t)) or consumers[id(t)] - set(read)]
    names = [t.name for t in kept] + [la.name for la in lookups]
    tensors = kept + [la.output for la in lookups]
    fresh = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=n)
             for t, n in zip(tensors, names)]
    if len(names) == 1:  # one input: a tensor, not a list of one (Keras warns at each call)
        body = keras.Model(tensors[0], model.outputs)
        copy = keras.models.clone_model(body, input_tensors=fresh[0])
    else:  # several: keyed by name, as the mapped data is
        import warnings

        with warnings.catch_warnings():  # the keys name the copy's inputs, not these
            warnings.simplefilter("ignore", UserWarning)
            body = keras.Model(dict(zip(names, tensors)), model.outputs)
        copy = keras.models.clone_model(body, input_tensors=dict(zip(names, fresh)))
    copy.set_weights(body.get_weights())
    copy_assets(body, copy)
    copy.name = model.name
    in_names = [t.name for t in model.inputs]

    def mapped(x):
        if x is None:
            return None
        by_name = x if isinstance(x, dict) else dict(zip(in_names, x if isinstance(
            x, (list, tuple)) else [x]))
        out = {t.name: by_name[t.name] for t in kept}
        for layer in lookups:
            source = by_name[read[layer.name].name]
            out[layer.name] = np.concatenate([
                np.asarray(layer(tf.constant(source[i:i + 1024])))
                for i in range(0, len(source), 1024)]) if len(source) else source
        return out[names[0]] if len(names) == 1 else out

    if data is not None:
        import dataclasses

        data = dataclasses.replace(data, **{f"x_{s}": mapped(getattr(data, f"x_{s}"))
                                            for s in ("train", "val", "test")})
    shapes = ", ".join(f"'{la.name}' ({type(la).__name__}: {la.output.dtype} "
                       f"{tuple(la.output.shape[1:])})" for la in lookups)
    note = (f"the artifact starts after the lookup layers {shapes}: it takes their outputs "
            "as inputs of those names; run them in the input pipeline "
            "(model.get_layer(NAME), which holds the vocabulary)")
    return copy, data, note

# onnxruntime execution providers by --provider name, in the order a session tries them
# (TensorRT and CUDA fall back to the CPU for the nodes they do not take).
PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
             "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                          "CPUExecutionProvider"]}
_PROVIDER = {"name": "cpu"}


def set_provider(name: str) -> str:
    """Choose the onnxruntime execution provider of every later ONNX session (the
    verification and latency of export, quantize and inspect): ``cpu``, ``cuda`` or
    ``tensorrt``. One not in ``onnxruntime.get_available_providers()`` is refused in one
    line (``cuda`` and ``tensorrt`` need the ``gpu`` extra, ``onnxruntime-gpu``, and a GPU).

    Example:

    >>> set_provider("cpu")
    'cpu'
    """
    if name not in PROVIDERS:
        raise CompressError(f"provider '{name}': must be {', '.join(PROVIDERS)}")
    if name == "cpu":  # always there; no onnxruntime import for the default
        _PROVIDER["name"] = name
        return name
    import onnxruntime as ort

    wanted = PROVIDERS[name][0]
    available = ort.get_available_providers()
    if wanted not in available:
        raise CompressError(
            f"--provider {name}: onnxruntime here has no {wanted} (available: "
            f"{', '.join(available)}); install the gpu extra (pip install "
            "'keras-compress[gpu]') on a machine with an NVIDIA GPU, or use --provider cpu")
    _PROVIDER["name"] = name
    return name


def provider() -> str:
    """The execution provider ONNX sessions use now (:func:`set_provider`)."""
    return _PROVIDER["name"]


def onnx_session(artifact, threads: int | None = None):
    """An onnxruntime session for an ONNX file or ONNX bytes, on the chosen execution
    provider (:func:`set_provider`; the CPU unless one was chosen)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    model = bytes(artifact) if _is_bytes(artifact) else str(artifact)
    try:
        return ort.InferenceSession(model, opts, providers=PROVIDERS[provider()])
    except Exception as exc:  # onnxruntime's InvalidGraph, NotImplemented, Fail...
        if isinstance(exc, OSError):  # a missing or unreadable file: said as is
            raise
        text = " ".join(str(exc).split())
        op = _missing_op(text)
        raise CompressError(
            f"{_name(artifact)}: onnxruntime cannot load the ONNX graph"
            + (f" (at its {op} node)" if op else "")
            + f": {text[:240]}") from None


def _missing_op(text: str) -> str | None:
    """The ONNX op an onnxruntime load error names (``In Node, ("name", Erfc, ...)``)."""
    import re

    found = re.search(r'In Node, \("[^"]*", (\w+),', text)
    return found.group(1) if found else None


def run_onnx(artifact, x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Outputs of an ONNX model (file or bytes) for ``x``, run in onnxruntime (CPU).

    Several inputs: ``x`` is a dict keyed by input name (or a list in the file's input
    order). Several outputs: a dict ``{output name: array}`` in the file's order.
    """
    session = onnx_session(artifact, threads)
    feed = _onnx_feed(session, x)
    outs = session.run(None, feed)
    if len(outs) == 1:
        return outs[0]
    return {o.name.split(":")[0]: v for o, v in zip(session.get_outputs(), outs)}


def _onnx_feed(session, x) -> dict:
    inputs = session.get_inputs()
    if len(inputs) == 1 and not isinstance(x, (dict, list, tuple)):
        return {inputs[0].name: np.asarray(x, dtype=_onnx_dtype(inputs[0].type))}
    values = _by_input_name([i.name for i in inputs], x)
    return {i.name: np.asarray(values[i.name], dtype=_onnx_dtype(i.type)) for i in inputs}


def _by_input_name(names: list[str], x) -> dict:
    """``x`` (a dict keyed by the model's input names, a list in order, or one array) as
    a dict keyed by an artifact's input ``names`` (``serving_default_NAME:0`` and the like
    match ``NAME``, on either side: a TFLite signature names its inputs ``NAME``, the
    file's tensors ``serving_default_NAME:0``)."""
    if isinstance(x, dict):
        out = {}
        for name in names:
            key = name if name in x else next(
                (k for k in x if _plain(name) == _plain(str(k))), None)
            if key is None:
                raise CompressError(f"the artifact's input '{name}' has no array (inputs "
                                    f"given: {', '.join(map(str, x))})")
            out[name] = x[key]
        return out
    values = list(x) if isinstance(x, (list, tuple)) else [x]
    if len(values) != len(names):
        raise CompressError(f"the artifact has {len(names)} inputs ({', '.join(names)}) but "
                            f"{len(values)} arrays were given")
    return dict(zip(names, values))


def _plain(name: str) -> str:
    """An artifact tensor's name without TFLite's signature prefix and ``:0`` suffix."""
    name = name.split(":")[0]
    return name.removeprefix("serving_default_")


def _onnx_dtype(type_name: str):
    return {"tensor(float)": np.float32, "tensor(uint8)": np.uint8, "tensor(int8)": np.int8,
            "tensor(float16)": np.float16, "tensor(int32)": np.int32,
            "tensor(int64)": np.int64, "tensor(bool)": np.bool_}.get(type_name, np.float32)


def tflite_interpreter(artifact, threads: int | None = None, builtin: bool = False):
    """A LiteRT ``Interpreter`` for a ``.tflite`` file or flatbuffer bytes.

    Files with sparse tensors run on LiteRT's builtin kernels: the default XNNPACK
    delegate refuses weights densified at run time; so do files the delegate failed to
    prepare before (:func:`xnnpack_refused`), and any with ``builtin``.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {}
    if builtin or has_sparse_tensors(artifact) or (
            _NO_XNNPACK and _artifact_key(artifact) in _NO_XNNPACK):  # hash only then
        kwargs["experimental_op_resolver_type"] = \
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    if _is_bytes(artifact):
        return Interpreter(model_content=bytes(artifact), num_threads=threads, **kwargs)
    return Interpreter(model_path=str(artifact), num_threads=threads, **kwargs)


#: Artifacts whose ops LiteRT's default XNNPACK delegate failed to prepare: ``{key: why}``.
_NO_XNNPACK: dict = {}


def _artifact_key(artifact) -> str:
    import hashlib

    content = bytes(artifact) if _is_bytes(artifact) else Path(artifact).read_bytes()
    return hashlib.sha1(content).hexdigest()


def xnnpack_refused(artifact) -> str | None:
    """Why LiteRT's default XNNPACK delegate could not prepare ``artifact`` (which then
    ran on LiteRT's builtin kernels, as :func:`tflite_interpreter` runs it), or None when
    it did or was never asked. A masked recurrent layer's int8 graph is one such.

    >>> xnnpack_refused(b"never run")
    """
    return _NO_XNNPACK.get(_artifact_key(artifact)) if _NO_XNNPACK else None


class TFLiteRunner:
    """A LiteRT interpreter with float inputs and outputs, allocated once per input shape.

    Integer interfaces are handled: inputs are quantized with the input tensor's scale
    and zero point, outputs dequantized, so callers always see floats.

    Example:

    >>> runner = TFLiteRunner(content)          # doctest: +SKIP
    >>> runner(x_test[:32]).shape               # doctest: +SKIP
    (32, 10)

    Args:
        artifact: a ``.tflite`` path or flatbuffer bytes.
        threads: int or None, default None (LiteRT's choice).
    """

    def __init__(self, artifact, threads: int | None = None, builtin: bool = False):
        self._artifact, self._threads = artifact, threads
        self.interpreter = tflite_interpreter(artifact, threads, builtin)
        self._allocated_shape = None  # the input shape the tensors were allocated for
        self._signature = None
        interp = self.interpreter
        if len(interp.get_input_details()) > 1 or len(interp.get_output_details()) > 1:
            # several inputs or outputs: by name, through the model's signature (the
            # details list them in an order of their own)
            keys = list(interp.get_signature_list())
            if keys:
                self._signature = interp.get_signature_runner(keys[0])

    def input_tensor(self, x: np.ndarray) -> np.ndarray:
        """Allocate for ``x``'s shape if needed; return ``x`` in the input tensor's dtype."""
        interp = self.interpreter
        shape = tuple(x.shape)
        if shape != self._allocated_shape:
            inp = interp.get_input_details()[0]
            if tuple(inp["shape"]) != shape:
                interp.resize_tensor_input(inp["index"], list(shape))
            with quiet_output():  # LiteRT announces its XNNPACK delegate on stderr
                interp.allocate_tensors()
            self._allocated_shape = shape
        inp = interp.get_input_details()[0]
        return _quantized(x, inp)

    def _call_signature(self, x):
        runner = self._signature
        details = runner.get_input_details()
        values = _by_input_name(list(details), x)
        feed = {name: _quantized(np.asarray(values[name]), details[name])
                for name in details}
        outs = runner(**feed)
        out_details = runner.get_output_details()
        result = {name: _dequantized(outs[name], out_details[name])
                  for name in sorted(outs, key=_natural)}
        return next(iter(result.values())) if len(result) == 1 else result

    def __call__(self, x: np.ndarray) -> np.ndarray:
        try:
            return self._call(x)
        except RuntimeError as exc:
            # XNNPACK builds its runtime at the first invoke, and fails there for some
            # graphs (a masked LSTM's int8 ops): run on LiteRT's builtin kernels instead,
            # and remember it (xnnpack_refused) for the report
            if "XNNPACK" not in str(exc) or _artifact_key(self._artifact) in _NO_XNNPACK:
                raise
            _NO_XNNPACK[_artifact_key(self._artifact)] = " ".join(str(exc).split())[:160]
            self.__init__(self._artifact, self._threads, builtin=True)
            return self._call(x)

    def _call(self, x: np.ndarray) -> np.ndarray:
        if self._signature is not None:
            return self._call_signature(x)
        interp = self.interpreter
        interp.set_tensor(interp.get_input_details()[0]["index"], self.input_tensor(x))
        interp.invoke()
        out = interp.get_output_details()[0]
        y = interp.get_tensor(out["index"])
        scale, zero = out["quantization"]
        if np.issubdtype(out["dtype"], np.integer) and scale:
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` as the input tensor wants it: quantized for an int8/uint8 input with a scale,
    cast for any other (token ids of an int32 input have no scale: scale 0)."""
    dtype = detail["dtype"]
    scale, zero = detail["quantization"]
    if np.issubdtype(dtype, np.integer) and scale:
        x = np.clip(np.round(np.asarray(x, np.float32) / scale + zero),
                    np.iinfo(dtype).min, np.iinfo(dtype).max)
    return np.asarray(x).astype(dtype)


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero = detail["quantization"]
    if np.issubdtype(detail["dtype"], np.integer) and scale:
        y = (y.astype(np.float32) - zero) * scale
    return np.asarray(y).astype(np.float32)


def _natural(name: str):
    """Sort key: ``output_2`` before ``output_10``."""
    head = name.rstrip("0123456789")
    tail = name[len(head):]
    return (head, int(tail) if tail else -1)


def has_sparse_tensors(artifact) -> bool:
    """Whether a ``.tflite`` file (or flatbuffer bytes) stores a tensor in TFLite's sparse format.

    Such files (written with ``Optimize.EXPERIMENTAL_SPARSITY``) densify their weights
    with ``DENSIFY`` ops, which the default XNNPACK delegate refuses, so they run on
    LiteRT's builtin kernels.

    Example:

    >>> has_sparse_tensors("pruned-sparse.tflite")   # doctest: +SKIP
    True
    """
    try:
        content = bytes(artifact) if _is_bytes(artifact) else Path(artifact).read_bytes()
        return sparse_tensor_count(content) > 0
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


def fixed_batch(interpreter) -> int | None:
    """The batch size a LiteRT model's first input was converted with, or None when it
    is free (``shape_signature`` -1)."""
    details = interpreter.get_input_details()
    sig = details[0].get("shape_signature") if details else None
    if sig is None or not len(sig) or int(sig[0]) < 0:
        return None
    return int(sig[0])


def flex_ops(content: bytes) -> list[str]:
    """The TensorFlow (Flex) ops a ``.tflite`` flatbuffer holds: LiteRT's builtin kernels
    cannot run them (``FlexConv2D``)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(content, 0)
    names = []
    for i in range(model.OperatorCodesLength()):
        custom = (model.OperatorCodes(i).CustomCode() or b"").decode(errors="replace")
        if custom.startswith("Flex"):
            names.append(custom)
    return sorted(set(names))


def run_tflite(artifact, x: np.ndarray, threads: int | None = None, batch_size: int = 256
               ) -> np.ndarray:
    """Outputs of a TFLite model (file or bytes) for float inputs ``x``, in LiteRT.

    Raises:
        CompressError: the file holds TensorFlow (Flex) ops, which LiteRT's builtin
            kernels do not run.
    """
    runner = TFLiteRunner(artifact, threads)
    if fixed_batch(runner.interpreter) == 1:  # converted at batch 1: one sample at a time
        batch_size = 1
    try:
        if isinstance(x, (dict, list, tuple)):  # several inputs
            from keras import tree

            n = len(tree.flatten(x)[0])
            outs = [runner(tree.map_structure(
                        lambda a, s=start: np.asarray(a)[s:s + batch_size], x))
                    for start in range(0, n, batch_size)]
        else:
            outs = [runner(np.asarray(x[start:start + batch_size]))
                    for start in range(0, len(x), batch_size)]
    except RuntimeError as exc:
        flex = sorted(set(re.findall(r"\((Flex\w+)\)", str(exc))))
        if "Select TensorFlow op" not in str(exc):
            raise
        raise CompressError(
            f"{_name(artifact)}: holds TensorFlow ops ({', '.join(flex) or 'Flex ops'}) that "
            "LiteRT runs only with the Flex delegate, not with its builtin kernels; export "
            "with --format onnx, or replace the layer") from None
    if outs and isinstance(outs[0], dict):
        return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}
    return np.concatenate(outs)


def run_artifact(artifact, x: np.ndarray, threads: int | None = None,
                 fmt: str | None = None) -> np.ndarray:
    """Run an ONNX or TFLite artifact (a path, or bytes) on ``x`` in its runtime."""
    if artifact_format(artifact, fmt) == "onnx":
        return run_onnx(artifact, x, threads)
    return run_tflite(artifact, x, threads)


def verify(model, artifact, x: np.ndarray, fmt: str | None = None,
           classifier: bool | None = None) -> dict:
    """Compare the artifact's outputs with the Keras model's on ``x``.

    Example:

    >>> verify(model, "model.onnx", x_test[:256])   # doctest: +SKIP
    {'samples': 256, 'max_abs_diff': 2.4e-07, 'rel_l2_error': 3.1e-07, 'sqnr_db': 130.2, 'top1_agreement': 1.0}

    Args:
        model: the Keras model the artifact was made from.
        artifact: a path or the artifact's bytes.
        x: inputs shaped like the model's.
        fmt: str or None, default None. ``"onnx"`` or ``"tflite"`` (else sniffed).
        classifier: bool or None, default None. Whether top-1 agreement means something
            (None: the model's task, :func:`compress.task.resolve`).

    Returns:
        :func:`comparison` of the outputs plus ``samples``; NaN or infinite outputs give
        an infinite difference and count as disagreeing, so no threshold passes them.
    """
    from compress.training import predict

    expected = predict(model, x)
    got = run_artifact(artifact, x, fmt=fmt)
    if isinstance(expected, (dict, list, tuple)) or isinstance(got, dict):
        # several outputs: each compared (and scaled) on its own, by the model's names
        from compress.data.arrays import length, output_names

        if classifier is None:
            from compress.task import resolve

            task = resolve(model)
            classifier = {n: t.is_classifier for n, t in getattr(task, "tasks", {}).items()}
        names = output_names(model)
        try:
            check = output_comparison(got, expected, classifier, names)
        except CompressError as exc:
            raise CompressError(f"{_name(artifact)}: {exc}") from None
        return {"samples": length(x), **check}
    if got.shape != expected.shape:
        raise CompressError(f"{_name(artifact)}: output shape {got.shape} differs from Keras "
                            f"{expected.shape}")
    if classifier is None:
        from compress.task import resolve

        classifier = resolve(model).is_classifier
    scale = np.abs(np.asarray(expected, np.float64))
    from compress.data.arrays import length

    return {"samples": length(x), **comparison(got, expected, classifier),
            "max_abs_output": float(scale.max()) if scale.size else 0.0}


def artifact_accuracy(artifact, x: np.ndarray, y: np.ndarray, fmt: str | None = None
                      ) -> float:
    """Top-1 accuracy of an exported artifact (path or bytes), measured in its runtime
    (a row with a NaN output counts as wrong)."""
    return top1_agreement(run_artifact(artifact, x, fmt=fmt), np.asarray(y))


def runtime_latency_ms(artifact, sample_shape: tuple, batch: int = 1, threads: int = 1,
                       runs: int = 100, fmt: str | None = None) -> float:
    """Median latency of one ``batch``-sized call of the artifact (path or bytes) in its runtime."""
    from compress.report import latency_ms

    rng = np.random.default_rng(0)
    if isinstance(sample_shape, dict):  # several inputs: {input name: sample shape}
        x = {k: rng.random((batch,) + tuple(v), dtype=np.float32)
             for k, v in sample_shape.items()}
    else:
        x = rng.random((batch,) + tuple(sample_shape), dtype=np.float32)
    if artifact_format(artifact, fmt) == "onnx":
        session = onnx_session(artifact, threads)
        feed = _onnx_feed(session, x)
        return latency_ms(lambda _: session.run(None, feed), None, runs=runs)
    runner = TFLiteRunner(artifact, threads)
    fixed = fixed_batch(runner.interpreter)
    if fixed is not None and fixed != batch:
        raise CompressError(f"{_name(artifact)}: converted with a fixed batch size of "
                            f"{fixed}, so it cannot be timed at batch {batch}")
    runner(x)  # once untimed: a delegate that cannot prepare the graph is replaced here
    if runner._signature is not None:
        return latency_ms(lambda _: runner(x), None, runs=runs)
    interp = runner.interpreter
    xi = runner.input_tensor(x)  # allocate and quantize once, outside the timed calls
    index = interp.get_input_details()[0]["index"]

    def call(_):
        interp.set_tensor(index, xi)
        interp.invoke()

    return latency_ms(call, None, runs=runs)


def _is_bytes(artifact) -> bool:
    return isinstance(artifact, (bytes, bytearray, memoryview))


def _name(artifact) -> str:
    """How errors name an artifact: its path, or its size when it is in memory."""
    if _is_bytes(artifact):
        return f"artifact ({len(artifact):,} bytes in memory)"
    return str(os.fspath(artifact))
