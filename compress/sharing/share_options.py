"""The options of the sharing passes: ``share`` and its two methods, hash and k-means.

:data:`SHARE_OPTIONS` is the schema of ``compress share``, the recipe's ``share`` step and
:func:`compress.sharing.share`; :data:`HASH_OPTIONS` and :data:`KMEANS_OPTIONS` are the
same options, less those of the other method, for :func:`~compress.sharing.hashing.hash_model`
and :func:`~compress.sharing.kmeans.cluster_model`. Each option is defined once here, so
the three cannot disagree. Kept apart from the passes so the CLI reads them without Keras.

Example:

>>> HASH_OPTIONS.validate({"factor": 0.25, "layers": "fc.*"})["layers"]
['fc.*']
>>> HASH_OPTIONS.validate({"factor": 2})
Traceback (most recent call last):
...
compress.errors.CompressError: share.factor: must be in (0.0, 1.0], got 2.0
"""

from __future__ import annotations

from compress.layers import LAYERS_OPTION
from compress.options import Option, Schema
from compress.task import TASK_OPTIONS

_OPTIONS = {o.name: o for o in [
    Option("method", str, "hash", "weight sharing method", choices=("hash", "kmeans")),
    Option("factor", float, 0.125, "hash: stored buckets per virtual weight", low=0.0,
           high=1.0, low_inclusive=False),
    Option("clusters", int, 16, "kmeans: centroids per layer", low=2),
    Option("epochs", int, 0, "fine-tuning epochs after sharing (needs data)", low=0),
    LAYERS_OPTION,
    Option("learning_rate", float, None, "Adam learning rate for fine-tuning (default 1e-3 "
           "for hash, 1e-4 for kmeans)", low=0.0, low_inclusive=False),
    Option("batch_size", int, 64, "fine-tuning batch size", low=1),
    Option("init", str, "dense", "hash: start the buckets from the trained weights (dense) "
           "or afresh (scratch, as HashedNets are trained)", choices=("dense", "scratch")),
    Option("dropout", float, 0.0, "hash: training dropout on hidden units (Chen et al. "
           "train hashed nets with it)", low=0.0, high=1.0, high_inclusive=False),
    *TASK_OPTIONS,
    Option("seed", int, 0, "hash, k-means++ and training seed (the CLI's --seed)", cli=False),
]}


def _schema(*names: str) -> Schema:
    return Schema("share", [_OPTIONS[n] for n in names])


_COMMON = ("epochs", "layers", "learning_rate", "batch_size", "loss", "metrics", "seed")

SHARE_OPTIONS = _schema(*_OPTIONS)
HASH_OPTIONS = _schema("factor", *_COMMON, "init", "dropout")
KMEANS_OPTIONS = _schema("clusters", *_COMMON)
