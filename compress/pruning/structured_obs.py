"""Structured OBS: remove whole channels/units and compensate their consumers by least squares.

Structured pruning (:mod:`compress.pruning.structured`) removes whole channel groups
(a producer's units with every layer tied to them through BatchNorm, activations,
dropout, pooling, depthwise convolutions, residual adds and concatenations). A removed
channel is a removed *input* of each Dense/Conv layer that reads the group: its
*consumers*. Structured OBS does two things the norm criterion does not:

- **Channel choice** (``choose="obs"``): per group, greedy group-OBS on the consumers'
  layer Hessians ``H = X^T X`` (``X``: the consumer's inputs on the calibration data,
  the unfolded patches for a convolution, plus a column of ones for its bias): removing
  channel ``c`` (columns ``Q``: its ``k`` kernel positions) raises the consumer's best
  reconstruction error by ``tr(W_Q^T [H^-1]_QQ^-1 W_Q)``; the cheapest channel is
  removed, the remaining weights and ``H^-1`` are updated (OBS, Hassibi & Stork 1993,
  for a block of columns) and the next is chosen. A group read by several consumers sums
  their errors, each relative to its output energy ``tr(W^T H W)``.
- **Compensation**: consumers are refit in model order by least squares,
  ``W' = argmin ||X'_S W' - X W||^2 + lam ||W' - W_S||^2`` with ``X W`` the original
  model's consumer outputs and ``X'_S`` the kept inputs as the pruned model (its earlier
  consumers already refit) produces them; ``lam`` is ``damp`` times the mean diagonal
  of ``H_SS = X'^T_S X'_S`` (OBS's dampening). When only per-channel ops lie between
  producer and consumer and nothing before it changed, ``X'_S`` is exactly ``X_S`` and
  this is ``W' = H_SS^-1 H_S,all W``; measured on the pruned model it also absorbs what
  the earlier groups changed (ThiNet / channel pruning's layer-wise reconstruction).
  The bias is refit too (a removed channel's mean goes into it): the consumer's own, or
  for a bias-free Conv feeding a BatchNorm, the BatchNorm's moving mean.

Every consumer of a pruned group is compensated, so residual adds (one group, several
consumers) and concatenations are handled; ``info["several_consumers"]`` names those
groups. A group read by a layer that cannot be refit here (``SeparableConv*``,
``Conv3D``, a too-wide input) is pruned without compensation at that layer and with its
channels chosen by the norm criterion: ``info["not_compensated"]`` names it, with why.
Attention heads and feed-forward units of transformer blocks are removed by weight norm,
uncompensated (``info["not_compensated"]`` says so).

Example:

>>> small, info = prune_channels_obs(model, 0.5, x_calibration)   # doctest: +SKIP
>>> info["compensated"]["fc2"]["error_compensated"] < \\
...     info["compensated"]["fc2"]["error_uncompensated"]            # doctest: +SKIP
True
"""

from __future__ import annotations

import time

import numpy as np

from compress import progress
from compress.errors import CompressError

#: Consumer layers refit by least squares (hessian.py unfolds their inputs).
COMPENSABLE = ("Dense", "Conv1D", "Conv2D")
#: Widest consumer input (columns, with the unfolded kernel positions) given a dense solve.
MAX_COLUMNS = 8192


