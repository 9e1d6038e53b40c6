"""Optimal Brain Surgeon pruning with weight compensation, layer by layer (SparseGPT/OBC).

Each layer's weights ``W`` (rows: output units, columns: inputs) are pruned to minimise
the layer's output error ``||W X - W' X||^2`` on calibration inputs ``X``, whose Hessian
is ``H = 2 X X^T`` (:mod:`compress.pruning.hessian`). Removing weight ``q`` of a row
costs ``w_q^2 / [H^-1]_qq`` and the optimal compensation of the row's other weights is
``-w_q / [H^-1]_qq * H^-1[:, q]`` (Hassibi & Stork 1993). :func:`sparsegpt_prune`
applies it column by column as SparseGPT does (Frantar & Alistarh 2023): the upper
Cholesky factor ``U`` of ``H^-1`` gives every column's update over the columns not yet
visited, the mask is chosen per block of ``block`` columns by ``w^2 / U_qq^2``, and the
updates are applied lazily, a block at a time, to the columns after it. N:M patterns
choose ``n`` of every ``m`` columns per row as the sweep reaches them.
:func:`exact_obs` is the greedy ExactOBS of OBC (one weight at a time, every remaining
weight of the row updated, ``H^-1`` downdated): exact, and a reference for small layers.

Layers are compressed in model order and each one's Hessian is measured on the inputs
produced by the layers already compressed before it (sequential calibration).

Example:

>>> masks, info = obs_masks(model, kernels, x, sparsity=0.5)   # doctest: +SKIP
>>> pruned, info = prune(model, ds, method="obs", sparsity=0.5)  # doctest: +SKIP
"""

from __future__ import annotations

import time

import numpy as np

from compress import progress
from compress.errors import CompressError
from compress.pruning.masks import lowest_indices


def _inverse_lower_cholesky(h: np.ndarray, name: str, damp: float) -> np.ndarray:
    """``L^-1`` for the lower Cholesky factors ``L`` (``L L^T = H``) of a stack of
    Hessians, so ``H^-1 = L^-T L^-1``; one clear error for a singular Hessian."""
    from scipy.linalg import lapack

    try:
        lower = np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        lower = None
    if lower is not None:
        piv = np.einsum("gii->gi", lower) ** 2
        scale = np.einsum("gii->gi", h).max(axis=1, keepdims=True)
        if np.all(piv > 1e-12 * np.maximum(scale, 1e-300)):
            # A triangular inverse (LAPACK trtri) costs a third of a general solve.
            out = np.empty_like(lower)
            for g in range(len(lower)):
                out[g], info = lapack.dtrtri(lower[g], lower=1)
                if info:
                    break
            else:
                return np.tril(out)
    more = "more damping (--damp 0.01)" if not damp else f"more damping than {damp:g}"
    raise CompressError(f"layer '{name}': its Hessian is singular; use {more} or more "
                        "calibration samples")


def _cholesky_inverse_upper(h: np.ndarray, name: str, damp: float) -> np.ndarray:
    """Upper Cholesky factors ``U`` (``U^T U = H^-1``) of a stack of Hessians."""
    linv = _inverse_lower_cholesky(h, name, damp)
    hinv = np.swapaxes(linv, -1, -2) @ linv
    return np.swapaxes(np.linalg.cholesky(hinv), -1, -2)


def _hinv_diagonal(h: np.ndarray, name: str, damp: float) -> np.ndarray:
    """``diag(H^-1)`` of a stack of Hessians, ``(G, d)``: the column sums of squares of
    ``L^-1`` (what OBS saliencies need; no full inverse, no second factorisation)."""
    linv = _inverse_lower_cholesky(h, name, damp)
    return np.einsum("gij,gij->gj", linv, linv)


def damped(h: np.ndarray, damp: float) -> np.ndarray:
    """A stack of Hessians ``(G, d, d)`` (changed in place) with ``damp`` times the mean
    diagonal added to each diagonal, and a small diagonal for inputs that were always zero
    in calibration (their weights cost nothing there, so changing them is free)."""
    cols = h.shape[-1]
    diag = np.einsum("gii->gi", h)
    dead = diag == 0
    mean = np.where(dead, 0.0, diag).sum(1) / np.maximum((~dead).sum(1), 1)
    mean = np.where(mean > 0, mean, 1.0)
    gi, qi = np.nonzero(dead)
    # Pruning them is free (ranked first) but not forced: kept ones keep their value
    # for inputs that calibration never lit.
    h[gi, qi, qi] = max(damp, 1e-6) * mean[gi]
    if damp:
        h[:, np.arange(cols), np.arange(cols)] += damp * mean[:, None]
    return h


