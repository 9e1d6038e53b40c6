"""The operation graph of a Keras model, nested models inlined, and its rebuild.

:func:`trace` lists every call of a layer or ``keras.ops`` operation in topological
order, with nested models (a ``MobileNetV2`` base used as a layer, a ``Sequential`` inside
a functional model) walked into: their inner tensors are aliases of the outer ones, so a
channel analysis sees one flat graph. :func:`rebuild` replays the graph with new layers
(``make_layer(old) -> new``) and keeps the nesting: each nested model is rebuilt as a
new nested model. Structured pruning uses both (the dependency graph of channels).

Example:

>>> steps = trace(model)                                          # doctest: +SKIP
>>> [type(s.op).__name__ for s in steps][:3]                       # doctest: +SKIP
['Rescaling', 'Conv2D', 'BatchNormalization']
>>> new, mapping = rebuild(model, lambda layer: layer.__class__.from_config(
...     layer.get_config()))                                       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field

from compress.errors import CompressError


@dataclass
class Step:
    """One call of ``op``: input tensor keys (KerasTensors only), output keys, and the
    ``args`` (the call's positional arguments: tensors and constants) as given."""

    op: object
    inputs: list
    outputs: list
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)
    scope: tuple = ()


def is_model(op) -> bool:
    """True for a Keras model (functional or Sequential) used as a layer."""
    import keras

    return isinstance(op, keras.Model)


def _functional(model):
    """The functional graph behind ``model`` (a Sequential keeps one once built)."""
    import keras

    if isinstance(model, keras.Sequential):
        fn = getattr(model, "_functional", None)
        if fn is None:
            raise CompressError(f"model '{model.name}' has no input shape (build it with "
                                "keras.Input first)")
        return fn
    if not hasattr(model, "_nodes_by_depth"):
        raise CompressError(f"model '{model.name}' is subclassed: its graph cannot be read "
                            "(rebuild it as a functional model)")
    return model


def _nodes(fn):
    depth_keys = sorted(fn._nodes_by_depth.keys(), reverse=True)
    for depth in depth_keys:
        for node in fn._nodes_by_depth[depth]:
            if node.operation is None or node.is_input:
                continue
            yield node


class Trace:
    """The flat graph: ``steps``, model ``inputs``/``outputs`` keys, ``shape`` per key,
    and ``consumers`` per key (steps reading it)."""

    def __init__(self):
        self.steps, self.inputs, self.outputs = [], [], []
        self.shape, self.consumers, self.alias = {}, {}, {}

    def key(self, tensor) -> int:
        k = id(tensor)
        while k in self.alias:
            k = self.alias[k]
        return k


def trace(model) -> Trace:
    """The flat, topologically ordered list of calls of ``model`` (nested models inlined).

    Raises:
        CompressError: a subclassed model (no graph to read).
    """
    t = Trace()
    fn = _functional(model)
    for x in fn.inputs:
        t.inputs.append(t.key(x))
        t.shape[t.key(x)] = tuple(x.shape)
    _walk(fn, t, ())
    t.outputs = [t.key(x) for x in fn.outputs]
    for step in t.steps:
        for k in step.inputs:
            t.consumers.setdefault(k, []).append(step)
    return t


def _walk(fn, t: Trace, scope: tuple) -> None:
    from keras import KerasTensor, tree

    for node in _nodes(fn):
        op = node.operation
        flat_in = [x for x in tree.flatten((node.arguments.args, node.arguments.kwargs))
                   if isinstance(x, KerasTensor)]
        if is_model(op):
            inner = _functional(op)
            if len(inner.inputs) != len(flat_in):
                raise CompressError(f"nested model '{op.name}' is called with "
                                    f"{len(flat_in)} inputs for {len(inner.inputs)}")
            for a, b in zip(inner.inputs, flat_in):
                _alias(t, a, b)
            _walk(inner, t, scope + (op.name,))
            for a, b in zip(node.outputs, tree.flatten(inner.outputs)):
                _alias(t, a, b)
            continue
        step = Step(op, [t.key(x) for x in flat_in], [t.key(x) for x in node.outputs],
                    list(node.arguments.args), dict(node.arguments.kwargs), scope)
        for x in node.outputs:
            t.shape[t.key(x)] = tuple(x.shape)
        t.steps.append(step)


