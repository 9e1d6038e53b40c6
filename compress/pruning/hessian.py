"""Layer Hessians ``H = 2 X X^T / N`` from calibration inputs, streamed batch by batch.

The layer-wise reconstruction problem of OBC/SparseGPT (Frantar & Alistarh 2022, 2023):
a layer computing ``y = W x`` (``W``: output units x inputs) whose weights change to
``W'`` makes the squared error ``||W X - W' X||^2``; its Hessian in each row of ``W`` is
``H = 2 X X^T``, the same for every output unit. ``X`` holds the layer's inputs over the
calibration data: the input vectors of a Dense layer (every position of a sequence
too), the unfolded input patches of a convolution (stride, padding, dilation and groups
as the layer computes them), one ``k x k`` patch per channel for a depthwise convolution.

A layer is a set of *problems*: a kernel seen as ``G`` matrices ``W[g]`` (rows: output
units, columns: inputs) each with its own Hessian (``G`` is 1 for Dense, the number of
groups of a grouped convolution, the number of channels of a depthwise one). A problem
whose input dimension exceeds ``max_dim`` gets a block-diagonal Hessian (column blocks
of at most ``max_dim``; ``block_diagonal`` says so), so memory stays bounded at about
``G * max_dim * d * 8`` bytes.

Supported: Dense, EinsumDense (a Dense on the input's last axes flattened: the kernel's
leading axes contract them, its other axes are outputs, as the query/key/value and output
projections of attention), Conv1D, Conv2D, Conv3D (groups too), Conv1D/2D/3DTranspose
(rows are output channels, columns the input channels at each kernel position, as the
transposed convolution spreads them), DepthwiseConv1D/2D, SeparableConv1D/2D (its depthwise
part, and its pointwise part on the depthwise output), and the cells of LSTM, GRU and
SimpleRNN layers: the input kernel on ``x_t`` and the recurrent kernel on ``h_{t-1}``,
summed over every time step (a GRU's recurrent kernel needs ``reset_after=True``, Keras's
default: otherwise its candidate reads the reset-gated state). Inputs are captured by hooking the layer's
``call`` during an ordinary forward pass, so nested and functional models both work.

Example:

>>> hs = layer_hessians(model, [model.get_layer("fc1").kernel], x)   # doctest: +SKIP
>>> hs[0].matrices(damp=0.01)[0].shape                             # doctest: +SKIP
(1, 784, 784)
"""

from __future__ import annotations

import dataclasses
import time
import weakref

import numpy as np

from compress.errors import CompressError

#: Largest input dimension given a dense Hessian (8 * 4096^2 bytes = 128 MiB per block).
MAX_DIM = 4096
SUPPORTED = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
             "Conv2DTranspose", "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D",
             "SeparableConv1D", "SeparableConv2D",
             "LSTMCell", "GRUCell", "SimpleRNNCell")
#: Recurrent cells: the input kernel reads ``x_t``, the recurrent kernel ``h_{t-1}``, at
#: every time step (the cell is hooked once per step).
CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell")
#: Transposed convolutions: kernel ``(*k, outputs, inputs)``, rows are output channels.
TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
#: Widest unfolded input (kernel positions x channels) of a Conv3D or transposed
#: convolution: its patches come from a convolution with a ``(cols, cols)`` identity.
MAX_UNFOLD = 8192