def sparsegpt_prune(w, h, sparsity: float = 0.0, n: int = 0, m: int = 0,
                    block: int = 128, damp: float = 0.01, fixed=None, quota=None,
                    name: str = "layer"):
    """Prune ``w`` with OBS compensation, column-block by column-block (SparseGPT).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 8)); w = rng.normal(size=(3, 8))
    >>> w2, mask, err = sparsegpt_prune(w, 2 * x.T @ x / 64, sparsity=0.5)
    >>> int((w2 == 0).sum()), bool(mask.sum() == 12)
    (12, True)

    Args:
        w: array ``(rows, cols)`` or a stack ``(G, rows, cols)`` sharing nothing but
            their shape (each with its own Hessian).
        h: array ``(cols, cols)`` or ``(G, cols, cols)``: the Hessians (``2 X X^T / N``).
        sparsity: float in [0, 1). Fraction of weights removed (unstructured).
        n, m: ints, default 0. N:M pattern: remove ``n`` of every ``m`` consecutive
            columns of each row (SparseGPT's ``prunen``/``prunem``; 2:4 is ``n=2, m=4``);
            0 for unstructured.
        block: int, default 128. Columns per lazy-update block (and per mask choice).
        damp: float, default 0.01. Fraction of the mean diagonal added to ``H``.
        fixed: bool array like ``w`` or None: weights that must be pruned (already zero
            in an earlier round).
        quota: callable ``(count) -> k`` or None: how many of the next ``count`` weights
            to remove (an exact per-layer total across calls); default
            ``round(sparsity * count)``.
        name: str. The layer named in errors.

    Returns:
        ``(new_w, mask, error)``: float64 weights like ``w``, the bool mask of removed
        weights, and the predicted increase of ``||W X - W' X||^2 / N`` (OBS's sum of
        ``(w - q)^2 / U_qq^2 / 2``; exact for the quadratic, per stack entry).

    Raises:
        CompressError: a singular Hessian (give damping or more samples).
    """
    squeeze = np.ndim(w) == 2
    w = np.array(w, dtype="float64", ndmin=3, copy=True)
    h = np.array(h, dtype="float64", ndmin=3, copy=True)
    g, _, cols = w.shape
    fixed = np.zeros(w.shape, bool) if fixed is None else np.array(fixed, bool, ndmin=3)
    if quota is None:
        def quota(count):
            return round(sparsity * count)
    if m and block % m:
        block += m - block % m
    u = _cholesky_inverse_upper(damped(h, damp), name, damp)
    mask = np.zeros(w.shape, bool)
    losses = np.zeros(g)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, :, i1:i2].copy()
        q1 = np.zeros_like(w1)
        err1 = np.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        d1 = np.einsum("gii->gi", u1)[:, None, :]  # (g, 1, count)
        fix1 = fixed[:, :, i1:i2]
        if not n:
            score = np.where(fix1, -np.inf, w1 ** 2 / d1 ** 2).reshape(-1)
            k = max(quota(score.size), int(fix1.sum()))
            m1 = np.zeros(score.size, bool)
            if k:
                m1[lowest_indices(score, min(k, score.size))] = True
            m1 = m1.reshape(w1.shape)
        else:
            m1 = np.zeros(w1.shape, bool)
        for i in range(i2 - i1):
            if n and i % m == 0:
                grp = slice(i, i + m)
                score = np.where(fix1[:, :, grp], -np.inf, w1[:, :, grp] ** 2 / d1[:, :, grp] ** 2)
                low = np.argsort(score, axis=-1, kind="stable")[..., :n]
                np.put_along_axis(m1[:, :, grp], low, True, axis=-1)
            col = w1[:, :, i]
            q = np.where(m1[:, :, i], 0.0, col)
            d = d1[:, :, i]
            err = (col - q) / d
            losses += (err ** 2).sum(axis=1) / 2
            w1[:, :, i:] -= err[:, :, None] * u1[:, None, i, i:]
            q1[:, :, i] = q
            err1[:, :, i] = err
        w[:, :, i1:i2] = q1
        mask[:, :, i1:i2] = m1
        w[:, :, i2:] -= np.einsum("grb,gbc->grc", err1, u[:, i1:i2, i2:])
    if squeeze:
        return w[0], mask[0], float(losses[0])
    return w, mask, losses


