"""Structured pruning: remove whole units, filters and channels and rebuild smaller layers.

Every producer of channels (``Dense``, ``Conv1D/2D/3D``, ``SeparableConv*``) gets a
channel group. Groups flow through channel-preserving layers (activations,
normalization, pooling, dropout, depthwise convolutions); ``Add``/``Multiply``-style
merges join the groups of their inputs (channels that must stay aligned are pruned
together), ``Concatenate`` stacks them, ``Flatten`` maps each channel to its positions.
Groups that reach a model output or an unknown layer are kept whole. The lowest-scoring
channels of each group are removed (score: unit L1/L2 norm, or OBD saliency summed over
the unit, over every producer in the group) and the model is rebuilt with smaller
layers and sliced weights: a smaller plain Keras model, faster at batch 1.

Example:

>>> small, info = prune_units(model, 0.5)    # doctest: +SKIP
>>> info["units"]                            # doctest: +SKIP
{'conv1': [32, 16], 'conv2': [64, 32], 'conv3': [64, 32]}
"""

from __future__ import annotations

import numpy as np

from compress.errors import CompressError
from compress.layers import select_layers
from compress.pruning.criteria import criterion, unit_scores

PRODUCERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D")
PRESERVING = ("BatchNormalization", "LayerNormalization", "Activation", "ReLU", "LeakyReLU",
              "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
              "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "MaxPooling1D",
              "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
              "AveragePooling3D", "GlobalAveragePooling1D", "GlobalAveragePooling2D",
              "GlobalAveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
              "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
              "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D", "Cropping2D",
              "Cropping3D", "DepthwiseConv1D", "DepthwiseConv2D", "Identity",
              "ActivityRegularization")
MERGES = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average")


class _Groups:
    """Union-find over channel groups; a group marked fixed is never pruned."""

    def __init__(self):
        self.parent, self.fixed, self.size = {}, set(), {}

    def new(self, key, size):
        self.parent[key], self.size[key] = key, size
        return key

    def find(self, key):
        while self.parent[key] != key:
            self.parent[key] = self.parent[self.parent[key]]
            key = self.parent[key]
        return key

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.fixed:
                self.fixed.add(ra)

    def fix(self, key):
        self.fixed.add(self.find(key))


def _segments_fix(groups, segs):
    for g, _ in segs:
        if g is not None:
            groups.fix(g)


def _graph(model):
    """``(layers in order, {layer name: [input layer names]}, output layer names)``."""
    import keras

    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
        inbound, prev = {}, None
        for layer in layers:
            inbound[layer.name] = [prev] if prev else ["__input__"]
            prev = layer.name
        return layers, inbound, [layers[-1].name]
    layers = [la for la in model.layers if type(la).__name__ != "InputLayer"]
    inbound = {}
    for layer in layers:
        nodes = layer._inbound_nodes
        if len(nodes) != 1:
            raise CompressError(f"structured pruning: layer '{layer.name}' is used "
                                f"{len(nodes)} times (shared layers are not supported)")
        names = []
        for t in nodes[0].input_tensors:
            op = t._keras_history.operation
            names.append("__input__" if type(op).__name__ == "InputLayer" else op.name)
        inbound[layer.name] = names
    outputs = [t._keras_history.operation.name for t in model.outputs]
    return layers, inbound, outputs


def _channels(layer):
    shape = layer.output.shape if hasattr(layer, "output") else None
    return int(shape[-1])


