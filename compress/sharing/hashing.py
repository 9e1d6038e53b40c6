"""``hash_model``: the HashedNets pass, and ``materialize``, its way back to dense layers.

:func:`hash_model` rebuilds a model with its Dense, Conv1D/2D/3D and Embedding layers
replaced by the hashed layers of :mod:`compress.sharing.hashed_layers` (``HashedDense``,
``HashedConv1D``... ``HashedEmbedding``), whose connections share buckets through
:mod:`compress.sharing.hash_functions` (the hash), and fine-tunes; :func:`materialize`
turns hashed layers back into plain ones.

Example:

>>> hashed, info = hash_model(model, ds, factor=1 / 8, epochs=3)  # doctest: +SKIP
>>> plain = materialize(hashed)                                  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from compress.data import as_dataset
from compress.errors import CompressError
from compress.pruning import graph
from compress.sharing.hash_functions import bucket_means
from compress.sharing.hashed_layers import (
    HASHED,
    HashedConv1D,
    HashedConv2D,
    HashedConv3D,
    HashedDense,
    HashedEmbedding,
    hashed_like,
    inner_layer,
    source_matrix,
)
from compress.sharing.layer_selection import coverage, finetune, shareable_layers
from compress.sharing.share_options import HASH_OPTIONS

__all__ = ["HashedConv1D", "HashedConv2D", "HashedConv3D", "HashedDense", "HashedEmbedding",
           "hash_model", "materialize"]


def hash_model(model, data=None, *, verbose=0, **options):
    """Convert a model's Dense, Conv1D/2D/3D and Embedding layers into hashed layers,
    then fine-tune.

    Each converted layer keeps ``round(factor * m * n)`` buckets, initialised to the mean
    of ``sign * w`` over the trained weights hashed to each bucket (``init="dense"``), or
    freshly (``init="scratch"``: Glorot-style buckets, zero biases, the layout of the model
    only). The input model is not modified.

    With about ``1 / factor`` random-sign weights per bucket, the signed means keep little
    of the trained function (a 1/8-hashed LeNet-300-100 starts near chance), so the
    conversion is mostly an initialisation; Chen et al. (2015) train hashed nets from
    scratch with dropout, which ``init="scratch", dropout=0.25, epochs=30`` follows (it
    beat the conversion in our benchmark, see BENCHMARKS.md).

    Example:

    >>> hashed, info = hash_model(model, ds, factor=1 / 8, epochs=3)  # doctest: +SKIP
    >>> info["bits_per_weight"]                                        # doctest: +SKIP
    4.0

    Args:
        model: a Keras model (Sequential or functional).
        data: a :class:`compress.data.Dataset` prepared for the model; needed when
            ``epochs > 0``.
        verbose: Keras ``verbose`` for the fit, default 0.
        **options: checked by :data:`~compress.sharing.share_options.HASH_OPTIONS`:
            ``factor`` (0.125, buckets per virtual weight, in ``(0, 1]``), ``layers``
            (None: every Dense, Conv1D/2D/3D and Embedding; else a list of names, class
            names or regular expressions matching the whole name), ``epochs`` (0,
            fine-tuning epochs), ``seed`` (0, hash and training seed), ``learning_rate``
            (None: 1e-3, Adam),
            ``batch_size`` (64), ``init`` (``"dense"``: buckets from the trained
            weights; ``"scratch"``: fresh buckets and biases), ``dropout`` (0.0,
            training-time dropout on the inputs of every converted layer but the first,
            a no-op at inference and in exports; in ``[0, 1)``).

    Returns:
        ``(new_model, info)``; ``info`` has stored and virtual parameters, bits per
        virtual weight and per-layer factors.
    """
    from compress import training

    opts = HASH_OPTIONS.validate(options)
    data = as_dataset(data, model)  # a tf.data.Dataset, arrays, (x, y), a name: one form
    training.check_finite(model)
    factor, seed, dropout, init = opts["factor"], opts["seed"], opts["dropout"], opts["init"]
    # Inside nested Functional/Sequential models too (a base used as a layer).
    chosen = {id(la): la for la in shareable_layers(model, opts["layers"], "hashed")}
    first = next(iter(chosen), None)
    training.set_seed(seed)

    def clone(layer):
        if id(layer) in chosen:
            return hashed_like(layer, factor, seed,
                               dropout=0.0 if id(layer) == first else dropout)
        return graph.fresh(layer)

    new, pairs, whole = _rebuild(model, clone, "hashed layers")
    made = {id(old) for old, _ in pairs}
    lost = [la for la in chosen.values() if id(la) not in made]  # in a nested model copied whole
    if lost and opts["layers"]:
        raise CompressError(f"layer '{lost[0].name}' cannot be hashed: its nested model cannot "
                            "be rebuilt layer by layer (a layer of it does not load back from "
                            "its config); use --method kmeans, which reaches it")
    rows = []
    for source, layer in pairs:
        if id(source) not in chosen:
            layer.set_weights(source.get_weights())
            continue
        hashed, source = inner_layer(layer), inner_layer(source)  # TimeDistributed: the layer inside
        flat = source_matrix(source)
        if init == "dense":
            hashed.buckets.assign(bucket_means(flat, hashed.num_buckets, hashed.hash_seed))
            if hashed.use_bias:
                hashed.bias.assign(np.asarray(source.bias))
        kind = type(hashed).__name__
        rows.append({"layer": layer.name, "type": kind if hashed is layer
                     else f"{type(layer).__name__}({kind})",
                     "virtual": int(flat.size), "buckets": hashed.num_buckets,
                     "factor": hashed.num_buckets / flat.size})
    from compress.task import resolve, sample_targets

    task = resolve(model, opts["loss"], opts["metrics"], y=sample_targets(data))
    finetune(new, data, opts["epochs"], opts["learning_rate"] or 1e-3, opts["batch_size"],
             verbose, task=task, teacher=model)
    virtual = sum(r["virtual"] for r in rows)
    stored = sum(r["buckets"] for r in rows)
    info = {"method": "hash", "factor": factor, "layers": rows,
            "virtual_weights": virtual, "stored_weights": stored,
            "stored_params": int(sum(int(np.prod(w.shape)) for w in new.weights)),
            "dense_params": int(sum(int(np.prod(w.shape)) for w in model.weights)),
            "bits_per_weight": 32.0 * stored / virtual, "epochs": opts["epochs"],
            "init": init, "dropout": dropout}
    if not opts["layers"]:
        info.update(coverage(new, [inner_layer(la) for old, la in pairs if id(old) in chosen],
                             virtual, "hashed", opaque=whole))
    if data is not None and data.labelled:  # the task's own: accuracy, or MSE+MAE
        info.update(task.evaluate_data(new, data, "test"))  # batch by batch
    return new, info


def materialize(model, only: tuple | None = None):
    """A plain Keras model with every hashed layer replaced by its dense equivalent.

    The virtual kernels become ordinary Dense/Conv/Embedding weights: outputs are
    unchanged, the file is dense-sized again, and exported runtimes skip the per-call
    hash arithmetic (use it when latency matters more than size). The input model is not
    modified.

    Example:

    >>> plain = materialize(hashed)   # doctest: +SKIP

    Args:
        model: a Keras model containing hashed layers (``HashedDense``...).
        only: tuple of hashed layer classes or None, default None. Replace only the
            layers of these classes (None: every hashed layer).

    Returns:
        The new model.
    """
    kinds = only or HASHED

    def clone(layer):
        if isinstance(layer, kinds):
            return layer.plain()
        if isinstance(inner_layer(layer), kinds):  # a wrapper: the plain layer inside it
            return type(layer)(layer.layer.plain(), name=layer.name)
        return graph.fresh(layer)

    new, pairs, _ = _rebuild(model, clone, "plain layers")
    for source, layer in pairs:
        if isinstance(inner_layer(source), kinds):
            source, target = inner_layer(source), inner_layer(layer)
            matrix = (target.embeddings if isinstance(source, HashedEmbedding)
                      else target.kernel)
            weights = [source.virtual_kernel().reshape(matrix.shape)]
            if source.use_bias:
                weights.append(np.asarray(source.bias))
            target.set_weights(weights)
        else:
            layer.set_weights(source.get_weights())
    return new


def _rebuild(model, clone, what: str):
    """:func:`compress.pruning.graph.rebuild_pairs` with a one-line error."""
    try:
        return graph.rebuild_pairs(model, clone)
    except CompressError:
        raise
    except Exception as exc:
        raise CompressError(f"cannot rebuild the model with {what} ({exc})") from exc


#: Hashed layers whose computed kernel full-integer TFLite cannot take: its int8
#: convolutions need a constant filter with zero-point 0 (a computed one is quantized
#: like an activation, and the interpreter refuses it).
INT8_TFLITE_WHOLE = (HashedConv1D, HashedConv2D, HashedConv3D)


def int8_tflite_copy(model) -> tuple:
    """``(model, note)``: ``model``, or for full-integer TFLite a copy whose hashed
    convolutions (:data:`INT8_TFLITE_WHOLE`) are stored whole (their virtual kernels,
    int8 after conversion), with a note naming them (None when nothing changed).
    Hashed Dense and Embedding layers stay hashed: TFLite runs them in int8.

    Example:

    >>> copy, note = int8_tflite_copy(hashed)   # doctest: +SKIP
    >>> note                                    # doctest: +SKIP
    'hashed convolutions stored whole for full-integer TFLite (its int8 ...): c1, c2'
    """
    every = list(model._flatten_layers(include_self=False, recursive=True))
    wrapped = {id(la.layer): la.name for la in every if inner_layer(la) is not la}
    names = [wrapped.get(id(la), la.name) for la in every if isinstance(la, INT8_TFLITE_WHOLE)]
    if not names:
        return model, None
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return materialize(model, only=INT8_TFLITE_WHOLE), (
        "hashed convolutions stored whole for full-integer TFLite (its int8 convolutions "
        f"need a constant filter; their virtual kernels are stored in int8): {shown}")
