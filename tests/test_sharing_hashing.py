"""``hash_model`` and ``materialize``: conversion, options, refusals, small exact exports."""

from __future__ import annotations

import numpy as np
import pytest

from compress.errors import CompressError


def test_hash_model_converts_without_mutating(mlp_file):
    import keras

    from compress.sharing import hash_model
    from compress.sharing.hashed_layers import HashedDense

    path, ds = mlp_file
    model = keras.models.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    hashed, info = hash_model(model, ds, factor=0.25, layers="fc.*", epochs=4,
                               learning_rate=3e-3)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    assert [type(layer).__name__ for layer in hashed.layers[1:]] == \
        ["HashedDense", "HashedDense", "Dense"]
    fc1 = hashed.get_layer("fc1")
    assert isinstance(fc1, HashedDense) and fc1.num_buckets == round(0.25 * 64 * 32)
    assert [r["layer"] for r in info["layers"]] == ["fc1", "fc2"]
    assert info["stored_weights"] == round(0.25 * 64 * 32) + round(0.25 * 32 * 16)
    assert info["bits_per_weight"] == pytest.approx(32 * 0.25, rel=0.01)
    _, untuned = hash_model(model, ds, factor=0.25, layers="fc.*")
    assert info["accuracy"] > max(0.6, untuned["accuracy"] + 0.1)  # fine-tuning recovers


def test_hash_model_refuses_bad_input(mlp_file):
    import keras

    from compress.sharing import hash_model

    model = keras.models.load_model(mlp_file[0])
    with pytest.raises(CompressError) as refused:
        hash_model(model, factor=0.0)
    assert str(refused.value) == "share.factor: must be in (0.0, 1.0], got 0.0"
    with pytest.raises(CompressError, match="share.clusters: unknown option"):
        hash_model(model, clusters=4)  # a k-means option
    with pytest.raises(CompressError, match="layers 'fc': matches no shareable layer"):
        hash_model(model, layers="fc")  # a regular expression matches the whole name


def test_scratch_init_and_dropout_train_and_save(mlp_file, tmp_path):
    """init="scratch" ignores the trained weights; dropout acts in training only, is kept
    in the saved config, and the hidden-unit dropout skips the first hashed layer."""
    import keras

    import compress  # noqa: F401  (registers the layers)
    from compress.sharing import hash_model

    path, ds = mlp_file
    model = keras.models.load_model(path)
    fresh, info = hash_model(model, None, factor=0.25, layers="fc.*", init="scratch",
                             dropout=0.3, seed=1)
    converted, _ = hash_model(model, None, factor=0.25, layers="fc.*", seed=1)
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
    _trained, tuned = hash_model(model, ds, factor=0.25, layers="fc.*", init="scratch",
                                 dropout=0.2, epochs=6, learning_rate=3e-3, seed=1)
    assert tuned["accuracy"] > 0.6  # learns from scratch, through the dropout
    with pytest.raises(CompressError, match="share.init: must be one of dense, scratch"):
        hash_model(model, init="zeros")
    with pytest.raises(CompressError, match=r"share.dropout: must be in \[0.0, 1.0\)"):
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


def test_materialize_gives_the_same_outputs_with_plain_layers(cnn_file):
    import keras

    from compress.sharing import hash_model
    from compress.sharing.hashing import materialize

    path, ds = cnn_file
    hashed, _ = hash_model(keras.models.load_model(path), factor=0.5, layers=["conv1", "conv2"])
    plain = materialize(hashed)
    assert {type(layer).__name__ for layer in plain.layers} <= \
        {"Conv2D", "BatchNormalization", "ReLU", "MaxPooling2D", "Flatten", "Dense"}
    x = ds.x_test[:32]
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(hashed(x)), atol=1e-5)


def _token_model():
    """Token ids through a masked Embedding, a causal Conv1D branch and a GRU branch."""
    import keras

    from compress import training

    training.set_seed(0)
    inp = keras.Input((12,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(300, 16, mask_zero=True, name="embed")(inp)
    conv = keras.layers.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu",
                               name="conv")(emb)
    h = keras.layers.Concatenate(name="cat")([
        keras.layers.GlobalAveragePooling1D(name="pool")(conv),
        keras.layers.GRU(8, name="gru")(emb)])
    return keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(h),
                       name="tokens")


