"""Weight sharing: HashedNets (the hashing trick) and k-means clustering.

:func:`hash_model` turns Dense, Conv1D/2D/3D and Embedding layers into
:class:`HashedDense`, :class:`HashedConv2D`... :class:`HashedEmbedding` (only the hash
buckets are stored, and exports stay small);
:func:`cluster_model` shares each kernel among a few k-means centroids and returns a
plain model. :func:`share` dispatches on ``method`` with options checked by
:data:`SHARE_OPTIONS` (the schema behind ``compress share`` and the recipe step).

Example:

>>> from compress.sharing import share
>>> hashed, info = share(model, ds, method="hash", factor=0.125, epochs=3)   # doctest: +SKIP
>>> clustered, info = share(model, ds, method="kmeans", clusters=16)       # doctest: +SKIP
"""

from __future__ import annotations

from compress.passes import Pass
from compress.sharing.share_options import HASH_OPTIONS, KMEANS_OPTIONS, SHARE_OPTIONS


def share(model, data=None, *, verbose=0, **options):
    """Share weights with the method named by ``options["method"]``.

    Example:

    >>> new_model, info = share(model, ds, method="kmeans", clusters=16)  # doctest: +SKIP

    Args:
        model: a Keras model (not modified).
        data: a :class:`compress.data.Dataset` prepared for the model, or None.
        verbose: Keras ``verbose`` for fine-tuning, default 0.
        **options: see :data:`SHARE_OPTIONS`: ``method`` (``"hash"``), the options of
            that method (:func:`hash_model`, :func:`cluster_model`) and the common ones,
            ``layers`` (a list, as in prune), ``epochs``, ``learning_rate``,
            ``batch_size``, ``seed`` (0). Options of the other method are accepted and
            ignored (a recipe may switch methods with an override).

    Returns:
        ``(new_model, info)``.

    Raises:
        CompressError: bad options, or a model Keras already quantized (its int8 values
            are not its weights: start from the float model).
    """
    from compress.runtime import refuse_keras_quantized

    opts = SHARE_OPTIONS.validate(options)
    refuse_keras_quantized(model)  # clustering or hashing int8 values without their scales
    if opts["method"] == "hash":
        from compress.sharing.hashing import hash_model

        return hash_model(model, data, verbose=verbose,
                          **{n: opts[n] for n in HASH_OPTIONS.names()})
    from compress.sharing.kmeans import cluster_model

    return cluster_model(model, data, verbose=verbose,
                         **{n: opts[n] for n in KMEANS_OPTIONS.names()})


def __getattr__(name):
    import importlib

    where = {"hash_model": "compress.sharing.hashing",
             "materialize": "compress.sharing.hashing",
             **{name: "compress.sharing.hashed_layers" for name in (
                 "HashedDense", "HashedConv1D", "HashedConv2D", "HashedConv3D",
                 "HashedEmbedding")},
             "cluster_model": "compress.sharing.kmeans",
             "kmeans_1d": "compress.sharing.kmeans"}
    if name not in where:
        raise AttributeError(f"module 'compress.sharing' has no attribute '{name}'")
    return getattr(importlib.import_module(where[name]), name)


__all__ = [
    "SHARE_OPTIONS",
    "HashedConv1D",
    "HashedConv2D",
    "HashedConv3D",
    "HashedDense",
    "HashedEmbedding",
    "cluster_model",
    "hash_model",
    "kmeans_1d",
    "materialize",
    "share",
]


def needs_data(opts: dict) -> list[str]:
    """The share options that need data (fine-tuning)."""
    return [f"epochs {opts['epochs']}"] if opts["epochs"] else []


PASS = Pass("share", "share weights: HashedNets buckets or k-means centroids per layer",
            share, SHARE_OPTIONS, needs_data=needs_data, trains=True, order=30)
