"""Keep a model's input normalization in float inside an int8 artifact.

A full-integer artifact quantizes each input tensor with one scale. A tabular model takes
its raw columns in one tensor and normalizes them inside (an adapted
``keras.layers.Normalization``): an age (0 to 80) next to an income (0 to 6,000) then gets
about 3 of the 256 int8 levels, and the int8 model no longer sees it (a classifier's top-1
agreement with its float model fell to 72%). Where a ``Normalization`` reads a model input
directly and some input feature would get fewer than :data:`MIN_LEVELS` levels of that
scale on the calibration data, the normalization's ops stay float: the float input is
normalized first, and only then quantized, where every feature has the same scale.

The artifact keeps float inputs for this (``--interface float``, the default); with
``--interface int8`` the input must be int8 and nothing can be kept: a warning says so.

Example:

>>> names, note = float_front(model, x_cal)              # doctest: +SKIP
>>> names                                                # doctest: +SKIP
['norm']
"""

from __future__ import annotations

import re

import numpy as np

#: Fewest int8 levels an input feature may get from its tensor's one scale before the
#: normalization reading it is kept float (6 bits).
MIN_LEVELS = 64


def float_front(model, x_cal, int8_io: bool = False) -> tuple[list[str], str | None]:
    """``(names, note)``: the ``Normalization`` layers to keep float in an int8 artifact of
    ``model`` calibrated on ``x_cal``, and a note for the report (None when there are
    none); with ``int8_io`` the names are empty and the note is a warning.

    Args:
        model: a functional or Sequential Keras model.
        x_cal: its calibration inputs (an array, or a dict by input name).
        int8_io: bool, default False. Whether the artifact's inputs are int8.
    """
    import keras

    from compress.layer_state import model_input

    if x_cal is None or not getattr(model, "inputs", None):
        return [], None
    found = []
    for layer in getattr(model, "layers", []):
        if not isinstance(layer, keras.layers.Normalization) or getattr(layer, "invert", False):
            continue
        source = model_input(layer, model)
        if source is None:
            continue
        name = source.name
        x = x_cal.get(name) if isinstance(x_cal, dict) else x_cal
        if x is None or getattr(np.asarray(x).dtype, "kind", "") not in "fiu":
            continue
        levels = feature_levels(np.asarray(x, np.float64))
        if levels is not None and levels[0] < MIN_LEVELS:
            found.append((layer.name, name, *levels))
    if not found:
        return [], None
    said = "; ".join(f"input '{i}' feature {f}: {lv:.2g} of 256 levels" for _, i, lv, f
                     in found)
    if int8_io:
        return [], (f"an int8 input cannot hold features of such different ranges ({said} "
                    "of the input's one int8 scale); with --interface float the "
                    "normalization would stay float and the features keep their precision")
    return [n for n, *_ in found], (
        f"kept float: Normalization {', '.join(repr(n) for n, *_ in found)} on the model "
        f"input, whose features span such different ranges that one int8 scale for the "
        f"input tensor would flatten some ({said}); the int8 graph starts after it")


def feature_levels(x: np.ndarray) -> tuple[float, int] | None:
    """``(levels, feature)``: the fewest int8 levels any feature of ``x`` (samples along
    the first axis, features along the last) gets from one scale over the whole tensor,
    and which feature; None for a constant tensor.

    >>> feature_levels(np.array([[0.0, 0.0], [1.0, 100.0]]))
    (2.55, 0)
    """
    flat = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(-1, 1)
    total = float(flat.max() - flat.min())
    if total <= 0:
        return None
    spans = flat.max(axis=0) - flat.min(axis=0)
    feature = int(np.argmin(spans))
    return round(255.0 * float(spans[feature]) / total, 2), feature


def node_pattern(names: list[str], scopes=None, layer_names=None):
    """A regex that finds the ops of the layers ``names`` in converted graphs, whose op
    and tensor names hold the layer's name as a path part, maybe with a ``_N`` suffix
    (``tabular_1/norm_1/mul``, ``norm_1/add``).

    The suffix makes names ambiguous: the converter scopes layers ``dense`` and
    ``dense_1`` as ``dense_1/`` and ``dense_1_2/``, so ``dense_1(_N)?/`` would take both.
    Given the graph's ``scopes`` (its names' path parts) and the model's ``layer_names``,
    the pattern names the exact scopes of ``names`` (:func:`layer_scopes`)."""
    if scopes is not None and layer_names:
        owned = layer_scopes(scopes, list(layer_names) + list(names))
        exact = sorted({t for n in names for t in owned.get(n, ())})
        if exact:
            return re.compile(rf"(?:^|/)(?:{'|'.join(re.escape(t) for t in exact)})/")
    alternatives = "|".join(re.escape(n) for n in names)
    return re.compile(rf"(?:^|/)(?:{alternatives})(?:_\d+)?/")


def layer_scopes(scopes, layer_names) -> dict:
    """``{layer name: {the graph scopes that are its}}``: each scope (a path part of the
    converted graph's names) goes to the layers whose name it is, maybe with one ``_N``
    suffix. A scope two layers could own goes to the one that has no other: layers
    ``dense`` and ``dense_1`` with scopes ``dense_1`` and ``dense_1_2`` give ``dense``
    ``dense_1`` and ``dense_1`` ``dense_1_2``. Where that would leave some layer without
    a scope, the scopes stay with every layer that could own them.

    >>> layer_scopes({"dense_1", "dense_1_2", "dense_2_1", "model_1"},
    ...              ["dense", "dense_1", "dense_2"])
    {'dense': {'dense_1'}, 'dense_1': {'dense_1_2'}, 'dense_2': {'dense_2_1'}}
    """
    candidates = {}
    for n in dict.fromkeys(layer_names):
        owned = {t for t in scopes if t == n or re.fullmatch(re.escape(n) + r"_\d+", t)}
        if owned:
            candidates[n] = owned
    resolved = {n: set(c) for n, c in candidates.items()}
    changed = True
    while changed:
        changed = False
        for n, c in resolved.items():
            if len(c) == 1:
                token = next(iter(c))
                for other, oc in resolved.items():
                    if other != n and token in oc:
                        oc.discard(token)
                        changed = True
    if any(not c for c in resolved.values()):  # inconsistent: keep every claim
        return candidates
    return resolved


