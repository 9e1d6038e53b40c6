"""In-graph masks that keep pruned weights at exactly zero, invisible in saved files.

A mask is a non-trainable ``tf.Variable`` held by a :class:`ZeroMask` constraint set on
the weight variable itself (``variable.constraint``). Keras 3 optimizers apply variable
constraints inside the compiled train step right after each update, so momentum and
Adam cannot regrow a pruned weight, and no per-batch Python runs. The layer's config is
untouched (its ``kernel_constraint`` argument is not involved), so a model saved while
masks are attached still loads with plain ``keras.models.load_model``.

Example:

>>> from compress.pruning import keep_zeros, release_zeros   # doctest: +SKIP
>>> keep_zeros(student)          # zeros stay zeros through any later fit  # doctest: +SKIP
>>> student.fit(x, y, epochs=2)                                            # doctest: +SKIP
>>> release_zeros(student)                                                 # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from compress.errors import CompressError

# layer class name -> attribute names of the weights pruned by default (biases, BatchNorm
# and normalization parameters are left alone).
PRUNABLE = {
    "Dense": ("kernel",),
    "EinsumDense": ("kernel",),
    "Conv1D": ("kernel",),
    "Conv2D": ("kernel",),
    "Conv3D": ("kernel",),
    "Conv1DTranspose": ("kernel",),
    "Conv2DTranspose": ("kernel",),
    "Conv3DTranspose": ("kernel",),
    "DepthwiseConv1D": ("depthwise_kernel", "kernel"),
    "DepthwiseConv2D": ("depthwise_kernel", "kernel"),
    "SeparableConv1D": ("depthwise_kernel", "pointwise_kernel"),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
    "Embedding": ("embeddings",),
    # KerasHub's token embedding (GPT-2, BERT, Llama, Gemma...): its table, and the output
    # projection of a language model's head when it is not tied to the table.
    "ReversibleEmbedding": ("embeddings", "reverse_embeddings"),
    # The cells of LSTM, GRU and SimpleRNN layers (Bidirectional ones too): the input and
    # the recurrent kernel, as Han et al.'s ESE and See et al. prune recurrent networks.
    "LSTMCell": ("kernel", "recurrent_kernel"),
    "GRUCell": ("kernel", "recurrent_kernel"),
    "SimpleRNNCell": ("kernel", "recurrent_kernel"),
    "ConvLSTMCell": ("kernel", "recurrent_kernel"),  # ConvLSTM1D/2D/3D
}


class ZeroMask:
    """A variable constraint multiplying the weight by a fixed 0/1 mask, after the
    constraint the weight had (a layer's ``kernel_constraint``, such as ``NonNeg``).

    Args:
        mask: array of the weight's shape, 1 where the weight is kept.
        inner: the variable's own constraint, or None. It is applied first, and it is
            the variable's constraint again once the mask is released.
    """

    def __init__(self, mask, inner=None):
        import tensorflow as tf

        # A tf.Variable: the compiled train step reads its current value, so changing the
        # mask (gradual schedules) needs no retracing.
        self.mask = tf.Variable(np.asarray(mask, dtype="float32"), trainable=False)
        self.inner = inner

    def __call__(self, w):
        import tensorflow as tf

        if self.inner is not None:
            w = self.inner(w)
        return w * tf.cast(self.mask, w.dtype)

    def get_config(self):
        return {}


def _leaves(model):
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and getattr(layer, "layers", None) and layer is not model:
            out.extend(_leaves(layer))
        else:
            out.append(layer)
    return out


def _sublayers(layer) -> list:
    """The layers tracked directly by a (non-Model) layer, e.g. the Dense layers of a
    KerasHub ``TransformerDecoder`` or of a user's registered block."""
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # noqa: BLE001 - not a Keras layer with tracked sub-layers
        return []


def deep_leaves(model, _prefix: str = "") -> list:
    """Every layer of ``model`` that computes: the layers of nested models in their place
    (as :func:`_leaves`), and, after any other layer that tracks sub-layers (a custom
    ``Layer`` holding Dense layers), those sub-layers, recursively. A sub-layer of a
    non-Model layer is recorded with its path (``block/fc1``, see :func:`weight_key`).

    Example:

    >>> [la.name for la in deep_leaves(model)]        # doctest: +SKIP
    ['tokens', 'block', 'fc1', 'fc2', 'head']
    """
    out = []
    for layer in model.layers:
        if hasattr(layer, "layers") and getattr(layer, "layers", None) and layer is not model:
            out.extend(deep_leaves(layer, _prefix))
            continue
        if _prefix:
            object.__setattr__(layer, "_compress_path", f"{_prefix}/{layer.name}")
        out.append(layer)
        if type(layer).__name__ not in PRUNABLE:
            out.extend(_inside(layer, f"{_prefix}/{layer.name}" if _prefix else layer.name))
    return out


def _inside(layer, path: str) -> list:
    out = []
    for sub in _sublayers(layer):
        object.__setattr__(sub, "_compress_path", f"{path}/{sub.name}")
        out.append(sub)
        if type(sub).__name__ not in PRUNABLE:
            out.extend(_inside(sub, f"{path}/{sub.name}"))
    return out


def layer_path(layer) -> str:
    """``layer``'s name, or ``parent/name`` for a layer inside a custom layer (set by
    :func:`deep_leaves`)."""
    return getattr(layer, "_compress_path", None) or layer.name


def prunable_weights(model, layers=None, skip_first_last: bool = False,
                     what: str = "prunable") -> list:
    """The ``(layer, variable)`` pairs that pruning acts on, in model order.

    Prunable layers inside nested models and inside custom (non-Model) layers, such as
    the Dense and EinsumDense layers of a KerasHub transformer block, are found too;
    those inside a custom layer are named by their path (``transformer_layer_0/
    feedforward_intermediate_dense``).

    Args:
        model: a Keras model (nested models and layers are searched).
        layers: list of str or None. Each entry selects layers by name, by path, by class
            name (``"Dense"``) or by a regular expression matching the whole name or
            path (the rule of :func:`compress.layers.select_layers`, the same in every
            pass). None selects every prunable layer.
        skip_first_last: bool, default False. Leave the first and last prunable layers
            dense.
        what: the adjective naming these layers in errors (k-means: ``"clusterable"``).

    Raises:
        CompressError: no prunable layer, or a selector that matches nothing.
    """
    candidates, seen = [], set()
    for layer in deep_leaves(model):
        attrs = PRUNABLE.get(type(layer).__name__)
        if not attrs or id(layer) in seen:  # a layer tracked twice counts once
            continue
        seen.add(id(layer))
        vars_ = [getattr(layer, a) for a in attrs if getattr(layer, a, None) is not None]
        if vars_:
            candidates.append((layer, vars_))
    if not candidates:
        raise CompressError(f"model '{model.name}' has no {what} layers "
                            f"(supported: {', '.join(sorted(k.replace('Cell', '') for k in PRUNABLE))})")
    if skip_first_last:
        candidates = candidates[1:-1]
        if not candidates:
            raise CompressError(f"model '{model.name}': nothing left to prune once the first "
                                "and last prunable layers are kept dense")
    from compress.layers import select_layers

    found = [c[0] for c in candidates]
    chosen = {id(la) for la in select_layers(found, layers, what, model.name,
                                             names=[layer_path(la) for la in found])}
    candidates = [c for c in candidates if id(c[0]) in chosen]
    return [(layer, v) for layer, vars_ in candidates for v in vars_]


# Layers whose weights scale single values (not matrices), whatever their shape.
_ELEMENTWISE = ("PReLU",)


def unreached_weights(model, reached=None) -> list:
    """``[(weight key, size)]`` of the matrices left out: trainable weights with two or
    more axes longer than 1 of the layers not in ``reached`` (default: the layers of a
    :data:`PRUNABLE` type), such as a custom layer's own ``add_weight`` kernel or a
    ConvLSTM2D's, in model order. Biases, norms, PReLU slopes and other vectors are not
    listed: pruning and sharing leave them alone by design.

    Example:

    >>> unreached_weights(model)  # doctest: +SKIP
    [('conv_lstm2d/conv_lstm_cell/kernel', 1152)]
    """
    leaves = deep_leaves(model)
    if reached is None:
        reached = [la for la in leaves if type(la).__name__ in PRUNABLE]
    skip = {id(la) for la in reached}
    seen, out = set(), []
    for layer in leaves:
        if id(layer) in skip or type(layer).__name__ in _ELEMENTWISE:
            continue
        for v in getattr(layer, "_trainable_variables", layer.trainable_weights):
            if v.name == "bias":  # a GRU's (2, 3 * units): two bias vectors, not a matrix
                continue
            if id(v) not in seen and sum(int(d) > 1 for d in v.shape) >= 2:
                seen.add(id(v))
                out.append((weight_key(layer, v), int(np.prod(v.shape))))
    return out


def listed(weights: list, shown: int = 4) -> str:
    """``[(key, size)]`` in words: ``"a (1,024), b (64) and 3 more"``."""
    text = ", ".join(f"{k} ({n:,})" for k, n in weights[:shown])
    return text + (f" and {len(weights) - shown} more" if len(weights) > shown else "")


def select_viewed(scores: list, views: list, select) -> list:
    """``select(flat)`` run on each of ``scores`` seen as its ``views`` matrix (None: as
    it is; see :func:`matmul_shape`), the masks it returns put back in the scores'
    shapes: an attention kernel ``(hidden, heads, head_dim)`` is ranked, balanced and
    blocked as the ``(hidden, heads * head_dim)`` Dense kernel it is.

    Example:

    >>> s = np.arange(8.0).reshape(2, 2, 2)
    >>> select_viewed([s], [(2, 4)], lambda f: select_masks(f, 0.5))[0].shape
    (2, 2, 2)
    """
    views = list(views or [None] * len(scores))
    flat = [np.reshape(s, w) if w else s for s, w in zip(scores, views, strict=True)]
    return [np.reshape(m, np.shape(s)) for m, s in zip(select(flat), scores, strict=True)]


def weight_key(layer, variable) -> str:
    """``layer/weight`` name used in reports (``block/fc1/kernel`` for a layer inside a
    custom layer, see :func:`layer_path`)."""
    return f"{layer_path(layer)}/{variable.name.split('/')[-1]}"


def einsum_contracted(equation: str, rank: int):
    """How many leading kernel axes an EinsumDense ``equation`` contracts with the
    input's last axes, when the layer is a Dense on those axes flattened (the other
    kernel axes all output axes, none shared with the input); else None.

    Example:

    >>> einsum_contracted("abc,cde->abde", 3), einsum_contracted("abcd,cde->abe", 3)
    (1, 2)
    >>> einsum_contracted("ab,bc->ac", 2), einsum_contracted("abc,bd->acd", 2) is None
    (1, True)
    """
    try:
        lhs, rest = equation.replace(" ", "").split(",")
        kern, out = rest.split("->")
    except ValueError:
        return None
    if len(kern) != rank or "." in kern:
        return None
    k = 0
    while k < len(kern) and kern[k] not in out:
        k += 1
    contracted, produced = kern[:k], kern[k:]
    if not k or not lhs.endswith(contracted) or any(c in out for c in contracted) \
            or any(c not in out or c in lhs for c in produced):
        return None
    return k


def matmul_shape(layer, variable):
    """``(inputs, outputs)``: the 2-D matrix an EinsumDense kernel of more than 2 axes
    is (attention's ``(hidden, heads, head_dim)`` query kernel is ``(hidden, heads *
    head_dim)``), or None for any other weight (its input axis is the second to last).
    Block and 2:4 pruning group weights along that matrix's input axis."""
    shape = tuple(variable.shape)
    if type(layer).__name__ != "EinsumDense" or variable is not getattr(layer, "kernel", None) \
            or len(shape) <= 2:
        return None
    k = einsum_contracted(layer.equation, len(shape))
    if k is None:
        return None
    d_in = int(np.prod(shape[:k]))
    return d_in, int(np.prod(shape)) // d_in


def keep_zeros(model, layers=None) -> int:
    """Attach in-graph masks so that weights that are zero now stay exactly zero.

    The masks live in variable constraints, applied by any Keras 3 optimizer inside the
    compiled train step after each update (SGD with momentum, Adam, ...). The model's
    cached train function is dropped so the next ``fit`` traces the constraints. Saving
    the model while masks are attached writes a plain file.

    Example:

    >>> n = keep_zeros(pruned)                            # doctest: +SKIP
    >>> pruned.fit(x, y, epochs=3); release_zeros(pruned)  # doctest: +SKIP

    Args:
        model: a Keras model, edited in place (constraints only; weights unchanged).
        layers: list of str or None, default None. Which layers (see
            :func:`prunable_weights`); None means every prunable layer.

    Returns:
        The number of weight variables masked.
    """
    pairs = prunable_weights(model, layers)
    for _, var in pairs:
        set_mask(var, np.asarray(var) != 0)
    _drop_compiled(model)
    return len(pairs)


def release_zeros(model) -> int:
    """Remove the masks :func:`keep_zeros` (or pruning) attached; returns how many."""
    n = 0
    for layer in deep_leaves(model):
        for var in layer.weights:
            if isinstance(var.constraint, ZeroMask):
                var.constraint = var.constraint.inner  # the layer's own, if it had one
                n += 1
    _drop_compiled(model)
    return n


def set_mask(variable, mask) -> ZeroMask:
    """Attach (or update) the mask of ``variable`` and zero the masked weights now."""
    mask = np.asarray(mask, dtype="float32").reshape(tuple(variable.shape))
    current = variable.constraint
    if isinstance(current, ZeroMask):
        current.mask.assign(mask)
    else:
        current = ZeroMask(mask, inner=current)
        variable.constraint = current
    variable.assign(np.asarray(variable) * mask)
    return current


def get_mask(variable):
    """The 0/1 mask attached to ``variable``, or None."""
    c = variable.constraint
    return np.asarray(c.mask.numpy()) if isinstance(c, ZeroMask) else None


def _drop_compiled(model) -> None:
    # The train step is traced once; constraints added later are only seen after retracing.
    if getattr(model, "train_function", None) is not None:
        model.train_function = None


def lowest_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask zeroing exactly ``round(sparsity * n)`` entries with the lowest scores."""
    flat = np.asarray(scores, dtype="float64").reshape(-1)
    k = round(sparsity * flat.size)
    mask = np.ones(flat.size, dtype="float32")
    if k >= flat.size:
        mask[:] = 0.0
    elif k > 0:
        mask[lowest_indices(flat, k)] = 0.0
    return mask.reshape(np.shape(scores))


def lowest_indices(flat: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` lowest entries of the 1-D ``flat`` (0 < k <= size), in
    O(n) time also when many entries tie.

    ``np.argpartition`` alone slows down about fifteenfold when most entries hold one
    value: the ``-inf`` scores of weights a gradual schedule already pruned (80% of them
    at its fourth step), or the zeros of a model pruned before. Groups of 1,024 or more
    equal lowest values are therefore taken whole first (the lowest indices of such a
    group where the boundary cuts it), and the remaining entries are selected as usual.

    Example:

    >>> sorted(lowest_indices(np.array([3.0, -np.inf, 1.0, -np.inf, 2.0]), 3).tolist())
    [1, 2, 3]
    """
    index = np.arange(flat.size)
    values = flat
    chosen = []
    while k > 0:
        ties = values == values.min()
        count = int(np.count_nonzero(ties))
        if count < 1024:  # no large group of equal values: the usual selection
            chosen.append(index[np.argpartition(values, k - 1)[:k]])
            break
        group = index[ties][:k]
        chosen.append(group)
        k -= group.size
        index, values = index[~ties], values[~ties]
    return np.concatenate(chosen)


def global_masks(scores: list, sparsity: float) -> list:
    """Masks zeroing the ``round(sparsity * total)`` lowest scores across all arrays."""
    flat = np.concatenate([np.asarray(s, dtype="float64").reshape(-1) for s in scores])
    mask = lowest_mask(flat, sparsity).reshape(-1)
    out, start = [], 0
    for s in scores:
        n = int(np.size(s))
        out.append(mask[start:start + n].reshape(np.shape(s)))
        start += n
    return out


def n_m_mask(scores: np.ndarray, n: int = 2, m: int = 4) -> np.ndarray:
    """Semi-structured N:M mask: in every group of ``m`` consecutive weights along the
    input axis (the second to last, the reduction axis of the matmul), keep the ``n``
    most salient.

    Raises:
        CompressError: when the input dimension is not a multiple of ``m``.
    """
    s = np.asarray(scores)
    if s.ndim < 2:
        raise CompressError(f"{n}:{m} sparsity needs a 2-D or larger kernel, got shape "
                            f"{s.shape}")
    moved = np.moveaxis(s, -2, -1)  # (..., out, in)
    if moved.shape[-1] % m:
        raise CompressError(f"{n}:{m} sparsity needs an input dimension divisible by {m}, "
                            f"got {moved.shape[-1]}")
    groups = moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))
    order = np.argsort(groups, axis=-1, kind="stable")
    mask = np.ones_like(groups, dtype="float32")
    np.put_along_axis(mask, order[..., : m - n], 0.0, axis=-1)
    return np.moveaxis(mask.reshape(moved.shape), -1, -2)


