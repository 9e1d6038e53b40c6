"""OBD Hessian-diagonal estimators checked against the exact Hessian of tiny networks."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from compress.pruning.obd import hessian_diagonal, obd_saliency


def _data(n=40, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, c, size=n)
    return x, y


def _model(hidden, d=5, c=3, seed=0):
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((d,))]
    if hidden:
        layers.append(keras.layers.Dense(hidden, activation="tanh"))
    layers.append(keras.layers.Dense(c, activation="softmax"))
    return keras.Sequential(layers)


def _exact_hessian_diag(model, x, y, variables):
    """Full Hessian of the mean cross-entropy, by differentiating the gradient twice."""
    flat = tf.concat([tf.reshape(v, [-1]) for v in variables], 0)
    sizes = [int(np.prod(v.shape)) for v in variables]
    shapes = [tuple(v.shape) for v in variables]
    theta = tf.Variable(flat)

    # Differentiate through a functional form: rebuild the forward pass with tensors.
    def forward(t):
        parts = [tf.reshape(p, s) for p, s in zip(tf.split(t, sizes), shapes)]
        h = tf.constant(x)
        layer_idx = 0
        dense = [la for la in model.layers]
        for la in dense:
            w, b = parts[layer_idx], parts[layer_idx + 1]
            layer_idx += 2
            h = tf.matmul(h, w) + b
            h = tf.nn.softmax(h) if la is dense[-1] else tf.tanh(h)
        return -tf.reduce_mean(tf.math.log(tf.gather(h, y, batch_dims=1)))

    with tf.GradientTape() as t2:
        t2.watch(theta)
        with tf.GradientTape() as t1:
            t1.watch(theta)
            loss = forward(theta)
        g = t1.gradient(loss, theta)
    hess = t2.jacobian(g, theta)
    return np.diag(hess.numpy())


def _exact_gauss_newton_diag(model, x, variables):
    """diag(J^T (diag(p) - p p^T) J), averaged over examples, with J = d logits / d w."""
    out = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            h = x[i:i + 1]
            for la in model.layers[:-1]:
                h = la(h)
            last = model.layers[-1]
            z = tf.matmul(h, last.kernel) + last.bias
        jac = tape.jacobian(z, variables)  # list of (1, c, *shape)
        jmat = tf.concat([tf.reshape(j, (z.shape[-1], -1)) for j in jac], 1).numpy()
        p = tf.nn.softmax(z)[0].numpy()
        hz = np.diag(p) - np.outer(p, p)
        out.append(np.einsum("ck,cd,dk->k", jmat, hz, jmat))
    return np.mean(out, axis=0)


def _flat(arrays):
    return np.concatenate([np.asarray(a).reshape(-1) for a in arrays])


def test_gauss_newton_equals_exact_hessian_for_softmax_regression():
    # A linear softmax model: the Gauss-Newton matrix IS the Hessian.
    x, y = _data()
    model = _model(hidden=0)
    variables = model.trainable_variables
    exact = _exact_hessian_diag(model, x, y, variables)
    gn = _flat(hessian_diagonal(model, x, y, variables, estimator="gauss_newton", exact=True))
    np.testing.assert_allclose(gn, exact, rtol=1e-4, atol=1e-6)


def test_gauss_newton_matches_explicit_jt_h_j_on_hidden_layer_net():
    x, y = _data(n=20)
    model = _model(hidden=4)
    variables = model.trainable_variables
    explicit = _exact_gauss_newton_diag(model, x, variables)
    gn = _flat(hessian_diagonal(model, x, y, variables, estimator="gauss_newton", exact=True))
    np.testing.assert_allclose(gn, explicit, rtol=1e-4, atol=1e-7)
    assert (gn >= 0).all()
    # The sampled (one Rademacher probe per example) estimate is unbiased: many probes
    # converge to the exact value.
    sampled = _flat(hessian_diagonal(model, x, y, variables, estimator="gauss_newton",
                                     samples=150, batch_size=20))
    err = np.abs(sampled - explicit).sum() / np.abs(explicit).sum()
    assert err < 0.1, err


def test_hutchinson_converges_to_exact_hessian_diagonal():
    x, y = _data(n=20)
    model = _model(hidden=4)
    variables = model.trainable_variables
    exact = _exact_hessian_diag(model, x, y, variables)
    est = _flat(hessian_diagonal(model, x, y, variables, estimator="hutchinson",
                                 samples=300, batch_size=20))
    pos = np.maximum(exact, 0)
    err = np.abs(est - pos).sum() / np.abs(pos).sum()
    assert err < 0.15, err


def test_empirical_fisher_is_mean_squared_per_example_gradient():
    x, y = _data(n=12)
    model = _model(hidden=4)
    variables = model.trainable_variables
    loop = []
    for i in range(len(x)):
        with tf.GradientTape() as tape:
            p = model(x[i:i + 1])
            loss = -tf.math.log(p[0, y[i]])
        loop.append(_flat([g.numpy() ** 2 for g in tape.gradient(loss, variables)]))
    fisher = _flat(hessian_diagonal(model, x, y, variables, estimator="fisher", batch_size=5))
    np.testing.assert_allclose(fisher, np.mean(loop, axis=0), rtol=1e-4, atol=1e-8)


def test_obd_saliency_is_half_h_w_squared():
    x, y = _data(n=10)
    model = _model(hidden=3)
    variables = model.trainable_variables
    h = hessian_diagonal(model, x, y, variables, estimator="fisher")
    s = obd_saliency(model, x, y, variables, estimator="fisher")
    for hi, si, v in zip(h, s, variables):
        np.testing.assert_allclose(si, 0.5 * hi * v.numpy() ** 2, rtol=1e-6)


def test_backprop_estimator_is_exact_gauss_newton_for_one_hidden_layer():
    # LeCun's backward pass of second derivatives: exact GN w.r.t. the logit layer's
    # inputs, so for one hidden layer both kernels' diagonals equal J^T H J exactly.
    x, y = _data(n=20)
    model = _model(hidden=4)
    variables = model.trainable_variables
    explicit = _exact_gauss_newton_diag(model, x, variables)
    kernels = [model.layers[0].kernel, model.layers[1].kernel]
    bp = hessian_diagonal(model, x, y, kernels, estimator="backprop")
    np.testing.assert_allclose(bp[0].reshape(-1), explicit[:20], rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(bp[1].reshape(-1), explicit[24:36], rtol=1e-4, atol=1e-8)


def test_backprop_estimator_on_conv_bn_pool_chain_tracks_exact_gauss_newton():
    # Deeper chains drop the cross terms between hidden units (LeCun's approximation):
    # the output layer stays exact, the convolutions are correlated with the exact diagonal
    # (weight sharing adds cross terms between positions that the estimator drops).
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, padding="same", activation="relu", use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3, activation="softmax"),
    ])
    bn = model.layers[1]
    bn.set_weights([np.array([0.5, 1.5, 2.0]), np.zeros(3), np.full(3, 0.1),
                    np.array([0.5, 1.0, 2.0])])
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6, 6, 2)).astype("float32")
    y = rng.integers(0, 3, size=16)
    kernels = [model.layers[0].kernel, model.layers[3].kernel, model.layers[5].kernel]
    exact = hessian_diagonal(model, x, y, kernels, estimator="gauss_newton", exact=True)
    bp = hessian_diagonal(model, x, y, kernels, estimator="backprop")
    np.testing.assert_allclose(bp[2], exact[2], rtol=1e-4, atol=1e-8)
    for b, e in zip(bp[:2], exact[:2]):
        assert (b >= 0).all()
        assert np.corrcoef(b.reshape(-1), e.reshape(-1))[0, 1] > 0.5
        assert 0.3 < b.sum() / e.sum() < 3.0


def test_damping_adds_lambda_mean_h_and_large_damping_ranks_like_magnitude():
    from compress.pruning.masks import lowest_mask

    x, y = _data(n=30)
    model = _model(hidden=6)
    kernels = [model.layers[0].kernel, model.layers[1].kernel]
    h = hessian_diagonal(model, x, y, kernels, estimator="backprop")
    s = obd_saliency(model, x, y, kernels, damping=2.0)
    for hi, si, v in zip(h, s, kernels):
        np.testing.assert_allclose(si, 0.5 * (hi + 2.0 * hi.mean()) * v.numpy() ** 2,
                                   rtol=1e-5)
    # damping -> inf: (h + lambda) w^2 ranks like |w| within each variable
    big = obd_saliency(model, x, y, kernels, damping=1e9)
    for si, v in zip(big, kernels):
        np.testing.assert_array_equal(lowest_mask(si, 0.5), lowest_mask(np.abs(v.numpy()), 0.5))
    assert not all(np.array_equal(lowest_mask(a, 0.5), lowest_mask(b, 0.5))
                   for a, b in zip(obd_saliency(model, x, y, kernels), big))