class _Consumer:
    """A Dense/Conv step reading pruned channels: its layer, input segments, columns."""

    def __init__(self, step, segs, t):
        self.step, self.layer, self.segs = step, step.op, segs
        self.name = step.op.name
        self.roots = set()
        self.channels = int(t.shape[step.inputs[0]][-1])  # input channels, original model
        self.bias, self.bn = None, None  # bn: a bias-free Conv's BatchNorm (takes the bias)
        self.why = None  # why it cannot be refit (None: it can)
        kind = type(step.op).__name__
        if kind not in COMPENSABLE:
            self.why = f"read by '{self.name}' ({kind}), which is not refit"
            return
        kernel = np.asarray(step.op.kernel, dtype="float64")
        self.w = kernel.reshape(-1, kernel.shape[-1])  # (k * channels, out)
        self.k = self.w.shape[0] // self.channels
        if getattr(step.op, "use_bias", False):
            self.bias = np.asarray(step.op.bias, dtype="float64")
        if getattr(step.op, "groups", 1) != 1:
            self.why = f"read by '{self.name}', a grouped convolution"
        elif self.w.shape[0] + 1 > MAX_COLUMNS:
            self.why = (f"read by '{self.name}', whose {self.w.shape[0]} inputs are over "
                        f"{MAX_COLUMNS}")
        if self.bias is None and self.why is None:
            outs = t.consumers.get(step.outputs[0], [])
            if len(outs) == 1 and type(outs[0].op).__name__ == "BatchNormalization":
                self.bn = outs[0].op

    @property
    def has_bias(self) -> bool:
        return self.bias is not None or self.bn is not None

    def target(self, idx_out):
        """``[W; b]`` restricted to the kept output units (b: 0 for a BatchNorm's)."""
        b = self.bias if self.bias is not None else np.zeros(self.w.shape[1])
        w = np.vstack([self.w, b[None]]) if self.has_bias else self.w
        return w if idx_out is None else w[:, idx_out]

    def columns(self, channel_idx):
        """Unfolded columns (kernel position major, channel minor) of input channels."""
        idx = np.asarray(channel_idx, dtype="int64")
        return (np.arange(self.k)[:, None] * self.channels + idx[None, :]).reshape(-1)


def _roots(seg_list, groups) -> set:
    from compress.pruning.structured import _Flat

    out = set()
    for s in seg_list:
        if isinstance(s, _Flat):
            out |= _roots(s.segs, groups)
        elif s[0] is not None:
            out.add(groups.find(s[0]))
    return out


def _kept(seg_list, groups, keep):
    """Kept input-channel indices of a tensor (as ``prune_units`` slices it)."""
    from compress.pruning.structured import kept_indices

    return kept_indices(seg_list, groups, keep)


def _positions(seg_list, groups, root, n) -> list:
    """Per channel ``j`` of group ``root``, its positions on the tensor's channel axis."""
    from compress.pruning.structured import _Flat

    pos, off = [[] for _ in range(n)], 0
    for s in seg_list:
        if isinstance(s, _Flat):
            c = sum(m for _, m in s.segs)
            inner = _positions(s.segs, groups, root, n)
            for j in range(n):
                pos[j] += [off + sp * c + p for sp in range(s.spatial) for p in inner[j]]
            off += s.spatial * c
            continue
        g, m = s
        if g is not None and groups.find(g) == root:
            for j in range(m):
                pos[j].append(off + j)
        off += m
    return pos


def _rows(layer):
    """``rows_fn(a) -> (n, d)`` float64 inputs of a consumer (hessian.py's unfolding)."""
    from compress.pruning.hessian import _problem

    rows_fn = _problem(layer, "kernel", 1 << 30)[2]
    return lambda a: np.asarray(rows_fn(a)[0], dtype="float64")


def _capture(model, layer, xb):
    """The input of ``layer`` (a leaf of ``model``) on batch ``xb``."""
    from compress.pruning.hessian import _forward

    got = []
    _forward(model, {id(layer): got.append}, xb, stop_layer=layer)
    return got[0]


def _ones(x, on: bool):
    return np.hstack([x, np.ones((len(x), 1))]) if on else x


def _grams(model, consumers, x, batch_size):
    """``H = X^T X / N`` ([X, 1] with a bias) of each consumer in the original model."""
    from compress.pruning.hessian import _batches, _forward

    sums = {c.name: 0.0 for c in consumers}
    count = {c.name: 0 for c in consumers}
    fns = {c.name: _rows(c.layer) for c in consumers}
    hooks = {}
    for c in consumers:
        def hook(a, c=c):
            r = _ones(fns[c.name](a), c.has_bias)
            sums[c.name] = sums[c.name] + r.T @ r
            count[c.name] += len(r)
        hooks[id(c.layer)] = hook
    for xb in _batches(x, batch_size):
        _forward(model, hooks, xb)
    return {n: sums[n] / max(count[n], 1) for n in sums}


def _damped_inverse(h, damp):
    h = h.copy()
    diag = np.diag(h)
    mean = diag.mean() if diag.mean() > 0 else 1.0
    h[np.diag_indices_from(h)] += max(damp, 1e-8) * mean
    return np.linalg.inv(h)


