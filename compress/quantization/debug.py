"""Per-layer quality of a full-integer int8 TFLite model: which layers lose most.

TFLite's ``tf.lite.experimental.QuantizationDebugger`` converts the model in debug mode:
after every quantized op it inserts a float copy of the op, fed with the same
(dequantized) int8 inputs, and a ``NumericVerify`` op that compares the two outputs. Run
on calibration samples, that gives each op's own error, not the error it inherits from
the layers before it. Here each op gets its signal-to-quantization-noise ratio,
``SQNR = 10 log10(E[f^2] / E[(f - q)^2])`` dB (``f`` the float op's output, ``q`` the
dequantized int8 one), and the Keras layer it comes from; the lowest SQNR comes first.
The debug model uses the same converter settings as the artifact (calibration samples,
per-channel or per-tensor weights), so the numbers describe the file that is written.

Example:

>>> from compress.quantization.debug import layer_sqnr
>>> report = layer_sqnr(model, x_train[:256], per_channel=False)   # doctest: +SKIP
>>> report["layers"][0]                                              # doctest: +SKIP
{'layer': 'block_3_depthwise', 'op': 'DEPTHWISE_CONV_2D', 'sqnr_db': 11.2, ...}
"""

from __future__ import annotations

import re
import tempfile
import warnings

import numpy as np

from compress.errors import CompressError
from compress.quiet import quiet_output

DEBUG_SAMPLES = 64  # samples the debug model runs on (each one invoke, batch 1)
WORST = 5  # layers the table lists
_KINDS = {"CONV_2D": ("Conv2D", "Conv1D"), "DEPTHWISE_CONV_2D": ("DepthwiseConv2D",),
          "FULLY_CONNECTED": ("Dense", "EinsumDense"), "CONV_3D": ("Conv3D",)}


