"""Structured pruning: remove whole units, filters and channels and rebuild smaller layers.

The model's operation graph (:mod:`compress.pruning.graph`, nested models walked into)
becomes a dependency graph of channel groups, as in Torch-Pruning: every producer of
channels (``Dense``, ``Conv1D/2D/3D``, ``SeparableConv*``, ``Conv*Transpose``, the
dimensions of an ``Embedding``'s vectors, and the
units of ``LSTM``/``GRU``/``SimpleRNN`` layers, each unit's columns in every gate and its
row of the recurrent kernel, and of each direction of a ``Bidirectional`` one) starts a
group; groups flow
through channel-wise layers and ops (activations, ``keras.ops`` elementwise functions,
Batch/LayerNormalization, GroupNormalization (whole groups of channels at a time),
pooling, dropout, depthwise and channel-grouped convolutions, layer scale,
channel-preserving ``Reshape``); residual ``Add``/``Subtract``/``Multiply``
(squeeze-and-excitation) merges join the groups of their inputs, so channels that must
stay aligned are removed together; ``Concatenate`` stacks them and ``Flatten`` maps each
channel to its positions. A layer called several times (a Siamese tower, a shared head)
loses the same units in every call, and the inputs of all its calls are aligned. A
``Dense`` acting on the last axis of a 4-D tensor (ConvNeXt's
pointwise layers) is a producer like any other. Groups that reach a model output or a
layer that cannot be resized are kept whole, and ``info["not_pruned"]`` names each such
producer and why: nothing is skipped silently. The lowest-scoring channels of each group
are removed (score: unit L1/L2 norm, or OBD saliency summed over the unit, over every
producer in the group) and the model is rebuilt with smaller layers and sliced weights,
nesting kept: a smaller plain Keras model, faster at batch 1. In transformers
(``MultiHeadAttention``, KerasHub's BERT/GPT-2/ViT blocks) the hidden width stays and
whole attention heads and feed-forward units go instead (:mod:`compress.pruning.attention`;
``info["heads"]`` and ``info["ffn_units"]`` give ``[before, after]`` per layer).

Example:

>>> small, info = prune_units(model, 0.5)    # doctest: +SKIP
>>> info["units"]                            # doctest: +SKIP
{'conv1': [32, 16], 'conv2': [64, 32], 'conv3': [64, 32]}
>>> info["not_pruned"]                       # doctest: +SKIP
{'reaches the model output': ['predictions']}
"""

from __future__ import annotations

import numpy as np

from compress.errors import CompressError
from compress.layers import select_layers
from compress.pruning import attention
from compress.pruning.criteria import criterion, unit_scores
from compress.pruning.graph import fresh, rebuild, trace

TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")  # kernel (..., out, in)
#: Recurrent layers and their gates: a unit's columns are one per gate in the input and
#: recurrent kernels (``(in, gates * units)``), and its row of the recurrent kernel.
RECURRENT = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
PRODUCERS = ("Dense", "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D",
             "SeparableConv2D", "Embedding") + TRANSPOSED + tuple(RECURRENT)
PRESERVING = ("BatchNormalization", "Activation", "ReLU", "LeakyReLU",
              "PReLU", "ELU", "Softmax", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
              "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout",
              "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
              "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
              "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
              "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D",
              "ZeroPadding3D", "UpSampling1D", "UpSampling2D", "UpSampling3D", "Cropping1D",
              "Cropping2D", "Cropping3D", "Identity", "ActivityRegularization",
              "StochasticDepth", "LayerScale", "LayerNormalization")
# keras.ops functions applied elementwise (one tensor in, same shape out).
ELEMENTWISE_OPS = ("Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "HardSwish", "Silu",
                   "Swish", "Gelu", "Elu", "Selu", "LeakyRelu", "Softplus", "Softsign",
                   "Mish", "LogSigmoid", "Tanh", "Abs", "Absolute", "Negative", "Exp",
                   "Log", "Sqrt", "Square", "Clip", "Cast", "Sign", "Sin", "Cos", "Erf",
                   "Identity", "Reciprocal", "Rsqrt", "Softmax")