def balanced_mask(scores: np.ndarray, sparsity: float) -> np.ndarray:
    """A 0/1 mask zeroing the ``round(sparsity * fan_in)`` lowest scores of every output
    unit (the last axis), so that every unit keeps the same fraction of its inputs.

    A criterion whose scores carry a per-unit factor (OBD: every weight into unit ``j``
    is scaled by that unit's second derivative) otherwise deletes whole units, and a
    deleted output class or hidden unit cannot come back in retraining.

    Example:

    >>> balanced_mask(np.array([[1.0, 9.0], [2.0, 8.0]]), 0.5)
    array([[0., 1.],
           [1., 0.]], dtype=float32)
    """
    s = np.asarray(scores, dtype="float64")
    if s.ndim < 2:
        return lowest_mask(s, sparsity)
    cols = s.reshape(-1, s.shape[-1])
    k = round(sparsity * cols.shape[0])
    mask = np.ones(cols.shape, dtype="float32")
    if k > 0:
        order = np.argsort(cols, axis=0, kind="stable")[:k]
        np.put_along_axis(mask, order, 0.0, axis=0)
    return mask.reshape(s.shape)


def block_scores(scores: np.ndarray, block: int) -> np.ndarray:
    """Mean score of every block of ``block`` consecutive weights along the input axis
    (the second to last, the matmul's reduction axis) of one output unit.

    The input axis is replaced by the block axis: a ``(in, out)`` Dense kernel gives
    ``(ceil(in / block), out)``. A block holding a pruned weight (score ``-inf``) scores
    ``-inf``. Arrays with fewer than 2 axes are returned as they are.

    Example:

    >>> block_scores(np.array([[1.0, 4.0], [3.0, 0.0], [5.0, 2.0]]), 2)
    array([[2., 2.],
           [5., 2.]])
    """
    s = np.asarray(scores, dtype="float64")
    if s.ndim < 2 or block == 1:
        return s
    moved = np.moveaxis(s, -2, -1)  # (..., out, in)
    n_in = moved.shape[-1]
    n_blocks = -(-n_in // block)
    padded = np.full(moved.shape[:-1] + (n_blocks * block,), np.nan)
    padded[..., :n_in] = moved
    blocks = padded.reshape(moved.shape[:-1] + (n_blocks, block))
    with np.errstate(invalid="ignore"):  # -inf blocks stay -inf
        means = np.nanmean(blocks, axis=-1)
    return np.moveaxis(means, -1, -2)


def expand_blocks(mask: np.ndarray, shape: tuple, block: int) -> np.ndarray:
    """The weight mask of ``shape`` from a mask over :func:`block_scores`' blocks."""
    m = np.asarray(mask, dtype="float32")
    if len(shape) < 2 or block == 1:
        return m.reshape(shape)
    moved = np.repeat(np.moveaxis(m, -2, -1), block, axis=-1)[..., :shape[-2]]
    return np.moveaxis(moved, -1, -2)


def select_masks(scores: list, sparsity: float, scope: str = "layer",
                 balance: bool = False, block: int = 1) -> list:
    """Masks removing ``sparsity`` of the weights, lowest scores first.

    Args:
        scores: list of saliency arrays, one per weight variable (pruned ones ``-inf``).
        sparsity: float, the fraction of zeros wanted.
        scope: str, default ``"layer"``: the same sparsity in each variable; ``"global"``:
            one threshold across all variables.
        balance: bool, default False. Within each variable, rank the weights of every
            output unit separately (:func:`balanced_mask`). With ``scope="global"`` the
            global threshold decides each variable's sparsity and the balanced ranking
            which weights go.
        block: int, default 1. Remove weights in blocks of ``block`` consecutive inputs
            of one output unit, ranked by their mean score (:func:`block_scores`): the
            zeros come in runs, which compress better (TFLite stores a Dense kernel as
            ``(out, in)``, so a block is contiguous in the file). The sparsity counts
            blocks, so it is exact when the input dimension is a multiple of ``block``.
    """
    if block > 1:
        shapes = [np.shape(s) for s in scores]
        blocked = [block_scores(s, block) for s in scores]
        out = select_masks(blocked, sparsity, scope, balance)
        return [expand_blocks(m, shape, block) for m, shape in zip(out, shapes)]
    if scope == "global":
        out = global_masks(scores, sparsity)
        if not balance:
            return out
        return [balanced_mask(s, 1.0 - float(m.mean())) for s, m in zip(scores, out)]
    return [(balanced_mask if balance else lowest_mask)(s, sparsity) for s in scores]
