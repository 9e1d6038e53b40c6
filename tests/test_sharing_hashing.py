"""HashedDense / HashedConv2D: the hash, the layers, conversion, and small exact exports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compress.errors import CompressError


def _reference_hash(i: int, j: int, num_buckets: int, seed: int) -> tuple[int, int]:
    """The hash in Python's unbounded integers (no overflow possible)."""
    from compress.sharing.hashing import MAX_ID, PRIME, round_keys

    def permute(t):
        left, right = divmod(t, PRIME)
        for a, c in round_keys(seed):
            left, right = right, (left + (right * right * a + c) % PRIME) % PRIME
        return (left * PRIME + right) % num_buckets, 1 + right % (PRIME - 1)

    r, r2 = permute(i)
    c, c2 = permute(j + MAX_ID)
    t = r2 * c2 % PRIME
    return (r + c + t) % num_buckets, t % 2


@settings(max_examples=25, deadline=None)
@given(m=st.integers(20, 400), n=st.integers(20, 300), seed=st.integers(0, 2 ** 31 - 1),
       denominator=st.integers(2, 32))
def test_hash_is_uniform_over_buckets_and_signs(m, n, seed, denominator):
    from compress.sharing.hashing import hash_table

    k = max(1, m * n // max(denominator, 20))  # >= 20 connections per bucket on average
    index, sign = hash_table(m, n, k, seed)
    assert index.shape == (m, n) and index.min() >= 0 and index.max() < k
    counts = np.bincount(index.ravel(), minlength=k)
    expected = m * n / k
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    # chi-square with k-1 dof: mean k-1, sd sqrt(2(k-1)); 6 sd is far beyond chance
    assert chi2 < (k - 1) + 6 * np.sqrt(2 * max(k - 1, 1)) + 10
    assert set(np.unique(sign)) <= {-1.0, 1.0}
    assert abs(np.mean(sign > 0) - 0.5) < 5 / np.sqrt(m * n) + 0.01


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), k=st.integers(1, 10 ** 6))
def test_hash_is_deterministic_and_seeded(seed, k):
    from compress.sharing.hashing import hash_table

    a_index, a_sign = hash_table(37, 29, k, seed)
    b_index, b_sign = hash_table(37, 29, k, seed)
    np.testing.assert_array_equal(a_index, b_index)
    np.testing.assert_array_equal(a_sign, b_sign)
    if k >= 100:
        other, _ = hash_table(37, 29, k, seed + 1)
        assert np.mean(other == a_index) < 0.1  # another seed shares differently


@settings(max_examples=40, deadline=None)
@given(i=st.integers(0, 2 ** 30 - 1), j=st.integers(0, 2 ** 30 - 1),
       k=st.integers(1, 2 ** 30), seed=st.integers(0, 2 ** 40))
def test_int32_hash_matches_unbounded_integers(i, j, k, seed):
    """No int32 overflow anywhere, even at the largest indices and bucket counts."""
    from compress.sharing.hashing import connection_hash

    rows = np.array([i], dtype=np.int32)
    cols = np.array([j], dtype=np.int32)
    index, bit = connection_hash(rows, cols, k, seed)
    assert (int(np.asarray(index)[0, 0]), int(np.asarray(bit)[0, 0])) == \
        _reference_hash(i, j, k, seed)


def test_graph_hash_equals_numpy_hash():
    import tensorflow as tf

    from compress.sharing.hashing import connection_hash, hash_table

    index, sign = hash_table(50, 40, 300, 7)
    rows = tf.range(50, dtype=tf.int32)
    cols = tf.range(40, dtype=tf.int32)
    t_index, t_bit = tf.function(lambda r, c: connection_hash(r, c, 300, 7))(rows, cols)
    np.testing.assert_array_equal(t_index.numpy(), index)
    np.testing.assert_array_equal(1.0 - 2.0 * t_bit.numpy(), sign)
    t_index, t_bit = tf.function(
        lambda r, c: connection_hash(r, c, 300, 7, transposed=True))(rows, cols)
    np.testing.assert_array_equal(t_index.numpy(), index.T)


