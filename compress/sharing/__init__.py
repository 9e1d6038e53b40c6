"""Weight sharing: HashedNets (the hashing trick) and k-means clustering.

:func:`hash_model` turns Dense/Conv2D layers into :class:`HashedDense` /
:class:`HashedConv2D` (only the hash buckets are stored, and exports stay small);
:func:`cluster_model` shares each kernel among a few k-means centroids and returns a
plain model. :func:`share` dispatches on ``method`` with options checked by
:data:`SHARE_OPTIONS` (the schema behind ``compress share`` and the recipe step).

Example:

>>> from compress.sharing import share
>>> hashed, info = share(model, ds, method="hash", factor=0.125, epochs=3)   # doctest: +SKIP
>>> clustered, info = share(model, ds, method="kmeans", clusters=16)       # doctest: +SKIP
"""

from __future__ import annotations

from compress.options import Option, Schema

SHARE_OPTIONS = Schema("share", [
    Option("method", str, "hash", "weight sharing method", choices=("hash", "kmeans")),
    Option("factor", float, 0.125, "hash: stored buckets per virtual weight", low=0.0,
           high=1.0, low_inclusive=False),
    Option("clusters", int, 16, "kmeans: centroids per layer", low=2),
    Option("epochs", int, 0, "fine-tuning epochs after sharing (needs data)", low=0),
    Option("layers", str, None, "regular expression on the names of layers to share "
           "(default: every Dense and Conv2D)"),
    Option("learning_rate", float, None, "Adam learning rate for fine-tuning (default 1e-3 "
           "for hash, 1e-4 for kmeans)", low=0.0, low_inclusive=False),
    Option("batch_size", int, 64, "fine-tuning batch size", low=1),
    Option("init", str, "dense", "hash: start the buckets from the trained weights (dense) "
           "or afresh (scratch, as HashedNets are trained)", choices=("dense", "scratch")),
    Option("dropout", float, 0.0, "hash: training dropout on hidden units (Chen et al. "
           "train hashed nets with it)", low=0.0, high=1.0, high_inclusive=False),
    Option("seed", int, 0, "hash, k-means++ and training seed", cli=False),
])


def share(model, data=None, path: str | None = None, verbose=0, **options):
    """Share weights with the method named by ``options["method"]``.

    Example:

    >>> new_model, info = share(model, ds, method="kmeans", clusters=16)  # doctest: +SKIP

    Args:
        model: a Keras model (not modified).
        data: a :class:`compress.data.Dataset` prepared for the model, or None.
        path: where the options came from, for error messages (e.g. ``steps[1].share``).
        verbose: Keras ``verbose`` for fine-tuning, default 0.
        **options: see :data:`SHARE_OPTIONS`.

    Returns:
        ``(new_model, info)``.
    """
    opts = SHARE_OPTIONS.validate(options, path=path)
    common = {"layers": opts["layers"], "epochs": opts["epochs"], "seed": opts["seed"],
              "learning_rate": opts["learning_rate"], "batch_size": opts["batch_size"],
              "verbose": verbose}
    if opts["method"] == "hash":
        return hash_model(model, data, factor=opts["factor"], init=opts["init"],
                          dropout=opts["dropout"], **common)
    return cluster_model(model, data, clusters=opts["clusters"], **common)


def __getattr__(name):
    import importlib

    where = {"hash_model": "compress.sharing.hashing",
             "HashedDense": "compress.sharing.hashing",
             "HashedConv2D": "compress.sharing.hashing",
             "cluster_model": "compress.sharing.kmeans",
             "materialize": "compress.sharing.hashing",
             "kmeans_1d": "compress.sharing.kmeans"}
    if name not in where:
        raise AttributeError(f"module 'compress.sharing' has no attribute '{name}'")
    return getattr(importlib.import_module(where[name]), name)


def hash_model(model, data=None, **kwargs):
    """See :func:`compress.sharing.hashing.hash_model`."""
    from compress.sharing.hashing import hash_model as run

    return run(model, data, **kwargs)


def cluster_model(model, data=None, **kwargs):
    """See :func:`compress.sharing.kmeans.cluster_model`."""
    from compress.sharing.kmeans import cluster_model as run

    return run(model, data, **kwargs)


__all__ = [
    "SHARE_OPTIONS",
    "HashedConv2D",
    "HashedDense",
    "cluster_model",
    "hash_model",
    "kmeans_1d",
    "materialize",
    "share",
]
