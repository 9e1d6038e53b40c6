"""Cross-layer equalization and bias correction before per-tensor int8 (Nagel et al. 2019).

Per-tensor int8 gives every output channel of a weight tensor one grid. In depthwise-
separable networks (MobileNets) channel ranges differ by orders of magnitude, so the
small channels round to a few levels. "Data-Free Quantization Through Weight
Equalization and Bias Correction" (Nagel, van Baalen, Blankevoort, Welling, ICCV 2019)
fixes it on the float model, before conversion:

1. **BatchNorm folding**: a BatchNormalization right after a convolution / Dense is
   folded into its kernel (``W * gamma / sqrt(var + eps)``) and its bias
   (``beta - mean * gamma / sqrt(var + eps)``). The BatchNorm layer stays in the graph
   as an identity that holds the bias (gamma 1, mean 0, variance ``1 - eps``, beta the
   folded bias), so the architecture, and everything that reads it, is unchanged; the
   converters fold it again into the convolution.
2. **Cross-layer equalization**: for two layers joined by a positively homogeneous
   function (ReLU, LeakyReLU, a linear path, zero padding, pooling: ``f(x / s) = f(x) /
   s`` for ``s > 0``), output channel ``i`` of the first is divided by
   ``s_i = sqrt(r1_i / r2_i)`` (kernel and bias) and input channel ``i`` of the second
   multiplied by it, where ``r1_i`` and ``r2_i`` are the channel's largest absolute
   weight in each (the paper's ``s_i = sqrt(r1_i r2_i) / r2_i``); both then have range
   ``sqrt(r1_i r2_i)``. The float function is unchanged. Chains (conv -> depthwise ->
   pointwise) are equalized pair by pair, repeatedly, until the scales settle.
3. **ReLU6**: ``min(x, 6)`` is not positively homogeneous (scaling moves the clipping
   point), so, as AIMET does, every ReLU6 between two equalized layers is replaced by a
   ReLU. This changes the float function wherever activations exceeded 6; the report
   gives the equalized model's float difference (``float_max_abs_diff``,
   ``float_top1_agreement`` against the input model on the calibration data).
4. **Bias correction** (empirical, the paper's section 4.2 with data): per-tensor
   rounding of weights biases each output channel's mean; for every convolution /
   Dense the expected error ``E[(Q(W) - W) x]`` per output channel is computed on the
   calibration data (the layer's float inputs) with exactly the grid the converter will
   use (symmetric int8, per-tensor or per-channel) and subtracted from the bias. The
   float model then differs from the input by that (small) amount, on purpose.

Bias absorption (the paper's section 4.1.2) is not applied.

Example:

>>> from compress.quantization.equalize import equalize_model
>>> copy, info = equalize_model(model, x_cal, bias_correction=True,  # doctest: +SKIP
...                             per_channel=False)
>>> info["pairs"], info["float_max_abs_diff"] < 1e-4                  # doctest: +SKIP
(34, True)
"""

from __future__ import annotations

import itertools

import numpy as np

from compress.errors import CompressError
from compress.pruning.graph import graphs

# Layers that pass each channel through a positively homogeneous function: scaling a
# channel's input by 1/s scales its output by 1/s.
_PASSTHROUGH = ("ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "MaxPooling1D",
                "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
                "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
                "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
                "GlobalMaxPooling3D", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                "SpatialDropout3D", "Identity", "LeakyReLU", "PReLU")
_CONVS = ("Conv1D", "Conv2D", "Conv3D")
MAX_ITERATIONS = 50