def prune_units(model, fraction: float, method: str = "magnitude", calibration=None,
                estimator: str = "backprop", norm: str = "l2", layers=None, seed: int = 0):
    """Remove ``fraction`` of the units/filters of each prunable group and rebuild.

    Args:
        model: a Sequential or functional Keras model (single input); not modified.
        fraction: float in [0, 1). Fraction of each group's channels removed (at least one
            channel is kept).
        method: str, default ``"magnitude"`` (unit norm) or ``"obd"`` (summed saliency):
            a criterion of :mod:`compress.pruning.criteria`, scored per unit by
            :func:`~compress.pruning.criteria.unit_scores`.
        calibration: ``(x, y)`` for OBD, default None.
        estimator: str, default ``"backprop"``. OBD Hessian-diagonal estimator.
        norm: str, default ``"l2"``; or ``"l1"``, or ``"bn"``: the L1 norm times the
            scale ``|gamma| / sqrt(var + eps)`` of a BatchNormalization reading the layer
            directly (the channel's effective output scale; L1 alone without one).
        layers: list of str or None. Producers to prune (names, class names or regular
            expressions matching the whole name, see :func:`compress.layers.select_layers`);
            None means all that can be.
        seed: int, default 0. Seed of randomized OBD estimators.

    Returns:
        ``(new_model, info)`` with ``info["units"] = {layer: [before, after]}``.
    """
    import keras

    if not 0.0 <= fraction < 1.0:
        raise CompressError(f"structured pruning: fraction must be in [0, 1), got {fraction}")
    if criterion(method).needs_data and calibration is None:
        raise CompressError(f"structured pruning: {method} needs calibration data")
    if len(model.inputs) != 1:
        raise CompressError(f"structured pruning: model '{model.name}' must have one input")
    order, inbound, outputs = _graph(model)
    {la.name: la for la in order}
    groups = _Groups()
    out_segs = {"__input__": [(None, int(model.inputs[0].shape[-1]))]}
    flat_of = {}  # layer name -> spatial size S when its input was flattened
    in_segs = {}
    for layer in order:
        kind = type(layer).__name__
        ins = [out_segs[n] for n in inbound[layer.name]]
        in_segs[layer.name] = ins
        if kind in PRODUCERS:
            out_segs[layer.name] = [(groups.new(layer.name, _channels(layer)), _channels(layer))]
        elif kind in PRESERVING:
            out_segs[layer.name] = ins[0]
        elif kind in MERGES:
            base = ins[0]
            for other in ins[1:]:
                if [n for _, n in other] != [n for _, n in base]:
                    for s in ins:
                        _segments_fix(groups, s)
                    break
                for (ga, _), (gb, _) in zip(base, other):
                    if ga is None or gb is None:
                        for g in (ga, gb):
                            if g is not None:
                                groups.fix(g)
                    else:
                        groups.union(ga, gb)
            out_segs[layer.name] = base
        elif kind == "Concatenate" and layer.axis in (-1, len(layer.output.shape) - 1):
            out_segs[layer.name] = [s for segs in ins for s in segs]
        elif kind == "Flatten":
            shape = layer.input.shape if not isinstance(layer.input, list) else None
            if shape is None or any(d is None for d in shape[1:]):
                _segments_fix(groups, ins[0])
                out_segs[layer.name] = [(None, _channels(layer))]
            else:
                flat_of[layer.name] = int(np.prod(shape[1:-1]))
                out_segs[layer.name] = [("flat", layer.name)]
        else:
            for s in ins:
                _segments_fix(groups, [x for x in s if x[0] != "flat"])
                for x in s:
                    if x[0] == "flat":
                        _segments_fix(groups, out_segs_of_flat(in_segs, x[1]))
            out_segs[layer.name] = [(None, _channels(layer))]
    for name in outputs:
        segs = out_segs[name]
        if segs and segs[0][0] == "flat":
            segs = out_segs_of_flat(in_segs, segs[0][1])
        _segments_fix(groups, segs)

    producers = [la for la in order if type(la).__name__ in PRODUCERS]
    if layers:
        chosen = {p.name for p in select_layers(producers, layers, "unit-producing",
                                                model.name)}
        for p in producers:
            if p.name not in chosen:
                groups.fix(p.name)

    # Score channels per group root, by the criterion (summed over a group's producers).
    kernels = [_out_kernel(p) for p in producers]
    unit = dict(zip((p.name for p in producers),
                    unit_scores(model, kernels, method, calibration, estimator, norm, seed)))
    scores = {}
    for p in producers:
        root = groups.find(p.name)
        if root in groups.fixed:
            continue
        s = unit[p.name]
        if method == "magnitude" and norm == "bn":
            s = s * _bn_scale(p, order, inbound, len(s))
        scores[root] = scores.get(root, 0) + s
    keep = {}
    for root, s in scores.items():
        n = len(s)
        k = max(1, n - round(fraction * n))
        keep[root] = np.sort(np.argsort(-s, kind="stable")[:k])
    if not keep:
        raise CompressError(f"structured pruning: model '{model.name}' has no units that can "
                            "be removed (every channel group reaches an output or an "
                            "unsupported layer)")

    def kept(seg_list):
        idx, off = [], 0
        for g, n in seg_list:
            r = groups.find(g) if g is not None else None
            idx.extend((keep[r] if r in keep else np.arange(n)) + off)
            off += n
        return np.asarray(idx, dtype="int64")

    def in_index(name):
        segs = in_segs[name][0]
        if segs and segs[0][0] == "flat":
            inner = out_segs_of_flat(in_segs, segs[0][1])
            c = sum(n for _, n in inner)
            ch = kept(inner)
            spatial = flat_of[segs[0][1]]
            return (np.arange(spatial)[:, None] * c + ch[None, :]).reshape(-1)
        return kept(segs)

    new_units = {}
    for p in producers:
        root = groups.find(p.name)
        if root in keep:
            new_units[p.name] = len(keep[root])

    def clone(layer):
        config = layer.get_config()
        if layer.name in new_units:
            config["units" if "units" in config else "filters"] = new_units[layer.name]
        return layer.__class__.from_config(config)

    new = keras.models.clone_model(model, clone_function=clone)
    for layer in order:
        target = new.get_layer(layer.name)
        weights = layer.get_weights()
        if not weights:
            continue
        kind = type(layer).__name__
        idx_in = in_index(layer.name)
        root = groups.find(layer.name) if kind in PRODUCERS else None
        idx_out = keep.get(root) if root is not None else None
        out = []
        for w, var in zip(weights, layer.weights):
            vname = var.name.split("/")[-1]
            if kind in PRODUCERS:
                if vname in ("kernel", "pointwise_kernel"):
                    w = np.take(w, idx_in, axis=-2)  # (..., in, out)
                    if idx_out is not None:
                        w = np.take(w, idx_out, axis=-1)
                elif vname == "depthwise_kernel":
                    w = np.take(w, idx_in, axis=-2)
                elif vname == "bias" and idx_out is not None:
                    w = np.take(w, idx_out, axis=-1)
            elif kind in PRESERVING:
                if vname == "depthwise_kernel" or (kind.startswith("Depthwise") and
                                                   vname == "kernel"):
                    w = np.take(w, idx_in, axis=-2)
                elif w.ndim >= 1 and w.shape[-1] == sum(n for _, n in in_segs[layer.name][0]
                                                        if isinstance(n, int)):
                    w = np.take(w, idx_in, axis=-1)
            out.append(w)
        target.set_weights(out)
    before = {p.name: _channels(p) for p in producers}
    info = {"structured": True, "fraction": fraction,
            "units": {n: [before[n], new_units.get(n, before[n])] for n in before},
            "params_before": int(model.count_params()), "params_after": int(new.count_params())}
    return new, info


def out_segs_of_flat(in_segs, flatten_name):
    """The channel segments entering the Flatten layer ``flatten_name``."""
    return in_segs[flatten_name][0]


def _out_kernel(layer):
    for attr in ("kernel", "pointwise_kernel"):
        var = getattr(layer, attr, None)
        if var is not None:
            return var
    raise CompressError(f"layer '{layer.name}' has no kernel")


def _bn_scale(producer, order, inbound, n):
    """``|gamma| / sqrt(moving_var + eps)`` of the BatchNorm fed directly by ``producer``."""
    for layer in order:
        if type(layer).__name__ == "BatchNormalization" and \
                inbound.get(layer.name) == [producer.name]:
            scale = 1.0 / np.sqrt(np.asarray(layer.moving_variance, "float64") + layer.epsilon)
            if layer.scale:
                scale = scale * np.abs(np.asarray(layer.gamma, "float64"))
            if scale.shape == (n,):
                return scale
    return np.ones(n)
