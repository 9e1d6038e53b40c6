"""Optimal Brain Damage saliencies (LeCun, Denker and Solla 1990).

The saliency of weight ``k`` is the loss increase a second-order Taylor expansion
predicts when it is set to zero, ``s_k = h_kk * w_k**2 / 2``, with ``h_kk`` the diagonal
of the Hessian of the training loss: the model's own (:mod:`compress.task`: cross-entropy
for a classifier, binary cross-entropy for sigmoid outputs, mean squared error for a
regression) on the calibration data. Five estimators of the diagonal:

- ``backprop`` (the default): LeCun et al.'s own recipe, one backward pass of second
  derivatives under the Levenberg-Marquardt approximation. At the softmax
  cross-entropy output ``d2L/dz_j^2 = p_j (1 - p_j)``; a Dense/Conv layer ``z = a W + b``
  gets ``h_ij = sum_n a_i^2 d2L/dz_j^2`` and passes ``d2L/da_i^2 = sum_j W_ij^2
  d2L/dz_j^2`` back through ``f'(x)^2`` (the ``f''`` term and off-diagonal terms are
  dropped). Deterministic, and about two gradient passes. Exact (equal to the
  Gauss-Newton diagonal) for the output layer; an approximation of it elsewhere.
  Sequential chains of Dense/Conv/BatchNorm/pooling/activation layers; other models
  fall back to ``gauss_newton``.
- ``gauss_newton``: the Gauss-Newton / Levenberg-Marquardt diagonal OBD uses, positive
  by construction. For softmax cross-entropy it equals ``E_x sum_c p_c (d log p_c/dw)^2``.
  One pass draws Rademacher signs ``r_c`` per example and squares the per-example
  gradient of ``sum_c r_c sqrt(p_c) log p_c`` (unbiased); ``exact=True`` loops over the
  classes instead (one pass per class).
- ``hutchinson``: ``E[v * Hv]`` with Rademacher ``v`` and Hessian-vector products
  (double backpropagation) of the true Hessian; can be negative (clipped at zero).
- ``fisher``: the empirical Fisher, mean squared per-example gradient at the true labels.
- ``layer``: the diagonal of each layer's own Hessian ``2 X X^T`` (its output error,
  not the loss; :mod:`compress.pruning.hessian`): one forward pass, any architecture
  whose pruned layers it supports, no labels.

Per-example gradients come from one vectorized Jacobian (``tf.vectorized_map``), so a
pass costs about one to three gradient passes over the data.

Example:

>>> h = hessian_diagonal(model, x, y, estimator="gauss_newton")   # doctest: +SKIP
>>> s = obd_saliency(model, x, y)                                 # doctest: +SKIP
"""

from __future__ import annotations

import weakref

import numpy as np

from compress.errors import CompressError

ESTIMATORS = ("backprop", "gauss_newton", "hutchinson", "fisher", "layer")


def _log_probs(model, x):
    import tensorflow as tf

    from compress.training import outputs_probabilities

    out = model(x, training=False)
    if outputs_probabilities(model):
        return tf.math.log(tf.maximum(tf.cast(out, "float32"), 1e-12))
    return tf.nn.log_softmax(tf.cast(out, "float32"))


def _flat_outputs(model, x):
    import tensorflow as tf

    out = tf.cast(model(x, training=False), "float32")
    return tf.reshape(out, (tf.shape(out)[0], -1))


