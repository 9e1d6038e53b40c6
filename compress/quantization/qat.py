"""Quantization-aware training: fine-tune with fake-quantized weights and activations.

BatchNorm is first folded into the Conv1D/Conv2D/DepthwiseConv2D/SeparableConv2D/Dense
before it (what the int8 converter does too), so the fake quantization sees the weights
that will really be quantized. Each of those layers is then trained as a QAT twin whose kernel goes through
``keras.quantizers.fake_quant_with_min_max_vars`` per output channel (symmetric, narrow
range, the TFLite int8 scheme) and whose output goes through it per tensor with ranges
tracked by an exponential moving average. The straight-through estimator lets gradients
pass the rounding. After training, the weights are copied back into the plain folded
model, and the learned output ranges are returned with it: the converter must quantize
each layer's output on exactly that grid (``convert(..., activation_ranges=...)``). The
network learns to rely on the rounding of fake quantization (a channel whose values fall
under half a step is zero in training), so neither the float model (25% on the bench
case) nor the float model clipped at the ranges (29%) nor a fresh calibration (23%)
reproduces it; with the learned grids the int8 file does (79% vs 79.7% fake-quant).

Example:

>>> from compress.quantization.qat import qat_finetune
>>> folded, info = qat_finetune(model, data, epochs=3)   # doctest: +SKIP
>>> info["folded_batchnorm"]                              # doctest: +SKIP
3
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
from keras import ops

from compress.errors import CompressError
from compress.layer_state import keep_config, read_config
from compress.pruning import graph

_FOLDABLE = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.DepthwiseConv2D,
             keras.layers.Dense, keras.layers.SeparableConv2D)


def fold_batchnorm(model):
    """A new model with every BatchNormalization folded into the layer before it.

    A BatchNorm folds when it is the only reader of a Conv1D, Conv2D, DepthwiseConv2D,
    SeparableConv2D or Dense with a linear activation (channels last) in the same model
    graph and normalizes the last axis; it becomes an ``Identity`` layer of the same name.
    Other BatchNorms are kept as they are. Works on Sequential and Functional models,
    branches included, and inside their nested models (a ``MobileNetV2`` base used as a
    layer: nesting and names kept; a subclassed nested model is copied whole).

    Example:

    >>> folded, n = fold_batchnorm(model)   # doctest: +SKIP

    Args:
        model: a Keras model (not modified).

    Returns:
        ``(folded_model, n_folded)``.

    Raises:
        CompressError: a model whose layer graph cannot be rebuilt (subclassed).
    """
    folds = _fold_plan(model)
    absorbed = {id(bn) for bn in folds.values()}

    def clone(layer):
        if id(layer) in absorbed:
            return keras.layers.Identity(name=layer.name)
        if not isinstance(layer, keras.layers.Layer):  # a keras.ops operation
            return graph.fresh(layer)
        config, own = read_config(layer)  # its own, or read back (KerasHub's Llama)
        if id(layer) in folds:
            config["use_bias"] = True
        new = type(layer).from_config(config)
        return new if own else keep_config(new, config)

    folded, pairs = _rebuild(model, clone)
    for layer, new in pairs:
        if id(layer) in absorbed:
            continue
        weights = layer.get_weights()
        if id(layer) in folds:
            weights = _fold(layer, weights, folds[id(layer)])
        new.set_weights(weights)
    return folded, len(folds)


def _top_layers(model) -> list:
    return [lay for lay in model.layers if not isinstance(lay, keras.layers.InputLayer)]


def _free_training(op, kwargs: dict) -> dict:
    """A nested model called with a fixed ``training`` (``base(x, training=False)``, the
    transfer-learning pattern) follows the fit in QAT instead: its fake-quantized layers
    learn their output ranges in training only. Its BatchNorms keep inference mode all
    the same: they are frozen in :func:`qat_finetune`."""
    return {k: v for k, v in kwargs.items() if k != "training"}


def _frozen_batchnorms(model) -> set:
    """``id`` of every BatchNormalization inside a nested model that ``model``'s graphs
    call with ``training=False``: they stay in inference mode while QAT trains."""
    out = set()
    for g in graph.graphs(model):
        if isinstance(g, keras.Sequential):
            continue
        for nodes in g._nodes_by_depth.values():
            for node in nodes:
                if graph.has_graph(node.operation) and \
                        node.arguments.kwargs.get("training", None) is False:
                    out |= {id(la) for la in node.operation._flatten_layers(recursive=True)
                            if isinstance(la, keras.layers.BatchNormalization)}
    return out


def _rebuild(model, clone_function, free_training: bool = False):
    """``(new model, [(old layer, new layer)])``: ``model``'s graph, nested models
    included (nesting and names kept), with each layer and operation replaced by
    ``clone_function(layer)``. With ``free_training``, nested models lose a fixed
    ``training`` argument (:func:`_free_training`)."""
    if not graph.has_graph(model):
        raise CompressError(f"model '{model.name}': QAT rebuilds the model's layer graph and "
                            "cannot (a subclassed model has none); use post-training mode "
                            "int8")
    try:
        new, pairs, _ = graph.rebuild_pairs(
            model, clone_function, nested_kwargs=_free_training if free_training else None)
    except CompressError:
        raise
    except Exception as exc:  # a layer that cannot be rebuilt
        raise CompressError(f"model '{model.name}': QAT rebuilds the model's layer graph and "
                            f"cannot ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
                            "); use post-training mode int8") from exc
    return new, pairs


def _consumers(model) -> dict:
    """``{layer name: [names of the layers and ops reading its output]}``; a model output
    is read by ``"<output>"``."""
    if isinstance(model, keras.Sequential):
        chain = [lay.name for lay in _top_layers(model)] + ["<output>"]
        return {a: [b] for a, b in itertools.pairwise(chain)}
    out = {}

    def producer(tensor):
        history = getattr(tensor, "_keras_history", None)
        return history.operation.name if history else None

    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.is_input:
                continue
            for tensor in node.input_tensors:
                if producer(tensor):
                    out.setdefault(producer(tensor), []).append(node.operation.name)
    for tensor in keras.tree.flatten(model.outputs):
        out.setdefault(producer(tensor), []).append("<output>")
    return out


def _fold_plan(model) -> dict:
    """``{id(layer): the BatchNormalization that folds into it}``, over ``model`` and its
    nested models (each graph on its own: nothing folds across a model boundary)."""
    plan = {}
    for g in graph.graphs(model):
        consumers = _consumers(g)
        by_name = {lay.name: lay for lay in g.layers}
        for layer in _top_layers(g):
            after = consumers.get(layer.name, [])
            if type(layer) not in _FOLDABLE or len(after) != 1 or after[0] not in by_name \
                    or layer.get_config().get("activation", "linear") != "linear" \
                    or getattr(layer, "data_format", "channels_last") != "channels_last" \
                    or getattr(layer, "groups", 1) != 1:
                continue
            bn = by_name[after[0]]
            if isinstance(bn, keras.layers.BatchNormalization) \
                    and sum(names.count(bn.name) for names in consumers.values()) == 1 \
                    and bn.axis in (-1, len(bn.input.shape) - 1):
                plan[id(layer)] = bn
    return plan


def _fold(layer, weights, bn) -> list:
    if isinstance(layer, keras.layers.SeparableConv2D):  # the pointwise kernel scales
        depthwise, pointwise = weights[0], weights[1]
        bias = weights[2] if len(weights) > 2 else np.zeros(pointwise.shape[-1],
                                                            pointwise.dtype)
        gamma = np.asarray(bn.gamma) if bn.scale else 1.0
        scale = gamma / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
        bias = (bias - np.asarray(bn.moving_mean)) * scale + (np.asarray(bn.beta) if bn.center
                                                              else 0.0)
        return [depthwise, (pointwise * scale).astype("float32"), bias.astype("float32")]
    kernel = weights[0]
    bias = weights[1] if len(weights) > 1 else np.zeros(kernel.shape[-1] if not isinstance(
        layer, keras.layers.DepthwiseConv2D) else kernel.shape[-2] * kernel.shape[-1],
        kernel.dtype)
    gamma = np.asarray(bn.gamma) if bn.scale else 1.0
    beta = np.asarray(bn.beta) if bn.center else 0.0
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance) + bn.epsilon)
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        kernel = kernel * scale.reshape(kernel.shape[-2], kernel.shape[-1])
    else:
        kernel = kernel * scale
    bias = (bias - np.asarray(bn.moving_mean)) * scale + beta
    return [kernel.astype("float32"), bias.astype("float32")]


def _fake_quant_kernel(kernel, axis: int | None):
    """Symmetric int8 (narrow range [-127, 127]) per channel along ``axis`` (per tensor if
    None), with a straight-through gradient."""
    if axis is None:
        bound = ops.maximum(ops.stop_gradient(ops.max(ops.abs(kernel))), 1e-8)
        return keras.quantizers.fake_quant_with_min_max_vars(
            kernel, -bound, bound, num_bits=8, narrow_range=True)
    reduce = [a for a in range(len(kernel.shape)) if a != axis % len(kernel.shape)]
    bound = ops.maximum(ops.stop_gradient(ops.max(ops.abs(kernel), axis=reduce)), 1e-8)
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=8, narrow_range=True, axis=axis)


class _ActivationRange:
    """Moving min/max of a layer's output and its per-tensor fake quantization."""

    per_channel = True  # set per instance by qat_finetune

    def _axis(self, axis: int) -> int | None:
        return axis if self.per_channel else None

    def _build_range(self):
        self.act_min = self.add_weight(name="act_min", shape=(), initializer="zeros",
                                       trainable=False)
        self.act_max = self.add_weight(name="act_max", shape=(), initializer="zeros",
                                       trainable=False)
        self.seen = self.add_weight(name="seen", shape=(), initializer="zeros",
                                    trainable=False)

    def _fake_quant_output(self, x, training):
        if training:
            lo, hi = ops.minimum(ops.min(x), 0.0), ops.maximum(ops.max(x), 0.0)
            first = ops.equal(self.seen, 0.0)
            self.act_min.assign(ops.where(first, lo, 0.99 * self.act_min + 0.01 * lo))
            self.act_max.assign(ops.where(first, hi, 0.99 * self.act_max + 0.01 * hi))
            self.seen.assign(self.seen + 1.0)
        lo, hi = ops.stop_gradient(self.act_min), ops.stop_gradient(self.act_max)
        return keras.quantizers.fake_quant_with_min_max_vars(x, lo, ops.maximum(hi, lo + 1e-6),
                                                             num_bits=8)


