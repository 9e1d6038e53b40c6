"""Second-order rounding (GPTQ) onto exactly the grid a converter will use.

Round-to-nearest puts every weight on its closest grid point independently. GPTQ
(Frantar et al. 2022) rounds a layer's kernel column by column (columns: inputs) and
spreads each column's rounding error over the columns not yet rounded through the inverse
layer Hessian ``H = 2 X X^T / N`` (:mod:`compress.pruning.hessian`), so that the layer's
output error ``||W X - W' X||^2`` on calibration inputs stays small: the OBS update of
:mod:`compress.pruning.obs` with "set to its grid point" in place of "set to zero", with
the same upper Cholesky factor of ``H^-1`` and lazy block updates.

The grid is the converter's, so the artifact keeps the rounding: symmetric, one scale
per output channel ``s_c = max|w_c| / qmax`` (TFLite full-integer int8 and onnxruntime's
``quantize_static`` with symmetric per-channel weights: ``qmax`` 127, or 64 for
onnxruntime's ``reduce_range`` 7-bit weights; int4: 7). The kernel is replaced by
``q * s_c`` with each channel's largest weight pinned at ``+-qmax`` (so ``max|w_c|``, and
with it the converter's scale, is unchanged), and the converter then recomputes exactly
``q``. A per-output-channel scale also survives BatchNorm folding (a per-channel factor).

Example:

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(256, 16)); w = rng.normal(size=(4, 16))
>>> h = 2 * x.T @ x / 256
>>> scale = np.abs(w).max(axis=1, keepdims=True) / 7
>>> q, _ = gptq_round(w, h, scale, qmax=7)
>>> rtn = np.clip(np.rint(w / scale), -7, 7)
>>> err = lambda c: float(np.sum(((c * scale - w) @ x.T) ** 2))
>>> bool(err(q) < err(rtn)), int(np.abs(q).max())
(True, 7)
"""

from __future__ import annotations

import time

import numpy as np

from compress.errors import CompressError

#: Quantized range ``[-qmax, qmax]`` by grid name.
QMAX = {"int8": 127, "int8-reduced": 64, "int4": 7}


def channel_scales(kernel, qmax: int, per_channel: bool = True,
                   depthwise: bool | int = False) -> np.ndarray:
    """Symmetric scales ``max|w| / qmax``, one per output channel (the kernel's last axis;
    with ``depthwise``, the last two: a depthwise kernel ``(kh, kw, C, M)`` has output
    channel ``c * M + m``; an int: that many last axes, :func:`output_axes`) or one for
    the tensor; shaped to broadcast against the kernel.

    >>> channel_scales(np.array([[1.0, -2.0], [0.5, 4.0]]), 2).tolist()
    [[0.5, 2.0]]
    """
    k = np.asarray(kernel, dtype="float64")
    if per_channel:
        tail = _tail(depthwise)
        scale = np.abs(k.reshape(-1, int(np.prod(k.shape[-tail:])))).max(axis=0) / qmax
        return scale.reshape((1,) * (k.ndim - tail) + k.shape[-tail:])
    return np.array(np.abs(k).max() / qmax)


