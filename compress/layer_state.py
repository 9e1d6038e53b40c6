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

import keras


def model_input(layer, model):
    """The input tensor of ``model`` that ``layer`` reads directly (the layer called once,
    on that one tensor), or None: a preprocessing layer at the front of the graph.

    Example:

    >>> model_input(model.get_layer("text_vectorization"), model)   # doctest: +SKIP
    <KerasTensor shape=(None, 1), dtype=string, name=text>
    """
    nodes = getattr(layer, "_inbound_nodes", [])
    sources = [t for n in nodes for t in n.input_tensors]
    if len(nodes) != 1 or len(sources) != 1:
        return None
    return next((t for t in getattr(model, "inputs", None) or [] if t is sources[0]), None)


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
      fine-tuning step of a tabular model's copy saw raw features).

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
    if isinstance(layer, keras.layers.Normalization):  # adapted: not given mean= in config
        return layer.input_mean is None and getattr(layer, "mean", None) is not None
    return hasattr(layer, "save_assets") and hasattr(layer, "load_assets")