def exact_obs(w, h, per_row: int, damp: float = 0.0):
    """Greedy ExactOBS (OBC): remove ``per_row`` weights of every row one at a time, each
    the cheapest ``w_q^2 / [H^-1]_qq`` with every remaining weight of the row compensated
    and ``H^-1`` downdated; ``O(cols^3)`` per row, for small layers and as a reference.

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(64, 6)); w = rng.normal(size=(2, 6))
    >>> w2, order = exact_obs(w, 2 * x.T @ x / 64, per_row=3)
    >>> (w2 == 0).sum(axis=1).tolist(), [len(o) for o in order]
    ([3, 3], [3, 3])

    Returns:
        ``(new_w, order)``: the pruned and compensated weights and, per row, the
        columns in the order they were removed.
    """
    w = np.array(w, dtype="float64", copy=True)
    h = np.array(h, dtype="float64", copy=True)
    if damp:
        h[np.diag_indices_from(h)] += damp * np.mean(np.diag(h))
    hinv0 = np.linalg.inv(h)
    orders = []
    for r in range(w.shape[0]):
        hinv = hinv0.copy()
        row = w[r]
        alive = np.ones(row.size, bool)
        order = []
        for _ in range(per_row):
            with np.errstate(divide="ignore", invalid="ignore"):
                score = np.where(alive, row ** 2 / np.diag(hinv), np.inf)
            q = int(np.argmin(score))
            row = row - row[q] / hinv[q, q] * hinv[:, q]
            row[q] = 0.0
            hinv = hinv - np.outer(hinv[:, q], hinv[q, :]) / hinv[q, q]
            alive[q] = False
            order.append(q)
        w[r] = np.where(alive, row, 0.0)
        orders.append(order)
    return w, orders


class _Quota:
    """Exactly ``round(sparsity * total)`` removals, spread over successive blocks."""

    def __init__(self, sparsity: float):
        self.sparsity, self.done = sparsity, 0

    def __call__(self, count: int) -> int:
        k = round(self.sparsity * (self.done + count)) - round(self.sparsity * self.done)
        self.done += count
        return k


def refit(hess, flat: np.ndarray, damp: float) -> None:
    """Replace the flat kernel ``flat`` (in place) by ``W* = argmin ||W X_ref - W* X||^2 +
    lam ||W* - W||^2``: the fit of the reference model's outputs of this layer from the
    inputs the already-compressed layers before it now produce (``hess.cross``), so that
    OBS or GPTQ from ``W*`` on ``H = 2 X X^T`` minimises the error to the reference."""
    for (lo, hi), h, c in zip(hess.splits, hess.matrices(), hess.cross):
        idx = hess.index[:, :, lo:hi]
        mean = np.einsum("gii->gi", h).mean(axis=1)
        # A group whose inputs were all zero (a dead channel) keeps its weights: W* = W.
        lam = max(damp, 1e-6) * np.where(mean > 0, mean, 1.0)[:, None, None]
        eye = np.eye(hi - lo)
        rhs = flat[idx] @ (c / max(hess.rows, 1)) + lam * flat[idx]
        flat[idx] = np.swapaxes(np.linalg.solve(h + lam * eye, np.swapaxes(rhs, 1, 2)), 1, 2)