class QATConv2D(keras.layers.Conv2D, _ActivationRange):
    """Conv2D trained with fake-quantized kernel (per channel) and output (per tensor)."""

    # Conv saves only its kernel and bias (as Dense does): a --checkpoint-dir backup
    # could not be loaded back ("expected 5 variables"), so a resumed QAT run crashed.
    save_own_variables = keras.layers.Layer.save_own_variables
    load_own_variables = keras.layers.Layer.load_own_variables

    def build(self, input_shape):
        super().build(input_shape)
        self._build_range()

    def call(self, inputs, training=None):
        x = ops.conv(inputs, _fake_quant_kernel(self.kernel, self._axis(-1)), strides=self.strides,
                     padding=self.padding, dilation_rate=self.dilation_rate,
                     data_format=self.data_format)
        if self.use_bias:
            x = x + self.bias
        return self._fake_quant_output(self.activation(x), training)


class QATConv1D(keras.layers.Conv1D, _ActivationRange):
    """Conv1D (causal padding too) trained with fake-quantized kernel (per channel) and
    output (per tensor). TFLite runs it as a CONV_2D on an expanded axis, whose output
    takes the learned range (matched by the kernel's values)."""

    save_own_variables = keras.layers.Layer.save_own_variables  # see QATConv2D
    load_own_variables = keras.layers.Layer.load_own_variables

    def build(self, input_shape):
        super().build(input_shape)
        self._build_range()

    def call(self, inputs, training=None):
        padding = self.padding
        if padding == "causal":
            inputs = ops.pad(inputs, self._compute_causal_padding())
            padding = "valid"
        x = ops.conv(inputs, _fake_quant_kernel(self.kernel, self._axis(-1)),
                     strides=self.strides, padding=padding, dilation_rate=self.dilation_rate,
                     data_format=self.data_format)
        if self.use_bias:
            x = x + self.bias
        return self._fake_quant_output(self.activation(x), training)