def layer_sqnr(model, representative: np.ndarray, per_channel: bool = True,
               samples: int = DEBUG_SAMPLES) -> dict:
    """Per-op SQNR of ``model``'s full-integer int8 TFLite conversion (see module doc).

    Args:
        model: a Keras model (float32 graph as the converter sees it).
        representative: calibration samples (the artifact's): an array, or a dict by
            input name for a model with several inputs (token ids stay integers).
        per_channel: bool, default True. Per-channel weight scales (per-tensor if False).
        samples: int, default 64. Calibration samples the debug model runs on.

    Returns:
        A JSON-ready dict: ``layers`` (one dict per quantized op output, lowest SQNR
        first: ``layer`` (the Keras layer), ``op``, ``sqnr_db``, ``rmse``, ``scale``,
        ``tensor``), ``worst`` (the ``layer`` names of the lowest five), ``samples``
        and ``method``.

    Raises:
        CompressError: the debug conversion fails (the message says why, in one line).
    """
    import tensorflow as tf

    from compress.quantization.tflite import calibration_samples

    several = isinstance(representative, dict)
    if isinstance(representative, (list, tuple)) or several != (len(model.inputs) > 1):
        raise CompressError("--debug-layers takes the calibration samples as one array for "
                            "a single-input model or a dict by input name for several; "
                            "quantize without it")
    x = {k: np.asarray(v) for k, v in representative.items()} if several else \
        np.asarray(representative)
    count = len(next(iter(x.values()))) if several else len(x)
    if count == 0:
        raise CompressError("--debug-layers needs calibration samples: pass --data")
    debug_x = {k: v[:samples] for k, v in x.items()} if several else x[:samples]
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"signal_power": _signal_power,
                                      "noise_power": _noise_power})
    try:
        context = _converter(model, x, per_channel)
        with context as converter, quiet_output():
            make, _ = calibration_samples(debug_x, context.specs)

            def debug_dataset():  # a list in the debug model's own input order
                order = [_input_key(d["name"], context.specs)
                         for d in debugger._quant_interpreter.get_input_details()
                         ] if several else None
                for sample in make():
                    yield [sample[k] for k in order] if isinstance(sample, dict) else sample

            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_options=options, debug_dataset=debug_dataset)
            # The float side of each comparison is read after the run: keep every tensor
            # (by default the interpreter reuses their memory, and a late op's float
            # copy reads as garbage).
            with warnings.catch_warnings():  # its "for debugging only" notice: it is
                warnings.simplefilter("ignore")
                debugger._quant_interpreter = tf.lite.Interpreter(
                    model_content=debugger.quant_model,
                    experimental_preserve_all_tensors=True)
            debugger._initialize_stats()
            debugger.run()
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError("--debug-layers: TFLite's quantization debugger failed ("
                            f"{' '.join(str(exc).split())[:200]}); quantize without it"
                            ) from exc
    names, sizes = _layer_names(model), _kernel_sizes(model)
    last = model.layers[-1]  # the op writing the model's output gets the signature's name
    output_layer = (last.name, type(last).__name__)
    rows = []
    interp = debugger._quant_interpreter  # the debug model the statistics come from
    for name, metrics in debugger.layer_statistics.items():
        op = debugger._numeric_verify_op_details[name]  # NumericVerify(quantized, float)
        tensor_idx = op["inputs"][0]
        defining = interp._get_op_details(debugger._defining_op[tensor_idx])
        op_name = defining["op_name"]
        inputs = list(defining.get("inputs", ()))
        kernel = int(np.prod(interp._get_tensor_details(inputs[1], subgraph_index=0)["shape"])
                     ) if op_name in _KINDS and len(inputs) > 1 and inputs[1] >= 0 else None
        detail = interp._get_tensor_details(tensor_idx, subgraph_index=0)
        tensor = debugger._get_operand_name_and_index(name)[0]
        signal, noise = float(metrics["signal_power"]), float(metrics["noise_power"])
        sqnr = 10 * np.log10(signal / noise) if noise > 0 and signal > 0 else \
            (float("inf") if noise == 0 else float("-inf"))
        scopes = _scopes(tensor, op_name, names, output_layer, kernel, sizes)
        rows.append({"layer": scopes[-1], "path": "/".join(scopes),
                     "op": op_name,
                     "sqnr_db": round(float(sqnr), 2), "rmse": float(np.sqrt(noise)),
                     "scale": float(detail["quantization_parameters"]["scales"][0]),
                     "tensor": tensor})
    rows.sort(key=lambda r: r["sqnr_db"])
    return {"layers": rows, "worst": [r["layer"] for r in rows[:WORST]],
            "samples": len(debug_x),
            "method": "TFLite QuantizationDebugger: each int8 op against its float copy on "
                      "the same dequantized inputs (the op's own error)"}


def _input_key(tensor: str, specs) -> str:
    """The model input a TFLite input tensor feeds (``serving_default_token_ids:0`` ->
    ``token_ids``): the longest input name its name holds.

    >>> _input_key("serving_default_padding_mask:0", [("token_ids", (), "int32"),
    ...                                                ("padding_mask", (), "int32")])
    'padding_mask'
    """
    hits = [name for name, _, _ in specs if name in tensor]
    if not hits:
        raise CompressError(f"--debug-layers: the debug model's input '{tensor}' matches no "
                            "model input; quantize without it")
    return max(hits, key=len)


def _signal_power(f, q, scale, zero_point) -> float:
    return float(np.mean(np.square(np.asarray(f, dtype=np.float64))))


def _noise_power(f, q, scale, zero_point) -> float:
    deq = (np.asarray(q, dtype=np.float64) - zero_point) * scale
    return float(np.mean(np.square(np.asarray(f, dtype=np.float64) - deq)))