def test_hashed_dense_computes_sign_times_bucket():
    from compress.sharing.hashing import HashedDense, hash_table

    layer = HashedDense(7, buckets=5, use_bias=False, seed=11)
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    y = np.asarray(layer(x))
    index, sign = hash_table(6, 7, 5, 11)
    kernel = sign * np.asarray(layer.buckets)[index]
    np.testing.assert_allclose(y, x @ kernel, atol=1e-5)
    np.testing.assert_allclose(layer.virtual_kernel(), kernel, atol=0)
    # training path (cached table) gives the same outputs
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), y, atol=1e-6)
    assert layer.count_params() == 5


def test_hashed_conv_matches_conv_with_virtual_kernel():
    import keras

    from compress.sharing.hashing import HashedConv2D

    layer = HashedConv2D(4, 3, padding="same", factor=0.25, seed=2)
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype("float32")
    y = np.asarray(layer(x))
    layer.bias.assign(np.arange(4, dtype="float32"))
    y = np.asarray(layer(x))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    conv.build((None, 6, 6, 3))
    conv.set_weights([layer.virtual_kernel().reshape(3, 3, 3, 4), np.arange(4, dtype="float32")])
    np.testing.assert_allclose(y, np.asarray(conv(x)), atol=1e-5)
    assert layer.num_buckets == round(0.25 * 27 * 4)


def test_bad_factor_and_bucket_count_are_refused():
    from compress.sharing.hashing import HashedDense

    with pytest.raises(CompressError, match="factor"):
        HashedDense(4, factor=1.5)(np.zeros((1, 3), "float32"))
    with pytest.raises(CompressError, match="buckets"):
        HashedDense(4, buckets=13)(np.zeros((1, 3), "float32"))


def test_saved_model_reloads_with_plain_keras(tmp_path):
    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.sharing.hashing import HashedConv2D, HashedDense

    model = keras.Sequential([
        keras.Input((8, 8, 1)), HashedConv2D(4, 3, activation="relu", factor=0.5, seed=3),
        keras.layers.Flatten(), HashedDense(10, activation="softmax", seed=4)])
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    path = tmp_path / "hashed.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.count_params() == model.count_params()


def test_hash_model_converts_without_mutating(mlp_file):
    import keras

    from compress.sharing import hash_model
    from compress.sharing.hashing import HashedDense

    path, ds = mlp_file
    model = keras.models.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    hashed, info = hash_model(model, ds, factor=0.25, layers="fc", epochs=4,
                               learning_rate=3e-3)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    assert [type(layer).__name__ for layer in hashed.layers[1:]] == \
        ["HashedDense", "HashedDense", "Dense"]
    fc1 = hashed.get_layer("fc1")
    assert isinstance(fc1, HashedDense) and fc1.num_buckets == round(0.25 * 64 * 32)
    assert [r["layer"] for r in info["layers"]] == ["fc1", "fc2"]
    assert info["stored_weights"] == round(0.25 * 64 * 32) + round(0.25 * 32 * 16)
    assert info["bits_per_weight"] == pytest.approx(32 * 0.25, rel=0.01)
    _, untuned = hash_model(model, ds, factor=0.25, layers="fc")
    assert info["accuracy"] > max(0.6, untuned["accuracy"] + 0.1)  # fine-tuning recovers


def test_bucket_means_initialise_from_the_dense_weights():
    from compress.sharing.hashing import bucket_means, hash_table

    rng = np.random.default_rng(0)
    index, sign = hash_table(30, 20, 60, 5)
    buckets = rng.normal(size=60).astype("float32")
    kernel = sign * buckets[index]  # a kernel that is exactly hashed
    np.testing.assert_allclose(bucket_means(kernel, 60, 5), buckets, atol=1e-6)


def test_hash_model_refuses_bad_input(mlp_file):
    import keras

    from compress.sharing import hash_model

    model = keras.models.load_model(mlp_file[0])
    with pytest.raises(CompressError, match="factor"):
        hash_model(model, factor=0.0)
    with pytest.raises(CompressError, match="no layer"):
        hash_model(model, layers="nothing-like-this")


