"""The hashed layers (Dense, Conv1D/2D/3D, Embedding): sign times bucket, refusals, and
saved files that reload."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import CompressError


def test_hashed_dense_computes_sign_times_bucket():
    from compress.sharing.hash_functions import hash_table
    from compress.sharing.hashed_layers import HashedDense

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

    from compress.sharing.hashed_layers import HashedConv2D

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
    from compress.sharing.hashed_layers import HashedDense

    with pytest.raises(CompressError, match="factor"):
        HashedDense(4, factor=1.5)(np.zeros((1, 3), "float32"))
    with pytest.raises(CompressError, match="buckets"):
        HashedDense(4, buckets=13)(np.zeros((1, 3), "float32"))


def test_saved_model_reloads_with_plain_keras(tmp_path):
    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.sharing.hashed_layers import HashedConv2D, HashedDense

    model = keras.Sequential([
        keras.Input((8, 8, 1)), HashedConv2D(4, 3, activation="relu", factor=0.5, seed=3),
        keras.layers.Flatten(), HashedDense(10, activation="softmax", seed=4)])
    x = np.random.default_rng(0).random((5, 8, 8, 1), dtype=np.float32)
    path = tmp_path / "hashed.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    assert loaded.count_params() == model.count_params()


def test_files_saved_when_the_layers_lived_in_hashing_py_still_load(tmp_path):
    """Saved files name the class by its registered name, ``compress>HashedDense``; the
    ``module`` they also record (``compress.sharing.hashing`` before the split) must not
    matter, and ``LAYER_MODULES`` names the module that defines the layers."""
    import json
    import zipfile

    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.layers import LAYER_MODULES
    from compress.sharing.hashed_layers import HashedConv2D, HashedDense

    assert {HashedDense.__module__, HashedConv2D.__module__} <= set(LAYER_MODULES)
    model = keras.Sequential([
        keras.Input((6, 6, 2)), HashedConv2D(3, 3, factor=0.5, seed=1, name="conv"),
        keras.layers.Flatten(), HashedDense(4, factor=0.5, seed=2, name="fc")])
    x = np.random.default_rng(0).random((3, 6, 6, 2), dtype=np.float32)
    new_path, old_path = tmp_path / "new.keras", tmp_path / "old.keras"
    model.save(new_path)
    with zipfile.ZipFile(new_path) as src, zipfile.ZipFile(old_path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                layers = config["config"]["layers"]
                names = [str(la.get("registered_name")) for la in layers]
                assert [n for n in names if n.startswith("compress>")] == \
                    ["compress>HashedConv2D", "compress>HashedDense"]
                for la in layers:
                    if la["module"] == "compress.sharing.hashed_layers":
                        la["module"] = "compress.sharing.hashing"  # as files saved before
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    loaded = keras.models.load_model(old_path)
    assert isinstance(loaded.get_layer("fc"), HashedDense)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


@pytest.mark.parametrize("rank, kwargs, shape", [
    (1, {"padding": "causal", "dilation_rate": 2}, (2, 11, 4)),
    (1, {"padding": "same", "strides": 2}, (2, 9, 3)),
    (3, {"padding": "valid"}, (1, 5, 4, 4, 2)),
])
def test_hashed_1d_and_3d_convolutions_match_keras_with_their_virtual_kernel(rank, kwargs,
                                                                            shape):
    import keras

    from compress.sharing.hashed_layers import HashedConv1D, HashedConv3D

    hashed_class, plain_class = {1: (HashedConv1D, keras.layers.Conv1D),
                                 3: (HashedConv3D, keras.layers.Conv3D)}[rank]
    layer = hashed_class(5, 3 if rank == 1 else 2, factor=0.5, seed=2, **kwargs)
    x = np.random.default_rng(1).normal(size=shape).astype("float32")
    layer(x)
    layer.bias.assign(np.arange(5, dtype="float32"))
    y = np.asarray(layer(x))
    conv = plain_class(5, 3 if rank == 1 else 2, **kwargs)
    conv.build((None,) + shape[1:])
    conv.set_weights([layer.virtual_kernel().reshape(conv.kernel.shape),
                      np.arange(5, dtype="float32")])
    np.testing.assert_allclose(y, np.asarray(conv(x)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(layer(x, training=True)), y, atol=1e-6)
    assert layer.count_params() == round(0.5 * np.prod(conv.kernel.shape)) + 5


def test_hashed_embedding_looks_up_rows_of_its_virtual_table(tmp_path):
    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.sharing.hash_functions import hash_table
    from compress.sharing.hashed_layers import HashedEmbedding

    layer = HashedEmbedding(40, 6, buckets=30, mask_zero=True, seed=5)
    ids = np.array([[3, 39, 3, 0], [1, 2, 0, 0]], "int32")
    vectors = np.asarray(layer(ids))
    index, sign = hash_table(40, 6, 30, 5)  # the whole m x n table, as bucket_means sees it
    table = sign * np.asarray(layer.buckets)[index]
    np.testing.assert_allclose(layer.virtual_kernel(), table, atol=0)
    np.testing.assert_allclose(vectors, table[ids], atol=0)  # only the looked-up rows
    assert layer.count_params() == 30
    assert np.asarray(layer.compute_mask(ids)).tolist() == [[True, True, True, False],
                                                            [True, True, False, False]]
    # the mask reaches a recurrent layer after it: padded steps change nothing
    gru = keras.layers.GRU(3)
    inp = keras.Input((4,), dtype="int32")
    model = keras.Model(inp, gru(layer(inp)))
    short = keras.Input((2,), dtype="int32")
    unpadded = keras.Model(short, gru(layer(short)))
    padded = np.array([[3, 39, 0, 0]], "int32")
    np.testing.assert_allclose(np.asarray(model(padded)),
                               np.asarray(unpadded(padded[:, :2])), atol=1e-6)
    unmasked = HashedEmbedding(40, 6, buckets=30, seed=5)  # the same vectors, no mask
    assert not np.allclose(np.asarray(gru(unmasked(padded))), np.asarray(model(padded)))
    path = tmp_path / "emb.keras"  # and it saves and loads with plain Keras
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded(padded)), np.asarray(model(padded)))