MERGES = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average", "Divide",
          "TrueDivide")
CHANNEL_CONFIG = {"LayerScale": "projection_dim"}  # config keys holding the channel count


class _Groups:
    """Union-find over channel groups; a fixed group is never pruned (with the reason)."""

    def __init__(self):
        self.parent, self.reason = {}, {}
        self.block = {}  # root -> channels that go together (a GroupNormalization's group)

    def new(self, key):
        self.parent[key] = key
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
            if rb in self.reason and ra not in self.reason:
                self.reason[ra] = self.reason[rb]
            if rb in self.block:
                self.require_block(ra, self.block.pop(rb))

    def require_block(self, key, size: int):
        """Channels of ``key``'s group go ``size`` at a time (whole normalization groups)."""
        root = self.find(key)
        if self.block.setdefault(root, size) != size:
            self.fix(root, "feeds GroupNormalization layers of different group sizes")

    def fix(self, key, reason):
        self.reason.setdefault(self.find(key), reason)

    def fixed(self, key):
        return self.find(key) in self.reason


class _Flat:
    """The segments of a tensor flattened by ``Flatten``: ``spatial`` positions each."""

    def __init__(self, segs, spatial):
        self.segs, self.spatial = segs, spatial


def _fix_all(groups, segs, reason):
    for s in segs:
        if isinstance(s, _Flat):
            _fix_all(groups, s.segs, reason)
        elif s[0] is not None:
            groups.fix(s[0], reason)


def _last(shape):
    return int(shape[-1]) if shape and shape[-1] is not None else 0


def _kind(op):
    return type(op).__name__


def _is_depthwise(op, in_ch):
    """Channel ``i`` out depends on channel ``i`` in only (multiplier 1, or groups == C)."""
    kind = _kind(op)
    if kind.startswith("DepthwiseConv"):
        return op.depth_multiplier == 1
    return (kind in ("Conv1D", "Conv2D", "Conv3D") and getattr(op, "groups", 1) > 1
            and op.groups == in_ch == op.filters)


def _normalizes_channels(op, rank: int) -> bool:
    """A Batch/LayerNormalization over the last axis (others are not channel-wise here)."""
    axis = getattr(op, "axis", None)
    if _kind(op) == "LayerNormalization":
        return list(axis) in ([-1], [rank - 1])
    if _kind(op) == "BatchNormalization":
        return axis in (-1, rank - 1)
    return True