def obs_channel_order(problems, n_remove: int, damp: float = 0.01) -> list:
    """Greedy group-OBS: the ``n_remove`` channels whose removal raises the consumers'
    summed relative reconstruction error least, chosen one at a time with the other
    weights compensated after each.

    Example:

    >>> h = np.diag([1.0, 1.0, 4.0])           # independent inputs, the third twice as large
    >>> w = np.array([[3.0], [0.1], [1.0]])
    >>> obs_channel_order([(h, w, np.arange(3)[:, None])], 2, damp=0.0)
    [1, 2]

    Args:
        problems: list of ``(H, W, cols)``: a consumer's Hessian ``(d, d)``, weights
            ``(d, out)`` and the columns of each channel ``(channels, q)``.
        n_remove: int. Channels to remove.
        damp: float, default 0.01. Fraction of the mean diagonal added to each ``H``.

    Returns:
        The removed channels, in order.
    """
    state = []
    for h, w, cols in problems:
        energy = float(np.einsum("io,ij,jo->", w, h, w))
        state.append([_damped_inverse(h, damp), np.array(w, dtype="float64"),
                      np.asarray(cols), max(energy, 1e-30)])
    n = len(problems[0][2])
    alive = np.ones(n, bool)
    order = []
    for _ in range(n_remove):
        cost = np.zeros(n)
        for hinv, w, cols, energy in state:
            a = hinv[cols[:, :, None], cols[:, None, :]]  # (n, q, q)
            b = w[cols]  # (n, q, out)
            with np.errstate(all="ignore"):
                sol = np.linalg.solve(a[alive], b[alive])
            part = np.full(n, np.inf)
            part[alive] = np.einsum("nqo,nqo->n", b[alive], sol) / energy
            cost += part
        cost = np.where(alive & np.isfinite(cost), cost, np.inf)
        if not np.isfinite(cost).any():
            cost = np.where(alive, 0.0, np.inf)
        j = int(np.argmin(cost))
        for st in state:
            hinv, w, cols = st[0], st[1], st[2]
            q = cols[j]
            a_inv = np.linalg.pinv(hinv[np.ix_(q, q)])
            st[1] = w - hinv[:, q] @ a_inv @ w[q]
            st[0] = hinv - hinv[:, q] @ a_inv @ hinv[q, :]
        alive[j] = False
        order.append(j)
    return order


def least_squares(a, b, w0, damp: float):
    """``argmin ||X W - Y||^2 / N + lam ||W - W0||^2`` from ``A = X^T X / N`` and
    ``B = X^T Y / N`` (``lam``: ``damp`` times the mean diagonal of ``A``); with
    ``damp=0`` the minimum-norm least-squares solution (``numpy.linalg.lstsq``'s).

    Example:

    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    >>> w = least_squares(x.T @ x, x.T @ y, np.zeros((3, 2)), 0.0)
    >>> bool(np.allclose(w, np.linalg.lstsq(x, y, rcond=None)[0]))
    True
    """
    if not damp:
        return np.linalg.lstsq(a, b, rcond=None)[0]
    diag = np.diag(a)
    lam = damp * (diag.mean() if diag.mean() > 0 else 1.0)
    return np.linalg.solve(a + lam * np.eye(len(a)), b + lam * w0)