class QATDepthwiseConv2D(keras.layers.DepthwiseConv2D, _ActivationRange):
    """DepthwiseConv2D trained with fake-quantized kernel and output."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_range()

    def call(self, inputs, training=None):
        x = ops.depthwise_conv(inputs, _fake_quant_kernel(self.kernel, self._axis(-2)),
                               strides=self.strides, padding=self.padding,
                               dilation_rate=self.dilation_rate, data_format=self.data_format)
        if self.use_bias:
            x = x + self.bias
        return self._fake_quant_output(self.activation(x), training)


class QATSeparableConv2D(keras.layers.SeparableConv2D, _ActivationRange):
    """SeparableConv2D trained as TFLite runs it: a DEPTHWISE_CONV_2D whose output is an
    int8 tensor of its own, then a 1x1 CONV_2D; both kernels fake-quantized (per
    channel), the depthwise output and the layer output each on a learned range."""

    def build(self, input_shape):
        super().build(input_shape)
        self._build_range()
        self.mid_min = self.add_weight(name="mid_min", shape=(), initializer="zeros",
                                       trainable=False)
        self.mid_max = self.add_weight(name="mid_max", shape=(), initializer="zeros",
                                       trainable=False)

    def call(self, inputs, training=None):
        mid = ops.depthwise_conv(inputs, _fake_quant_kernel(self.depthwise_kernel,
                                                            self._axis(-2)),
                                 strides=self.strides, padding=self.padding,
                                 dilation_rate=self.dilation_rate,
                                 data_format=self.data_format)
        if training:  # the same moving range as the output's (its count goes first)
            lo, hi = ops.minimum(ops.min(mid), 0.0), ops.maximum(ops.max(mid), 0.0)
            first = ops.equal(self.seen, 0.0)
            self.mid_min.assign(ops.where(first, lo, 0.99 * self.mid_min + 0.01 * lo))
            self.mid_max.assign(ops.where(first, hi, 0.99 * self.mid_max + 0.01 * hi))
        lo, hi = ops.stop_gradient(self.mid_min), ops.stop_gradient(self.mid_max)
        mid = keras.quantizers.fake_quant_with_min_max_vars(mid, lo, ops.maximum(hi, lo + 1e-6),
                                                            num_bits=8)
        x = ops.conv(mid, _fake_quant_kernel(self.pointwise_kernel, self._axis(-1)),
                     padding="valid", data_format=self.data_format)
        if self.use_bias:
            x = x + self.bias
        return self._fake_quant_output(self.activation(x), training)


class QATDense(keras.layers.Dense, _ActivationRange):
    """Dense trained with fake-quantized kernel (per output unit) and output."""

    # Dense saves only its kernel and bias: a --checkpoint-dir backup must hold the
    # activation ranges too, or the resumed fit cannot load it ("expected 5 variables").
    save_own_variables = keras.layers.Layer.save_own_variables
    load_own_variables = keras.layers.Layer.load_own_variables

    def build(self, input_shape):
        super().build(input_shape)
        self._build_range()

    def call(self, inputs, training=None):
        x = ops.matmul(inputs, _fake_quant_kernel(self.kernel, self._axis(-1)))
        if self.use_bias:
            x = x + self.bias
        return self._fake_quant_output(self.activation(x), training)


def _wrappable(layer) -> bool:
    """Whether a QAT twin reproduces ``layer`` (plain, channels-last, ungrouped)."""
    return (type(layer) in _QAT_TWINS and getattr(layer, "groups", 1) == 1
            and getattr(layer, "data_format", "channels_last") == "channels_last"
            and not getattr(layer, "quantization_mode", None))


def _names(names: list, shown: int = 4) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(f"'{n}'" for n in names[:shown]) + more or "its layers"


_QAT_TWINS = {keras.layers.Conv2D: QATConv2D, keras.layers.DepthwiseConv2D: QATDepthwiseConv2D,
              keras.layers.Dense: QATDense, keras.layers.Conv1D: QATConv1D,
              keras.layers.SeparableConv2D: QATSeparableConv2D}
#: The layer kinds QAT fake-quantizes, in words.
TWIN_KINDS = "Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D and Dense"


def qat_finetune(model, data, epochs: int = 3, learning_rate: float = 1e-4,
                 per_channel: bool = True, batch_size: int = 64, verbose: int | str = 0,
                 task=None):
    """Fold BatchNorm, fine-tune with fake quantization, return the plain folded model.

    Args:
        model: a Keras Sequential or Functional model (not modified). Its Conv1D,
            Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers are
            fake-quantized (a separable one's depthwise output too), those of nested
            Functional/Sequential models too (a base called with ``training=False``
            follows the fit, its BatchNorms frozen); layers of other kinds (and
            subclassed nested models) train in float and are listed in ``float_layers``.
        data: a :class:`compress.data.Dataset` prepared for the model; without labels
            the QAT model learns the float model's outputs (``Task.fit_to_teacher``).
        epochs: int, default 3. Fine-tuning epochs.
        learning_rate: float, default 1e-4. Adam learning rate.
        per_channel: bool, default True. Per-channel weight scales, as the converter will
            use (per-tensor if False).
        batch_size: int, default 64.
        verbose: Keras ``verbose`` for the fit, default 0.
        task: :class:`compress.task.Task` or None, default None (the model's own).

    Returns:
        ``(model, info)``: a new plain Keras model (BatchNorm folded, QAT-trained
        weights) and a dict with ``epochs``, ``folded_batchnorm``,
        ``fake_quantized_layers``, ``float_layers`` (names), ``trained_on`` (labels, or
        the float model's outputs), ``activation_ranges`` (``{layer name: (min, max)}``
        per fake-quantized layer, None where the output is a softmax or sigmoid, for
        :func:`compress.quantization.tflite.convert`), ``val_accuracy``
        and ``test_accuracy`` (the fake-quantized Keras model on the test split: what
        the int8 file should reproduce).
    """
    from compress import training

    if data is None:
        raise CompressError("QAT fine-tunes on data: pass --data NAME")
    folded, n_folded = fold_batchnorm(model)

    frozen = _frozen_batchnorms(folded)

    def twin_clone(layer):
        if not isinstance(layer, keras.layers.Layer):  # a keras.ops operation
            return graph.fresh(layer)
        twin = _QAT_TWINS.get(type(layer)) if _wrappable(layer) else None
        config, own = read_config(layer)  # its own, or read back (KerasHub's Llama decoder)
        clone = (twin or type(layer)).from_config(config)
        if not own and not twin:
            keep_config(clone, config)
        if twin:
            clone.per_channel = per_channel
        if id(layer) in frozen:  # inference mode, as the model's own call asked
            clone.trainable = False
        return clone

    # Nested models (a MobileNetV2 base under a new head) are rebuilt with their layers'
    # twins; one called with training=False follows the fit (its twins learn ranges).
    qmodel, pairs = _rebuild(folded, twin_clone, free_training=True)
    for layer, clone in pairs:
        for src, dst in zip(layer.weights, clone.weights):  # kernel, bias come first
            dst.assign(src)
    twins = [(layer, clone) for layer, clone in pairs if type(clone) in _QAT_TWINS.values()]
    # Layers with weights that train in float (the converter calibrates their outputs):
    # BatchNorms that follow no conv/Dense, other layer kinds, subclassed nested models.
    float_layers = [layer.name for layer, clone in pairs if layer.weights
                    and type(clone) not in _QAT_TWINS.values()]
    if not twins:
        raise CompressError(f"model '{model.name}': QAT fake-quantizes {TWIN_KINDS} "
                            "layers and "
                            f"it has none ({_names(float_layers)} would all train in "
                            "float); use post-training mode int8")
    names = [layer.name for layer, _ in twins]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # the learned ranges go to the converter by layer name
        raise CompressError(f"model '{model.name}': QAT needs one name per fake-quantized "
                            f"layer and {_names(twice)} names several (in nested models); "
                            "rename them, or use post-training mode int8")
    from compress.task import resolve, sample_targets

    # The model's own task (its loss, else inferred from the output), not always a classifier.
    task = task or resolve(model, y=sample_targets(data))
    labelled = bool(getattr(data, "labelled", True))
    if labelled:
        task.compile(qmodel, learning_rate=learning_rate)
        history = training.fit(qmodel, data, epochs=epochs, batch_size=batch_size,
                               verbose=verbose)
    else:  # inputs only: the float model is the teacher (as prune and hash share do)
        history = task.fit_to_teacher(qmodel, model, data, epochs=epochs,
                                      learning_rate=learning_rate, batch_size=batch_size,
                                      verbose=verbose)
    for layer, clone in pairs:
        layer.set_weights([np.asarray(w) for w in clone.weights[:len(layer.weights)]])
    ranges = {}
    for layer, clone in twins:
        act = layer.get_config().get("activation", "linear")
        lo, hi = float(clone.act_min.numpy()), float(clone.act_max.numpy())
        # A dilated convolution converts to SpaceToBatchND, CONV_2D, BatchToSpaceND, then
        # its bias and activation as ops of their own: the CONV_2D output the range would
        # go to is not the layer's output (a ReLU range clipped its negative values and a
        # TCN's int8 file doubled its MSE); the converter's calibrated ranges stay there.
        dilated = any(int(d) > 1 for d in np.ravel(getattr(layer, "dilation_rate", 1)))
        ranges[layer.name] = None if act in ("softmax", "sigmoid") or dilated \
            else (lo, max(hi, lo + 1e-6))
        if isinstance(clone, QATSeparableConv2D):  # its DEPTHWISE_CONV_2D's own output
            lo, hi = float(clone.mid_min.numpy()), float(clone.mid_max.numpy())
            ranges[f"{layer.name}/depthwise"] = None if dilated else (lo, max(hi, lo + 1e-6))
    info = {"epochs": epochs, "trained_on": "labels" if labelled else
            "the float model's outputs (the data has no labels)",
            "folded_batchnorm": n_folded,
            "fake_quantized_layers": len(twins), "float_layers": float_layers,
            "activation_ranges": ranges,
            "val_accuracy": float(history.history.get("val_accuracy", [float("nan")])[-1]),
            "test_accuracy": None}
    from compress.data.streaming import has_samples

    if getattr(data, "labelled", False) and has_samples(data, "test"):  # batch by batch
        info.update({f"test_{k}": v for k, v in task.evaluate_data(qmodel, data, "test")
                     .items() if k != "metrics"})
    if not task.is_classifier or not labelled:  # accuracy means nothing here
        info.pop("val_accuracy")
        info.pop("test_accuracy", None)
    note = float_share_note([la for la, _ in pairs if la.name in float_layers],
                            [la for la, _ in twins])
    if note:
        info["float_note"] = note
    return folded, info


def float_share_note(float_layers: list, fake_quantized: list) -> str | None:
    """A warning when the layers that trained in float hold a tenth or more of the
    weight-matrix values (an LSTM, an Embedding, a subclassed nested model): QAT then
    taught little of the model to live with int8, which the converter applies to those
    layers post-training.

    >>> import keras
    >>> lstm, head = keras.layers.LSTM(8, name="lstm"), keras.layers.Dense(2)
    >>> _ = keras.Sequential([keras.Input((5, 3)), lstm, head])
    >>> float_share_note([lstm], [head])
    "'lstm' (352 of the 368 weight-matrix values) trained in float: QAT fake-quantizes Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers (not inside wrappers or subclassed models); the converter quantizes the others post-training, as mode int8 does"
    """
    def matrices(layer):
        return sum(int(np.prod(w.shape)) for w in layer.trainable_weights
                   if sum(int(d) > 1 for d in w.shape) >= 2)

    left = {la.name: matrices(la) for la in float_layers}
    left = {k: v for k, v in left.items() if v}
    total = sum(left.values()) + sum(matrices(la) for la in fake_quantized)
    if not left or sum(left.values()) < 0.1 * total:
        return None
    return (f"{_names(list(left))} ({sum(left.values()):,} of the {total:,} weight-matrix "
            f"values) trained in float: QAT fake-quantizes {TWIN_KINDS} "
            "layers (not inside wrappers or subclassed models); the "
            "converter quantizes the others post-training, as mode int8 does")