def _analyse(t, groups, layer_of, skipped=None):
    """Channel segments of every tensor; fixes groups that cannot be resized. Layers of a
    producing kind that are not resized are added to ``skipped`` (reason -> names)."""
    segs = {k: [(None, _last(t.shape[k]))] for k in t.inputs}
    first_in = {}  # a shared producer's first call's input segments
    uses = {}
    for step in t.steps:
        uses[id(step.op)] = uses.get(id(step.op), 0) + 1
    for step in t.steps:
        op, kind = step.op, _kind(step.op)
        ins = [segs[k] for k in step.inputs]
        out_shape = t.shape[step.outputs[0]] if step.outputs else None
        c_out = _last(out_shape)
        in_ch = _last(t.shape[step.inputs[0]]) if step.inputs else 0
        name = getattr(op, "name", kind)
        weighted = bool(getattr(op, "weights", None))
        out = None
        shared = weighted and uses[id(op)] > 1
        reason = (f"feeds '{name}', a layer used {uses[id(op)]} times (shared)" if shared
                  else f"feeds '{name}' ({kind}), which structured pruning cannot resize")
        if not shared and attention.is_transformer(op):
            reason = (f"feeds '{name}' ({kind}), whose hidden width stays (its heads and "
                      "feed-forward units are pruned instead)")
        if shared and kind in PRODUCERS and kind not in RECURRENT and len(ins) == 1 and \
                len(step.outputs) == 1 and getattr(op, "groups", 1) == 1 and \
                getattr(op, "data_format", "channels_last") != "channels_first" and \
                layer_of.get(op.name, op) is op:
            # A layer called several times (a Siamese tower): one group for its units in
            # every call, and every call's input channels aligned with the first call's
            out = _shared_call(groups, first_in, op, ins[0], c_out, name)
            if out is not None:
                layer_of[op.name] = op
        elif shared:
            pass  # one layer, several inputs: their channels cannot be resized apart
        elif kind in PRODUCERS and (len(ins) == 1 or _masked_recurrent(step)) and \
                getattr(op, "groups", 1) == 1 and \
                getattr(op, "data_format", "channels_last") != "channels_first" and \
                not getattr(op, "stateful", False) and \
                len(step.outputs) == 1 and layer_of.get(op.name, op) is op:
            layer_of[op.name] = op
            out = [(groups.new(op.name), c_out)]
        elif _bidirectional(step) and layer_of.get(f"{name}/forward", op) is op:
            out = []
            for key, inner in _directions(op):
                layer_of[key] = inner
                out.append((groups.new(key), int(inner.units)))
            if op.merge_mode != "concat":  # sum, ave, mul: the directions' units align
                groups.union(out[0][0], out[1][0])
                out = out[:1]
        elif kind == "GroupNormalization" and len(ins) == 1 and c_out == in_ch and \
                getattr(op, "axis", -1) in (-1, len(out_shape) - 1) and len(ins[0]) == 1 and \
                not isinstance(ins[0][0], _Flat):
            if ins[0][0][0] is not None:  # whole groups of channels are removed together
                groups.require_block(ins[0][0][0], in_ch // op.groups)
            out = ins[0]
        elif (len(ins) == 1 or (kind in PRESERVING and _has_mask(step))) and (
                _is_depthwise(op, in_ch) or kind in PRESERVING or (
                kind in ELEMENTWISE_OPS and out_shape == t.shape[step.inputs[0]])):
            # (a pooling or dropout layer given a mask as well: still channel by channel)
            if c_out == in_ch and _normalizes_channels(op, len(out_shape)):
                out = ins[0]
        elif kind in MERGES and ins:
            out = _merge(groups, step, ins, t, c_out, name)
        elif kind == "Concatenate" and getattr(op, "axis", None) in (-1, len(out_shape) - 1):
            if all(not any(isinstance(s, _Flat) for s in x) for x in ins):
                out = [s for x in ins for s in x]
        elif kind == "Flatten" and len(ins) == 1 and not any(isinstance(s, _Flat) for s in ins[0]):
            shape = t.shape[step.inputs[0]]
            if all(d is not None for d in shape[1:]):
                out = [_Flat(ins[0], int(np.prod(shape[1:-1])))]
        elif kind == "Reshape" and len(ins) == 1 and in_ch == c_out and \
                tuple(op.target_shape)[-1] == in_ch and \
                not any(isinstance(s, _Flat) for s in ins[0]):
            out = ins[0]
        if out is None:
            if kind in PRODUCERS and shared and op.name in groups.parent:
                groups.fix(op.name, f"used {uses[id(op)]} times (shared), its calls reading "
                           "channels laid out differently")
            elif kind in PRODUCERS and skipped is not None and shared:
                names = skipped.setdefault(f"not resized: used {uses[id(op)]} times "
                                           "(shared: every call must keep its units)", [])
                if name not in names:
                    names.append(name)
            elif kind in PRODUCERS and skipped is not None:
                why = ("channels_first data (only channels_last layers are resized)"
                       if getattr(op, "data_format", "") == "channels_first" else
                       "a grouped convolution" if getattr(op, "groups", 1) > 1 else
                       "a stateful recurrent layer" if getattr(op, "stateful", False) else
                       "several inputs or outputs")
                skipped.setdefault(f"not resized: {why}", []).append(name)
            for x in ins:
                _fix_all(groups, x, reason)
            out = [(None, c_out)]
        for k in step.outputs:
            segs[k] = out
    for k in t.outputs:
        _fix_all(groups, segs[k], "reaches the model output")
    return segs


def _bidirectional(step) -> bool:
    """A Bidirectional LSTM/GRU/SimpleRNN with one merged output, on one input (and a
    mask): its two directions' units are resized apart (concatenated) or together
    (summed, averaged, multiplied)."""
    op = step.op
    return (_kind(op) == "Bidirectional" and op.merge_mode in ("concat", "sum", "ave", "mul")
            and _kind(op.forward_layer) in RECURRENT and len(step.outputs) == 1
            and not getattr(op, "return_state", False)
            and not getattr(op.forward_layer, "stateful", False)
            and (len(step.inputs) == 1 or _has_mask(step)))


def _directions(op) -> list:
    """``[(key, layer)]`` of a Bidirectional's forward and backward layers."""
    return [(f"{op.name}/forward", op.forward_layer), (f"{op.name}/backward",
                                                      op.backward_layer)]


def _masked_recurrent(step) -> bool:
    """A recurrent layer called on its input and a mask (``Embedding(mask_zero=True)``,
    ``Masking``): the mask, per time step, holds no channels."""
    return _kind(step.op) in RECURRENT and _has_mask(step)


def _has_mask(step) -> bool:
    """Whether ``step`` has two inputs, the second its ``mask`` argument."""
    return len(step.inputs) == 2 and \
        getattr(step.kwargs.get("mask"), "shape", None) is not None


def _shared_call(groups, first_in, op, seg_in, c_out, name):
    """The output segments of one call of a producer called several times: its units are
    one group whatever the call (``op.name``), and the input channels of every call are
    joined to the first call's (they meet the same kernel rows); None (the layer stays
    whole) when a call's input is flattened or laid out otherwise than the first's."""
    if any(isinstance(s, _Flat) for s in seg_in):
        return None
    if id(op) not in first_in:
        first_in[id(op)] = seg_in
        return [(groups.new(op.name), c_out)]
    base = first_in[id(op)]
    if [n for _, n in base] != [n for _, n in seg_in]:
        return None
    for (ga, _), (gb, _) in zip(base, seg_in):
        if ga is None or gb is None:
            for g in (ga, gb):
                if g is not None:
                    groups.fix(g, f"read by '{name}', a shared layer whose other call "
                               "reads channels that stay")
        else:
            groups.union(ga, gb)
    return [(op.name, c_out)]


def _merge(groups, step, ins, t, c_out, name):
    """Elementwise merge: inputs of the output's width are aligned channel by channel."""
    for a in step.args + list(step.kwargs.values()):
        shape = getattr(a, "shape", None)
        if not hasattr(a, "_keras_history") and shape is not None and len(shape) and \
                shape[-1] not in (1, None):
            return None  # a constant array per channel cannot be sliced here
    wide = [x for x, k in zip(ins, step.inputs) if _last(t.shape[k]) == c_out]
    if not wide or any(isinstance(s, _Flat) for x in wide for s in x):
        return None
    base = wide[0]
    for other in wide[1:]:
        if [n for _, n in other] != [n for _, n in base]:
            for x in wide:
                _fix_all(groups, x, f"merged in '{name}' with differently grouped channels")
            return [(None, c_out)]
        for (ga, _), (gb, _) in zip(base, other):
            if ga is None or gb is None:
                for g in (ga, gb):
                    if g is not None:
                        groups.fix(g, f"merged in '{name}' with channels that stay")
            else:
                groups.union(ga, gb)
    return base


def prune_units(model, fraction: float, method: str = "magnitude", calibration=None,
                estimator: str = "backprop", norm: str = "l2", layers=None, seed: int = 0,
                select=None):
    """Remove ``fraction`` of the units/filters of each prunable group and rebuild.

    Example:

    >>> small, info = prune_units(model, 0.3)          # doctest: +SKIP
    >>> small.output.shape == model.output.shape       # doctest: +SKIP
    True

    Args:
        model: a Sequential or functional Keras model (nested models are walked into);
            not modified.
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
        select: callable or None. ``select(trace, groups, segs, producers, keep) -> keep``
            may replace the kept channels of any group (``keep``: group root -> sorted
            indices) before the rebuild; structured OBS chooses its channels this way.

    Returns:
        ``(new_model, info)`` with ``info["units"] = {layer: [before, after]}``,
        ``info["not_pruned"] = {reason: [producer names]}`` and the same as one line in
        ``info["kept_whole"]`` (every producer left whole is named, with why).
    """
    if not 0.0 <= fraction < 1.0:
        raise CompressError(f"structured pruning: fraction must be in [0, 1), got {fraction}")
    if criterion(method).needs_data and calibration is None:
        raise CompressError(f"structured pruning: {method} needs calibration data")

    t = trace(model)
    groups, producers, skipped = _Groups(), {}, {}
    segs = _analyse(t, groups, producers, skipped)
    blocks = [s for s in t.steps if attention.rewrites(s.op)]
    chosen = None
    if layers:
        chosen = {p.name for p in select_layers(list(producers.values()) +
                                                [s.op for s in blocks
                                                 if attention.is_transformer(s.op)], layers,
                                                "unit-producing", model.name)}
        for name in producers:
            if name not in chosen:
                groups.fix(name, "not selected by --layers")
    not_pruned, plans, uses = dict(skipped), {}, {}
    sequential = _sequential_names(model)
    for step in blocks:
        uses[id(step.op)] = uses.get(id(step.op), 0) + 1
    for step in blocks:
        why = attention.why_whole(step)
        if uses[id(step.op)] > 1:
            why = f"used {uses[id(step.op)]} times (shared)"
        elif (step.scope[-1] if step.scope else model.name) in sequential:
            why = why or "inside a Sequential model (rebuilt layer by layer)"
        if chosen is not None and step.op.name not in chosen and \
                attention.is_transformer(step.op):
            why = "not selected by --layers"
        if why:
            not_pruned.setdefault(f"attention kept whole: {why}", []).append(step.op.name)
        else:
            plans[id(step.op)] = attention.Plan(step.op, fraction, "l1" if norm == "l1"
                                                else "l2")

    parts = {n: _scored_kernels(p) for n, p in producers.items()}
    flat = unit_scores(model, [v for vs in parts.values() for v, _ in vs], method,
                       calibration, estimator, norm, seed,
                       unit_axes=[a for vs in parts.values() for _, a in vs]) if parts else []
    unit, i = {}, 0
    for n, p in producers.items():
        unit[n] = _per_unit(p, flat[i:i + len(parts[n])], method, norm)
        i += len(parts[n])
    scores = {}
    for name, p in producers.items():
        if groups.fixed(name):
            continue
        s = unit[name]
        if method == "magnitude" and norm == "bn":
            s = s * _bn_scale(t, p, len(s))
        root = groups.find(name)
        scores[root] = scores.get(root, 0) + s
    keep = {}
    for root, s in scores.items():
        keep[root] = _top_channels(s, fraction, groups.block.get(root, 1))
    if select is not None:  # structured OBS (compress.pruning.structured_obs)
        keep = select(t, groups, segs, producers, keep)
        for root, b in groups.block.items():  # a selector must keep whole groups too
            if root in keep and not _whole_blocks(keep[root], b):
                raise CompressError(f"structured pruning: the channels chosen for '{root}' "
                                    f"split its GroupNormalization groups of {b}")
    for name in producers:
        if groups.fixed(name):
            not_pruned.setdefault(groups.reason[groups.find(name)], []).append(name)
    # layers with weights that no rule here resizes (a generic RNN, a custom layer): named
    unresized = list({id(s.op): s.op for s in t.steps
                      if getattr(s.op, "weights", None) and type(s.op).__name__ not in PRODUCERS
                      and type(s.op).__name__ not in PRESERVING and s.op.name not in producers
                      and not type(s.op).__name__.startswith("Depthwise")  # channel-wise
                      and not type(s.op).__name__.endswith("Normalization")
                      and not attention.is_transformer(s.op)}.values())
    other = [f"{op.name} ({type(op).__name__})" for op in unresized]
    if not keep and not plans:
        why = "; ".join(f"{reason}: {', '.join(names[:3])}"
                        for reason, names in list(not_pruned.items())[:3]) or "no producers"
        if other:
            why += f"; layers it does not resize: {', '.join(other[:3])}"
        raise CompressError(f"structured pruning: model '{model.name}' has no units that can "
                            f"be removed ({why})")

    def kept(seg_list):
        return kept_indices(seg_list, groups, keep)

    new_units = {n: len(keep[groups.find(n)]) for n in producers
                 if groups.find(n) in keep}
    step_of = {id(s.op): s for s in t.steps}

    def make_layer(op):
        if id(op) in plans:
            return plans[id(op)].make()
        step = step_of.get(id(op))
        if step is None or not hasattr(op, "get_config") or op.name not in new_units and \
                type(op).__module__.startswith("keras_hub"):  # a block kept whole
            return fresh(op)  # (KerasHub's Llama decoder: read back, see layer_config)
        config = op.get_config()
        kind = _kind(op)
        in_new = len(kept(segs[step.inputs[0]])) if step.inputs else None
        if kind == "Bidirectional" and any(k in new_units for k, _ in _directions(op)):
            for (key, inner), part in zip(_directions(op), ("layer", "backward_layer")):
                config[part]["config"]["units"] = new_units.get(key, inner.units)
                config[part].pop("build_config", None)  # built on the new inputs instead
        elif op.name in new_units:
            config[next(k for k in ("units", "filters", "output_dim") if k in config)] = \
                new_units[op.name]
        elif step.inputs and _is_depthwise(op, _last(t.shape[step.inputs[0]])) and \
                not kind.startswith("Depthwise"):
            config["filters"] = config["groups"] = in_new
        elif kind == "Reshape" and step.inputs:
            config["target_shape"] = tuple(config["target_shape"][:-1]) + (in_new,)
        elif kind in CHANNEL_CONFIG and step.inputs:
            config[CHANNEL_CONFIG[kind]] = in_new
        elif kind == "GroupNormalization" and step.inputs:
            config["groups"] = in_new // (_last(t.shape[step.inputs[0]]) // op.groups)
        else:
            return fresh(op)
        return op.__class__.from_config(config)

    new, mapping = rebuild(model, make_layer)
    if getattr(model, "compiled", False):  # keep the model's own loss, as clone_model does
        new.compile_from_config(model.get_compile_config())
    for step in t.steps:
        op = step.op
        if not getattr(op, "weights", None) or id(op) not in mapping or id(op) in plans:
            continue
        idx_in = kept(segs[step.inputs[0]]) if step.inputs else None
        if _kind(op) == "Bidirectional" and f"{op.name}/forward" in producers:
            out = [w for key, inner in _directions(op) for w in _sliced_recurrent(
                inner, idx_in, keep.get(groups.find(key)))]
        else:
            out = _sliced(op, idx_in, keep.get(groups.find(op.name)) if op.name in producers
                          else None, _last(t.shape[step.inputs[0]]) if step.inputs else 0)
        mapping[id(op)].set_weights(out)
    heads, ffn_units = {}, {}
    for plan in plans.values():
        plan.load()
        heads.update(plan.heads)
        ffn_units.update(plan.ffn_units)
    units = {}
    for n, p in producers.items():
        before = _last(t.shape[step_of[id(p)].outputs[0]]) if id(p) in step_of \
            else int(p.units)  # a Bidirectional's direction
        units[n] = [before, new_units.get(n, before)]
    info = {"structured": True, "fraction": fraction, "units": units,
            "params_before": int(model.count_params()), "params_after": int(new.count_params())}
    if plans:
        info["heads"], info["ffn_units"] = heads, ffn_units
        if method != "magnitude":
            info["heads_scored_by"] = "weight norm (OBD scores the channel groups only)"
    held = sum(int(op.count_params()) for op in unresized)
    if held >= 0.1 * max(info["params_before"], 1):  # most of the model may be out of reach
        info["not_resized"] = (f"{', '.join(other[:4])}{' ...' if len(other) > 4 else ''}: "
                               f"{held:,} of the {info['params_before']:,} parameters, in "
                               "layers structured pruning has no rule to resize")
    if not_pruned:
        info["not_pruned"] = not_pruned
        info["kept_whole"] = "; ".join(
            f"{len(names)} ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}): "
            f"{reason}" for reason, names in not_pruned.items())
    return new, info



def _top_channels(scores: np.ndarray, fraction: float, block: int = 1) -> np.ndarray:
    """The sorted indices of the channels kept: the best-scoring ``1 - fraction`` of them,
    ``block`` at a time (whole normalization groups, by their summed score).

    >>> _top_channels(np.array([1.0, 5.0, 2.0, 4.0]), 0.5).tolist()
    [1, 3]
    >>> _top_channels(np.array([1.0, 5.0, 2.0, 4.0]), 0.5, block=2).tolist()  # 6 vs 6: first
    [0, 1]
    """
    n = len(scores)
    if block > 1 and n % block == 0:
        per = np.asarray(scores, "float64").reshape(n // block, block).sum(axis=1)
        kept = _top_channels(per, fraction)
        return (kept[:, None] * block + np.arange(block)).reshape(-1)
    k = max(1, n - round(fraction * n))
    return np.sort(np.argsort(-scores, kind="stable")[:k])


def _whole_blocks(indices, block: int) -> bool:
    """Whether ``indices`` (sorted) are whole consecutive blocks of ``block`` channels."""
    idx = np.asarray(indices).reshape(-1)
    if block <= 1:
        return True
    if len(idx) % block:
        return False
    rows = idx.reshape(-1, block)
    return bool(np.all(rows[:, 0] % block == 0) and np.all(np.diff(rows, axis=1) == 1))


def kept_indices(seg_list, groups, keep) -> np.ndarray:
    """The kept input-channel indices of a tensor made of ``seg_list`` (groups and flattened
    spatial segments), given ``keep`` (group root -> kept channel indices)."""
    idx, off = [], 0
    for s in seg_list:
        if isinstance(s, _Flat):
            c = sum(n for _, n in s.segs)
            ch = kept_indices(s.segs, groups, keep)
            idx.extend((np.arange(s.spatial)[:, None] * c + ch[None, :]).reshape(-1) + off)
            off += s.spatial * c
            continue
        g, n = s
        r = groups.find(g) if g is not None else None
        idx.extend((keep[r] if r in keep else np.arange(n)) + off)
        off += n
    return np.asarray(idx, dtype="int64")

def _sequential_names(model) -> set:
    """Names of the Sequential models in ``model``'s nest (``model`` included)."""
    import keras

    names = {model.name} if isinstance(model, keras.Sequential) else set()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names |= _sequential_names(layer)
    return names


def _sliced(op, idx_in, idx_out, in_ch):
    """``op``'s weights with input channels ``idx_in`` and output units ``idx_out`` kept."""
    kind = _kind(op)
    if kind in RECURRENT:
        return _sliced_recurrent(op, idx_in, idx_out)
    out = []
    for w, var in zip(op.get_weights(), op.weights):
        vname = var.name.split("/")[-1]
        if kind in PRODUCERS and not _is_depthwise(op, in_ch):
            if vname == "pointwise_kernel" and op.depth_multiplier > 1:
                m = op.depth_multiplier
                w = np.take(w, (idx_in[:, None] * m + np.arange(m)).reshape(-1), axis=-2)
                w = np.take(w, idx_out, axis=-1) if idx_out is not None else w
            elif vname == "kernel" and kind in TRANSPOSED:  # (..., out, in)
                w = np.take(w, idx_in, axis=-1)
                if idx_out is not None:
                    w = np.take(w, idx_out, axis=-2)
            elif vname in ("kernel", "pointwise_kernel"):
                w = np.take(w, idx_in, axis=-2)  # (..., in, out)
                if idx_out is not None:
                    w = np.take(w, idx_out, axis=-1)
            elif vname == "depthwise_kernel":
                w = np.take(w, idx_in, axis=-2)
            elif vname in ("bias", "embeddings") and idx_out is not None:
                w = np.take(w, idx_out, axis=-1)
        elif vname == "depthwise_kernel" or (kind.startswith("Depthwise") and vname == "kernel"):
            w = np.take(w, idx_in, axis=-2)
        elif w.ndim >= 1 and w.shape[-1] == in_ch:
            w = np.take(w, idx_in, axis=-1)
        out.append(w)
    return out


def _sliced_recurrent(op, idx_in, idx_out) -> list:
    """An LSTM/GRU/SimpleRNN's weights with input channels ``idx_in`` and units
    ``idx_out`` (None: all) kept: the kernel's rows and, in every gate, the unit's
    columns; the recurrent kernel's rows and columns; the bias's columns (a GRU's
    ``(2, 3 * units)`` bias too).

    >>> import keras
    >>> lstm = keras.layers.LSTM(3)
    >>> _ = keras.Sequential([keras.Input((4, 2)), lstm])
    >>> [w.shape for w in _sliced_recurrent(lstm, np.arange(2), np.array([0, 2]))]
    [(2, 8), (2, 8), (8,)]
    """
    gates, units = RECURRENT[_kind(op)], op.units
    cols = np.arange(units) if idx_out is None else np.asarray(idx_out)
    gated = (np.arange(gates)[:, None] * units + cols[None, :]).reshape(-1)
    out = []
    for w, var in zip(op.get_weights(), op.weights):
        vname = var.name.split("/")[-1]
        if vname == "kernel" and idx_in is not None:
            w = np.take(w, idx_in, axis=0)
        elif vname == "recurrent_kernel":
            w = np.take(w, cols, axis=0)
        out.append(np.take(w, gated, axis=-1))
    return out


def _scored_kernels(layer) -> list:
    """``[(variable, unit axis)]`` whose saliencies score ``layer``'s units: its kernel;
    a recurrent layer's input and recurrent kernels (columns, one per gate) and its
    recurrent kernel's rows (what the unit feeds back)."""
    if _kind(layer) in RECURRENT:
        cell = layer.cell
        return [(cell.kernel, -1), (cell.recurrent_kernel, -1), (cell.recurrent_kernel, 0)]
    return [(_out_kernel(layer), unit_axis(layer))]


def _per_unit(layer, parts: list, method: str, norm: str) -> np.ndarray:
    """One score per unit from the per-column (and per-row) scores of
    :func:`_scored_kernels`: a recurrent layer's gates and kernels combined as the unit
    norm (``l2`` magnitude) or summed."""
    if _kind(layer) not in RECURRENT:
        return parts[0]
    units = layer.units
    pieces = [np.asarray(p, "float64").reshape(-1, units) for p in parts]
    stacked = np.concatenate(pieces, axis=0)
    if method == "magnitude" and norm == "l2":
        return np.sqrt((stacked ** 2).sum(axis=0))
    return stacked.sum(axis=0)


def unit_axis(layer) -> int:
    """The axis of ``layer``'s kernel that holds its output units (``-1``; ``-2`` for a
    transposed convolution, whose kernel is ``(..., filters, input channels)``)."""
    return -2 if _kind(layer) in TRANSPOSED else -1


def _out_kernel(layer):
    for attr in ("kernel", "pointwise_kernel", "embeddings"):
        var = getattr(layer, attr, None)
        if var is not None:
            return var
    raise CompressError(f"layer '{layer.name}' has no kernel")


def _bn_scale(t, producer, n):
    """``|gamma| / sqrt(moving_var + eps)`` of the BatchNorm fed directly by ``producer``."""
    out = next((s.outputs[0] for s in t.steps if s.op is producer), None)
    for step in t.consumers.get(out, []) if out is not None else []:
        layer = step.op
        if _kind(layer) == "BatchNormalization":
            scale = 1.0 / np.sqrt(np.asarray(layer.moving_variance, "float64") + layer.epsilon)
            if layer.scale:
                scale = scale * np.abs(np.asarray(layer.gamma, "float64"))
            if scale.shape == (n,):
                return scale
    return np.ones(n)


def plain_copy(model):
    """An equal copy of ``model`` with KerasHub's transformer blocks and ViT's patch
    embedding rewritten in plain Keras layers (nothing removed: structured pruning at 0),
    e.g. for converters that cannot see inside KerasHub's layers (ViT's GELU in ONNX).

    Example:

    >>> copy = plain_copy(vit)                                   # doctest: +SKIP
    >>> abs(copy.predict(x) - vit.predict(x)).max() < 1e-5        # doctest: +SKIP
    True
    """
    return prune_units(model, 0.0)[0]