def equalize_model(model, x_calibration=None, *, equalize: bool = True,
                   bias_correction: bool = False, per_channel: bool = True,
                   qmax: float = 127.0, batch_size: int = 64):
    """A copy of ``model`` prepared for int8: BatchNorm folded, layers equalized, biases
    corrected (see the module docstring); the input model is not modified.

    Args:
        model: a Keras Functional or Sequential model (nested models are equalized
            and bias-corrected inside).
        x_calibration: float array of calibration inputs, or None. Needed for
            ``bias_correction``; also gives the float difference in the report.
        equalize: bool, default True. Cross-layer equalization (False: fold and, with
            ``bias_correction``, correct only).
        bias_correction: bool, default False. Empirical bias correction.
        per_channel: bool, default True. The weight grid bias correction simulates:
            one scale per output channel, or one per tensor.
        qmax: float, default 127. Largest integer of the symmetric weight grid (127
            for TFLite and onnxruntime int8, 64 for onnxruntime's reduced range).
        batch_size: int, default 64. Batch of the calibration pass.

    Returns:
        ``(copy, info)``: the new model and a JSON-ready dict: ``folded_batchnorms``,
        ``pairs`` (equalized layer pairs), ``relu6_replaced``, ``iterations``,
        ``channel_range_ratio`` (median over equalized kernels of the largest over the
        smallest output-channel range, ``before`` and ``after``), ``bias_corrected``
        (layers), ``float_max_abs_diff`` / ``float_top1_agreement`` (the copy against
        ``model`` on the calibration data).

    Raises:
        CompressError: bias correction without calibration data, a model that is
            neither Functional nor Sequential.
    """
    import keras

    from compress.training import copy_model, predict

    if not isinstance(model, keras.Model) or not (
            isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")):
        raise CompressError(f"model '{getattr(model, 'name', model)}': equalization reads "
                            "the layer graph of a Functional or Sequential model; rebuild "
                            "the subclassed model functionally")
    if bias_correction and x_calibration is None:
        raise CompressError("bias correction measures each layer's rounding error on "
                            "calibration data: pass --data")
    new = copy_model(model)
    info = {"folded_batchnorms": 0, "pairs": 0, "relu6_replaced": 0, "iterations": 0,
            "channel_range_ratio": None, "bias_corrected": 0}
    ratios_before, ratios_after = [], []
    every_holder = {}  # id(layer) -> the folded BatchNorm holding its bias, any depth
    for graph in graphs(new):
        holders = _fold_batchnorms(graph, info)
        every_holder.update({id(la): holders[la.name] for la in graph.layers
                             if la.name in holders})
        if not equalize:
            continue
        pairs = _pairs(graph, holders)
        info["pairs"] += len(pairs)
        kernels = {id(a): a for a, _, _ in pairs} | {id(b): b for _, b, _ in pairs}
        ratios_before += [_range_ratio(layer) for layer in kernels.values()]
        for _, _, relus in pairs:
            for relu in relus:
                if relu.max_value is not None:
                    relu.max_value = None
                    info["relu6_replaced"] += 1
        info["iterations"] = max(info["iterations"], _equalize(pairs, holders))
        ratios_after += [_range_ratio(layer) for layer in kernels.values()]
    if ratios_before:
        info["channel_range_ratio"] = {"before": float(np.median(ratios_before)),
                                       "after": float(np.median(ratios_after))}
    if x_calibration is not None:
        x = x_calibration if isinstance(x_calibration, (dict, list, tuple)) else \
            np.asarray(x_calibration, dtype="float32")  # several inputs: as given
        reference = predict(model, x, batch_size)
        equalized = predict(new, x, batch_size)
        info["float_max_abs_diff"] = float(np.max(np.abs(equalized - reference)))
        if reference.ndim == 2 and reference.shape[1] > 1:
            info["float_top1_agreement"] = float(np.mean(
                equalized.argmax(1) == reference.argmax(1)))
    if bias_correction:
        info["bias_corrected"], info["bias_correction_mean_abs"] = _correct_biases(
            new, every_holder, x, per_channel, qmax, batch_size)
        corrected = predict(new, x, batch_size)
        info["corrected_max_abs_diff"] = float(np.max(np.abs(corrected - reference)))
    return new, info


def fake_quantize(kernel: np.ndarray, output_view: np.ndarray, per_channel: bool,
                  qmax: float = 127.0) -> np.ndarray:
    """``kernel`` rounded to the symmetric int8 grid a converter uses (dequantized).

    ``output_view`` is the same kernel as ``(elements, output channels)``; per-channel
    scales are ``max|w|`` of each output channel over ``qmax``, else one for the tensor.

    >>> w = np.array([[1.0, 0.01], [-0.5, 0.02]], dtype="float32")
    >>> np.round(fake_quantize(w, w, per_channel=False)[:, 1] * 127).tolist()  # 1 and 3 levels
    [1.0, 3.0]
    """
    if per_channel:
        scale = np.max(np.abs(output_view), axis=0) / qmax
        scale = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.round(output_view / scale), -qmax, qmax) * scale
        return q.reshape(kernel.shape).astype(kernel.dtype)
    scale = float(np.max(np.abs(kernel))) / qmax or 1.0
    return (np.clip(np.round(kernel / scale), -qmax, qmax) * scale).astype(kernel.dtype)