def output_curvature(task) -> str:
    """How the loss curves at the model's output, for the Gauss-Newton diagonals:
    ``"softmax"`` (cross-entropy of a classifier: ``p (1 - p)`` at the logits, with the
    exact ``diag(p) - p p^T`` at the last layer), ``"sigmoid"`` / ``"sigmoid_logits"``
    (binary cross-entropy of sigmoid probabilities or of logits: ``p (1 - p) / k`` at the
    logits), or ``"mse"`` (``2 / k`` per output value: exact for mean squared error, the
    squared error's curvature for the other regression losses, whose own second
    derivative is zero almost everywhere). ``k`` is the number of output values.

    >>> import keras
    >>> from compress.task import resolve
    >>> output_curvature(resolve(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])))
    'mse'
    """
    from compress.task import BINARY, CLASSIFICATION, MULTILABEL

    if task.kind == CLASSIFICATION:
        return "softmax"
    if task.kind in (BINARY, MULTILABEL):
        return "sigmoid_logits" if task.from_logits else "sigmoid"
    return "mse"


def _curvature_at_output(kind: str, out):
    """``d2L/dout^2`` (Gauss-Newton, per output value) for curvatures other than softmax;
    ``out`` is the model's output, flattened per sample."""
    import tensorflow as tf

    k = float(max(int(out.shape[-1] or 1), 1))
    if kind == "sigmoid":
        p = tf.clip_by_value(out, 1e-6, 1.0 - 1e-6)
        return 1.0 / (k * p * (1.0 - p))
    if kind == "sigmoid_logits":
        p = tf.sigmoid(out)
        return p * (1.0 - p) / k
    return tf.ones_like(out) * (2.0 / k)


def effective_estimator(model, estimator: str) -> str:
    """The estimator :func:`hessian_diagonal` uses for ``model``: ``estimator``, or
    ``"layer"`` (the layer Hessians) for a model with several inputs or outputs, or the
    Gauss-Newton estimators (``backprop``, ``gauss_newton``) of a classifier with classes
    at every position (a segmenter, a tagger), which they cannot take. Reports name this
    one.

    Example:

    >>> effective_estimator(two_input_model, "backprop")  # doctest: +SKIP
    'layer'
    """
    if len(model.inputs) > 1 or len(model.outputs) > 1:
        return "layer"
    if estimator in ("backprop", "gauss_newton") and len(model.outputs[0].shape) > 2:
        from compress.task import CLASSIFICATION, resolve

        if resolve(model).kind == CLASSIFICATION:
            return "layer"
    return estimator


def uses_layer_hessians(model, method: str, estimator: str) -> bool:
    """Whether ``method``'s saliencies of ``model`` come from layer Hessians (OBS; OBD
    with the ``layer`` estimator, which a model with several inputs or outputs always
    gets), so a weight whose layer Hessian cannot be formed must be left out."""
    return method == "obs" or (method == "obd"
                               and effective_estimator(model, estimator) == "layer")


