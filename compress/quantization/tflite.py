"""Post-training quantization to TFLite: full-integer int8, dynamic-range int8, float16.

The converter runs on a SavedModel written by Keras's ``ExportArchive`` (the path
``model.export(format="litert")`` takes), but with the toolkit's own choices: builtin
ops only (no Flex ops, which a phone's runtime lacks and which slow the interpreter), a
fixed dtype signature, and, for int8, ``TFLITE_BUILTINS_INT8`` so that every op is
integer or the conversion fails and names the layer.

Example:

>>> from compress.quantization.tflite import convert
>>> data = convert(model, "int8", representative=x_train[:256])   # doctest: +SKIP
>>> len(data) < 0.3 * len(convert(model, "float32"))               # doctest: +SKIP
True
"""

from __future__ import annotations

import re
import tempfile

import numpy as np

from compress import progress
from compress.errors import CompressError
from compress.export import explain_conversion, free_or_fixed_batch, saved_model_converter
from compress.quiet import quiet_output

MODES = ("float32", "int8", "dynamic", "float16")


def convert(model, mode: str = "int8", representative: np.ndarray | None = None,
            int8_io: bool = False, per_channel: bool = True,
            activation_ranges: list | None = None, sparse: bool = False,
            notes: list | None = None, keep_float: list | None = None) -> bytes:
    """Convert a Keras model to TFLite flatbuffer bytes.

    The input keeps a free batch size; when that graph leaves a TensorFlow op the builtin
    kernels cannot take (a Conv2D after a Conv2DTranspose and UpSampling2D, whose shapes
    TensorFlow then computes at run time: keras.io's U-Net), the model is converted
    again with a fixed batch size of 1, where every shape is known, and a note is
    appended to ``notes`` (:func:`compress.export.free_or_fixed_batch`).

    Args:
        model: a built single-input Keras model.
        mode: str, default ``"int8"``. ``"int8"`` (full-integer: weights per-channel,
            activations per-tensor, calibrated on ``representative``), ``"dynamic"``
            (int8 weights, float activations, no data), ``"float16"`` (half weights) or
            ``"float32"``.
        representative: float array of calibration samples shaped like the model input;
            required for ``"int8"``.
        int8_io: bool, default False. For ``"int8"``: int8 input and output tensors
            (a microcontroller interface) instead of float ones.
        per_channel: bool, default True. Per-channel weight scales (per-tensor if False).
        activation_ranges: dict, list or None, default None. For ``"int8"``:
            ``{layer name: (min, max)}`` (or None: keep the calibrated range) of
            Conv2D/DepthwiseConv2D/Dense outputs, matched to the converted ops by the
            layer names in their tensor names (a list: one per such op in graph order),
            as learned by quantization-aware training
            (:func:`compress.quantization.qat.qat_finetune`); those outputs are
            quantized on exactly these grids instead of the calibrated ones.
        notes: list or None. Receives a note when the batch size had to be fixed, or
            when hashed convolutions were stored whole for int8
            (:func:`compress.sharing.hashing.int8_tflite_copy`).
        sparse: bool, default False. Also ``Optimize.EXPERIMENTAL_SPARSITY``: weight
            tensors that are mostly zeros (a pruned model) are stored in TFLite's sparse
            format (CSR: nonzero values plus uint8/uint16 column indices) and densified
            once by ``DENSIFY`` ops when the interpreter prepares. The file is smaller
            raw (not zipped: the indices compress worse than runs of zeros), memory at
            run time is not, and the XNNPACK delegate refuses such files, so they run on
            LiteRT's builtin kernels (slower). Not with ``activation_ranges``.
        keep_float: list of layer names or None. For ``"int8"``: the ops of these layers
            stay float (:mod:`compress.quantization.float_front`: an input normalization
            whose input features one int8 scale cannot hold).

    Returns:
        The ``.tflite`` bytes.

    Raises:
        CompressError: no calibration data for int8, or an op the converter cannot
            express in the requested mode (the layer is named).
    """

    if mode not in MODES:
        raise CompressError(f"mode '{mode}': must be one of {', '.join(MODES)}")
    if mode == "int8" and (representative is None or len(representative) == 0):
        raise CompressError("full-integer int8 needs calibration data: pass --data NAME "
                            "(a few hundred samples), or use mode dynamic (no data needed)")
    if mode == "int8":  # hashed convolutions: stored whole (their filters must be constant)
        from compress.sharing.hashing import int8_tflite_copy

        model, note = int8_tflite_copy(model)
        if note and notes is not None:
            notes.append(note)
    args = (model, mode, representative, int8_io, per_channel, activation_ranges, sparse)
    return free_or_fixed_batch(
        lambda batch: _convert(*args, batch=batch, keep_float=keep_float), notes)