class _converter:
    """A ``TFLiteConverter`` set up as :func:`compress.quantization.tflite.convert` sets it
    for full-integer int8, on a SavedModel in a temporary folder (a context manager);
    ``specs`` are the inputs of the copy it converts."""

    def __init__(self, model, representative, per_channel: bool):
        self.model, self.x, self.per_channel = model, representative, per_channel

    def __enter__(self):
        import tensorflow as tf

        from compress.quantization.tflite import calibration_samples, saved_model_converter

        self.folder = tempfile.TemporaryDirectory()
        converter, _, self.specs = saved_model_converter(self.model, self.folder.name)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        samples, _ = calibration_samples(self.x, self.specs)
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if not self.per_channel:
            converter._experimental_disable_per_channel = True
        return converter

    def __exit__(self, *exc):
        self.folder.cleanup()
        return False


def _layer_names(model) -> dict:
    """``{name: class name}`` of every layer, nested models' and the sublayers of custom
    layers (a KerasHub decoder's ``self_attention``) included."""
    from compress.layer_state import all_layers

    out = {}
    for layer in all_layers(model):
        if layer is not model:
            out.setdefault(layer.name, type(layer).__name__)
    return out


def _kernel_sizes(model) -> dict:
    """``{name: number of kernel entries}`` of every layer with weights, nested models'
    included (a TFLite filter holds the same entries in another layout)."""
    from compress.models import _leaves

    return {la.name: int(np.prod(la.weights[0].shape)) for la in _leaves(model) if la.weights}


def _keras_layer(tensor: str, op: str, names: dict, output_layer: tuple,
                 kernel: int | None = None, sizes: dict | None = None) -> str:
    """The Keras layer a TFLite tensor name comes from: of the layer names in it, one of
    the op's kind (the convolution, not its fused BatchNorm or ReLU), else the innermost
    of the first op's scopes (a decoder's ``self_attention``, not the backbone around
    it); the model's output tensor (named after the signature) is its last layer's. A
    name with a suffix is ambiguous (TensorFlow may scope layer ``dense`` as ``dense_1/``,
    the name of another layer): where the op's filter has ``kernel`` entries, the names
    whose layer kernel (``sizes``) has as many are kept, if any.

    Example:

    >>> _keras_layer("m/dense_1/MatMul;m/dense_1/Relu", "FULLY_CONNECTED",
    ...              {"dense": "Dense", "dense_1": "Dense"}, ("dense_1", "Dense"),
    ...              kernel=256, sizes={"dense": 256, "dense_1": 32})
    'dense'
    >>> _keras_layer("lm/backbone_1/block_0_1/attention_1/MatMul", "BATCH_MATMUL",
    ...              {"backbone": "Backbone", "block_0": "Decoder", "attention": "MHA"},
    ...              ("lm", "CausalLM"))
    'attention'
    """
    return _scopes(tensor, op, names, output_layer, kernel, sizes)[-1]


def _scopes(tensor: str, op: str, names: dict, output_layer: tuple,
            kernel: int | None = None, sizes: dict | None = None) -> list:
    """The Keras layers of a TFLite tensor name, outermost first, the op's own layer
    last (see :func:`_keras_layer`)."""
    segments = []  # the layer names in each fused op's name, outermost first
    for segment in tensor.split(";"):
        here = []
        for part in segment.split("/"):
            for candidate in (part, re.sub(r"_\d+$", "", part)):
                if candidate in names and candidate not in here:
                    here.append(candidate)
        segments.append(here)
    found = list(dict.fromkeys(n for here in segments for n in here))
    if kernel is not None and sizes:
        found = [n for n in found if sizes.get(n) == kernel] or found
    kinds = _KINDS.get(op, ())
    if not found and tensor.startswith("StatefulPartitionedCall"):
        return [output_layer[0] if output_layer[1] in kinds else f"{output_layer[0]} ({op})"]
    if not found:
        return [tensor.split(";")[0][:80]]
    layer = next((n for n in found if names[n] in kinds), None)
    for here in segments:  # the scopes of the op's own name (or of the first named one)
        if (layer in here) if layer else any(n in found for n in here):
            outer = [n for n in here if n in found and names[n] not in kinds]
            layer = layer or outer[-1]
            return [n for n in outer if n != layer] + [layer]
    return [layer]