def prune_channels_obs(model, fraction: float, x, *, choose: str = "obs",
                       compensate: bool = True, damp: float = 0.01, norm: str = "l2",
                       layers=None, batch_size: int = 128):
    """Remove ``fraction`` of each group's channels, chosen by OBS, and refit consumers.

    Example:

    >>> small, info = prune_channels_obs(model, 0.5, ds.x_train[:256])   # doctest: +SKIP
    >>> info["units"]["fc1"], info["channels_chosen_by"]                  # doctest: +SKIP
    ([300, 150], 'obs')

    Args:
        model: a Keras model (as :func:`compress.pruning.structured.prune_units` takes);
            not modified.
        fraction: float in [0, 1). Fraction of each group's channels removed.
        x: calibration inputs shaped for the model (no labels needed).
        choose: str, default ``"obs"`` (greedy group-OBS on the consumers' Hessians) or
            ``"norm"`` (the structured magnitude criterion, ``norm``).
        compensate: bool, default True. Refit the consumers (False: the same channels
            removed, weights only sliced; for comparisons).
        damp: float, default 0.01. Dampening, a fraction of the mean Hessian diagonal.
        norm: str, default ``"l2"``. Unit norm of the fallback criterion.
        layers: list of str or None. Producers to prune (as ``prune_units``).
        batch_size: int, default 128. Calibration samples per forward pass.

    Returns:
        ``(new_model, info)``: ``prune_units``'s info plus ``compensated`` (per consumer:
        ``inputs`` [before, after] and the relative output reconstruction error on the
        calibration data, ``error_uncompensated`` and ``error_compensated``),
        ``several_consumers`` (groups compensated at more than one consumer),
        ``not_compensated`` ({reason: [groups]}), ``channels_chosen_by`` and
        ``chosen_by_norm`` ({reason: [groups]}: groups feeding a GroupNormalization lose
        whole normalization groups, chosen by norm, and are still compensated).

    Raises:
        CompressError: bad fraction or calibration inputs, or a model structured
            pruning cannot handle.
    """
    from compress.pruning.hessian import check_calibration
    from compress.pruning.structured import PRODUCERS, prune_units

    if choose not in ("obs", "norm"):
        raise CompressError(f"structured obs: choose must be 'obs' or 'norm', got {choose!r}")
    check_calibration(model, x, "structured obs")
    t0 = time.perf_counter()
    found = {}

    def select(t, groups, segs, producers, keep):
        cons, why = [], {}
        for step in t.steps:
            if type(step.op).__name__ not in (*PRODUCERS, "Bidirectional") or not step.inputs:
                continue
            roots = {r for r in _roots(segs[step.inputs[0]], groups) if r in keep}
            if not roots:
                continue
            c = _Consumer(step, segs[step.inputs[0]], t)
            c.roots = roots
            cons.append(c)
            if c.why:
                for r in roots:
                    why.setdefault(r, c.why)
        found.update(t=t, groups=groups, segs=segs, producers=producers, consumers=cons,
                     why=why)
        members = {}
        for name in producers:
            if groups.find(name) in keep:
                members.setdefault(groups.find(name), []).append(name)
        found["members"] = members
        found["keep"] = keep
        if choose != "obs":
            return keep
        ready = [c for c in cons if not c.why]
        grams = _grams(model, ready, x, batch_size) if ready else {}
        out = dict(keep)
        for root, kept in keep.items():
            n = _group_size(producers, root, groups, t)
            n_remove = n - len(kept)
            mine = [c for c in ready if root in c.roots]
            if not n_remove or root in why or not mine:
                continue
            if groups.block.get(root, 1) > 1:  # GroupNormalization: whole groups, by norm
                found.setdefault("whole_groups", []).append(root)  # (still compensated)
                continue
            problems = []
            for c in mine:
                pos = _positions(c.segs, groups, root, n)
                cols = np.array([c.columns(p) for p in pos])
                problems.append((grams[c.name], c.target(None), cols))
            gone = obs_channel_order(problems, n_remove, damp)
            out[root] = np.setdiff1d(np.arange(n), gone)
        found["keep"] = out
        return out

    new, info = prune_units(model, fraction, "magnitude", norm=norm, layers=layers,
                            select=select)
    if "t" not in found:  # nothing prunable: prune_units returned before choosing
        return new, info
    groups, members, keep = found["groups"], found["members"], found["keep"]
    label = {r: _label(names) for r, names in members.items()}
    not_compensated = {}
    for root, reason in found["why"].items():
        if root in label and _pruned(info, members[root]):
            not_compensated.setdefault(f"{reason}: not compensated, channels by "
                                       f"{norm} norm", []).append(label[root])
    if info.get("heads"):
        not_compensated["attention heads and feed-forward units (by weight norm)"] = \
            sorted(info["heads"])
    compensated, several = {}, {}
    for c in found["consumers"]:
        pruned_roots = [r for r in c.roots if _pruned(info, members.get(r, []))]
        for r in pruned_roots:
            several.setdefault(label[r], []).append(c.name)
    several = {g: names for g, names in several.items() if len(names) > 1}
    ready = [c for c in found["consumers"] if not c.why and
             any(_pruned(info, members.get(r, [])) for r in c.roots)]
    from compress.pruning.masks import _leaves

    leaves = {}
    for layer in _leaves(new):
        leaves.setdefault(layer.name, []).append(layer)
    for i, c in enumerate(ready):
        idx_in = _kept(c.segs, groups, keep)
        root_out = groups.find(c.name) if c.name in found["producers"] else None
        idx_out = keep.get(root_out)
        mine = leaves.get(c.name, [])
        if len(mine) != 1:
            not_compensated.setdefault("layer name not unique in the pruned model",
                                       []).append(c.name)
            continue
        bn = None
        if c.bn is not None:
            bns = leaves.get(c.bn.name, [])
            bn = bns[0] if len(bns) == 1 else None
            if bn is None:
                not_compensated.setdefault("BatchNorm name not unique in the pruned model",
                                           []).append(c.name)
                continue
        compensated[c.name] = _refit(model, new, c, mine[0], bn, idx_in, idx_out, x,
                                     damp, batch_size, compensate)
        progress.update(i + 1, len(ready), "consumer")
    info.update(channels_chosen_by=choose if choose == "norm" else
                "obs (greedy group-OBS on the consumers' layer Hessians)",
                compensated=compensated, damp=damp, compensation=bool(compensate),
                structured_obs_seconds=round(time.perf_counter() - t0, 3))
    if several:
        info["several_consumers"] = several
    if found.get("whole_groups"):
        info["chosen_by_norm"] = {f"feeds a GroupNormalization: whole groups by {norm} norm":
                                  [label[r] for r in found["whole_groups"]]}
    if not_compensated:
        info["not_compensated"] = not_compensated
    return new, info