def hessian_diagonal(model, x, y, variables=None, estimator: str = "backprop",
                     batch_size: int = 32, samples: int = 1, exact: bool = False,
                     seed: int = 0, task=None) -> list:
    """Estimate the diagonal of the Hessian of the model's own mean loss on ``(x, y)``.

    The loss is the task's (:mod:`compress.task`): cross-entropy for a classifier,
    binary cross-entropy for sigmoid outputs, mean squared error for a regression. The
    Gauss-Newton estimators (``backprop``, ``gauss_newton``) do not read the targets, so
    they also serve label-free data (``y`` None): at the original model the Hessian of
    the fidelity loss (KL divergence to its own outputs, or MSE to them) is exactly that
    Gauss-Newton matrix. ``fisher`` and ``hutchinson`` need the targets.

    Args:
        model: a Keras model.
        x: inputs, already shaped for the model.
        y: targets (integer labels for a classifier), or None (label-free).
        variables: list of weight variables, default None (every trainable weight).
        estimator: str, default ``"backprop"``. One of ``backprop``, ``gauss_newton``,
            ``hutchinson``, ``fisher``, ``layer``. A model with several inputs or
            outputs gets ``layer`` (the others take one input and one output).
        batch_size: int, default 32. Examples per vectorized pass.
        samples: int, default 1. Random probes per batch (Gauss-Newton, Hutchinson).
        exact: bool, default False. Gauss-Newton: sum over every class (output value)
            instead of sampling (one pass per class).
        seed: int, default 0. Seed of the random probes.
        task: :class:`compress.task.Task` or None, default None (the model's own,
            :func:`compress.task.resolve`).

    Returns:
        A list of NumPy arrays, one per variable, of the variable's shape.

    Raises:
        CompressError: an unknown estimator; ``fisher`` or ``hutchinson`` without
            targets; inputs and targets of different lengths.
    """
    import tensorflow as tf

    if estimator not in ESTIMATORS:
        raise CompressError(f"estimator '{estimator}': must be one of {', '.join(ESTIMATORS)}")
    # The output-curvature estimators take one input array and one output; a model with
    # several inputs or outputs gets the layer Hessians, which need only its inputs.
    if effective_estimator(model, estimator) == "layer":
        from compress.pruning.hessian import layer_hessians

        vs = list(model.trainable_variables if variables is None else variables)
        return [h.diagonal() for h in layer_hessians(model, vs, x)]
    if task is None:
        from compress.task import resolve

        task = resolve(model, y=y)
    curvature = output_curvature(task)
    classifier = curvature == "softmax"
    x = np.asarray(x)
    if y is None:
        if estimator in ("fisher", "hutchinson"):
            raise CompressError(f"estimator '{estimator}' needs labels (the loss at the true "
                                "targets) and the data has none; use --estimator backprop, "
                                "gauss_newton or layer")
    elif classifier:
        y = np.asarray(y)
        units = int(model.outputs[0].shape[-1])
        if y.ndim == 2 and y.shape[1] == units > 1:  # one-hot or soft targets
            y = np.argmax(y, -1)
        # one class per sample, or per position (a segmenter's pixels, a tagger's tokens)
        y = y.astype("int64").reshape((len(y),) + tuple(model.outputs[0].shape[1:-1]))
    else:
        y = np.asarray(y, "float32").reshape((len(y),) + tuple(model.outputs[0].shape[1:]))
    if len(x) == 0 or (y is not None and len(x) != len(y)):
        raise CompressError(f"OBD calibration data: {len(x)} inputs and "
                            f"{0 if y is None else len(y)} labels")
    variables = list(model.trainable_variables if variables is None else variables)
    if estimator == "backprop":
        diag = _backprop_diagonal(model, x, y, variables, max(batch_size, 128), curvature)
        if diag is not None:
            return diag
        estimator, exact = "gauss_newton", True  # not a supported chain: exact GN
    rng = tf.random.Generator.from_seed(seed)
    feature = _log_probs if classifier else _flat_outputs
    n_classes = int(np.prod(model.outputs[0].shape[1:])) if not classifier else \
        int(model.outputs[0].shape[-1])
    total = [tf.zeros(tuple(v.shape), "float32") for v in variables]
    if not classifier:
        from compress.task import _fresh, per_sample_loss

        sample_loss = per_sample_loss(_fresh(task.loss))

    def losses(xb, yb):
        """Per-example losses at the targets (classes per position: their mean)."""
        if classifier:
            lp = _log_probs(model, xb)
            per = -tf.reduce_sum(tf.one_hot(yb, int(lp.shape[-1])) * lp, axis=-1)
            return tf.reduce_mean(tf.reshape(per, (tf.shape(lp)[0], -1)), axis=-1)
        out = tf.cast(model(xb, training=False), "float32")
        per = sample_loss(tf.cast(yb, "float32"), out)
        return tf.reshape(per, (tf.shape(out)[0], -1))[:, 0] if per.shape.rank > 1 else per

    @tf.function(reduce_retracing=True)
    def per_example_squares(xb, weights):
        # weights: (batch, classes) coefficients c; returns sum_n (d/dw sum_c c_nc f_nc)^2
        # with f the log-probabilities (classifier) or the outputs (any other task)
        with tf.GradientTape() as tape:
            f = tf.reduce_sum(weights * feature(model, xb), axis=-1)
        jac = tape.jacobian(f, variables, experimental_use_pfor=True)
        return [tf.reduce_sum(tf.square(j), axis=0) for j in jac]

    @tf.function(reduce_retracing=True)
    def per_example_loss_squares(xb, yb):
        with tf.GradientTape() as tape:
            f = losses(xb, yb)
        jac = tape.jacobian(f, variables, experimental_use_pfor=True)
        return [tf.reduce_sum(tf.square(j), axis=0) for j in jac]

    @tf.function(reduce_retracing=True)
    def hvp_probe(xb, yb):
        vs = [tf.cast(rng.uniform(tuple(v.shape), 0, 2, dtype="int32") * 2 - 1, "float32")
              for v in variables]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                loss = tf.reduce_sum(losses(xb, yb))
            grads = inner.gradient(loss, variables)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vs)])
        hv = outer.gradient(dot, variables)
        return [v * h for v, h in zip(vs, hv)]

    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size], dtype=model.inputs[0].dtype or "float32")
        yb = None if y is None else tf.constant(y[start:start + batch_size])
        nb = int(xb.shape[0])
        if estimator == "fisher":  # the squared per-example gradients of the loss
            adds = [per_example_loss_squares(xb, yb)]
        elif estimator == "gauss_newton":
            if classifier:
                weight = tf.sqrt(tf.exp(_log_probs(model, xb)))
            else:
                weight = tf.sqrt(_curvature_at_output(curvature, _flat_outputs(model, xb)))
            if exact:
                adds = [per_example_squares(xb, weight * tf.one_hot([c] * nb, n_classes))
                        for c in range(n_classes)]
                adds = [[tf.add_n(parts) for parts in zip(*adds)]]
            else:
                adds = []
                for _ in range(samples):
                    signs = tf.cast(rng.uniform((nb, n_classes), 0, 2, dtype="int32") * 2 - 1,
                                    "float32")
                    adds.append([a / samples for a in per_example_squares(xb, signs *
                                                                          weight)])
        else:
            adds = [[a / samples for a in hvp_probe(xb, yb)] for _ in range(samples)]
        for add in adds:
            total = [t + a for t, a in zip(total, add)]
        from compress import progress  # here: compress.pruning loads before compress

        progress.update(start + nb, len(x), "sample")  # the saliency phase's display
    diag = [np.asarray(t) / len(x) for t in total]
    if estimator == "hutchinson":
        diag = [np.maximum(d, 0.0) for d in diag]
    return diag