def test_scratch_init_and_dropout_train_and_save(mlp_file, tmp_path):
    """init="scratch" ignores the trained weights; dropout acts in training only, is kept
    in the saved config, and the hidden-unit dropout skips the first hashed layer."""
    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.sharing import hash_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    fresh, info = hash_model(model, None, factor=0.25, layers="fc", init="scratch",
                             dropout=0.3, seed=1)
    converted, _ = hash_model(model, None, factor=0.25, layers="fc", seed=1)
    assert info["init"] == "scratch" and info["dropout"] == 0.3
    fc1, fc2 = fresh.get_layer("fc1"), fresh.get_layer("fc2")
    assert fc1.dropout == 0.0 and fc2.dropout == 0.3
    assert not np.allclose(np.asarray(fc1.buckets), np.asarray(converted.get_layer("fc1").buckets))
    assert np.all(np.asarray(fc1.bias) == 0)
    x = ds.x_test[:64]
    np.testing.assert_array_equal(np.asarray(fresh(x, training=False)), np.asarray(fresh(x)))
    h = np.asarray(fresh.get_layer("fc1")(x.reshape(len(x), -1)))
    dropped = np.asarray(fc2(h, training=True))
    assert not np.allclose(dropped, np.asarray(fc2(h, training=False)))
    fresh.save(tmp_path / "fresh.keras")
    loaded = keras.models.load_model(tmp_path / "fresh.keras")
    assert loaded.get_layer("fc2").dropout == 0.3
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(fresh(x)), atol=1e-6)
    _trained, tuned = hash_model(model, ds, factor=0.25, layers="fc", init="scratch",
                                 dropout=0.2, epochs=6, learning_rate=3e-3, seed=1)
    assert tuned["accuracy"] > 0.6  # learns from scratch, through the dropout
    with pytest.raises(CompressError, match="init"):
        hash_model(model, init="zeros")
    with pytest.raises(CompressError, match="dropout"):
        hash_model(model, dropout=1.0)


def test_hash_model_refuses_unhashable_layers(cnn_file):
    import keras

    from compress.sharing import hash_model

    model = keras.models.load_model(cnn_file[0])
    with pytest.raises(CompressError, match="bn1.*cannot be hashed"):
        hash_model(model, layers="bn1|conv1")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_hashed_export_is_small_and_exact(tmp_path, fmt, digits):
    """The exported file holds buckets, not a dense kernel, and matches Keras (ReLU after
    a bias-free layer included: the TFLite converter used to drop it)."""
    import keras

    from compress import export
    from compress.sharing import hash_model

    dense = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu", name="fc1"),
        keras.layers.Dense(256, activation="relu", use_bias=False, name="fc2"),
        keras.layers.Dense(10, activation="softmax", name="out")])
    hashed, _ = hash_model(dense, factor=0.125)
    x = digits.x_test[:64].reshape(-1, 8, 8, 1)
    small = export.export(hashed, tmp_path / f"h.{fmt}", fmt=fmt, x=x)
    full = export.export(dense, tmp_path / f"d.{fmt}", fmt=fmt, x=x)
    assert small["max_abs_diff"] <= 1e-4 and small["top1_agreement"] == 1.0
    assert small["bytes"] < 0.3 * full["bytes"]


def test_rows_are_not_shifted_copies_of_each_other():
    """R + C alone would make row i' a bucket-shift of row i; the bilinear term must not."""
    from compress.sharing.hashing import hash_table

    k = 5000
    index, _ = hash_table(40, 200, k, 9)
    for a, b in [(0, 1), (3, 17), (20, 39)]:
        shifts = (index[b] - index[a]) % k
        assert np.unique(shifts).size > 150


def test_materialize_gives_the_same_outputs_with_plain_layers(cnn_file):
    import keras

    from compress.sharing import hash_model
    from compress.sharing.hashing import materialize

    path, ds = cnn_file
    hashed, _ = hash_model(keras.models.load_model(path), factor=0.5, layers="conv")
    plain = materialize(hashed)
    assert {type(layer).__name__ for layer in plain.layers} <= \
        {"Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Flatten", "Dense"}
    x = ds.x_test[:32]
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(hashed(x)), atol=1e-5)
