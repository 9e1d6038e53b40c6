"""``PRUNE_OPTIONS``: the options of the prune pass (CLI flags, recipe step, keywords).

Kept apart from the pass itself (:mod:`compress.pruning.prune_pass`) so that the CLI
reads it without importing Keras, and the :class:`compress.callbacks.Pruning` callback
reuses its fields without importing the pass.

Example:

>>> PRUNE_OPTIONS.validate({"sparsity": 0.5, "layers": "fc.*"})["layers"]
['fc.*']
>>> resolve_sparsity(PRUNE_OPTIONS.validate({}))["sparsity"]
0.9
"""

from __future__ import annotations

from compress.layers import LAYERS_OPTION
from compress.options import Option, Schema
from compress.pruning.criteria import CRITERIA
from compress.pruning.obd import ESTIMATORS
from compress.task import TASK_OPTIONS

#: The sparsity of the prune pass when neither ``sparsity`` nor ``quality`` is given.
DEFAULT_SPARSITY = 0.9

PRUNE_OPTIONS = Schema("prune", [
    Option("method", str, "magnitude", "saliency criterion: |w|, Optimal Brain Damage, or "
           "Optimal Brain Surgeon (obs: layer by layer, remaining weights compensated; "
           "with --structured, units chosen by OBS and their consumers refit)",
           choices=tuple(CRITERIA)),
    # No schema default: the pass tells "not given" (0.9 then) from a --sparsity that
    # --quality would silently override.
    Option("sparsity", float, None, "fraction of weights (or units with --structured) removed "
           f"(default {DEFAULT_SPARSITY}; not with --quality)", low=0.0, high=1.0,
           high_inclusive=False),
    Option("schedule", str, "oneshot", "oneshot, gradual (polynomial, Zhu & Gupta) or "
           "iterative prune-retrain rounds (Han et al.)",
           choices=("oneshot", "gradual", "iterative")),
    Option("structured", bool, False, "remove whole units/filters and rebuild smaller layers"),
    Option("two_four", bool, False, "semi-structured 2:4 sparsity (2 of every 4 input weights)"),
    Option("block", int, 1, "remove weights in blocks of N consecutive inputs of one unit: "
           "runs of zeros that zip smaller (TFLite stores Dense kernels input-minor)", low=1),
    Option("scope", str, "layer", "rank weights within each layer (same sparsity in each), "
           "across all layers (one threshold), or within each layer at per-layer sparsities "
           "set by the validation loss measured when pruning each layer alone (sensitivity; "
           "needs --data)", choices=("layer", "global", "sensitivity")),
    Option("quality", float, None, "Han et al.'s per-layer threshold quality x std(w) "
           "(instead of --sparsity; magnitude, unstructured, oneshot or iterative)", low=0.0,
           low_inclusive=False, finite=False),  # resolve_sparsity explains infinity
    Option("estimator", str, "backprop", "OBD Hessian-diagonal estimator (layer: the "
           "diagonal of each layer's Hessian 2XX^T, one forward pass)", choices=ESTIMATORS),
    Option("damp", float, 0.01, "OBS: dampening added to each layer Hessian's diagonal, "
           "a fraction of its mean", low=0.0),
    Option("damping", float, 0.0, "OBD: Levenberg-Marquardt damping added to the Hessian "
           "diagonal, relative to each layer's mean (0: plain OBD; large: ranks like "
           "magnitude)", low=0.0),
    Option("calibration", int, 1024, "training samples used for OBD/OBS saliencies",
           low=1),
    Option("epochs", int, 0, "fine-tuning epochs (needs --data)", low=0),
    Option("rounds", int, 3, "prune-retrain rounds of the iterative schedule", low=1),
    Option("learning_rate", float, 5e-4, "fine-tuning learning rate (the gradual schedule "
           "trains at twice it: it recovers from every mask update)", low=0.0,
           low_inclusive=False),
    Option("batch_size", int, 64, "fine-tuning batch size", low=1),
    Option("frequency", int, 50, "steps between mask updates (gradual)", low=1),
    LAYERS_OPTION,
    Option("skip_first_last", bool, False, "leave the first and last prunable layers dense"),
    Option("norm", str, "l2", "unit norm ranking units for --structured magnitude "
           "(bn: |gamma| / sqrt(var + eps) x L1, the scale of the following BatchNorm)",
           choices=("l1", "l2", "bn")),
    Option("distill", bool, False, "fine-tune by distillation from the original model"),
    Option("balance", bool, False, "rank the weights of each output unit separately: every "
           "unit keeps the same fraction of its inputs, so no unit or class is cut off "
           "(with --scope global the threshold still sets each layer's sparsity)"),
    Option("steps", int, 1, "saliency re-estimations within one pruning round (OBD: delete "
           "a few, re-estimate, repeat; no retraining between steps)", low=1),
    Option("restore_best", bool, False, "gradual/fine-tuning: keep the weights of the epoch "
           "with the best validation accuracy (gradual: only once the final sparsity is "
           "reached)"),
    Option("cosine", bool, False, "fine-tune with a cosine learning-rate decay"),
    Option("bn_recalibrate", bool, True, "with data: re-estimate every BatchNorm layer's "
           "moving mean/variance on 1024 training samples after pruning and fine-tuning "
           "(exact averages, no weight update): the old statistics describe the denser "
           "network"),
    *TASK_OPTIONS,
    Option("seed", int, 0, "seed of fine-tuning and of OBD's random probes (the CLI's --seed)",
           cli=False),
])


def resolve_sparsity(opts: dict, where: str = "prune") -> dict:
    """Validated options with ``sparsity`` filled in: :data:`DEFAULT_SPARSITY` unless
    ``quality`` is given, which sets each layer's threshold instead (then None).

    Raises:
        CompressError: both ``sparsity`` and ``quality`` given, or a quality that is not a
            finite number (infinity would zero every weight).
    """
    import math

    from compress.errors import CompressError

    opts = dict(opts)
    if opts["quality"] is None:
        if opts["sparsity"] is None:
            opts["sparsity"] = DEFAULT_SPARSITY
        return opts
    if opts["sparsity"] is not None:
        raise CompressError(f"{where}: --quality sets each layer's threshold and --sparsity "
                            "a fraction of weights; give one of them")
    if not math.isfinite(opts["quality"]):
        raise CompressError(f"{where}: --quality must be a finite number, got "
                            f"{opts['quality']} (it would zero every weight)")
    return opts