def output_view(layer, kernel: np.ndarray | None = None) -> np.ndarray:
    """``layer``'s kernel as ``(elements, output channels)`` (a view of the same data)."""
    k = np.asarray(layer.kernel) if kernel is None else kernel
    if type(layer).__name__ == "DepthwiseConv2D":  # (kh, kw, C, M): output c * M + m
        return k.reshape(-1, k.shape[-2] * k.shape[-1])
    return k.reshape(-1, k.shape[-1])


def _input_view(layer, kernel: np.ndarray) -> np.ndarray:
    """The kernel as ``(input channels, elements)`` (a copy)."""
    axis = 2 if type(layer).__name__ == "DepthwiseConv2D" else kernel.ndim - 2
    return np.moveaxis(kernel, axis, 0).reshape(kernel.shape[axis], -1)


def _edges(model) -> tuple[dict, dict, set]:
    """``(producers, consumers, outputs)``: layer name -> names, and the output layers.

    A layer used more than once, or read by the model's output, gets a pseudo consumer
    so that nothing is equalized across it.
    """
    import keras

    names = [layer.name for layer in model.layers]
    producers = {n: [] for n in names}
    consumers = {n: [] for n in names}
    if isinstance(model, keras.Sequential):
        chain = [layer.name for layer in model.layers]
        for a, b in itertools.pairwise(chain):
            producers[b].append(a)
            consumers[a].append(b)
        return producers, consumers, {chain[-1]} if chain else set()
    config = model.get_config()
    for entry in config["layers"]:
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:  # a shared layer: its kernel serves several inputs
            consumers.setdefault(entry["name"], []).append("<shared>")
        for node in nodes:
            for source in _histories(node):
                producers[entry["name"]].append(source)
                consumers.setdefault(source, []).append(entry["name"])
    outs = config.get("output_layers") or []
    if outs and not isinstance(outs[0], (list, tuple)):
        outs = [outs]
    outputs = {o[0] for o in outs}
    for name in outputs:
        consumers.setdefault(name, []).append("<output>")
    return producers, consumers, outputs