def obd_saliency(model, x, y, variables=None, estimator: str = "backprop",
                 damping: float = 0.0, task=None, **kwargs) -> list:
    """OBD saliencies ``h_kk * w_k**2 / 2`` of ``variables`` on the data ``(x, y)``.

    With ``damping`` the diagonal is the Levenberg-Marquardt one, ``h_kk + lambda``,
    with ``lambda = damping * mean(h)`` of each variable. On a network trained to near
    zero training loss, ``p (1 - p)`` vanishes on every confidently fitted example, so the
    undamped diagonal is set by the few examples still misfit and can be orders of
    magnitude smaller for whole units than for others; the damping term bounds that
    (``damping -> inf`` ranks like magnitude, 0 is plain OBD).

    Args:
        model: a Keras model.
        x, y: calibration inputs and targets (integer labels for a classifier), or ``y``
            None (label-free: the Gauss-Newton estimators need no targets).
        variables: list of weight variables, default None (every trainable weight).
        estimator: str, default ``"backprop"``; see :func:`hessian_diagonal`.
        damping: float, default 0.0. Levenberg-Marquardt damping, relative to the mean
            of each variable's diagonal.
        task: :class:`compress.task.Task` or None, default None (the model's own loss:
            :func:`compress.task.resolve`).
        **kwargs: passed to :func:`hessian_diagonal` (``batch_size``, ``samples``, ...).

    Returns:
        A list of NumPy arrays, one per variable.
    """
    variables = list(model.trainable_variables if variables is None else variables)
    diag = hessian_diagonal(model, x, y, variables, estimator=estimator, task=task, **kwargs)
    if damping:
        diag = [np.asarray(h) + damping * float(np.mean(h)) for h in diag]
    return [0.5 * h * np.square(np.asarray(v, dtype="float64")) for h, v in zip(diag, variables)]