def test_hash_model_reaches_embeddings_and_1d_convolutions():
    from compress.sharing import hash_model
    from compress.sharing.hashing import materialize

    model = _token_model()
    before = [w.copy() for w in model.get_weights()]
    hashed, info = hash_model(model, factor=0.25)
    assert all((a == b).all() for a, b in zip(before, model.get_weights()))
    assert {r["layer"]: r["type"] for r in info["layers"]} == {
        "embed": "HashedEmbedding", "conv": "HashedConv1D", "out": "HashedDense"}
    assert info["layers"][0]["buckets"] == round(0.25 * 300 * 16)
    assert "gru/gru_cell/kernel" in info["not_reached"]  # named, not hashed
    x = np.random.default_rng(0).integers(1, 300, (16, 12)).astype("int32")
    x[:, 9:] = 0  # padded tails
    plain = materialize(hashed)
    assert [type(la).__name__ for la in plain.layers if la.weights] == \
        ["Embedding", "Conv1D", "GRU", "Dense"]
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(hashed(x)), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_hashed_embedding_and_conv1d_export_exactly(tmp_path, fmt):
    from compress import export
    from compress.sharing import hash_model

    model = _token_model()
    hashed, _ = hash_model(model, factor=0.125, layers=["embed", "conv"])
    x = np.random.default_rng(1).integers(1, 300, (32, 12)).astype("int32")
    x[:, 10:] = 0
    result = export.export(hashed, tmp_path / f"h.{fmt}", fmt=fmt, x=x)
    assert result["max_abs_diff"] <= 1e-5 and result["top1_agreement"] == 1.0


@pytest.mark.slow
def test_full_integer_tflite_stores_hashed_convolutions_whole(cnn_file):
    """The interpreter refused every int8 file of a hashed convolution ("zero_point != 0"
    in CONV_2D: a computed filter is quantized like an activation); the convolutions are
    now stored whole for int8, named in a note, while hashed Dense layers stay hashed."""
    import keras

    from compress.quantization import quantize
    from compress.runtime import run_tflite
    from compress.sharing import hash_model

    path, ds = cnn_file
    hashed, _ = hash_model(keras.models.load_model(path), factor=0.5, epochs=1, data=ds)
    content, info = quantize(hashed, ds, mode="int8", format="tflite", latency=False)
    assert "hashed convolutions stored whole" in info["export_copy"]
    assert "conv1, conv2" in info["export_copy"] and "predictions" not in info["export_copy"]
    got = run_tflite(content, ds.x_test[:64])
    want = np.asarray(hashed(ds.x_test[:64]))
    assert np.mean(np.argmax(got, -1) == np.argmax(want, -1)) >= 0.9
    assert info["sqnr_db"] >= 20


def test_hash_model_reaches_layers_inside_time_distributed(tmp_path):
    """A video model's TimeDistributed(Conv2D) and TimeDistributed(Dense) were left in
    float (hashing reached 3% of its weights); the layer inside the wrapper is hashed
    now, materialize gives it back plain, and a second pass says they are hashed."""
    import keras

    from compress.sharing import hash_model
    from compress.sharing.hashing import int8_tflite_copy, materialize

    inp = keras.Input((4, 8, 8, 1))
    h = keras.layers.TimeDistributed(keras.layers.Conv2D(6, 3, activation="relu"),
                                     name="td_conv")(inp)
    h = keras.layers.TimeDistributed(keras.layers.GlobalAveragePooling2D(), name="pool")(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(8), name="td_dense")(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="cls")(
        keras.layers.GRU(4, name="gru")(h)), name="video")
    hashed, info = hash_model(model, factor=0.5)
    assert {r["layer"]: r["type"] for r in info["layers"]} == {
        "td_conv": "TimeDistributed(HashedConv2D)", "td_dense": "TimeDistributed(HashedDense)",
        "cls": "HashedDense"}
    assert info["layers"][0]["buckets"] == round(0.5 * 9 * 6)
    assert "td_conv" not in info["not_reached"] and "gru/gru_cell/kernel" in info["not_reached"]
    x = np.random.default_rng(0).normal(size=(3, 4, 8, 8, 1)).astype("float32")
    plain = materialize(hashed)
    assert type(plain.get_layer("td_conv").layer).__name__ == "Conv2D"
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(hashed(x)), atol=1e-6)
    hashed.save(tmp_path / "h.keras")
    loaded = keras.models.load_model(tmp_path / "h.keras")
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(hashed(x)))
    _, note = int8_tflite_copy(hashed)
    assert note.endswith(": td_conv")
    with pytest.raises(CompressError, match="td_conv, td_dense, cls are hashed already"):
        hash_model(hashed)