def _histories(value) -> list[str]:
    """Names of the layers whose tensors a serialized call's arguments reference."""
    if isinstance(value, dict):
        history = (value.get("config") or {}).get("keras_history") \
            if value.get("class_name") == "__keras_tensor__" else None
        if history:
            return [history[0]]
        return [n for v in value.values() for n in _histories(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _histories(v)]
    return []


def _is_linear_kind(layer) -> bool:
    kind = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return False
    if kind in _CONVS:
        return getattr(layer, "groups", 1) == 1
    if kind == "DepthwiseConv2D":
        return True
    return kind == "Dense" and len(layer.kernel.shape) == 2


def _activation_name(layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", "linear") if act is not None else "linear"


def _fold_batchnorms(model, info: dict) -> dict:
    """Fold each BatchNormalization that directly follows a conv/Dense into it.

    Returns ``{layer name: BatchNormalization holding its bias}``.
    """
    _, consumers, _ = _edges(model)
    by_name = {layer.name: layer for layer in model.layers}
    holders = {}
    for layer in model.layers:
        if not _is_linear_kind(layer) or _activation_name(layer) != "linear":
            continue
        after = consumers.get(layer.name, [])
        if len(after) != 1 or after[0] not in by_name:
            continue
        bn = by_name[after[0]]
        if type(bn).__name__ != "BatchNormalization" or bn.axis not in (
                -1, len(layer.kernel.shape) - 1 if type(layer).__name__ != "Dense" else 1):
            continue  # normalizes another axis than the channels
        if not bn.center and not layer.use_bias:
            continue  # nowhere to keep the folded bias
        g = np.asarray(bn.moving_variance) + bn.epsilon
        g = (np.asarray(bn.gamma) if bn.scale else np.ones_like(g)) / np.sqrt(g)
        bias = (np.asarray(bn.beta) if bn.center else 0.0) - np.asarray(bn.moving_mean) * g
        if layer.use_bias:
            bias = bias + np.asarray(layer.bias) * g
        kernel = np.asarray(layer.kernel).copy()
        view = output_view(layer, kernel)
        view *= g[None, :]
        layer.kernel.assign(view.reshape(kernel.shape))
        if bn.scale:
            bn.gamma.assign(np.ones_like(g))
        bn.moving_mean.assign(np.zeros_like(g))
        bn.moving_variance.assign(np.full_like(g, 1.0 - bn.epsilon))
        if bn.center:
            bn.beta.assign(bias.astype("float32"))
            if layer.use_bias:
                layer.bias.assign(np.zeros_like(bias, dtype="float32"))
        else:
            layer.bias.assign(bias.astype("float32"))
        holders[layer.name] = bn
        info["folded_batchnorms"] += 1
    return holders


def _pairs(model, holders: dict) -> list:
    """``[(first, second, relus)]``: layer pairs joined by a channel-wise positively
    homogeneous path, each intermediate output read once; ``relus`` are the ReLU layers
    on the path (ReLU6 among them are to become ReLU)."""
    _, consumers, _ = _edges(model)
    by_name = {layer.name: layer for layer in model.layers}
    pairs = []
    for layer in model.layers:
        if not _is_linear_kind(layer) or _activation_name(layer) not in ("linear", "relu"):
            continue
        name, relus = layer.name, []
        if layer.name in holders:
            name = holders[layer.name].name
        while True:
            after = consumers.get(name, [])
            if len(after) != 1 or after[0] not in by_name:
                break
            nxt = by_name[after[0]]
            kind = type(nxt).__name__
            if _is_linear_kind(nxt):
                pairs.append((layer, nxt, relus))
                break
            if kind == "ReLU" and nxt.negative_slope == 0 and nxt.threshold == 0:
                relus.append(nxt)
            elif kind == "Activation" and _activation_name(nxt) in ("relu", "linear"):
                pass
            elif kind not in _PASSTHROUGH:
                break
            name = nxt.name
    return pairs


def _equalize(pairs: list, holders: dict) -> int:
    """Equalize the pairs in turn until every scale is within 1e-4 of 1; iterations."""
    for iteration in range(1, MAX_ITERATIONS + 1):
        largest = 0.0
        for first, second, _ in pairs:
            k1, k2 = np.asarray(first.kernel), np.asarray(second.kernel)
            r1 = np.max(np.abs(output_view(first, k1)), axis=0)
            r2 = np.max(np.abs(_input_view(second, k2)), axis=1)
            if r1.shape != r2.shape:
                continue
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 / np.where(r2 > 0, r2, 1.0)), 1.0)
            largest = max(largest, float(np.max(np.abs(np.log(s)))))
            view = output_view(first, k1.copy())
            view /= s[None, :]
            first.kernel.assign(view.reshape(k1.shape))
            for holder in (first, holders.get(first.name)):
                if holder is not None and getattr(holder, "use_bias", False):
                    holder.bias.assign(np.asarray(holder.bias) / s)
                elif holder is not None and getattr(holder, "center", False):
                    holder.beta.assign(np.asarray(holder.beta) / s)
            axis = 2 if type(second).__name__ == "DepthwiseConv2D" else k2.ndim - 2
            shape = [1] * k2.ndim
            shape[axis] = -1
            second.kernel.assign(k2 * s.reshape(shape))
        if largest < 1e-4:
            return iteration
    return MAX_ITERATIONS


def _range_ratio(layer) -> float:
    r = np.max(np.abs(output_view(layer)), axis=0)
    r = r[r > 0]
    return float(r.max() / r.min()) if r.size else 1.0


def _bias_store(layer, holder):
    """The variable that holds ``layer``'s bias (a folded BatchNorm's beta), or None."""
    if holder is not None and holder.center:
        return holder.beta
    return layer.bias if getattr(layer, "use_bias", False) else None


def _correct_biases(model, holders: dict, x, per_channel: bool, qmax: float,
                    batch_size: int) -> tuple[int, float]:
    """Subtract each layer's mean output error from rounding its kernel (before its
    activation), for the layers of ``model`` and of its nested models (``holders``:
    ``id(layer)`` -> the folded BatchNorm holding its bias); ``(layers corrected, mean
    absolute correction)``. The inputs are captured inside each layer's call, so a
    layer of a nested model or one called several times (its mean over the calls) is
    corrected too."""
    from compress.pruning.hessian import _batches, _forward

    targets = []
    for graph in graphs(model):
        for layer in graph.layers:
            if not _is_linear_kind(layer):
                continue
            store = _bias_store(layer, holders.get(id(layer)))
            if store is not None:
                targets.append((layer, store))
    targets = list({id(la): (la, st) for la, st in targets}.values())
    if not targets:
        return 0, 0.0
    deltas = []
    for layer, _ in targets:
        k = np.asarray(layer.kernel)
        dq = fake_quantize(k, output_view(layer, k), per_channel, qmax) - k
        deltas.append(dq)
    sums = [np.zeros(output_view(layer).shape[1], dtype="float64") for layer, _ in targets]
    count = [0] * len(targets)

    def hook(i):
        def seen(xi):
            err = np.asarray(_apply_kernel(targets[i][0], xi, deltas[i]))
            err = err.reshape(-1, err.shape[-1])
            sums[i] += err.sum(axis=0)
            count[i] += err.shape[0]
        return seen

    hooks = {id(layer): hook(i) for i, (layer, _) in enumerate(targets)}
    for xb in _batches(x, batch_size):
        _forward(model, hooks, xb)
    total = []
    for (layer, store), s, n in zip(targets, sums, count):
        delta = (s / max(n, 1)).astype("float32")
        store.assign(np.asarray(store) - delta)
        total.append(np.abs(delta).mean())
    return len(targets), float(np.mean(total))