def prune_layer(hess, sparsity: float, *, n: int = 0, m: int = 0, damp: float = 0.01,
                block: int = 128, fixed=None) -> tuple:
    """OBS-prune the kernel of one :class:`compress.pruning.hessian.LayerHessian` and
    write the compensated weights into its variable.

    Returns:
        ``(mask, info)``: the kernel-shaped 0/1 keep mask and a JSON-ready dict.

    Raises:
        CompressError: too few samples for an undamped Hessian, a singular Hessian, or
            an N:M pattern that does not fit the layer's inputs.
    """
    t0 = time.perf_counter()
    kernel = np.asarray(hess.variable, dtype="float64")
    flat = kernel.reshape(-1)
    cols = hess.index.shape[-1]
    if hess.cross is not None:
        refit(hess, flat, damp)
    if not damp and hess.rows < cols:
        raise CompressError(f"layer '{hess.layer.name}': {hess.rows} calibration inputs for "
                            f"{cols} weights per unit make its Hessian singular; give more "
                            "samples (--calibration) or damping (--damp)")
    if n and any((hi - lo) % m for lo, hi in hess.splits):
        raise CompressError(f"layer '{hess.layer.name}': {n}:{m} sparsity needs an input "
                            f"dimension divisible by {m} per unit, got {cols}; leave it out "
                            "with --layers")
    fixed_flat = np.zeros(flat.shape, bool) if fixed is None else \
        (np.asarray(fixed).reshape(-1) == 0)
    keep = np.ones(flat.shape, "float32")
    quota = _Quota(sparsity)
    error = 0.0
    for (lo, hi), hmat in zip(hess.splits, hess.matrices()):
        idx = hess.index[:, :, lo:hi]
        new, mask, losses = sparsegpt_prune(flat[idx], hmat, sparsity, n=n, m=m, block=block,
                                            damp=damp, fixed=fixed_flat[idx], quota=quota,
                                            name=hess.layer.name)
        flat[idx] = new
        keep[idx[mask]] = 0.0
        error += float(np.sum(losses))
    flat[keep == 0] = 0.0
    hess.variable.assign(flat.reshape(kernel.shape).astype(hess.variable.dtype))
    info = hess.info()
    info.update(obs_seconds=round(time.perf_counter() - t0, 4),
                predicted_error=error, sparsity=float(1 - keep.mean()))
    return keep.reshape(kernel.shape), info


def n_m_fits(hess, m: int) -> bool:
    """Whether an N:M pattern (groups of ``m`` along the input channels) fits the layer
    of ``hess``: its kernel's input-channel axis and each unit's inputs (a Conv2D's
    ``kh * kw * cin``) are multiples of ``m``. A first convolution on 1 or 3 channels, or
    a depthwise one (9 inputs per unit), does not fit.

    >>> from types import SimpleNamespace as S
    >>> conv = lambda cin: S(layer=None, variable=np.zeros((3, 3, cin, 8)),
    ...                      splits=[(0, 9 * cin)])
    >>> n_m_fits(conv(3), 4), n_m_fits(conv(8), 4)
    (False, True)
    """
    from compress.pruning.masks import matmul_shape

    shape = tuple(hess.variable.shape)
    # A multi-axis EinsumDense kernel (grouped-query attention's (hidden, kv_heads,
    # head_dim) key) groups along its contracted input, not along its second-to-last axis.
    view = matmul_shape(hess.layer, hess.variable)
    inputs = view[0] if view else (shape[-2] if len(shape) >= 2 else 0)
    return len(shape) >= 2 and inputs % m == 0 and \
        not any((hi - lo) % m for lo, hi in hess.splits)


