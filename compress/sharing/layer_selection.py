"""Which layers of a model a sharing pass rewrites, and the fine-tuning both passes run."""

from __future__ import annotations

import keras

from compress.errors import CompressError
from compress.layers import layer_matches, select_layers

_KINDS = "Dense, Embedding and channels-last, ungrouped Conv1D/2D/3D"


def shareable_layers(model, layers: list | None, what: str, nested: bool = False) -> list:
    """Dense, Conv1D/2D/3D and Embedding layers chosen by ``layers`` (every one when None;
    also inside ``TimeDistributed``) of the model's layer graph and of its nested
    Functional/Sequential models (:func:`graph_layers`); with ``nested``, those inside
    subclassed models and custom layers (a KerasHub transformer block) too.

    ``layers`` follows the one rule of every pass (:func:`compress.layers.select_layers`:
    names, class names or regular expressions matching the whole name). An entry that
    also selects a weighted layer which cannot be shared raises, rather than leaving that
    layer silently dense.

    Args:
        model: a Keras model.
        layers: list of str or None.
        what: the participle naming the pass in errors (``"hashed"``, ``"clustered"``).

    Raises:
        CompressError: an entry selecting an unshareable weighted layer or no shareable
            layer, or a model with no shareable layer at all.
    """
    if isinstance(layers, str):
        layers = [layers]
    candidates = list({id(la): la for la in (_leaves(model) if nested
                                             else graph_layers(model))}.values())
    if layers:
        for layer in candidates:
            if (layer.weights and not _shareable(layer)
                    and any(layer_matches(layer, sel) for sel in layers)):
                raise CompressError(f"layer '{layer.name}' ({type(layer).__name__}) cannot be "
                                    f"{what}: only {_KINDS} can")
    eligible = [layer for layer in candidates if _shareable(layer)]
    if not eligible:
        from compress.sharing.hashed_layers import HASHED, inner_layer

        done = [la.name for la in candidates if isinstance(inner_layer(la), HASHED)]
        if done:
            raise CompressError(f"model '{model.name}': no layer left to be {what}: "
                                f"{', '.join(done[:4])}{' ...' if len(done) > 4 else ''} "
                                "are hashed already")
        inside = [la for la in graph_layers(model) if isinstance(la, keras.Model)
                  and any(_shareable(leaf) for leaf in _leaves(la))]
        if inside and not nested:  # hashing rebuilds layer graphs only
            raise CompressError(f"model '{model.name}': no layer to be {what} in its layer "
                                f"graph: its shareable layers are inside the subclassed "
                                f"model '{inside[0].name}' ({type(inside[0]).__name__}); use "
                                "--method kmeans, which reaches them")
        raise CompressError(f"model '{model.name}': no layer to be {what} (only {_KINDS} "
                            "can)")
    return select_layers(eligible, layers, "shareable", model.name)


#: Why hashing leaves a weight matrix in float (k-means gives its own reason).
HASHABLE_ONLY = "only Dense, Embedding and Conv1D/2D/3D weights can be hashed"