def _apply_kernel(layer, x, kernel):
    """``layer``'s linear map (no bias, no activation) with another kernel."""
    from keras import ops

    kind = type(layer).__name__
    if kind == "Dense":
        return ops.matmul(x, kernel)
    if kind == "DepthwiseConv2D":
        return ops.depthwise_conv(x, kernel, strides=layer.strides, padding=layer.padding,
                                  data_format=layer.data_format,
                                  dilation_rate=layer.dilation_rate)
    if getattr(layer, "padding", None) == "causal":  # Conv1D pads on the left itself
        return ops.conv(ops.pad(x, layer._compute_causal_padding()), kernel,
                        strides=layer.strides, padding="valid",
                        dilation_rate=layer.dilation_rate, data_format=layer.data_format)
    return layer.convolution_op(x, kernel)


def check_options(options: dict) -> None:
    """Refuse ``--equalize``, ``--bias-correction`` or ``--debug-layers`` where they do not
    apply, in one line (front-ends call it before loading anything).

    >>> check_options({"mode": "int8", "equalize": True})
    >>> check_options({"mode": "dynamic", "equalize": True})
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: --equalize prepares weights for full-integer int8 (mode int8); mode dynamic does not calibrate (drop --equalize, or use --mode int8)
    """
    mode = options.get("mode", "int8")
    for name in ("equalize", "bias_correction", "debug_layers"):
        if not options.get(name):
            continue
        flag = "--" + name.replace("_", "-")
        if mode != "int8":
            raise CompressError(f"{flag} prepares weights for full-integer int8 (mode int8); "
                                f"mode {mode} does not calibrate (drop {flag}, or use "
                                "--mode int8)")
        if options.get("qat"):
            raise CompressError(f"{flag} is post-training; --qat learns its own ranges "
                                f"(drop one of them)")
    if options.get("bias_correction") and options.get("rounding") == "gptq":
        raise CompressError("--bias-correction assumes round-to-nearest weights; --rounding "
                            "gptq compensates rounding itself (drop one of them)")
    if options.get("debug_layers") and (options.get("format") or "tflite") != "tflite":
        raise CompressError("--debug-layers reads TFLite's per-layer quantization debugger; "
                            "write a .tflite artifact (or drop --debug-layers)")


def prepare_for_int8(model, x_calibration, x_test, y_test, fmt: str, opts: dict):
    """The copy the quantize pass converts (``equalize`` / ``bias_correction`` options),
    and its report: :func:`equalize_model`'s, plus the copy's float test scores
    (``float_scores``) when the data is labelled."""
    reduced = fmt == "onnx" and opts.get("reduce_range", True) and \
        opts.get("layout", "cpu") != "gpu"  # the GPU layout keeps full 8-bit weights
    copy, info = equalize_model(model, x_calibration, equalize=opts["equalize"],
                                bias_correction=opts["bias_correction"],
                                per_channel=opts["per_channel"],
                                qmax=64.0 if reduced else 127.0)
    info["note"] = ("converted from a copy: "
                    + ", ".join(part for part, on in (
                        (f"{info['folded_batchnorms']} BatchNorm folded", True),
                        (f"{info['pairs']} layer pairs equalized", opts["equalize"]),
                        (f"{info['relu6_replaced']} ReLU6 made ReLU",
                         info["relu6_replaced"] > 0),
                        (f"{info['bias_corrected']} biases corrected",
                         opts["bias_correction"])) if on)
                    + f"; its float outputs differ from the model's by up to "
                    f"{info.get('float_max_abs_diff', float('nan')):.2g} before bias correction")
    task = opts.get("_task")
    if task is not None and x_test is not None and y_test is not None:
        info["float_scores"] = task.evaluate(copy, x_test, y_test)
    return copy, info