def _alias(t: Trace, inner, outer) -> None:
    """``inner`` stands for ``outer``. A task model called on its backbone's own inputs
    (KerasHub's ``BertTextClassifier``) passes the very same tensors: no alias then."""
    if t.key(outer) != id(inner):
        t.alias[id(inner)] = t.key(outer)


def rebuild(model, make_layer, *, opaque: bool = False, nested_kwargs=None):
    """A new model with the graph of ``model``, each layer replaced by ``make_layer(layer)``.

    ``make_layer`` gets every layer and every ``keras.ops`` operation that is not a model;
    nested models are rebuilt recursively (nesting and names kept). Weights are not
    copied: the caller sets them through the returned mapping.

    Args:
        model: a Functional or Sequential Keras model.
        make_layer: ``old layer or op -> new one``.
        opaque: bool, default False. A nested model that cannot be rebuilt layer by layer
            (subclassed, or holding a layer whose config does not load back, as some
            KerasHub backbones do) goes to ``make_layer`` whole instead of being refused.
        nested_kwargs: ``(nested model, call kwargs) -> kwargs`` or None: the keyword
            arguments each call of a nested model rebuilt layer by layer is made with
            (None: as recorded).

    Returns:
        ``(new_model, mapping)``: ``mapping[id(old_layer)]`` is the new layer;
        ``mapping.whole`` holds the ``id`` of each nested model given to ``make_layer``
        whole after its layers could not be rebuilt.
    """
    from compress.layer_state import copy_assets

    ctx = _Rebuild(make_layer, opaque, nested_kwargs)
    new = _rebuild_model(model, None, ctx)
    copy_assets(model, new)  # vocabularies of lookup layers: not weights, not in configs
    return new, ctx.mapping


class Mapping(dict):
    """``{id(old layer): new layer}``, and ``whole``: ids of nested models copied whole."""

    def __init__(self):
        super().__init__()
        self.whole = set()


@dataclass
class _Rebuild:
    make_layer: object
    opaque: bool = False
    nested_kwargs: object = None
    mapping: Mapping = field(default_factory=Mapping)

    @property
    def whole(self) -> set:  # ids of nested models given to make_layer whole
        return self.mapping.whole

    def walks_into(self, op) -> bool:
        return is_model(op) and (has_graph(op) or not self.opaque)

    def nested(self, op, input_shapes):
        """The new nested model ``op`` (rebuilt, or with ``opaque`` and a failure, whole)."""
        if id(op) in self.mapping:
            return self.mapping[id(op)]
        before = set(self.mapping)
        try:
            new = _rebuild_model(op, input_shapes, self)
        except Exception:
            if not self.opaque:
                raise
            for key in set(self.mapping) - before:  # the layers made for the failed attempt
                del self.mapping[key]
            self.whole.add(id(op))
            new = self.make_layer(op)
        self.mapping[id(op)] = new
        return new

    def op(self, op):
        if id(op) not in self.mapping:
            self.mapping[id(op)] = self.make_layer(op)
        return self.mapping[id(op)]


def rebuild_pairs(model, make_layer, *, nested_kwargs=None):
    """:func:`rebuild` with ``opaque``, for passes that copy weights layer by layer:
    ``(new_model, pairs, whole)``, ``pairs`` the ``(old layer, new layer)`` of every layer
    in the new model (a nested model that fell back to a whole copy is one pair, the
    layers made for its failed attempt none), ``whole`` the ids of the new model's
    nested models copied whole."""
    import keras

    made = []

    def make(layer):
        new = make_layer(layer)
        made.append((layer, new))
        return new

    new, mapping = rebuild(model, make, opaque=True, nested_kwargs=nested_kwargs)
    inside = {id(la) for la in new._flatten_layers(include_self=False, recursive=True)}
    pairs = [(a, b) for a, b in made if isinstance(a, keras.layers.Layer) and id(b) in inside]
    return new, pairs, {id(mapping[i]) for i in mapping.whole}


