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
    assert acc > 0.5


def test_structured_obd_scores_and_sequential_mlp(mlp_file):
    from compress import io

    path, ds = mlp_file
    model = io.load_model(path)
    small, info = prune(model, ds, structured=True, method="obd", sparsity=0.25,
                        calibration=256)
    assert info["units"]["fc1"] == [32, 24] and info["units"]["predictions"] == [10, 10]
    assert small(ds.x_test[:2]).shape == (2, 10)