_ROUTING = ("Flatten", "Reshape", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
            "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "MaxPooling1D",
            "MaxPooling2D", "MaxPooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
            "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
            "Cropping1D", "Cropping2D", "Cropping3D", "Identity", "Permute",
            "ActivityRegularization")
_AVERAGING = ("AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
              "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D")
_POINTWISE = ("Activation", "ReLU", "LeakyReLU", "ELU", "Softmax")
_LINEAR = ("Dense", "Conv1D", "Conv2D", "Conv3D")


def _chain(model):
    """The leaf layers of a Sequential chain if every one is supported, else None."""
    import keras

    if not isinstance(model, keras.Sequential):
        return None
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.Sequential):
            inner = _chain(layer)
            if inner is None:
                return None
            out.extend(inner)
            continue
        kind = type(layer).__name__
        if kind in _LINEAR:
            if getattr(layer, "lora_enabled", False):
                return None
        elif kind == "BatchNormalization":
            if layer.axis not in (-1, len(layer.input.shape) - 1):
                return None
        elif kind not in _ROUTING + _AVERAGING + _POINTWISE:
            return None
        out.append(layer)
    return out or None


def _is_softmax(fn) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


def _backprop_diagonal(model, x, y, variables, batch_size, curvature: str = "softmax"):
    """LeCun's backward pass of diagonal second derivatives (LM approximation).

    Returns None when the model is not a supported Sequential chain or when a variable is
    not the kernel of one of its Dense/Conv layers.
    """
    import keras
    import tensorflow as tf

    layers = _chain(model)
    if layers is None:
        return None
    index = {}
    for i, layer in enumerate(layers):
        if type(layer).__name__ in _LINEAR:
            index[id(layer.kernel)] = i
    if any(id(v) not in index for v in variables):
        return None
    wanted = {index[id(v)] for v in variables}
    last = layers[-1]
    softmax_layer = type(last).__name__ in ("Softmax",) or (
        type(last).__name__ == "Activation" and _is_softmax(last.activation))
    dtype = model.inputs[0].dtype or "float32"

    def linear(layer, a, kernel):
        if type(layer).__name__ == "Dense":
            return keras.ops.matmul(a, kernel)
        return layer.convolution_op(a, kernel)

    key = (tuple(id(v) for v in variables), curvature)
    cached = _BACKPROP_FNS.setdefault(model, {})
    if key in cached:
        batch_diag = cached[key]
    else:
        batch_diag = cached[key] = tf.function(
            lambda xb: _backprop_batch(xb, layers, index, wanted, variables, softmax_layer,
                                       linear, curvature), reduce_retracing=True)

    total = None
    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size], dtype=dtype)
        part = batch_diag(xb)
        total = part if total is None else [t + q for t, q in zip(total, part)]
        from compress import progress

        progress.update(min(start + batch_size, len(x)), len(x), "sample")
    return [np.asarray(t, dtype="float64") / len(x) for t in total]


# model -> {variable ids: traced batch function}: repeated passes (stepwise OBD, gradual
# schedules) reuse one trace.
_BACKPROP_FNS = weakref.WeakKeyDictionary()