def obs_masks(model, variables, x, sparsity: float, *, n: int = 0, m: int = 0,
              damp: float = 0.01, block: int = 128, sequential: bool = True,
              max_dim: int | None = None, batch_size: int = 128, old=None,
              correct: bool = True) -> tuple:
    """OBS-prune ``variables`` (kernels of ``model``, edited in place) in model order,
    each at ``sparsity`` (or ``n:m``), with sequential calibration on inputs ``x``.

    Example:

    >>> masks, info = obs_masks(model, kernels, x, 0.8)   # doctest: +SKIP
    >>> info["layers"][0]["predicted_error"]              # doctest: +SKIP

    Args:
        model: a Keras model; its kernels are replaced by the compensated ones.
        variables: list of kernel variables of supported layers
            (:data:`compress.pruning.hessian.SUPPORTED`).
        x: calibration inputs shaped for the model (no labels needed).
        sparsity: float in [0, 1), or one per variable. Fraction of each layer removed
            (ignored with ``n``).
        n, m: int, default 0. N:M pattern (2:4: ``n=2, m=4``, 2 of every 4 removed).
            A layer the pattern does not fit (:func:`n_m_fits`) is left dense, its row
            marked ``n_m_left_dense``.
        damp: float, default 0.01. Dampening, a fraction of the mean Hessian diagonal.
        block: int, default 128. Columns per lazy-update block.
        sequential: bool, default True. Measure each layer's Hessian after the layers
            before it are pruned (False: all from the original model, one pass).
        max_dim: int or None. Input dimension above which a layer's Hessian is
            block-diagonal (default :data:`compress.pruning.hessian.MAX_DIM`).
        batch_size: int, default 128. Calibration samples per forward pass.
        old: list of 0/1 masks or None: weights already pruned, kept pruned.
        correct: bool, default True. With ``sequential``, each layer targets the outputs
            of the model as it was before this call (a copy), not its own outputs on the
            already-compressed inputs: its weights are first refit by least squares to
            undo the error of the layers before it, then pruned.

    Returns:
        ``(masks, info)``: one keep mask per variable and a dict with ``layers`` (one
        :meth:`LayerHessian.info` row each, with ``obs_seconds``, ``predicted_error``)
        and the total ``hessian_seconds`` and ``obs_seconds``.
    """
    from compress.pruning import hessian as hs

    hs.check_calibration(model, x, "obs")
    max_dim = max_dim or hs.MAX_DIM
    reference = None
    if sequential and correct:
        from compress.training import copy_model

        reference = copy_model(model)
    # All built first: an unsupported layer is refused before any work.
    hessians = [hs.new_hessian(model, v, max_dim, reference) for v in variables]
    if not sequential:
        hs.accumulate(model, hessians, x, batch_size, stop_early=False)
    masks, rows = [], []
    sparsities = list(sparsity) if np.ndim(sparsity) else [sparsity] * len(hessians)
    for i, h in enumerate(hessians):
        if n and not n_m_fits(h, m):  # left dense, as magnitude's N:M and NVIDIA's ASP do
            masks.append(np.ones(tuple(h.variable.shape), "float32") if old is None
                         else np.asarray(old[i], "float32"))
            rows.append({**h.info(), "n_m_left_dense": True, "seconds": 0.0,
                         "obs_seconds": 0.0, "predicted_error": 0.0,
                         "sparsity": float(1 - masks[-1].mean())})
            progress.update(i + 1, len(hessians), "layer")
            continue
        if sequential:
            hs.accumulate(model, [h], x, batch_size)
        keep, row = prune_layer(h, sparsities[i], n=n, m=m, damp=damp, block=block,
                                fixed=None if old is None else old[i])
        masks.append(keep)
        rows.append(row)
        progress.update(i + 1, len(hessians), "layer")  # the saliency phase's display
    info = {"damp": damp, "sequential": sequential, "corrected": reference is not None,
            "hessian_seconds": round(sum(r["seconds"] for r in rows), 4),
            "obs_seconds": round(sum(r["obs_seconds"] for r in rows), 4),
            "block_diagonal": [r["weight"] for r in rows if r["block_diagonal"]],
            "layers": rows}
    thin = hs.thin_hessians(rows)
    if thin:
        info["thin_hessians"] = thin
    return masks, info


def obs_saliency(model, variables, x, damp: float = 0.01, **kwargs) -> list:
    """OBS saliencies ``w_q^2 / [H^-1]_qq`` of each weight alone (no compensation, one
    forward pass): the ``obs`` criterion where a mask criterion is needed (gradual
    schedules, the ``Pruning`` callback, structured unit scores).

    Example:

    >>> s = obs_saliency(model, [model.get_layer("fc1").kernel], x)   # doctest: +SKIP
    """
    from compress.pruning import hessian as hs

    out = []
    for h in hs.layer_hessians(model, variables, x, **kwargs):
        w = np.asarray(h.variable, dtype="float64").reshape(-1)
        score = np.zeros(w.size)
        for (lo, hi), hmat in zip(h.splits, h.matrices(damp)):
            hinv_diag = _hinv_diagonal(hmat, h.layer.name, damp)
            idx = h.index[:, :, lo:hi]
            score[idx] = w[idx] ** 2 / hinv_diag[:, None, :]
        out.append(score.reshape(tuple(h.variable.shape)))
        progress.update(len(out), len(variables), "layer")
    return out