def test_hashing_reaches_nested_models_and_says_why_custom_layers_stay_float():
    """Dense layers inside a nested model were listed as 'only Dense, Embedding and
    Conv1D/2D/3D weights can be hashed', a wrong reason for a Dense; hashing then left
    every layer of a nested model (a base used as a layer) in float. Nested Functional
    and Sequential models are rebuilt with their layers hashed now, and a Dense that
    only a custom layer holds is named with the reason it stays float."""
    import keras

    from compress.sharing import hash_model

    class Gate(keras.layers.Layer):  # a custom layer holding a Dense
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.fc = keras.layers.Dense(8, name="g1")

        def call(self, x):
            return x * keras.ops.sigmoid(self.fc(x))

    encoder = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="e1")],
                               name="enc")
    inp = keras.Input((6,))
    h = Gate(name="gate")(encoder(inp))
    h = keras.layers.LSTM(4, name="lstm")(keras.layers.Reshape((2, 4))(h))
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h), name="outer")
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    new, info = hash_model(model, factor=0.5)
    assert [r["layer"] for r in info["layers"]] == ["e1", "out"]
    assert type(new.get_layer("enc").get_layer("e1")).__name__ == "HashedDense"
    assert info["not_reached"] == (
        "lstm/lstm_cell/kernel (64), lstm/lstm_cell/recurrent_kernel (64): only Dense, "
        "Embedding and Conv1D/2D/3D weights can be hashed; gate/g1/kernel (64): inside custom "
        "layers or subclassed models, which hashing does not rebuild (k-means reaches "
        "them); these keep their float weights")
    from compress.sharing.hashing import materialize

    plain = materialize(new)
    assert type(plain.get_layer("enc").get_layer("e1")) is keras.layers.Dense
    np.testing.assert_allclose(plain(x).numpy(), new(x).numpy(), atol=1e-6)


def test_a_nested_model_that_does_not_rebuild_is_copied_whole_and_named():
    """KerasHub's ViT backbone holds a layer whose config does not load back (its
    ``get_config`` gives arguments its ``__init__`` refuses): once hashing reached
    nested models, the whole classifier was refused. Such a nested model is copied
    whole again (as its own ``from_config`` can), the rest is hashed, and the Dense
    left inside it is named with that reason; asked for by name, it is refused."""
    import keras

    from compress.sharing import hash_model

    class Scale(keras.layers.Layer):  # a weight, and a config that does not load back
        def build(self, shape):
            self.gain = self.add_weight(shape=(shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.gain

        def get_config(self):
            return {**super().get_config(), "factor": 2.0}

    class Backbone(keras.Model):  # a functional subclass, as KerasHub backbones are
        def __init__(self, width=8, **kwargs):
            inp = keras.Input((6,))
            out = keras.layers.Dense(width, name="inner")(Scale(name="scale")(inp))
            super().__init__(inp, out, **kwargs)
            self.width = width

        def get_config(self):
            return {"width": self.width, "name": self.name}

    inp = keras.Input((6,))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(Backbone(name="bb")(inp)))
    new, info = hash_model(model, factor=0.5)
    assert [r["layer"] for r in info["layers"]] == ["head"]
    assert "inner/kernel (48): inside custom layers, subclassed models or nested " \
        "models with a layer that does not load back from its config" in info["not_reached"]
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(new.get_layer("bb")(x).numpy(),
                               model.get_layer("bb")(x).numpy(), atol=1e-6)
    with pytest.raises(CompressError, match="layer 'inner' cannot be hashed: its nested "
                                            "model cannot be rebuilt layer by layer"):
        hash_model(model, factor=0.5, layers=["inner"])


def test_hashed_convolutions_inside_a_nested_model_convert_to_int8_tflite():
    """A base used as a layer, its convolutions hashed: full-integer TFLite refused the
    model ("hashed convolutions inside a nested model cannot be converted"); the copy
    for int8 now rebuilds the nested model with those convolutions stored whole, and the
    int8 file follows the hashed model."""
    import keras

    from compress.quantization.tflite import convert
    from compress.runtime import run_tflite
    from compress.sharing import hash_model
    from compress.sharing.hashing import int8_tflite_copy

    keras.utils.set_random_seed(0)
    i = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(6, 3, activation="relu", name="c1")(i)
    base = keras.Model(i, keras.layers.Conv2D(8, 3, activation="relu", name="c2")(h),
                       name="base")
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(3, name="head")(
        keras.layers.GlobalAveragePooling2D()(base(inp, training=False)))
    hashed, _ = hash_model(keras.Model(inp, out), factor=0.5)
    copy, note = int8_tflite_copy(hashed)
    assert set(note.rsplit(": ", 1)[1].split(", ")) == {"c1", "c2"}
    assert type(copy.get_layer("base").get_layer("c1")).__name__ == "Conv2D"
    assert type(copy.get_layer("head")).__name__ == "HashedDense"
    x = np.random.default_rng(0).random((64, 8, 8, 1)).astype("float32")
    got = run_tflite(convert(copy, "int8", x), x)
    want = np.asarray(hashed(x))
    assert np.linalg.norm(got - want) <= 0.1 * np.linalg.norm(want)