@dataclasses.dataclass
class LayerHessian:
    """The Hessians of one weight variable's problems.

    Args:
        layer: the Keras layer. variable: its kernel variable.
        index: int array ``(G, rows, cols)``: ``W[g] = kernel.ravel()[index[g]]``.
        splits: list of ``(a, b)`` column ranges with their own Hessian block (one range
            ``(0, cols)`` unless block-diagonal).
        sums: list (one per split) of float64 arrays ``(G, b - a, b - a)``: sums of
            ``2 x x^T`` over the rows seen.
        rows: int. Input vectors (samples x positions) accumulated.
        seconds: float. Time spent capturing inputs and accumulating.
    """

    layer: object
    variable: object
    index: np.ndarray
    splits: list
    sums: list
    rows: int = 0
    seconds: float = 0.0
    rows_fn: object = None
    #: ``(model, layer)`` of an uncompressed copy: :func:`accumulate` then also sums
    #: ``cross = 2 X_ref X^T`` (its inputs against this model's), per split.
    reference: tuple | None = None
    cross: list | None = None

    @property
    def name(self) -> str:
        return f"{self.layer.name}/{self.variable.name.split('/')[-1]}"

    @property
    def block_diagonal(self) -> bool:
        return len(self.splits) > 1

    @property
    def nbytes(self) -> int:
        return int(sum(s.nbytes for s in self.sums))

    def matrices(self, damp: float = 0.0) -> list:
        """Mean Hessians ``2 X X^T / N``, one ``(G, b, b)`` array per split, with
        ``damp * mean(diagonal)`` added to each diagonal."""
        out = []
        for s in self.sums:
            h = s / max(self.rows, 1)
            if damp:
                diag = np.einsum("gii->gi", h)
                h = h + damp * diag.mean(axis=1)[:, None, None] * np.eye(h.shape[-1])
            out.append(h)
        return out

    def diagonal(self) -> np.ndarray:
        """``H_qq`` spread over the kernel's shape (every weight reading input ``q``)."""
        diag = np.concatenate([np.einsum("gii->gi", s) for s in self.sums], axis=1)
        diag = diag / max(self.rows, 1)
        out = np.zeros(int(np.prod(self.variable.shape)))
        out[self.index] = np.broadcast_to(diag[:, None, :], self.index.shape)
        return out.reshape(tuple(self.variable.shape))

    def info(self) -> dict:
        g, _, cols = self.index.shape
        return {"weight": self.name, "inputs": int(cols), "problems": int(g),
                "rows": int(self.rows), "block_diagonal": self.block_diagonal,
                "hessian_bytes": self.nbytes, "seconds": round(self.seconds, 4)}


def owner(model, variable):
    """``(layer, role)``: the leaf layer holding ``variable`` and which weight it is
    (``"kernel"``, ``"depthwise"``, ``"pointwise"``).

    Raises:
        CompressError: the variable belongs to no leaf layer of the model.
    """
    from compress.pruning.masks import deep_leaves

    leaves = deep_leaves(model)
    for layer in leaves:
        for attr, role in (("kernel", "kernel"), ("depthwise_kernel", "depthwise"),
                           ("pointwise_kernel", "pointwise"),
                           ("recurrent_kernel", "recurrent")):
            var = getattr(layer, attr, None)
            if var is not None and var is variable:
                if type(layer).__name__.startswith("SeparableConv") and role == "kernel":
                    continue
                return layer, role
    for layer in reversed(leaves):  # the innermost layer holding it, not its parent
        if any(v is variable for v in layer.weights):
            raise _unsupported(layer, f"weight '{variable.name}' is not a kernel of "
                               f"{', '.join(SUPPORTED)}")
    raise CompressError(f"layer Hessian: weight '{variable.name}' is not a kernel of a "
                        f"layer of model '{model.name}'")


def hessian_problem(model, variable) -> str | None:
    """Why the layer Hessian of ``variable`` cannot be formed (the one-line refusal
    :func:`new_hessian` would raise), or None when it can.

    Example:

    >>> hessian_problem(model, model.get_layer("tokens").embeddings)  # doctest: +SKIP
    "layer 'tokens' (Embedding): weight 'embeddings' is not a kernel of Dense, ..."
    """
    try:
        layer, role = owner(model, variable)
        _problem(layer, role, MAX_DIM)
    except CompressError as exc:
        return str(exc)
    return None


def _unsupported(layer, why: str) -> CompressError:
    from compress.pruning.masks import layer_path

    return CompressError(f"layer '{layer_path(layer)}' ({type(layer).__name__}): {why}; its "
                         "layer Hessian cannot be formed, leave it out with --layers")