def graph_scopes(names) -> set:
    """The path parts of a converted graph's op or tensor ``names``.

    >>> sorted(graph_scopes(["a/b_1/MatMul;a/b_1/Relu"]))
    ['MatMul', 'Relu', 'a', 'b_1']
    """
    return {part for name in names for path in name.split(";") for part in path.split("/")}


def tflite_nodes(flatbuffer: bytes, names: list[str], output_layer: str | None = None,
                 layer_names: list[str] | None = None) -> list[str]:
    """The output tensor names of the ops of layers ``names`` in a TFLite flatbuffer (what
    ``mlir_quantize``'s ``denylisted_nodes`` takes). The op writing the model's output
    has the signature's name (``StatefulPartitionedCall:0``), not its layer's: with
    ``output_layer`` (the layer writing a one-output model's output) among ``names``, the
    graph's output tensor is taken too. With ``layer_names`` (every layer's name in the
    model), a layer whose name another's scope could carry is told apart
    (:func:`layer_scopes`)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))

    def text(name):
        return name.decode() if isinstance(name, bytes) else str(name)
    pattern = node_pattern(names, graph_scopes(
        text(t.name) for g in model.subgraphs for t in g.tensors), layer_names)
    found = []
    for graph in model.subgraphs:
        last = set(graph.outputs) if output_layer in names and graph is model.subgraphs[0] \
            and len(graph.outputs) == 1 else set()
        for op in graph.operators:
            for index in op.outputs:
                name = text(graph.tensors[index].name)
                if (pattern.search(name) or index in last) and name not in found:
                    found.append(name)
    return found


def layer_names(model) -> list[str]:
    """The names of ``model``'s layers at any depth (nested models, custom layers)."""
    from compress.layer_state import all_layers

    return [layer.name for layer in all_layers(model)]


def output_layer(model) -> str | None:
    """The name of the layer writing a one-output model's output (None for several)."""
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    return history.operation.name if history is not None else model.layers[-1].name


def onnx_nodes(path, names: list[str], layer_names: list[str] | None = None) -> list[str]:
    """The node names of the layers ``names`` in an ONNX file (what onnxruntime's
    ``quantize_static`` takes as ``nodes_to_exclude``), the nodes tf2onnx made in their
    place included (:func:`node_scopes`); ``layer_names`` as in :func:`tflite_nodes`."""
    import onnx

    graph = onnx.load(str(path)).graph
    scopes = node_scopes(graph)
    pattern = node_pattern(names, graph_scopes(s for ss in scopes.values() for s in ss),
                           layer_names)
    return [n.name for n in graph.node if any(pattern.search(s) for s in scopes[n.name])]


def node_scopes(graph) -> dict:
    """``{node name: [the TensorFlow scopes it stands for]}``. tf2onnx names a converted
    op after it (``model/block_0/attention/MatMul``) but the nodes its rewrites make after
    their kind (an einsum becomes ``Reshape__1902``, ``Gemm__1906``...): such a node
    stands for a weight it reads if that has a scoped name, else for the nearest named
    nodes it feeds and is fed by (a query projection's nodes lie between the layer norm
    before the attention and the attention's own ops; an output projection's, between
    the attention and the residual add): a layer kept float takes them with it.

    Example:

    >>> from types import SimpleNamespace as N
    >>> g = N(initializer=[N(name="m/dense/kernel"), N(name="const_fold_opt__7")], node=[
    ...     N(name="m/norm/mul", input=["x"], output=["a"]),
    ...     N(name="Reshape__1", input=["a"], output=["b"]),
    ...     N(name="Gemm__2", input=["b", "const_fold_opt__7"], output=["c"]),
    ...     N(name="Squeeze__3", input=["c"], output=["d"]),
    ...     N(name="m/attention/Mul", input=["d"], output=["e"]),
    ...     N(name="MatMul__4", input=["e", "m/dense/kernel"], output=["f"])])
    >>> s = node_scopes(g)
    >>> s["Gemm__2"], s["MatMul__4"]
    (['m/attention/Mul', 'm/norm/mul'], ['m/dense/kernel'])
    """
    weights = {i.name for i in graph.initializer}
    named = {n.name: n.name for n in graph.node if "/" in n.name}
    for n in graph.node:  # a scoped weight names its layer
        if n.name not in named:
            scoped = [i for i in n.input if i in weights and "/" in i]
            if scoped:
                named[n.name] = scoped[0]
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    after: dict = {}  # the nearest named node it feeds (nodes are in topological order)
    for n in reversed(graph.node):
        for c in (c for o in n.output for c in consumers.get(o, ())):
            scope = named.get(c.name) or after.get(c.name)
            if scope:
                after[n.name] = scope
                break
    before: dict = {}  # the nearest named node feeding it
    for n in graph.node:
        for p in (producer[i] for i in n.input if i in producer):
            scope = named.get(p.name) or before.get(p.name)
            if scope:
                before[n.name] = scope
                break
    return {n.name: [named[n.name]] if n.name in named else
            [s for s in dict.fromkeys((after.get(n.name), before.get(n.name))) if s]
            or [n.name] for n in graph.node}
