"""State Keras keeps outside a model's weights, and the walk over a model's layers.

``clone_model`` and ``set_weights`` copy a model's architecture and weights, but some
layers hold state elsewhere: the vocabularies of lookup layers (``StringLookup``,
``IntegerLookup``, ``TextVectorization``, saved as assets) and the mean and variance an
adapted ``Normalization`` normalizes with (constants Keras derives from its weights when
it is adapted or loaded). :func:`copy_assets` carries them to a copy; every model copy in
the toolkit calls it. A core module: it imports nothing of the toolkit.

Example:

>>> copy = keras.models.clone_model(model)   # doctest: +SKIP
>>> copy.set_weights(model.get_weights())    # doctest: +SKIP
>>> copy_assets(model, copy)                 # doctest: +SKIP
"""

from __future__ import annotations

import copy
import functools

import keras


def model_input(layer, model):
    """The input tensor of ``model`` that ``layer`` reads directly (the layer called once,
    on that one tensor), or None: a preprocessing layer at the front of the graph.

    Example:

    >>> model_input(model.get_layer("text_vectorization"), model)   # doctest: +SKIP
    <KerasTensor shape=(None, 1), dtype=string, name=text>
    """
    nodes = own_calls(layer, model)
    sources = [t for n in nodes for t in n.input_tensors]
    if len(nodes) != 1 or len(sources) != 1:
        return None
    return next((t for t in getattr(model, "inputs", None) or [] if t is sources[0]), None)


def own_calls(layer, model) -> list:
    """The calls (Keras nodes) of ``layer`` that belong to ``model``'s graph. A layer
    keeps a node for every call: a Sequential model loaded from a file has called its
    layers twice (once when it was built, once in the graph it runs), and a layer shared
    with another model has that model's calls too. A layer of a nested model has no call
    in the outer graph: all its calls are returned.

    Example:

    >>> len(own_calls(loaded_sequential.layers[0], loaded_sequential))  # doctest: +SKIP
    1
    """
    nodes = list(getattr(layer, "_inbound_nodes", []))
    graph = getattr(model, "_functional", None) or model
    own = getattr(graph, "_nodes", None)
    try:
        from keras.src.ops.function import make_node_key
    except ImportError:  # pragma: no cover - a Keras without it: every call counts
        return nodes
    mine = [n for i, n in enumerate(nodes) if own and make_node_key(layer, i) in own]
    return mine or nodes


def all_layers(model) -> list:
    """``model`` and every layer in it, at any depth (nested models, custom layers)."""
    walk = getattr(model, "_flatten_layers", None)
    return list(walk(include_self=True, recursive=True)) if walk else \
        list(getattr(model, "layers", []))


def copy_assets(source, target) -> None:
    """Copy into ``target`` (a copy of ``source``'s architecture, or a part of it) the
    state Keras keeps outside the weights, which ``clone_model`` and ``set_weights``
    leave out:

    - the vocabularies (and tf-idf weights) of ``StringLookup``, ``IntegerLookup`` and
      ``TextVectorization`` layers: a copy's lookup table was never filled ("Table not
      initialized" at its first batch, or an empty vocabulary in the file it is saved to);
    - the mean and variance an adapted ``Normalization`` layer normalizes with: they are
      constants derived from its weights when it is adapted or loaded, so a copy given the
      weights by ``set_weights`` still normalized with 0 and 1 (every score and every
      fine-tuning step of a tabular model's copy saw raw features);
    - a config read back for a layer whose own does not rebuild it (:func:`keep_config`):
      a copy made from the saved configs (``deserialize_keras_object``) could not be
      saved again.

    Layers are matched by class and name, at any depth, in order; a layer with no
    counterpart, or whose weights changed shape, is left alone.

    Example:

    >>> copy = keras.models.clone_model(text_model)   # doctest: +SKIP
    >>> copy.set_weights(text_model.get_weights())    # doctest: +SKIP
    >>> copy_assets(text_model, copy)                 # doctest: +SKIP
    """
    import tempfile

    stateful = [la for la in all_layers(source) if _state_outside_weights(la)]
    if not stateful:
        return
    by_key: dict = {}
    for layer in stateful:
        by_key.setdefault((type(layer).__name__, layer.name), []).append(layer)
    for layer in all_layers(target):
        found = by_key.get((type(layer).__name__, layer.name))
        if not found:
            continue
        original = found.pop(0)
        if layer is original:
            continue
        if _kept_config(original):
            if not _kept_config(layer):  # a copy made from its config (deserialized)
                keep_config(layer, original.get_config())
            if not _has_assets(original):
                continue
        if isinstance(original, keras.layers.Normalization):
            if layer.built and [tuple(w.shape) for w in layer.weights] == \
                    [tuple(w.shape) for w in original.weights]:
                layer.set_weights(original.get_weights())  # a fresh student's too
                layer.mean, layer.variance = original.mean, original.variance
            continue
        with tempfile.TemporaryDirectory() as folder:
            original.save_assets(folder)
            layer.load_assets(folder)
        store: dict = {}
        original.save_own_variables(store)  # a tf-idf vocabulary's weights, say
        if store:
            layer.load_own_variables(store)


def _state_outside_weights(layer) -> bool:
    return _kept_config(layer) or _has_assets(layer)