def coverage(model, shared, done: int, what: str, why: str = HASHABLE_ONLY,
             opaque: set = frozenset()) -> dict:
    """What a sharing pass left as it was: ``not_reached`` names the weight matrices
    (two or more axes longer than 1: an Embedding, a recurrent cell's kernels, a
    DepthwiseConv2D, a custom layer's own kernel) of layers outside ``shared``, with
    their sizes; a ``warning`` is added when they hold more values than the ``done``
    ones of the ``shared`` layers (the report's bits per weight then describe the
    smaller part). ``model`` is the pass's new model (its layers get report paths);
    ``opaque``: ids of its nested models the pass copied whole (their layers did not
    rebuild). Empty when every matrix is shared.

    Example:

    >>> coverage(new, [new.get_layer("head")], 16, "clustered")  # doctest: +SKIP
    {'not_reached': 'emb/embeddings (800), ...: ...', 'warning': '16 of the 6,050 ...'}
    """
    from compress.pruning.masks import deep_leaves, listed, unreached_weights, weight_key

    missed = unreached_weights(model, reached=shared)
    if not missed:
        return {}
    nested = set()
    if why == HASHABLE_ONLY:  # a Dense inside a custom layer: left for another reason
        top = {id(la) for la in graph_layers(model, opaque)}
        nested = {weight_key(la, v) for la in deep_leaves(model)
                  if id(la) not in top and _shareable(la) for v in la.trainable_weights}
    inside = [m for m in missed if m[0] in nested]
    other = [m for m in missed if m[0] not in nested]
    nested_why = ("inside custom layers or subclassed models, which hashing does not "
                  "rebuild (k-means reaches them)") if not opaque else (
        "inside custom layers, subclassed models or nested models with a layer that does "
        "not load back from its config, which hashing does not rebuild (k-means reaches "
        "them)")
    parts = ([f"{listed(other)}: {why}"] if other else []) + (
        [f"{listed(inside)}: {nested_why}"] if inside else [])
    out = {"not_reached": "; ".join(parts) + "; these keep their float weights"}
    rest = sum(n for _, n in missed)
    if rest > done:
        out["warning"] = (f"{done:,} of the model's {done + rest:,} weight-matrix values "
                          f"are {what} ({done / (done + rest):.1%}); the rest are not "
                          "(not_reached)")
    return out


def graph_layers(model, opaque: set = frozenset()) -> list:
    """The layers of ``model``'s layer graph and of the graphs of its nested Functional
    and Sequential models (a base used as a layer), in place of them: what a pass that
    rebuilds graphs (:func:`compress.pruning.graph.rebuild`) can replace. Custom layers
    and subclassed models are listed whole, as are the nested models in ``opaque``
    (ids)."""
    from compress.pruning.graph import has_graph

    out = []
    for layer in model.layers:
        out.extend(graph_layers(layer, opaque) if has_graph(layer)
                   and id(layer) not in opaque else [layer])
    return out


def _leaves(model) -> list:
    """The layers of ``model`` with those of its nested models, and the sub-layers of its
    custom (non-Model) layers, in place of them."""
    out = []
    for layer in getattr(model, "layers", None) or model._flatten_layers(
            include_self=False, recursive=False):  # a custom layer: its tracked sub-layers
        out.extend(_leaves(layer) if isinstance(layer, keras.Model) or (
            not _shareable(layer) and list(layer._flatten_layers(include_self=False,
                                                                recursive=False)))
            else [layer])
    return out


def _shareable(layer) -> bool:
    from compress.sharing.hashed_layers import inner_layer

    if inner_layer(layer) is not layer:  # TimeDistributed: the layer it applies
        return _shareable(layer.layer)
    if type(layer) in (keras.layers.Dense, keras.layers.Embedding):
        return True
    if type(layer) in (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D):
        return layer.groups == 1 and layer.data_format == "channels_last"
    return False


def finetune(model, data, epochs: int, learning_rate: float, batch_size: int,
             verbose, task=None, teacher=None) -> None:
    """Fine-tune ``model`` in place on ``data`` (a pass's own new model only), for at most
    ``epochs`` epochs, keeping the weights of the best validation loss (patience 5), on
    ``task`` (a :class:`compress.task.Task`; default: the one of ``model``). Data without
    labels fine-tunes by distillation from ``teacher`` (the original model)."""
    import keras

    from compress import training

    if epochs <= 0:
        return
    if data is None:
        raise CompressError("fine-tuning (epochs > 0) needs data (--data NAME)")
    from compress.task import resolve, sample_targets

    task = task or resolve(model, y=sample_targets(data))
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5,
                                         restore_best_weights=True)
    if not getattr(data, "labelled", True):
        if teacher is None:
            raise CompressError("fine-tuning without labels needs the original model")
        task.fit_to_teacher(model, teacher, data, epochs=epochs, learning_rate=learning_rate,
                            batch_size=batch_size, verbose=verbose, callbacks=[stop])
        return
    task.compile(model, learning_rate=learning_rate)
    training.fit(model, data, epochs=epochs, batch_size=batch_size, callbacks=[stop],
                 verbose=verbose)