def _convert(model, mode, representative, int8_io, per_channel, activation_ranges, sparse,
             batch: int | None = None, keep_float: list | None = None) -> bytes:
    """:func:`convert` at one batch size (None: free)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as folder:
        converter, model, specs = saved_model_converter(model, folder, batch)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if sparse:
            if activation_ranges is not None:
                raise CompressError("sparse TFLite storage cannot be combined with QAT "
                                    "ranges; convert without --sparse")
            converter.optimizations = list(converter.optimizations or []) + [
                tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            samples, count = calibration_samples(representative, specs)
            converter.representative_dataset = lambda: progress.counted(  # its display
                samples(), count)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if not per_channel:
                converter._experimental_disable_per_channel = True
            if int8_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        keep_float = keep_float if mode == "int8" and not int8_io else None
        if mode == "int8" and (activation_ranges is not None or keep_float):
            converter._experimental_calibrate_only = True  # quantized below
        try:
            with quiet_output():
                flatbuffer = converter.convert()
        except Exception as exc:
            raise CompressError(explain_conversion(exc, model, mode)) from exc
    denied = None
    if keep_float:
        from compress.quantization.float_front import layer_names, output_layer, tflite_nodes

        denied = tflite_nodes(flatbuffer, keep_float, output_layer(model),
                              layer_names(model)) or None
        if denied is None:  # never a silent no-op
            raise CompressError(f"--keep-float: no converted op belongs to the layers "
                                f"{', '.join(keep_float[:4])}; their work was folded into "
                                "others or removed (--debug-layers names the ops)")
    if mode == "int8" and activation_ranges is not None:
        flatbuffer = _quantize_with_ranges(flatbuffer, activation_ranges, int8_io, model,
                                           per_channel, denied)
    elif keep_float:  # what the converter does after calibrating, with those ops left float
        from tensorflow.lite.python import convert as lite_convert

        with quiet_output():
            flatbuffer = lite_convert.mlir_quantize(
                flatbuffer, disable_per_channel=not per_channel,
                input_data_type=tf.float32, output_data_type=tf.float32,
                denylisted_nodes=denied)
    return flatbuffer


def calibration_samples(representative, specs) -> tuple:
    """``(make, count)``: ``make()`` yields the calibration samples one at a time as a
    TFLite representative dataset wants them (a list for one input, a dict by name for
    several), each input in its own dtype: token ids stay int32 (LiteRT refuses a float
    sample for an int32 input).

    Example:

    >>> make, n = calibration_samples(np.zeros((3, 2)), [("x", (2,), "int32")])
    >>> n, next(make())[0].dtype
    (3, dtype('int32'))
    """
    dtypes = {name: dtype or "float32" for name, _, dtype in specs}
    if isinstance(representative, dict):  # several inputs: every one, by name
        calib = {k: np.asarray(v, dtypes.get(k, "float32")) for k, v in representative.items()}
        count = len(next(iter(calib.values())))
        return (lambda: ({k: v[i:i + 1] for k, v in calib.items()} for i in range(count)),
                count)
    calib = np.asarray(representative, dtype=specs[0][2] or "float32")
    return (lambda: ([calib[i:i + 1]] for i in range(len(calib)))), len(calib)


_RANGED_OPS = {3: "CONV_2D", 4: "DEPTHWISE_CONV_2D", 9: "FULLY_CONNECTED"}


def _quantize_with_ranges(calibrated: bytes, ranges: list, int8_io: bool,
                          keras_model=None, per_channel: bool = True,
                          denied: list | None = None) -> bytes:
    """Quantize a calibrated flatbuffer with the given output ranges of its conv/dense ops.

    The TFLite converter ignores FakeQuant ranges when it calibrates, and without
    calibration it leaves convolutions in float; so the calibrated statistics of each
    conv/dense output (the fused-activation output) are replaced by the learned range,
    kept whole (a negative minimum included) so the int8 grid is the one trained on.
    A dict of ranges is matched to the ops by each layer's kernel (``keras_model``'s), else by
    the layer names in the op names.
    """
    import tensorflow as tf
    from tensorflow.lite.python import convert as lite_convert
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(calibrated))
    graph = model.subgraphs[0]
    outputs, kernels = [], []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) in _RANGED_OPS:
            outputs.append(graph.tensors[op.outputs[0]])
            kernels.append(_float_buffer(model, graph, op.inputs[1]))
    if isinstance(ranges, dict):
        ranges = (_ranges_by_kernel(kernels, ranges, keras_model)
                  if keras_model is not None else None) or _ranges_by_name(outputs, ranges)
    if len(outputs) != len(ranges):
        raise CompressError(f"QAT ranges do not match the converted graph ({len(ranges)} "
                            f"learned, {len(outputs)} conv/dense ops); convert without --qat")
    for tensor, rng in zip(outputs, ranges):
        if rng is not None and tensor.quantization is not None:
            tensor.quantization.min, tensor.quantization.max = [float(rng[0])], [float(rng[1])]
    io_type = tf.int8 if int8_io else tf.float32
    with quiet_output():
        # Per-tensor weights when asked for: without this the quantizer gave every QAT
        # file per-channel weights, not the grid trained on (nor the one asked for).
        return lite_convert.mlir_quantize(
            bytes(flatbuffer_utils.convert_object_to_bytearray(model)),
            disable_per_channel=not per_channel,
            input_data_type=io_type, output_data_type=io_type, denylisted_nodes=denied)


def _float_buffer(model, graph, index: int) -> np.ndarray | None:
    """The float32 constant tensor ``index`` of a flatbuffer graph, flat, or None."""
    if index < 0:
        return None
    tensor = graph.tensors[index]
    data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
    if tensor.type != 0 or data is None or len(data) == 0:  # 0: FLOAT32
        return None
    return np.frombuffer(bytes(bytearray(data)), np.float32)


def _ranges_by_kernel(kernels: list, ranges: dict, keras_model) -> list | None:
    """The learned range of each conv/dense op, found by its weights: an op whose float
    filter holds exactly the values of one fake-quantized layer's kernel (in any layout)
    is that layer's; a layer called several times (shared: a Siamese head) is found at
    each of its ops, which all take its one learned range; a layer whose filter the
    converter changed (a scale folded in) is the one op left with its kernel size. None
    unless every layer is found (two layers with the same values: the names decide). The
    names alone can mislead: TensorFlow may scope layer ``dense`` as ``dense_1/``, the
    name of another layer."""
    wanted = {}
    every = {}  # nested models' layers too (QAT reaches a base used as a layer)
    for layer in keras_model._flatten_layers(include_self=False, recursive=True):
        every.setdefault(layer.name, []).append(layer)
    for name in ranges:
        base, _, part = name.partition("/")  # "sep/depthwise": a separable layer's first op
        if len(every.get(base, [])) != 1 or not every[base][0].weights:
            return None
        layer = every[base][0]
        kernel = getattr(layer, "depthwise_kernel" if part else "pointwise_kernel",
                         layer.weights[0])
        wanted[name] = np.sort(np.asarray(kernel, np.float32).ravel())
    found = []
    for kernel in kernels:
        key = None if kernel is None else np.sort(kernel)
        hits = [name for name, values in wanted.items()
                if key is not None and values.shape == key.shape and
                np.array_equal(values, key)]
        if len(hits) > 1:
            return None
        found.append(hits[0] if hits else None)
    # The converter folds a constant scale before a convolution into its filter (the
    # Rescaling(1/255) in front of the first Conv2D): that layer's values are found
    # nowhere. A layer left alone with its kernel size among the ops left alone is
    # that op.
    left = [name for name in ranges if name not in found]
    for name in left:
        size = wanted[name].size
        ops_left = [i for i, k in enumerate(kernels) if found[i] is None and k is not None
                    and k.size == size]
        if len(ops_left) == 1 and sum(wanted[n].size == size for n in left) == 1:
            found[ops_left[0]] = name
    layers = {name for name in found if name is not None}  # a shared layer: at every op
    if layers != set(ranges):
        return None
    return [ranges[name] if name else None for name in found]


def _ranges_by_name(outputs: list, ranges: dict) -> list:
    """The learned range of each conv/dense op output, found by the one layer name its
    tensor name holds (``.../NAME/...``, fused ops joined by ``;``); in a branching graph
    the ops' order need not be the layers' order. TensorFlow may have made every layer's
    name scope unique with a suffix (``NAME_1/``): the names are read both ways, and the
    reading that gives each op at most one layer, each layer once, is used (an op of a
    layer that trained in float, e.g. a SeparableConv2D, keeps its calibrated range)."""
    names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in outputs]
    why = "no reading of the op names"
    for suffix in ("", r"_\d+"):
        found = []
        for name in names:
            hits = [layer for layer in ranges
                    if re.search(rf"(^|[/;]){re.escape(layer)}{suffix}/", name)]
            if len(hits) > 1:
                why = f"op output '{name[:60]}' names {len(hits)} fake-quantized layers"
                break
            found.append(hits[0] if hits else None)  # a layer trained in float: calibrated
        layers = [layer for layer in found if layer is not None]
        missing = [layer for layer in ranges if layer not in layers]
        unnamed = [i for i, (name, layer) in enumerate(zip(names, found))
                   if layer is None and "/" not in name]
        if len(found) == len(names) and len(missing) == 1 and len(unnamed) == 1:
            # A model output's tensor is named by the signature (StatefulPartitionedCall:0)
            found[unnamed[0]] = missing[0]
            layers.append(missing[0])
        if len(found) == len(names) and sorted(layers) == sorted(ranges):
            return [ranges[layer] if layer else None for layer in found]
        if len(found) == len(names):
            why = "a fake-quantized layer matches no conv/dense op, or several"
    raise CompressError(f"QAT ranges do not match the converted graph ({why}); convert "
                        "without --qat")


def weight_arrays(artifact) -> list[np.ndarray]:
    """The constant weight tensors (rank >= 2) stored in a ``.tflite`` file or its bytes.

    Tensors in TFLite's sparse format are returned densified (as the interpreter's
    ``DENSIFY`` ops produce them), zeros included.
    """
    from ai_edge_litert.interpreter import Interpreter

    from compress.runtime import has_sparse_tensors

    if has_sparse_tensors(artifact):
        return _densified_weights(artifact)
    interp = Interpreter(**_model_source(artifact))
    arrays = []
    for detail in interp.get_tensor_details():
        if len(detail["shape"]) < 2:
            continue
        try:
            value = interp.get_tensor(detail["index"])
        except ValueError:  # activations have no data before invoke
            continue
        if value is not None and value.size and detail["dtype"] in (np.int8, np.float32,
                                                                    np.float16):
            arrays.append(np.asarray(value))
    return arrays


def _model_source(artifact) -> dict:
    """The LiteRT ``Interpreter`` keyword naming a flatbuffer: in memory, or a file."""
    if isinstance(artifact, (bytes, bytearray, memoryview)):
        return {"model_content": bytes(artifact)}
    return {"model_path": str(artifact)}


def _densified_weights(artifact) -> list[np.ndarray]:
    """The dense weights of a sparse ``.tflite``: its ``DENSIFY`` outputs after one run,
    plus its other constant weights."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(**_model_source(artifact), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType
                         .BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    densify = [op for op in interp._get_ops_details() if op["op_name"] == "DENSIFY"]
    sparse_in = {int(op["inputs"][0]) for op in densify}
    constants = []
    for detail in interp.get_tensor_details():
        if len(detail["shape"]) < 2 or detail["index"] in sparse_in:
            continue
        try:
            value = interp.get_tensor(detail["index"])
        except ValueError:
            continue
        if value is not None and value.size and detail["dtype"] in (np.int8, np.float32,
                                                                    np.float16):
            constants.append(np.array(value))
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [1, *inp["shape"][1:]])
    with quiet_output():
        interp.allocate_tensors()
    interp.set_tensor(inp["index"], np.zeros([1, *inp["shape"][1:]], inp["dtype"]))
    interp.invoke()
    dense = [np.array(interp.get_tensor(int(op["outputs"][0]))) for op in densify]
    return dense + constants