def _problem(layer, role, max_dim):
    """``(index, splits, rows_fn)`` of one kernel; ``rows_fn(a)`` turns the layer's input
    batch into a ``(G, n, cols)`` float32 tensor of input vectors."""
    import tensorflow as tf

    kind = type(layer).__name__
    if kind not in SUPPORTED:
        raise _unsupported(layer, f"supported layers are {', '.join(SUPPORTED)}")
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _unsupported(layer, "channels_first data")
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        raise _unsupported(layer, "a LoRA or quantized kernel")
    separable = kind in ("SeparableConv1D", "SeparableConv2D")
    var = {"kernel": layer.kernel if not separable else None,
           "depthwise": getattr(layer, "depthwise_kernel", None),
           "pointwise": getattr(layer, "pointwise_kernel", None),
           "recurrent": getattr(layer, "recurrent_kernel", None)}[role]
    shape = tuple(var.shape)
    size = int(np.prod(shape))

    if kind in CELLS:  # x_t @ kernel, h_{t-1} @ recurrent_kernel: Dense at every step
        if role == "recurrent" and kind == "GRUCell" and not layer.reset_after:
            raise _unsupported(layer, "a GRU with reset_after=False (its candidate reads "
                               "the reset-gated state, not h_{t-1})")
        d_in, d_out = shape
        index = np.arange(size).reshape(d_in, d_out).T[None]

        def rows_fn(a, _recurrent=role == "recurrent"):
            x, states = a  # the cell's (inputs, states), see _forward
            if _recurrent:
                x = states[0] if isinstance(states, (list, tuple)) else states
            return tf.reshape(tf.cast(x, "float32"), (1, -1, d_in))
    elif kind in ("Dense", "EinsumDense"):
        d_in, d_out = shape[0], size // max(shape[0], 1)
        if kind == "EinsumDense":
            from compress.pruning.masks import einsum_contracted

            k = einsum_contracted(layer.equation, len(shape))
            if k is None:
                raise _unsupported(layer, f"equation '{layer.equation}' (only a kernel whose "
                                   "leading axes contract the input's last axes and whose "
                                   "other axes are output axes)")
            d_in = int(np.prod(shape[:k]))
            d_out = size // d_in
        index = np.arange(size).reshape(d_in, d_out).T[None]

        def rows_fn(a):
            return tf.reshape(tf.cast(a, "float32"), (1, -1, d_in))
    elif kind == "Conv3D" or kind in TRANSPOSED:
        index, rows_fn = _unfolded(layer, kind, shape)
    elif kind in ("Conv1D", "Conv2D") or (separable and role == "depthwise") \
            or kind in ("DepthwiseConv1D", "DepthwiseConv2D"):
        depthwise = separable or kind.startswith("DepthwiseConv")
        ksize = shape[:-2]
        rank = len(ksize)
        if rank not in (1, 2):
            raise _unsupported(layer, f"a {rank}-D kernel")
        groups = int(getattr(layer, "groups", 1) or 1)
        c_in, c_out = shape[-2], shape[-1]
        k = int(np.prod(ksize))
        flat = np.arange(size).reshape(k, c_in, c_out)
        if depthwise:  # channel c: W[c] = (multiplier, k)
            index = np.transpose(flat, (1, 2, 0))
        else:  # group g: W[g] = (c_out / G, k * c_in) over its own inputs
            cog = c_out // groups
            index = np.stack([flat[:, :, g * cog:(g + 1) * cog].reshape(k * c_in, cog).T
                              for g in range(groups)])
        strides = tuple(np.broadcast_to(layer.strides, (rank,)))
        dilation = tuple(np.broadcast_to(layer.dilation_rate, (rank,)))
        padding = layer.padding
        if rank == 1:
            ksize, strides, dilation = (1, *ksize), (1, *strides), (1, *dilation)

        def rows_fn(a):
            a = tf.cast(a, "float32")
            pad = padding
            if rank == 1:
                if padding == "causal":
                    a = tf.pad(a, [[0, 0], [dilation[1] * (ksize[1] - 1), 0], [0, 0]])
                    pad = "valid"
                a = a[:, None]
            p = tf.image.extract_patches(a, [1, *ksize, 1], [1, *strides, 1],
                                         [1, *dilation, 1], pad.upper())
            c = a.shape[-1]
            p = tf.reshape(p, (-1, k, c))  # (n, k, channels), channels minor
            if depthwise:
                return tf.transpose(p, (2, 0, 1))  # (channels, n, k)
            p = tf.reshape(p, (-1, k, groups, c // groups))
            return tf.reshape(tf.transpose(p, (2, 0, 1, 3)), (groups, -1, k * (c // groups)))
    else:  # SeparableConv1D/2D pointwise: a 1x1 convolution of the depthwise output
        d_in, d_out = shape[-2], shape[-1]
        index = np.arange(size).reshape(d_in, d_out).T[None]

        def rows_fn(a):
            from keras import ops

            y = ops.depthwise_conv(tf.cast(a, "float32"), tf.cast(layer.depthwise_kernel,
                                                                  "float32"),
                                   layer.strides, layer.padding, layer.data_format,
                                   layer.dilation_rate)
            return tf.reshape(y, (1, -1, d_in))
    cols = index.shape[-1]
    nblocks = -(-cols // max_dim)
    width = -(-cols // nblocks)
    width += -width % 4  # keep N:M groups of 4 inside one block
    splits = [(a, min(a + width, cols)) for a in range(0, cols, width)]
    return index, splits, rows_fn


def _unfolded(layer, kind, shape):
    """``(index, rows_fn)`` of a Conv3D or a transposed convolution, whose input vectors
    are computed by the layer's own op (keras.ops ``conv``/``conv_transpose``, the same
    strides, padding, output padding and dilation) run with an identity kernel: output
    channel ``p * C + c`` of it is input channel ``c`` seen at kernel position ``p``, the
    column of the kernel entry ``(p, c)`` (grouped Conv3D: per group, as Conv2D)."""
    import tensorflow as tf
    from keras import ops

    ksize = shape[:-2]
    k = int(np.prod(ksize))
    size = int(np.prod(shape))
    if kind in TRANSPOSED:  # kernel (*k, out, in): row j = W[:, j, :], columns (p, c)
        c_out, c_in = shape[-2], shape[-1]
        groups = 1
        index = np.transpose(np.arange(size).reshape(k, c_out, c_in), (1, 0, 2)).reshape(
            c_out, k * c_in)[None]
    else:
        c_in, c_out = shape[-2], shape[-1]
        groups = int(getattr(layer, "groups", 1) or 1)
        cog = c_out // groups
        flat = np.arange(size).reshape(k, c_in, c_out)
        index = np.stack([flat[:, :, g * cog:(g + 1) * cog].reshape(k * c_in, cog).T
                          for g in range(groups)])
    channels = c_in * groups
    if k * channels > MAX_UNFOLD:
        raise _unsupported(layer, f"{k * channels} unfolded inputs (kernel positions x "
                           f"channels; at most {MAX_UNFOLD})")
    made = []  # the identity kernel, built at the first batch (not for a mere check)

    def identity():
        if not made:
            eye = np.eye(k * channels, dtype="float32")
            if kind in TRANSPOSED:  # (*k, out = k*C, in = C): out p*C + c reads in c at p
                eye = np.transpose(eye.reshape(k, channels, k * channels), (0, 2, 1))
                eye = eye.reshape(*ksize, k * channels, channels)
            else:
                eye = eye.reshape(*ksize, channels, k * channels)
            with tf.init_scope():  # eager, also when first called inside a traced step
                made.append(tf.constant(eye))
        return made[0]

    def rows_fn(a):
        a = tf.cast(a, "float32")
        if kind in TRANSPOSED:
            p = ops.conv_transpose(a, identity(), layer.strides, layer.padding,
                                   layer.output_padding, layer.data_format,
                                   layer.dilation_rate)
        else:
            p = ops.conv(a, identity(), layer.strides, layer.padding, layer.data_format,
                         layer.dilation_rate)
        p = tf.reshape(p, (-1, k, groups, channels // groups))
        return tf.reshape(tf.transpose(p, (2, 0, 1, 3)), (groups, -1, k * (channels // groups)))

    return index, rows_fn


# model -> {(variable ids, splits): traced step or None}: repeated passes reuse one trace.
_TRACED = weakref.WeakKeyDictionary()


class _Stop(Exception):
    """Raised by a hook once the captured layer has run: the rest of the model is skipped."""


def _batches(x, batch_size):
    import keras

    leaves = keras.tree.flatten(x)
    n = len(leaves[0])
    for start in range(0, n, batch_size):
        cut = slice(start, start + batch_size)
        yield keras.tree.map_structure(lambda a, cut=cut: a[cut], x)


def _forward(model, hooks, xb, stop_layer=None):
    """Run ``model`` on one batch calling ``hooks[id(layer)](input)`` inside each hooked
    layer's call; stops right after ``stop_layer`` ran."""
    from compress.pruning.masks import deep_leaves

    patched = []
    leaves = deep_leaves(model)
    for layer in leaves:
        fn = hooks.get(id(layer))
        if fn is None:
            continue
        original = layer.call
        # TensorFlow's RNN loop (not unrolled) calls its cell once more before the loop,
        # at time 0 with the initial state, to learn the output's shape; that call is
        # not a step of the sequence and is skipped (tests check h_{t-1} step by step).
        rnn = next((la for la in leaves if getattr(la, "cell", None) is layer), None)
        skip = [int(type(layer).__name__ in CELLS and not getattr(rnn, "unroll", False))]

        def hooked(*args, _fn=fn, _orig=original, _layer=layer, _skip=skip, **kwargs):
            first = args[0] if args else kwargs["inputs"]
            if type(_layer).__name__ in CELLS:  # one step: (x_t, states)
                first = (first, args[1] if len(args) > 1 else kwargs["states"])
            if _skip[0]:
                _skip[0] -= 1
            else:
                _fn(first)
            out = _orig(*args, **kwargs)
            if _layer is stop_layer:
                raise _Stop
            return out

        layer.call = hooked
        patched.append(layer)
    try:
        model(xb, training=False)
    except _Stop:
        pass
    finally:
        for layer in patched:
            del layer.call


def accumulate(model, hessians: list, x, batch_size: int = 128, stop_early: bool = True):
    """Add the calibration inputs ``x`` (streamed ``batch_size`` samples at a time) into
    each of ``hessians`` (:class:`LayerHessian`), with one forward pass per batch."""
    import tensorflow as tf

    fns = {}
    by_layer = {}
    for h in hessians:
        by_layer.setdefault(id(h.layer), []).append(h)
    for key, hs in by_layer.items():
        def hook(a, _hs=hs):
            for h in _hs:
                rows = h.rows_fn(a)
                h.rows += int(rows.shape[1])
                # the reference's inputs of the same call (a cell: of the same time step)
                pending = None if h.reference is None else (
                    h.pending.pop(0) if len(h.pending) > 1 else h.pending[0])
                for i, (lo, hi) in enumerate(h.splits):
                    part = rows[:, :, lo:hi]
                    h.sums[i] += 2.0 * tf.einsum("gni,gnj->gij", part, part).numpy()
                    if pending is not None:
                        ref = pending[:, :, lo:hi]
                        h.cross[i] += 2.0 * tf.einsum("gni,gnj->gij", ref, part).numpy()
        fns[key] = hook
    if not stop_early and not any(h.reference for h in hessians) and \
            not any(type(h.layer).__name__ in CELLS for h in hessians) and \
            _accumulate_traced(model, hessians, x, batch_size):
        return
    from compress.layer_state import own_calls

    single = hessians[0].layer if len(by_layer) == 1 else None
    if single is not None and type(single).__name__ in CELLS:
        single = None  # called at every time step: run the whole model
    if single is not None and len(own_calls(single, model)) > 1:
        single = None  # a shared layer: every call counts, run the whole model
    refs = [h for h in hessians if h.reference is not None]
    for xb in _batches(x, batch_size):
        t0 = time.perf_counter()
        for h in refs:  # the uncompressed inputs of the same samples, before this model's
            got = []
            ref = h.reference[1]  # a cell is called at every time step, a shared layer
            many = type(ref).__name__ in CELLS or len(own_calls(ref, h.reference[0])) > 1
            _forward(h.reference[0], {id(ref): got.append}, xb,
                     stop_layer=None if many else ref)
            h.pending = [h.rows_fn(g) for g in (got if many else got[:1])]
        _forward(model, fns, xb, stop_layer=single if stop_early else None)
        spent = time.perf_counter() - t0
        for h in hessians:  # the forward pass and the products, shared by its layers
            h.seconds += spent / len(hessians)


def _accumulate_traced(model, hessians, x, batch_size) -> bool:
    """:func:`accumulate` through one traced function per run: a Keras model from the
    model's inputs to every layer's input. False (nothing done) when a layer is not a
    node of the model's own graph (nested models, shared layers): hooks then."""
    import keras
    import tensorflow as tf

    key = tuple((id(h.variable), tuple(h.splits)) for h in hessians)
    cache = _TRACED.setdefault(model, {})
    if key not in cache:
        layers = list({id(h.layer): h.layer for h in hessians}.values())
        try:
            feat = keras.Model(model.inputs, [layer.input for layer in layers])
        except Exception:  # noqa: BLE001 - any graph Keras cannot cut: fall back to hooks
            cache[key] = None
            return False
        pos = {id(layer): i for i, layer in enumerate(layers)}
        plan = [(pos[id(h.layer)], h.rows_fn, list(h.splits)) for h in hessians]

        @tf.function(reduce_retracing=True)
        def step(xb):
            acts = feat(xb, training=False)
            acts = acts if isinstance(acts, (list, tuple)) else [acts]
            out = []
            for at, rows_fn, splits in plan:
                rows = rows_fn(acts[at])
                out.append([tf.shape(rows)[1]] + [
                    2.0 * tf.einsum("gni,gnj->gij", rows[:, :, lo:hi], rows[:, :, lo:hi])
                    for lo, hi in splits])
            return out

        cache[key] = step
    step = cache[key]
    if step is None:
        return False

    for xb in _batches(x, batch_size):
        t0 = time.perf_counter()
        for h, (n, *sums) in zip(hessians, step(xb)):
            h.rows += int(n)
            for i, s in enumerate(sums):
                h.sums[i] += s.numpy()
        spent = time.perf_counter() - t0
        for h in hessians:
            h.seconds += spent / len(hessians)
    return True


def new_hessian(model, variable, max_dim: int = MAX_DIM, reference=None) -> LayerHessian:
    """An empty :class:`LayerHessian` for ``variable`` (a kernel of ``model``);
    ``reference``: an uncompressed copy of ``model`` whose inputs to the same layer are
    the target (``cross`` is then accumulated too)."""
    from compress.pruning.masks import deep_leaves

    layer, role = owner(model, variable)
    index, splits, rows_fn = _problem(layer, role, max_dim)
    g = index.shape[0]
    zeros = [np.zeros((g, hi - lo, hi - lo)) for lo, hi in splits]
    h = LayerHessian(layer, variable, index, splits, zeros, rows_fn=rows_fn)
    if reference is not None:
        mine, theirs = deep_leaves(model), deep_leaves(reference)
        at = next(i for i, la in enumerate(mine) if la is layer)
        if len(mine) != len(theirs) or type(theirs[at]) is not type(layer):
            raise CompressError(f"layer Hessian: reference model '{reference.name}' does not "
                                f"have the layers of '{model.name}'")
        h.reference = (reference, theirs[at])
        h.cross = [np.zeros_like(z) for z in zeros]
    return h


def thin_hessians(rows: list, flag: str = "--calibration") -> str | None:
    """A warning naming the layers whose Hessian had far fewer calibration input vectors
    (``rows``) than inputs per unit (``inputs``: under a quarter), or None: such a Hessian
    is far from full rank and mostly the damping holds it up, so the compensation fits
    those few samples. (Fewer rows than inputs alone is common and works: 256 MNIST digits
    for 784 pixels, many of them always 0.)

    Example:

    >>> thin_hessians([{"weight": "fc1/kernel", "rows": 4, "inputs": 784},
    ...                {"weight": "fc2/kernel", "rows": 4, "inputs": 3}])
    'fc1/kernel had 4 calibration input vectors for 784 inputs per unit: its Hessian is far from full rank (mostly the damping holds it up) and the compensation fits those few samples; give more samples (--calibration)'
    """
    thin = [r for r in rows if 4 * r["rows"] < r["inputs"] and not r.get("n_m_left_dense")]
    if not thin:
        return None
    names = ", ".join(f"{r['weight']} had {r['rows']} calibration input vectors for "
                      f"{r['inputs']} inputs per unit" for r in thin[:3])
    more = f" (and {len(thin) - 3} more layers)" if len(thin) > 3 else ""
    its = "its Hessian is" if len(thin) == 1 else "their Hessians are"
    return (f"{names}{more}: {its} far from full rank (mostly the damping holds it up) and "
            f"the compensation fits those few samples; give more samples ({flag})")


def check_calibration(model, x, where: str = "layer Hessian") -> None:
    """Refuse calibration inputs that do not fit the model (one line)."""
    import keras

    if isinstance(x, dict):  # several inputs: in the model's input order, by name
        from compress.data.arrays import model_inputs

        x = [x.get(spec[0], a) for spec, a in zip(model_inputs(model), x.values())]
    leaves = keras.tree.flatten(x)
    if not leaves or len(leaves[0]) == 0:
        raise CompressError(f"{where}: no calibration samples; give --data")
    for a, spec in zip(leaves, model.inputs):
        want = tuple(spec.shape[1:])
        have = tuple(np.shape(a)[1:])
        if len(want) != len(have) or any(w is not None and w != h for w, h in zip(want, have)):
            raise CompressError(f"{where}: calibration samples have shape {have} but model "
                                f"'{model.name}' takes {want}")


def layer_hessians(model, variables, x, *, max_dim: int = MAX_DIM,
                   batch_size: int = 128) -> list:
    """The :class:`LayerHessian` of each kernel in ``variables`` from one forward pass
    per batch over ``x`` (the inputs of the model as it is now: not sequential).

    Example:

    >>> [h.info()["inputs"] for h in layer_hessians(model, kernels, x)]  # doctest: +SKIP
    [784, 300, 100]

    Args:
        model: a Keras model. variables: kernels of its supported layers.
        x: calibration inputs shaped for the model (arrays, or their structure).
        max_dim: int, default :data:`MAX_DIM`. Input dimensions above it get a
            block-diagonal Hessian.
        batch_size: int, default 128. Samples per forward pass.

    Raises:
        CompressError: an unsupported layer, or inputs that do not fit the model.
    """
    check_calibration(model, x)
    hs = [new_hessian(model, v, max_dim) for v in variables]
    accumulate(model, hs, x, batch_size, stop_early=False)
    return hs


def diagonal_saliency(model, variables, x, **kwargs) -> list:
    """OBD saliencies ``w^2 H_qq / 2`` from the layer Hessians' diagonals (the
    ``layer`` estimator of ``--method obd``: one forward pass).

    Example:

    >>> s = diagonal_saliency(model, [model.get_layer("fc1").kernel], x)  # doctest: +SKIP
    """
    hs = layer_hessians(model, variables, x, **kwargs)
    return [0.5 * h.diagonal() * np.square(np.asarray(h.variable, dtype="float64"))
            for h in hs]


def hessian_leave_out(model, pairs, selected: bool, who: str) -> tuple[list, dict]:
    """``(kept, left)``: ``pairs`` less the weights whose layer Hessian cannot be formed
    (an Embedding, a multi-axis EinsumDense), which stay dense and are named in ``left``
    (``{weight: reason}``), for saliencies that need layer Hessians (OBS, OBD's
    ``layer`` estimator; :func:`compress.pruning.obd.uses_layer_hessians`). When the
    user ``selected`` the layers such a weight is refused in one line instead, as is a
    model where nothing is left; ``who`` names the caller in that refusal
    (``prune --method obd``).

    Example:

    >>> kept, left = hessian_leave_out(model, pairs, False, "Pruning")  # doctest: +SKIP
    >>> left  # doctest: +SKIP
    {'tokens/embeddings': "layer 'tokens' (Embedding): ..."}
    """
    from compress.pruning.masks import weight_key

    kept, left = [], {}
    for layer, var in pairs:
        why = hessian_problem(model, var)
        if why is None:
            kept.append((layer, var))
        elif selected:
            raise CompressError(why)
        else:
            left[weight_key(layer, var)] = why
    if not kept and left:
        raise CompressError(f"{who}: no prunable layer of model '{model.name}' has a layer "
                            f"Hessian ({next(iter(left.values()))})")
    return kept, left