def nearest(kernel, qmax: int, per_channel: bool = True,
            depthwise: bool | int = False) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest codes ``q`` (int32, in ``[-qmax, qmax]``) and the scales.

    >>> q, s = nearest(np.array([[1.0, -2.0], [0.5, 4.0]]), 2)
    >>> q.tolist()
    [[2, -1], [1, 2]]
    """
    k = np.asarray(kernel, dtype="float64")
    scale = channel_scales(k, qmax, per_channel, depthwise)
    safe = np.where(scale > 0, scale, 1.0)
    return np.clip(np.rint(k / safe), -qmax, qmax).astype("int32"), scale


def gptq_round(w, h, scale, qmax: int, block: int = 128, damp: float = 0.01, pin=None,
               name: str = "layer", act_order: bool = False):
    """Round ``w`` onto the grid ``q * scale`` column by column with GPTQ compensation.

    Args:
        w: array ``(rows, cols)`` or a stack ``(G, rows, cols)``.
        h: Hessians ``(cols, cols)`` or ``(G, cols, cols)`` (``2 X X^T / N``).
        scale: positive scales broadcasting against ``w`` (one per row: per channel).
            Zero scales (all-zero rows) give ``q = 0``.
        qmax: int. Codes are clipped to ``[-qmax, qmax]``.
        block: int, default 128. Columns per lazy-update block.
        damp: float, default 0.01. Fraction of the mean diagonal added to ``H``.
        pin: int array like ``w`` or None: a nonzero entry forces that weight's code
            (used to keep each channel's largest weight at ``+-qmax``).
        name: str. The layer named in errors.
        act_order: bool, default False. Round the columns in order of decreasing
            ``H_qq`` (GPTQ's "act-order": the inputs with the most energy first, while
            the most columns are left to absorb their error).

    Returns:
        ``(q, error)``: int32 codes like ``w`` and the predicted increase of
        ``||W X - W' X||^2 / N`` (sum over the stack).

    Raises:
        CompressError: a singular Hessian (give damping or more samples).
    """
    from compress.pruning.obs import _cholesky_inverse_upper, damped

    squeeze = np.ndim(w) == 2
    w = np.array(w, dtype="float64", ndmin=3, copy=True)
    cols = w.shape[-1]
    s = np.broadcast_to(np.asarray(scale, "float64"), w.shape)
    safe = np.where(s > 0, s, 1.0)
    pin = np.zeros(w.shape, "int32") if pin is None else \
        np.broadcast_to(np.asarray(pin, "int32").reshape(np.shape(w)), w.shape)
    if act_order:
        h = np.array(h, "float64", ndmin=3)
        codes, loss = np.zeros(w.shape, "int32"), 0.0
        for g in range(w.shape[0]):  # one column order per Hessian
            perm = np.argsort(-np.diag(h[min(g, len(h) - 1)]), kind="stable")
            hg = h[min(g, len(h) - 1)][np.ix_(perm, perm)]
            q, lg = gptq_round(w[g][:, perm], hg, s[g][:, perm], qmax, block, damp,
                               pin[g][:, perm], name)
            codes[g][:, perm] = q
            loss += lg
        return (codes[0] if squeeze else codes), loss
    u = _cholesky_inverse_upper(damped(np.array(h, "float64", ndmin=3, copy=True), damp),
                                name, damp)
    codes = np.zeros(w.shape, "int32")
    loss = 0.0
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1 = w[:, :, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            col = w1[:, :, i]
            q = np.clip(np.rint(col / safe[:, :, c]), -qmax, qmax)
            q = np.where(pin[:, :, c] != 0, pin[:, :, c], q)
            q = np.where(s[:, :, c] > 0, q, 0.0)
            codes[:, :, c] = q
            err = (col - q * s[:, :, c]) / u1[:, None, i, i]
            loss += float((err ** 2).sum()) / 2
            w1[:, :, i:] -= err[:, :, None] * u1[:, None, i, i:]
            err1[:, :, i] = err
        w[:, :, i2:] -= np.einsum("grb,gbc->grc", err1, u[:, i1:i2, i2:])
    return (codes[0] if squeeze else codes), loss


#: Layers whose int8 grid is known to be the converters' (TFLite and onnxruntime, per
#: output channel): GPTQ rounds these; other kernels, Conv3D and transposed convolutions
#: among them, are rounded to nearest (``other_kernels``).
GRID_KINDS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "DepthwiseConv2D",
              "SeparableConv2D")


def quantizable_kernels(model) -> list:
    """``(layer, variable)`` of every kernel GPTQ rounds (:data:`GRID_KINDS`), in model
    order."""
    from compress.pruning.masks import deep_leaves

    out, seen = [], set()
    for layer in deep_leaves(model):  # a KerasHub decoder's Dense layers too
        kind = type(layer).__name__
        if kind not in GRID_KINDS or id(layer) in seen:
            continue
        seen.add(id(layer))
        attrs = ("depthwise_kernel", "pointwise_kernel") if kind == "SeparableConv2D" else \
            ("kernel",)
        out.extend((layer, getattr(layer, a)) for a in attrs)
    return out


def is_depthwise(layer, variable) -> bool:
    """Whether ``variable`` is a depthwise kernel ``(kh, kw, C, M)`` of ``layer``."""
    kind = type(layer).__name__
    return kind == "DepthwiseConv2D" or (kind == "SeparableConv2D"
                                         and variable is layer.depthwise_kernel)


def output_axes(layer, variable) -> int:
    """How many last axes of ``variable`` make its output channel: 2 for a depthwise
    kernel ``(kh, kw, C, M)``, the produced axes of a multi-axis EinsumDense kernel
    (attention's ``(hidden, heads, head_dim)`` query has ``heads * head_dim`` channels,
    as the converters see it once it is a matrix), else 1."""
    if is_depthwise(layer, variable):
        return 2
    from compress.pruning.masks import einsum_contracted, matmul_shape

    if matmul_shape(layer, variable) is None:
        return 1
    rank = len(variable.shape)
    return rank - einsum_contracted(layer.equation, rank)


def _tail(depthwise) -> int:
    """The last axes of an output channel: ``depthwise`` as a bool (2 or 1) or an int."""
    return int(depthwise) if not isinstance(depthwise, bool) else (2 if depthwise else 1)


def round_model(model, x=None, *, qmax: int = 127, rounding: str = "gptq",
                per_channel: bool = True, damp: float = 0.01, block: int = 128,
                batch_size: int = 128, sequential: bool = True, act_order: bool = True,
                correct: bool = True) -> tuple:
    """A copy of ``model`` whose kernels lie on the symmetric ``qmax`` grid.

    Example:

    >>> snapped, info = round_model(model, x_cal, qmax=7)       # doctest: +SKIP
    >>> snapped, info = round_model(model, qmax=127, rounding="nearest")  # doctest: +SKIP

    Args:
        model: a Keras model (not modified).
        x: calibration inputs shaped for the model (needed for ``gptq``).
        qmax: int, default 127. The grid ``[-qmax, qmax] * scale`` (:data:`QMAX`).
        rounding: str, default ``"gptq"``; ``"nearest"`` rounds to nearest.
        per_channel: bool, default True. One scale per output channel (else per tensor).
        damp, block: see :func:`gptq_round`.
        batch_size: int, default 128. Calibration samples per forward pass.
        sequential: bool, default True. Each layer's Hessian is measured on the inputs
            of the layers already rounded before it.
        act_order: bool, default True. See :func:`gptq_round`.
        correct: bool, default True. With ``sequential``, each layer targets the original
            model's outputs of that layer: its weights are first refit by least squares
            (:func:`compress.pruning.obs.refit`) to undo the error of the layers before
            it, then rounded (the scales are those of the refit weights).

    Returns:
        ``(new_model, info)``: the snapped copy and a JSON-ready dict (``rounding``,
        ``qmax``, ``layers``: per kernel, ``weight``, ``predicted_error``, seconds;
        ``other_kernels``: kernels without a layer Hessian, rounded to nearest).

    Raises:
        CompressError: no calibration data for gptq, a singular Hessian.
    """
    from compress.pruning import hessian as hs
    from compress.training import copy_model

    if rounding not in ("gptq", "nearest"):
        raise CompressError(f"rounding '{rounding}': must be gptq or nearest")
    t0 = time.perf_counter()
    new = copy_model(model)
    kernels = quantizable_kernels(new)
    seen = {id(v) for _, v in kernels}
    others = [w for w in new.weights if len(w.shape) >= 2 and id(w) not in seen
              and "kernel" in w.path.split("/")[-1]]
    info = {"rounding": rounding, "qmax": qmax, "per_channel": per_channel, "layers": [],
            "other_kernels": [w.path for w in others]}
    for var in others:
        q, sc = nearest(var, qmax, per_channel)
        var.assign((q * sc).astype(var.dtype))
    if rounding == "nearest":
        for layer, var in kernels:
            q, sc = nearest(var, qmax, per_channel, output_axes(layer, var))
            var.assign((q * sc).astype(var.dtype))
        info["seconds"] = round(time.perf_counter() - t0, 3)
        return new, info
    if x is None or len(x) == 0:
        raise CompressError("GPTQ rounding needs calibration samples: pass --data NAME, "
                            "or use --rounding nearest")
    hs.check_calibration(new, x, "gptq")
    reference = copy_model(model) if sequential and correct else None
    hessians = [hs.new_hessian(new, v, reference=reference) for _, v in kernels]
    if not sequential:
        hs.accumulate(new, hessians, x, batch_size, stop_early=False)
    for h in hessians:
        if sequential:
            hs.accumulate(new, [h], x, batch_size)
        info["layers"].append(_round_layer(h, qmax, per_channel, damp, block,
                                           output_axes(h.layer, h.variable), act_order))
    info["hessian_seconds"] = round(sum(r["seconds"] for r in info["layers"]), 3)
    info["seconds"] = round(time.perf_counter() - t0, 3)
    thin = hs.thin_hessians(info["layers"], "--calibration-samples")
    if thin:
        info["thin_hessians"] = thin
    return new, info


def _round_layer(h, qmax, per_channel, damp, block, depthwise, act_order) -> dict:
    """GPTQ-round one :class:`compress.pruning.hessian.LayerHessian`'s kernel in place."""
    from compress.pruning.obs import refit

    t0 = time.perf_counter()
    kernel = np.array(h.variable, dtype="float64")
    if h.cross is not None:
        flat = kernel.reshape(-1)
        refit(h, flat, damp)
        kernel = flat.reshape(kernel.shape)
    scale = np.broadcast_to(channel_scales(kernel, qmax, per_channel, depthwise),
                            kernel.shape)
    # Pin each channel's (or the tensor's) largest weight at +-qmax: the scale stays.
    width = int(np.prod(kernel.shape[-_tail(depthwise):])) if per_channel else 1
    flat = np.abs(kernel.reshape(-1, width))
    arg = flat.argmax(axis=0)
    pin = np.zeros(flat.shape, "int32")
    pin[arg, np.arange(flat.shape[1])] = np.sign(
        kernel.reshape(flat.shape)[arg, np.arange(flat.shape[1])]).astype("int32") * qmax
    pin = pin.reshape(-1)
    w, sc = kernel.reshape(-1), scale.reshape(-1)
    codes = np.zeros(w.shape, "int32")
    error = 0.0
    for (lo, hi), hmat in zip(h.splits, h.matrices()):
        idx = h.index[:, :, lo:hi]
        q, loss = gptq_round(w[idx], hmat, sc[idx], qmax, block=block, damp=damp,
                             pin=pin[idx], name=h.layer.name, act_order=act_order)
        codes[idx] = q
        error += loss
    h.variable.assign((codes * sc).reshape(kernel.shape).astype(h.variable.dtype))
    row = h.info()
    row.update(predicted_error=error, gptq_seconds=round(time.perf_counter() - t0, 4))
    return row


def check_rounding(options: dict) -> None:
    """Refuse quantize options that do not go with GPTQ rounding or int4 (one line).

    >>> check_rounding({"mode": "int8", "rounding": "gptq"})
    >>> check_rounding({"mode": "dynamic", "rounding": "gptq"})
    Traceback (most recent call last):
    ...
    compress.errors.CompressError: --rounding gptq rounds weights onto the int8 or int4 grid of the artifact; mode dynamic quantizes them itself at conversion: use --mode int8 or --mode int4
    """
    mode, rounding = options.get("mode", "int8"), options.get("rounding") or "nearest"
    if rounding == "gptq" and mode not in ("int8", "int4"):
        raise CompressError(f"--rounding gptq rounds weights onto the int8 or int4 grid of "
                            f"the artifact; mode {mode} quantizes them itself at "
                            "conversion: use --mode int8 or --mode int4")
    if rounding == "gptq" and options.get("per_channel") is False:
        raise CompressError("--rounding gptq keeps per-channel scales (a per-tensor scale "
                            "changes when BatchNorm is folded); drop --no-per-channel")
    if rounding == "gptq" and options.get("qat"):
        raise CompressError("--rounding gptq and --qat both choose the weights; use one")
    if mode == "int4" and options.get("sparse"):
        raise CompressError("mode int4 stores its 4-bit grid as float weights; --sparse "
                            "applies to int8 TFLite only")


def grid_qmax(fmt: str, options: dict) -> int:
    """The ``qmax`` of the grid the artifact's converter uses for ``options``.

    >>> grid_qmax("tflite", {"mode": "int8"}), grid_qmax("onnx", {"mode": "int8"})
    (127, 64)
    """
    if options.get("mode") == "int4":
        return QMAX["int4"]
    if fmt == "onnx" and options.get("reduce_range", True):
        return QMAX["int8-reduced"]  # onnxruntime's symmetric 7-bit weights: [-64, 64]
    return QMAX["int8"]


def grid_model(model, x, fmt: str, options: dict) -> tuple:
    """``model`` with its kernels on the grid of ``options`` (the quantize pass's), and
    a JSON-ready summary; see :func:`round_model`."""
    from compress import progress

    qmax = grid_qmax(fmt, options)
    rounding = options.get("rounding") or "nearest"
    progress.say(f"rounding weights onto the [-{qmax}, {qmax}] grid ({rounding}"
                 + (f", layer Hessians on {len(x)} samples)" if rounding == "gptq" else ")"))
    new, info = round_model(model, x if rounding == "gptq" else None, qmax=qmax,
                            rounding=rounding,
                            per_channel=options.get("per_channel", True))
    info["grid"] = (f"symmetric {'per-channel' if info['per_channel'] else 'per-tensor'} "
                    f"[-{qmax}, {qmax}] * max|w| / {qmax}")
    return new, info


def int4_artifacts(snapped, original, data, fmt: str, options: dict) -> tuple:
    """``(content, float_content, note)``: float exports of the int4-snapped model and of
    the original one (no runtime format stores 4-bit convolution weights)."""
    from compress.export import export_artifact

    kw = {"format": fmt, "samples": 256, "seed": options.get("seed", 0)}
    content = export_artifact(snapped, data, **kw)[0]
    float_content = export_artifact(original, data, **kw)[0]
    return content, float_content, ("float32 weights holding the int4 grid (16 levels per "
                                    "channel): the accuracy of int4 weight-only, not its size")
