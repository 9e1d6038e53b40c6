"""Pruning for Keras 3: magnitude and Optimal Brain Damage, schedules, structured removal.

Plain Keras models in, plain Keras models out: masks live in variable constraints during
training and are gone from saved files. The saliency criteria (:mod:`compress.pruning.criteria`)
serve the pass, the :class:`compress.callbacks.Pruning` callback and structured pruning.

Example:

>>> from compress.pruning import prune
>>> pruned, info = prune(model, ds, method="obd", sparsity=0.8, epochs=2)  # doctest: +SKIP
"""

from compress.pruning.criteria import CRITERIA, saliency_scores, unit_scores
from compress.pruning.masks import (
    ZeroMask,
    global_masks,
    keep_zeros,
    lowest_mask,
    n_m_mask,
    prunable_weights,
    release_zeros,
)
from compress.pruning.prune_options import PRUNE_OPTIONS
from compress.pruning.prune_pass import prune

__all__ = [
    "CRITERIA",
    "PRUNE_OPTIONS",
    "ZeroMask",
    "global_masks",
    "hessian_diagonal",
    "keep_zeros",
    "lowest_mask",
    "magnitude_saliency",
    "n_m_mask",
    "obd_saliency",
    "prunable_weights",
    "prune",
    "prune_channels_obs",
    "prune_units",
    "release_zeros",
    "saliency_scores",
    "sensitivity_masks",
    "unit_scores",
]


def __getattr__(name):
    import importlib

    where = {"prune_units": "compress.pruning.structured",
             "prune_channels_obs": "compress.pruning.structured_obs",
             "magnitude_saliency": "compress.pruning.magnitude",
             "obd_saliency": "compress.pruning.obd",
             "hessian_diagonal": "compress.pruning.obd",
             "sensitivity_masks": "compress.pruning.sensitivity"}
    if name not in where:
        raise AttributeError(f"module 'compress.pruning' has no attribute '{name}'")
    return getattr(importlib.import_module(where[name]), name)