def graphs(model, seen=None):
    """``model`` and every Functional/Sequential model nested in it, once each (a nested
    model called twice is one graph)."""
    seen = set() if seen is None else seen
    if id(model) in seen:
        return
    seen.add(id(model))
    yield model
    for layer in model.layers:
        if has_graph(layer):
            yield from graphs(layer, seen)


def has_graph(op) -> bool:
    """True for a nested model whose layer graph can be read (Functional, Sequential)."""
    import keras

    return is_model(op) and (isinstance(op, keras.Sequential) or hasattr(op, "_nodes_by_depth"))


def _rebuild_model(model, input_shapes, ctx: _Rebuild):
    import keras
    from keras import tree

    fn = _functional(model)
    inputs = []
    for i, x in enumerate(fn.inputs):
        shape = tuple(x.shape[1:]) if input_shapes is None else tuple(input_shapes[i][1:])
        name = x._keras_history.operation.name
        inputs.append(keras.Input(shape=shape, dtype=x.dtype, name=name))
    if isinstance(model, keras.Sequential):
        layers, x = [], inputs[0]
        for la in model.layers:  # a nested model is rebuilt on the shape reaching it
            layers.append(ctx.nested(la, [tuple(x.shape)]) if ctx.walks_into(la)
                          else ctx.op(la))
            x = layers[-1](x)
        return keras.Sequential([inputs[0]] + layers, name=model.name)
    tensors = {id(a): b for a, b in zip(fn.inputs, inputs)}
    for node in _nodes(fn):
        if any(id(x) not in tensors for x in node.input_tensors):
            continue
        args, kwargs = node.arguments.fill_in(tensors)
        op = node.operation
        if ctx.walks_into(op):
            flat = [x for x in tree.flatten((args, kwargs)) if isinstance(x, keras.KerasTensor)]
            new = ctx.nested(op, [tuple(x.shape) for x in flat])
            if ctx.nested_kwargs is not None and id(op) not in ctx.whole:
                kwargs = ctx.nested_kwargs(op, kwargs)
            outputs = new(*args, **kwargs)
        else:
            new = ctx.op(op)
            if type(new) is not type(op):  # e.g. an Identity for a BatchNorm: no mask
                kwargs = _accepted(new, kwargs)
            outputs = new(*args, **kwargs)
        for a, b in zip(node.outputs, tree.flatten(outputs)):
            tensors[id(a)] = b
    outputs = tree.pack_sequence_as(fn._outputs_struct,
                                    [tensors[id(x)] for x in tree.flatten(fn.outputs)])
    ins = tree.pack_sequence_as(fn._inputs_struct, inputs)
    return keras.Model(ins, outputs, name=model.name)


def _accepted(op, kwargs: dict) -> dict:
    """The keyword arguments of ``kwargs`` that ``op``'s ``call`` takes."""
    import inspect

    call = getattr(op, "call", op)
    try:
        params = inspect.signature(call).parameters
    except (TypeError, ValueError):
        return kwargs
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def fresh(op):
    """A new, unbuilt copy of the layer or operation ``op`` from its config."""
    import keras

    try:
        if isinstance(op, keras.layers.Layer):
            from compress.layer_state import clone_layer

            return clone_layer(op)  # its own config, or one read back (Llama decoders)
        return op.__class__.from_config(op.get_config())
    except Exception as exc:  # noqa: BLE001 - a stateless op without a usable config is reused
        if isinstance(op, keras.layers.Layer) and op.weights:
            raise CompressError(str(exc)) from None  # layer_config's line names the layer
        return op