def _group_size(producers, root, groups, t) -> int:
    for name, layer in producers.items():
        if groups.find(name) == root:
            step = next((s for s in t.steps if s.op is layer), None)
            if step is None:  # a Bidirectional's direction: its own units
                return int(layer.units)
            return int(t.shape[step.outputs[0]][-1])
    raise CompressError(f"structured obs: group '{root}' has no producer")


def _pruned(info, names) -> bool:
    return any(info["units"].get(n, [0, 0])[0] != info["units"].get(n, [0, 0])[1]
               for n in names)


def _label(names) -> str:
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} tied)"


def _refit(model, new, c, layer, bn, idx_in, idx_out, x, damp, batch_size, compensate):
    """Refit one consumer of ``new`` by least squares on its original outputs."""
    from compress.pruning.hessian import _batches

    cols = c.columns(idx_in)
    rows_old, rows_new = _rows(c.layer), _rows(layer)
    w_t = c.target(idx_out)  # (d_orig [+1], out_kept)
    w0 = w_t[np.append(cols, len(c.w)) if c.has_bias else cols]
    a = b = 0.0
    yy, n = 0.0, 0
    for xb in _batches(x, batch_size):
        xo = _ones(rows_old(_capture(model, c.layer, xb)), c.has_bias)
        xn = _ones(rows_new(_capture(new, layer, xb)), c.has_bias)
        y = xo @ w_t
        a = a + xn.T @ xn
        b = b + xn.T @ y
        yy += float((y ** 2).sum())
        n += len(y)
    a, b, yy = a / n, b / n, yy / n

    def error(w):
        return float(np.einsum("io,ij,jo->", w, a, w) - 2 * np.sum(w * b) + yy) / max(yy,
                                                                                   1e-30)

    w = least_squares(a, b, w0, damp) if compensate else w0
    row = {"inputs": [int(len(c.w) // c.k), len(idx_in)],
           "error_uncompensated": error(w0), "error_compensated": error(w)}
    if not compensate:
        return row
    kernel = w[:len(cols)].reshape(tuple(layer.kernel.shape))
    layer.kernel.assign(kernel.astype(layer.kernel.dtype))
    if c.bias is not None:
        layer.bias.assign(w[-1].astype(layer.bias.dtype))
    elif bn is not None:  # BN((XW + b) ; mean) == BN(XW ; mean - b)
        mean = np.asarray(bn.moving_mean, dtype="float64") - w[-1]
        bn.moving_mean.assign(mean.astype(bn.moving_mean.dtype))
    return row
