"""Sensitivity allocation: per-layer sparsities from the loss measured on held-out data.

A global threshold compares saliencies across layers, so it trusts each criterion's
scale: OBD's diagonal model underestimates the real loss increase by a different factor
in each layer (off-diagonal terms add up coherently in wide layers). Sensitivity
analysis (Han et al. 2015, section 4; Distiller, NNI) measures instead: for every layer
alone, the validation loss after pruning its lowest-saliency weights at a grid of
sparsities, everything else unchanged. The per-layer sparsities then follow greedily:
the next cut always goes where the measured loss increase per removed weight is lowest,
until the overall sparsity is reached. The criterion (|w| or OBD) still picks which
weights go inside each layer.

Example:

>>> from compress.pruning.sensitivity import allocate_sparsities
>>> curves = [([0.0, 0.5, 0.9], [1.0, 1.0, 1.2]), ([0.0, 0.5, 0.9], [1.0, 1.5, 3.0])]
>>> [round(s, 2) for s in allocate_sparsities(curves, [100, 100], 0.6)]
[0.9, 0.3]
"""

from __future__ import annotations

import weakref

import numpy as np

from compress.errors import CompressError

#: Sparsities at which each layer's loss is measured.
GRID = tuple(np.round(np.r_[np.arange(0.0, 0.951, 0.05), 0.97, 0.99], 4))


_LOSS_FNS = weakref.WeakKeyDictionary()


def layer_loss_curves(model, variables, scores, x, y, grid=GRID, mask_fn=None) -> list:
    """Per variable, ``(sparsities, losses)``: the mean cross-entropy on ``(x, y)`` after
    zeroing that variable's lowest-scored weights at each sparsity of ``grid`` (from its
    current sparsity up), every other weight unchanged.

    Args:
        model: a Keras classifier holding ``variables``.
        variables: list of weight variables.
        scores: list of saliency arrays, one per variable (already pruned weights
            ``-inf``).
        x, y: held-out inputs and integer labels.
        grid: sequence of float, default :data:`GRID`.
        mask_fn: callable ``(scores, sparsity) -> mask``, default
            :func:`compress.pruning.masks.lowest_mask`.
    """
    import tensorflow as tf

    from compress.pruning.masks import lowest_mask
    from compress.pruning.obd import _log_probs

    mask_fn = mask_fn or lowest_mask
    xt = tf.constant(np.asarray(x), dtype=model.inputs[0].dtype or "float32")
    yt = tf.constant(np.asarray(y).astype("int64").reshape(-1))
    if model not in _LOSS_FNS:  # traced once per model: stepwise pruning calls this often
        _LOSS_FNS[model] = tf.function(lambda xb, yb: -tf.reduce_mean(
            tf.gather(_log_probs(model, xb), yb, batch_dims=1)), reduce_retracing=True)
    loss_fn = _LOSS_FNS[model]

    def loss():
        return loss_fn(xt, yt)

    curves = []
    for var, s in zip(variables, scores):
        w = np.asarray(var)
        current = float(np.mean(~np.isfinite(s))) if np.size(s) else 0.0
        points = [current] + [float(g) for g in grid if g > current + 1e-9]
        losses = []
        for p in points:
            var.assign(w * mask_fn(s, p))
            losses.append(float(loss()))
        var.assign(w)
        curves.append((points, losses))
    return curves


def allocate_sparsities(curves, sizes, sparsity: float) -> list:
    """Per-layer sparsities reaching ``sparsity`` overall at the lowest measured loss.

    Greedy on the measured curves: starting from each layer's first point, repeatedly
    move the layer (to any later point of its curve) whose loss increase per removed
    weight is lowest; the last move stops exactly at the requested total.

    Args:
        curves: list of ``(sparsities, losses)`` per layer (see
            :func:`layer_loss_curves`).
        sizes: list of int, the number of weights of each layer.
        sparsity: float, the overall fraction of zeros wanted.

    Returns:
        A list of float sparsities, one per layer.
    """
    sizes = [int(n) for n in sizes]
    total = float(sum(sizes))
    pos = [0] * len(curves)
    alloc = [float(c[0][0]) for c in curves]
    need = sparsity * total - sum(a * n for a, n in zip(alloc, sizes))
    while need > 0.5:
        best = None
        for i, (pts, losses) in enumerate(curves):
            for j in range(pos[i] + 1, len(pts)):
                removed = sizes[i] * (pts[j] - pts[pos[i]])
                if removed <= 0:
                    continue
                cost = (losses[j] - losses[pos[i]]) / removed
                if best is None or cost < best[0]:
                    best = (cost, i, j, removed)
        if best is None:  # every curve exhausted: spread the rest uniformly
            return [max(a, sparsity) for a in alloc]
        _, i, j, removed = best
        if removed >= need:
            alloc[i] += need / sizes[i]
            break
        alloc[i], pos[i] = float(curves[i][0][j]), j
        need -= removed
    return alloc


def sensitivity_masks(model, variables, scores, x, y, sparsity: float, balance=False):
    """Masks reaching ``sparsity`` overall with per-layer sparsities from
    :func:`allocate_sparsities` on losses measured on ``(x, y)``; inside each layer the
    lowest ``scores`` go.

    Returns:
        ``(masks, sparsities)``: lists, one entry per variable.

    Raises:
        CompressError: when no held-out data is given.
    """
    from compress.pruning.masks import balanced_mask, lowest_mask

    if x is None or len(x) == 0:
        raise CompressError("prune: scope 'sensitivity' measures the loss on validation "
                            "data; the dataset has none")
    mask_fn = balanced_mask if balance else lowest_mask
    curves = layer_loss_curves(model, variables, scores, x, y, mask_fn=mask_fn)
    alloc = allocate_sparsities(curves, [int(np.size(s)) for s in scores], sparsity)
    return [mask_fn(s, a) for s, a in zip(scores, alloc)], alloc