def _backprop_batch(xb, layers, index, wanted, variables, softmax_layer, linear,
                    curvature="softmax"):
    """One batch of :func:`_backprop_diagonal` (summed over the batch), traced once."""
    import tensorflow as tf

    if True:
        # Forward: record each layer's input (and pre-activation of Dense/Conv).
        inputs, pre = [], {}
        h = xb
        for i, layer in enumerate(layers):
            inputs.append(h)
            if type(layer).__name__ in _LINEAR:
                z = linear(layer, h, layer.kernel)
                if layer.use_bias:
                    z = z + layer.bias
                pre[i] = z
                h = layer.activation(z)
            else:
                h = layer(h, training=False)
        # Start: GN diagonal of the cross-entropy w.r.t. the logits, p (1 - p).
        stop = len(layers)
        if curvature != "softmax":  # any other loss: its curvature at the output itself
            out = tf.cast(h, "float32")
            flat = tf.reshape(out, (tf.shape(out)[0], -1))
            d2 = tf.reshape(_curvature_at_output(curvature, flat), tf.shape(out))
            p, out_linear_done, at_logits = None, False, False
        else:
            if softmax_layer:
                logits = inputs[-1]
                stop -= 1
            else:
                logits = pre.get(stop - 1, h)
            p = tf.nn.softmax(tf.cast(logits, "float32"))
            d2 = p * (1.0 - p)
            out_linear_done = softmax_layer or (stop - 1) in pre
            # The layer producing the logits (its output is exactly the logits, 2-D).
            at_logits = len(logits.shape) == 2 and (stop - 1) in pre
        sums = {}
        for i in range(stop - 1, -1, -1):
            layer, a = layers[i], inputs[i]
            kind = type(layer).__name__
            if kind in _LINEAR:
                z = pre[i]
                if not (i == stop - 1 and not softmax_layer and out_linear_done):
                    with tf.GradientTape() as t:
                        t.watch(z)
                        fz = layer.activation(z)
                    d2 = d2 * tf.square(t.gradient(fz, z))
                kernel = tf.convert_to_tensor(layer.kernel)
                a_c = tf.stop_gradient(a)
                with tf.GradientTape(persistent=False) as t:
                    t.watch(kernel)
                    t.watch(a_c)
                    s = tf.reduce_sum(d2 * linear(layer, tf.square(tf.stop_gradient(a_c)),
                                                  kernel))
                    if i > 0:
                        coef = p if at_logits else d2
                        s = s + tf.reduce_sum(coef * linear(layer, a_c,
                                                            tf.square(tf.stop_gradient(kernel))))
                hk, d2a = t.gradient(s, [kernel, a_c])
                if i > 0 and at_logits:
                    # Exact GN w.r.t. the logit layer's inputs: W_i^T (diag p - p p^T) W_i
                    # = sum_j W_ij^2 p_j - (sum_j W_ij p_j)^2 (no cross term dropped).
                    with tf.GradientTape() as t2:
                        t2.watch(a_c)
                        mean = tf.reduce_sum(p * linear(layer, a_c, tf.stop_gradient(kernel)))
                    d2a = d2a - tf.square(t2.gradient(mean, a_c))
                at_logits = False
                if i in wanted:
                    sums[i] = hk
                d2 = d2a
                if d2 is None:
                    break
            elif kind == "BatchNormalization":
                scale = tf.math.rsqrt(layer.moving_variance + layer.epsilon)
                if layer.scale:
                    scale = scale * layer.gamma
                d2 = d2 * tf.square(scale)
            elif kind in _POINTWISE:
                with tf.GradientTape() as t:
                    t.watch(a)
                    fa = layer(a, training=False)
                d2 = d2 * tf.square(t.gradient(fa, a))
            else:  # routing (0/1 Jacobian) or averaging (coefficient 1/k, squared)
                with tf.GradientTape() as t:
                    t.watch(a)
                    fa = layer(a, training=False)
                d2 = t.gradient(fa, a, output_gradients=d2)
                if kind in _AVERAGING:
                    k = int(np.prod(a.shape[1:-1])) // int(np.prod(fa.shape[1:-1]))
                    d2 = d2 / float(max(k, 1))
        return [sums[index[id(v)]] for v in variables]
