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

from compress.data.arrays import leaves
from compress.errors import CompressError

#: Sparsities at which each layer's loss is measured.
GRID = tuple(np.round(np.r_[np.arange(0.0, 0.951, 0.05), 0.97, 0.99], 4))


#: Held-out samples the losses are measured on: the loss is measured about twenty times
#: per layer on the same samples, so they are held in memory; only they are read from the
#: validation split (a stream is not read whole).
SENSITIVITY_SAMPLES = 1024

_LOSS_FNS = weakref.WeakKeyDictionary()


def held_out(data, n: int = SENSITIVITY_SAMPLES) -> tuple:
    """``(x, y)``: ``n`` samples of ``data``'s validation split (its first ones; an image
    folder's drawn at random, its lists being in class order), the only ones
    :func:`sensitivity_masks` reads (``y`` None for unlabelled data).

    >>> import numpy as np
    >>> from compress.data import Dataset
    >>> ds = Dataset("d", *[np.zeros((3000, 2)), None] * 3, num_classes=0)
    >>> held_out(ds)[0].shape
    (1024, 2)
    """
    return data.spread("val", n)


def layer_loss_curves(model, variables, scores, x, y, grid=GRID, mask_fn=None,
                      task=None) -> list:
    """Per variable, ``(sparsities, losses)``: the model's own loss on ``(x, y)`` after
    zeroing that variable's lowest-scored weights at each sparsity of ``grid`` (from its
    current sparsity up), every other weight unchanged.

    The loss is the task's (:mod:`compress.task`: cross-entropy for a classifier, mean
    squared error for a regression, ...). Without targets (``y`` None) it is the
    fidelity to the model as it is now (KL divergence for a classifier, MSE otherwise).

    Args:
        model: a Keras model holding ``variables``.
        variables: list of weight variables.
        scores: list of saliency arrays, one per variable (already pruned weights
            ``-inf``).
        x, y: held-out inputs and targets (integer labels for a classifier), or ``y``
            None.
        grid: sequence of float, default :data:`GRID`.
        mask_fn: callable ``(scores, sparsity) -> mask``, default
            :func:`compress.pruning.masks.lowest_mask`.
        task: :class:`compress.task.Task` or None, default None (the model's own).
    """
    import tensorflow as tf

    from compress.pruning.masks import lowest_mask
    from compress.task import CLASSIFICATION, resolve

    mask_fn = mask_fn or lowest_mask
    xt = tf.constant(np.asarray(x), dtype=model.inputs[0].dtype or "float32")
    task = task or resolve(model, y=y)
    labels = y is not None and task.kind == CLASSIFICATION and \
        int(np.prod(np.shape(y)[1:])) == 1
    fns = _LOSS_FNS.setdefault(model, {})  # traced once per model and loss
    if labels:
        from compress.pruning.obd import _log_probs

        yt = tf.constant(np.asarray(y).astype("int64").reshape(-1))
        key = "cross_entropy"
        if key not in fns:
            fns[key] = tf.function(lambda xb, yb: -tf.reduce_mean(
                tf.gather(_log_probs(model, xb), yb, batch_dims=1)), reduce_retracing=True)
    else:
        from compress.task import _fresh, per_sample_loss

        if y is None:  # no labels: fidelity to the model before any cut
            loss_obj, targets = task.fidelity_loss()
            yt = tf.constant(np.asarray(targets(model(xt, training=False)), "float32"))
            key = ("fidelity", task.kind, task.from_logits)
        else:
            loss_obj = _fresh(task.loss)
            shape = tuple(model.outputs[0].shape[1:])
            if task.kind == CLASSIFICATION and np.size(y) == len(xt) * int(np.prod(shape[:-1])):
                # a class per position (pixels, tokens): integer labels, the model's loss
                yt = tf.constant(np.asarray(y).astype("int64").reshape((len(xt),) + shape[:-1]))
            else:
                yt = tf.constant(np.asarray(y, "float32").reshape((len(xt),) + shape))
            key = ("task", task.loss_name, yt.dtype.name)
        if key not in fns:
            fn = per_sample_loss(loss_obj)
            fns[key] = tf.function(lambda xb, yb: tf.reduce_mean(
                fn(yb, tf.cast(model(xb, training=False), "float32"))), reduce_retracing=True)
    loss_fn = fns[key]

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


def sensitivity_masks(model, variables, scores, x, y, sparsity: float, balance=False,
                      task=None):
    """Masks reaching ``sparsity`` overall with per-layer sparsities from
    :func:`allocate_sparsities` on losses measured on ``(x, y)`` (at most
    :data:`SENSITIVITY_SAMPLES` held-out samples: :func:`held_out`; ``y`` None measures
    the fidelity to the model instead); inside each layer the lowest ``scores`` go.
    ``task`` is the :class:`compress.task.Task` (default: the model's own).

    Returns:
        ``(masks, sparsities)``: lists, one entry per variable.

    Raises:
        CompressError: when no held-out data is given.
    """
    from compress.pruning.masks import balanced_mask, lowest_mask

    if x is None or len(leaves(x)) == 0 or len(leaves(x)[0]) == 0:
        raise CompressError("prune: scope 'sensitivity' measures the loss on validation "
                            "data; the dataset has none")
    mask_fn = balanced_mask if balance else lowest_mask
    curves = layer_loss_curves(model, variables, scores, x, y, mask_fn=mask_fn, task=task)
    alloc = allocate_sparsities(curves, [int(np.size(s)) for s in scores], sparsity)
    return [mask_fn(s, a) for s, a in zip(scores, alloc)], alloc
