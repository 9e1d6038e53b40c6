"""Structured pruning rebuilds smaller plain models with consumers fixed up."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from compress.pruning import prune
from compress.pruning.structured import prune_units


def _kill(layer, units):
    """Zero the outgoing weights (and bias) of ``units``: they then carry nothing."""
    w = layer.get_weights()
    w[0][..., units] = 0.0
    if len(w) > 1:
        w[1][units] = 0.0
    layer.set_weights(w)


def test_removing_dead_units_keeps_outputs_identical_residual_concat_flatten():
    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inp)
    b = keras.layers.Conv2D(8, 3, padding="same", name="c2")(a)
    b = keras.layers.BatchNormalization(name="bn")(b)
    s = keras.layers.Add(name="add")([a, b])
    s = keras.layers.ReLU()(s)
    c = keras.layers.Conv2D(4, 3, padding="same", name="c3")(s)
    cat = keras.layers.Concatenate(name="cat")([s, c])
    f = keras.layers.Flatten()(cat)
    h = keras.layers.Dense(10, activation="relu", name="fc")(f)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    dead = [1, 4, 6, 7]
    _kill(model.get_layer("c1"), dead)
    _kill(model.get_layer("c2"), dead)  # same channels: the Add group is dead as a whole
    _kill(model.get_layer("c3"), [0, 3])
    _kill(model.get_layer("fc"), [2, 5, 8, 9, 0])
    x = np.random.default_rng(0).normal(size=(5, 6, 6, 3)).astype("float32")
    small, info = prune_units(model, 0.5)
    assert info["units"] == {"c1": [8, 4], "c2": [8, 4], "c3": [4, 2], "fc": [10, 5],
                             "out": [3, 3]}
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), atol=1e-5)
    assert info["params_after"] < info["params_before"] / 2


def test_structured_prune_pass_on_cnn_file_saves_plain_smaller_model(cnn_file, tmp_path):
    from compress import io, training

    path, ds = cnn_file
    model = io.load_model(path)
    small, info = prune(model, ds, structured=True, sparsity=0.5, epochs=1)
    assert info["units"]["conv1"] == [8, 4] and info["units"]["conv2"] == [16, 8]
    assert small.count_params() < model.count_params()
    out = tmp_path / "small.keras"
    small.save(out)
    loaded = keras.models.load_model(out)
    assert loaded.get_layer("bn1").gamma.shape == (4,)
    acc = training.accuracy(loaded, ds.x_test, ds.y_test)
    assert acc > 0.3  # still a working classifier (chance is 0.1)


def test_structured_obd_scores_and_sequential_mlp(mlp_file):
    from compress import io

    path, ds = mlp_file
    model = io.load_model(path)
    small, info = prune(model, ds, structured=True, method="obd", sparsity=0.25,
                        calibration=256)
    assert info["units"]["fc1"] == [32, 24] and info["units"]["predictions"] == [10, 10]
    assert small(ds.x_test[:2]).shape == (2, 10)


def test_half_channels_per_conv_and_rebuilt_equals_masked_model_bn_ranking():
    # small-cnn: Conv-BN-ReLU blocks. Pruning half the channels halves every conv (the
    # classifier is an output and keeps its 10 units), and before any fine-tuning the
    # rebuilt model computes exactly what the original does with those channels silenced
    # (conv filter, BN gamma and beta zeroed: the channel's output is 0 after BN).
    from compress.models import build

    keras.utils.set_random_seed(1)
    model = build("small-cnn", input_shape=(12, 12, 1), num_classes=4)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BN statistics
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 2.0, n), rng.normal(0, 0.3, n),
                               rng.normal(0, 0.3, n), rng.uniform(0.5, 2.0, n)])
    small, info = prune_units(model, 0.5, norm="bn")
    convs = [la.name for la in model.layers if type(la).__name__ == "Conv2D"]
    for name in convs:
        before, after = info["units"][name]
        assert after == before // 2
    assert info["units"]["predictions"] == [4, 4]
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    for i, name in enumerate(convs):
        conv = model.get_layer(name)
        bn = model.get_layer(f"bn{i + 1}")
        scale = np.abs(bn.gamma.numpy()) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
        score = np.abs(conv.kernel.numpy()).reshape(-1, scale.size).sum(0) * scale
        drop = np.argsort(-score, kind="stable")[scale.size // 2:]
        w = masked.get_layer(name).get_weights()
        w[0][..., drop] = 0.0
        masked.get_layer(name).set_weights(w)
        g, b, mu, var = masked.get_layer(f"bn{i + 1}").get_weights()
        g[drop], b[drop] = 0.0, 0.0
        masked.get_layer(f"bn{i + 1}").set_weights([g, b, mu, var])
    x = rng.normal(size=(6, 12, 12, 1)).astype("float32")
    np.testing.assert_allclose(small(x).numpy(), masked(x).numpy(), rtol=1e-4, atol=1e-5)
    assert small.count_params() < model.count_params() / 2
