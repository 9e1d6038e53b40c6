"""Optimal Brain Damage saliencies (LeCun, Denker and Solla 1990).

The saliency of weight ``k`` is the loss increase a second-order Taylor expansion
predicts when it is set to zero, ``s_k = h_kk * w_k**2 / 2``, with ``h_kk`` the diagonal
of the Hessian of the training loss (cross-entropy on the calibration data). Three
estimators of the diagonal:

- ``gauss_newton``: the Gauss-Newton / Levenberg-Marquardt diagonal OBD uses, positive
  by construction. For softmax cross-entropy it equals ``E_x sum_c p_c (d log p_c/dw)^2``.
  One pass draws Rademacher signs ``r_c`` per example and squares the per-example
  gradient of ``sum_c r_c sqrt(p_c) log p_c`` (unbiased); ``exact=True`` loops over the
  classes instead (one pass per class).
- ``hutchinson``: ``E[v * Hv]`` with Rademacher ``v`` and Hessian-vector products
  (double backpropagation) of the true Hessian; can be negative (clipped at zero).
- ``fisher``: the empirical Fisher, mean squared per-example gradient at the true labels.

Per-example gradients come from one vectorized Jacobian (``tf.vectorized_map``), so a
pass costs about one to three gradient passes over the data.

Example:

>>> h = hessian_diagonal(model, x, y, estimator="gauss_newton")   # doctest: +SKIP
>>> s = obd_saliency(model, x, y)                                 # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from compress.errors import CompressError

ESTIMATORS = ("gauss_newton", "hutchinson", "fisher")


def _log_probs(model, x):
    import tensorflow as tf

    from compress.training import outputs_probabilities

    out = model(x, training=False)
    if outputs_probabilities(model):
        return tf.math.log(tf.maximum(tf.cast(out, "float32"), 1e-12))
    return tf.nn.log_softmax(tf.cast(out, "float32"))


def hessian_diagonal(model, x, y, variables=None, estimator: str = "gauss_newton",
                     batch_size: int = 32, samples: int = 1, exact: bool = False,
                     seed: int = 0) -> list:
    """Estimate the diagonal of the Hessian of the mean cross-entropy on ``(x, y)``.

    Args:
        model: a Keras classifier (softmax or logits output).
        x: inputs, already shaped for the model.
        y: integer labels.
        variables: list of weight variables, default None (every trainable weight).
        estimator: str, default ``"gauss_newton"``. One of ``gauss_newton``,
            ``hutchinson``, ``fisher``.
        batch_size: int, default 32. Examples per vectorized pass.
        samples: int, default 1. Random probes per batch (Gauss-Newton, Hutchinson).
        exact: bool, default False. Gauss-Newton: sum over every class instead of
            sampling (one pass per class).
        seed: int, default 0. Seed of the random probes.

    Returns:
        A list of NumPy arrays, one per variable, of the variable's shape.
    """
    import tensorflow as tf

    if estimator not in ESTIMATORS:
        raise CompressError(f"estimator '{estimator}': must be one of {', '.join(ESTIMATORS)}")
    x = np.asarray(x)
    y = np.asarray(y).astype("int64").reshape(-1)
    if len(x) == 0 or len(x) != len(y):
        raise CompressError(f"OBD calibration data: {len(x)} inputs and {len(y)} labels")
    variables = list(model.trainable_variables if variables is None else variables)
    rng = tf.random.Generator.from_seed(seed)
    n_classes = int(model.outputs[0].shape[-1])
    total = [tf.zeros(tuple(v.shape), "float32") for v in variables]

    @tf.function(reduce_retracing=True)
    def per_example_squares(xb, weights):
        # weights: (batch, classes) coefficients c; returns sum_n (d/dw sum_c c_nc log p_nc)^2
        with tf.GradientTape() as tape:
            logp = _log_probs(model, xb)
            f = tf.reduce_sum(weights * logp, axis=-1)
        jac = tape.jacobian(f, variables, experimental_use_pfor=True)
        return [tf.reduce_sum(tf.square(j), axis=0) for j in jac]

    @tf.function(reduce_retracing=True)
    def hvp_probe(xb, yb):
        vs = [tf.cast(rng.uniform(tuple(v.shape), 0, 2, dtype="int32") * 2 - 1, "float32")
              for v in variables]
        with tf.GradientTape() as outer:
            with tf.GradientTape() as inner:
                logp = _log_probs(model, xb)
                loss = -tf.reduce_sum(tf.gather(logp, yb, batch_dims=1))
            grads = inner.gradient(loss, variables)
            dot = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vs)])
        hv = outer.gradient(dot, variables)
        return [v * h for v, h in zip(vs, hv)]

    for start in range(0, len(x), batch_size):
        xb = tf.constant(x[start:start + batch_size], dtype=model.inputs[0].dtype or "float32")
        yb = tf.constant(y[start:start + batch_size])
        nb = int(xb.shape[0])
        if estimator == "fisher":
            coef = tf.one_hot(yb, n_classes)
            adds = [per_example_squares(xb, coef)]
        elif estimator == "gauss_newton":
            p = tf.exp(_log_probs(model, xb))
            if exact:
                adds = [per_example_squares(xb, tf.sqrt(p) * tf.one_hot([c] * nb, n_classes))
                        for c in range(n_classes)]
                adds = [[tf.add_n(parts) for parts in zip(*adds)]]
            else:
                adds = []
                for _ in range(samples):
                    signs = tf.cast(rng.uniform((nb, n_classes), 0, 2, dtype="int32") * 2 - 1,
                                    "float32")
                    adds.append([a / samples for a in per_example_squares(xb, signs *
                                                                          tf.sqrt(p))])
        else:
            adds = [[a / samples for a in hvp_probe(xb, yb)] for _ in range(samples)]
        for add in adds:
            total = [t + a for t, a in zip(total, add)]
    diag = [np.asarray(t) / len(x) for t in total]
    if estimator == "hutchinson":
        diag = [np.maximum(d, 0.0) for d in diag]
    return diag


def obd_saliency(model, x, y, variables=None, estimator: str = "gauss_newton",
                 **kwargs) -> list:
    """OBD saliencies ``h_kk * w_k**2 / 2`` of ``variables`` on the data ``(x, y)``.

    Args:
        model: a Keras classifier.
        x, y: calibration inputs and integer labels.
        variables: list of weight variables, default None (every trainable weight).
        estimator: str, default ``"gauss_newton"``; see :func:`hessian_diagonal`.
        **kwargs: passed to :func:`hessian_diagonal` (``batch_size``, ``samples``, ...).

    Returns:
        A list of NumPy arrays, one per variable.
    """
    variables = list(model.trainable_variables if variables is None else variables)
    diag = hessian_diagonal(model, x, y, variables, estimator=estimator, **kwargs)
    return [0.5 * h * np.square(np.asarray(v, dtype="float64")) for h, v in zip(diag, variables)]