def _has_assets(layer) -> bool:
    if isinstance(layer, keras.layers.Normalization):  # adapted: not given mean= in config
        return layer.input_mean is None and getattr(layer, "mean", None) is not None
    return hasattr(layer, "save_assets") and hasattr(layer, "load_assets")


def _kept_config(layer) -> bool:
    """Whether ``layer`` describes itself with a config read back (:func:`keep_config`)."""
    return "get_config" in vars(layer)


def layer_config(layer) -> dict:
    """A config that rebuilds ``layer``: its own ``get_config()`` when that round trip
    works, else one read from its constructor's arguments (:func:`read_config`).

    Example:

    >>> decoder = llama.get_layer("transformer_layer_0")        # doctest: +SKIP
    >>> type(decoder).from_config(layer_config(decoder))         # doctest: +SKIP
    <LlamaTransformerDecoder name=transformer_layer_0, built=False>

    Raises:
        ValueError: neither reading rebuilds the layer; the message names it and why.
    """
    return read_config(layer)[0]


def read_config(layer) -> tuple[dict, bool]:
    """``(config, own)``: a config that rebuilds ``layer``, and whether it is the layer's
    own ``get_config()``.

    Some released layers cannot rebuild themselves from their own config, which every
    model copy (``clone_model``) relies on: KerasHub 0.32's ``LlamaTransformerDecoder``
    (Llama, Llama 3) names an attribute it never set, ``Qwen3TransformerDecoder`` and
    ``GPTNeoXDecoder`` write keys their constructors refuse. Such a layer is described
    again from its constructor's parameters and the same-named attributes it keeps
    (activations, initializers and other Keras objects serialized; every parameter must
    be found), and the description is checked: rebuilt from it, the layer must hold the
    same values. Only KerasHub's layers are read back this way: a user's own layer whose
    config does not rebuild it is refused (or its model copied whole) as before. A layer built from
    such a reading should describe itself with it (:func:`keep_config`).

    Raises:
        ValueError: neither reading rebuilds the layer; the message names it and why.
    """
    if _kept_config(layer):  # already read back (a copy's layer): that reading again
        return layer.get_config(), False
    try:
        config = layer.get_config()
        type(layer).from_config(copy.deepcopy(config))  # some from_config edit theirs
        return config, True
    except Exception as exc:  # noqa: BLE001 - any failure of the layer's own round trip
        own = " ".join(str(exc).split("Exception encountered:")[-1].split())[:160]
    # Only a released library's layer (KerasHub's) is read back: a user's own layer whose
    # config does not rebuild it is the user's to fix, and passes copy such a model whole.
    config = _constructor_config(layer) if type(layer).__module__.startswith(
        "keras_hub") else None
    if config is None:
        raise ValueError(f"layer '{layer.name}' ({type(layer).__name__}) cannot be rebuilt "
                         f"from its config: {own}")
    return config, False


def keep_config(layer, config: dict):
    """Make ``layer`` (built from ``config``, a :func:`read_config` reading) describe
    itself with ``config``, so that it can be copied again and saved (a ``.keras`` file
    stores each layer's config); its class's ``get_config`` is left alone. Returns it."""
    layer.get_config = functools.partial(copy.deepcopy, config)
    return layer


def clone_layer(layer):
    """A new, unbuilt copy of ``layer`` from its config, or from :func:`read_config`'s
    reading when its own config does not rebuild it: a ``clone_function`` for
    ``keras.models.clone_model``, which otherwise stops at such a layer.

    Example:

    >>> copy = keras.models.clone_model(llama, clone_function=clone_layer)  # doctest: +SKIP
    """
    if not _kept_config(layer):
        try:
            return type(layer).from_config(layer.get_config())
        except Exception:  # noqa: BLE001 - the layer's own round trip failed: read it again
            layer_config(layer)  # raises when no reading rebuilds it
    config, _ = read_config(layer)
    return keep_config(type(layer).from_config(copy.deepcopy(config)), config)


def _constructor_config(layer) -> dict | None:
    """``layer``'s constructor arguments read back from its same-named attributes, or None
    when one is missing (a default would be a guess) or the layer rebuilt from them holds
    other values."""
    import inspect

    try:
        params = inspect.signature(type(layer).__init__).parameters
    except (TypeError, ValueError):
        return None
    config = {"name": layer.name, "trainable": layer.trainable,
              "dtype": keras.dtype_policies.serialize(layer.dtype_policy)}
    for name, param in params.items():
        if name == "self" or name in config or param.kind in (
                param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if not hasattr(layer, name):  # kept under another name: its value is unknown
            return None
        value = getattr(layer, name)
        if not isinstance(value, (bool, int, float, str, type(None), list, tuple, dict)):
            value = keras.saving.serialize_keras_object(value)
        config[name] = value
    try:
        rebuilt = type(layer).from_config(copy.deepcopy(config))
    except Exception:  # noqa: BLE001 - this reading does not rebuild it either
        return None
    for name in config:
        if name in ("name", "trainable", "dtype"):
            continue
        old, new = getattr(layer, name), getattr(rebuilt, name, None)
        if isinstance(old, (bool, int, float, str, type(None), list, tuple)) and old != new:
            return None
        if not isinstance(old, (bool, int, float, str, type(None), list, tuple, dict)) and \
                keras.saving.serialize_keras_object(old) != \
                keras.saving.serialize_keras_object(new):
            return None
    return config
