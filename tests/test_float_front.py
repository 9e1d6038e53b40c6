"""An input normalization kept float in int8 artifacts (compress/quantization/float_front.py).

A tabular regressor takes raw columns of very different ranges in one tensor and
normalizes them inside. Full-integer int8 quantized that raw tensor with one scale: the
narrow columns got under one int8 level and the int8 model's output was 40% off its float
model's (SQNR 7.9 dB in TFLite, 2.7 dB for a classifier in ONNX).
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def regressor(tmp_path_factory):
    import keras

    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    scales = np.array([1, 10, 100, 0.1, 5, 3, 2, 1000], "float32")
    x = (rng.normal(size=(800, 8)).astype("float32") * scales + 50).astype("float32")
    y = (x[:, 0] * 0.5 + x[:, 3] * 20 + x[:, 7] * 0.002).astype("float32")
    norm = keras.layers.Normalization(name="norm")
    norm.adapt(x)
    inp = keras.Input((8,), name="columns")
    h = keras.layers.Dense(32, activation="relu")(norm(inp))
    model = keras.Model(inp, keras.layers.Dense(1)(h), name="tab_regressor")
    model.compile("adam", "mse")
    model.fit(x, y, epochs=30, verbose=0)
    folder = tmp_path_factory.mktemp("float_front")
    path, data = folder / "reg.keras", folder / "reg.npz"
    model.save(path)
    np.savez(data, x_train=x[:600], y_train=y[:600], x_test=x[600:], y_test=y[600:])
    return path, data


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_int8_keeps_the_input_normalization_float(regressor, tmp_path, cli, suffix):
    import json

    path, data = regressor
    out = tmp_path / f"r{suffix}"
    result = cli("quantize", path, "-o", out, "--data", f"npz:{data}", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["verified"] and info["sqnr_db"] > 25  # 7.9 dB before, in TFLite
    assert info["float_front"].startswith("kept float: Normalization 'norm' on the model "
                                          "input")
    assert "input 'columns' feature 3:" in info["float_front"]
    from compress.runtime import run_artifact

    x = np.load(data)["x_test"]
    got = run_artifact(out.read_bytes(), x)
    import keras

    want = np.asarray(keras.models.load_model(path)(x))
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()


def test_an_int8_interface_cannot_keep_it_and_says_so(regressor, tmp_path, cli):
    import json

    path, data = regressor
    result = cli("quantize", path, "-o", tmp_path / "i.tflite", "--data", f"npz:{data}",
                 "--interface", "int8", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert "float_front" not in info
    assert info["float_front_warning"].startswith(
        "an int8 input cannot hold features of such different ranges")
    assert not info["verified"]  # the disagreement is flagged as well


def test_inputs_of_one_range_change_nothing():
    import keras

    from compress.quantization.float_front import float_front

    x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
    norm = keras.layers.Normalization()
    norm.adapt(x)
    inp = keras.Input((4,))
    model = keras.Model(inp, keras.layers.Dense(2)(norm(inp)))
    assert float_front(model, x) == ([], None)


def test_a_sequential_model_loaded_from_its_file_is_found_too(regressor, tmp_path):
    # A Sequential model loaded from a file has called its layers twice (its build and
    # the graph it runs): its Normalization was not seen as reading the model's input,
    # and the int8 file quantized the raw columns (SQNR 2.1 dB, a user's report).
    import keras

    from compress.io import load_model
    from compress.quantization.float_front import float_front

    path, data = regressor
    functional = keras.models.load_model(path)
    seq = keras.Sequential([keras.Input((8,), name="columns"), *functional.layers[1:]])
    seq.save(tmp_path / "seq.keras")
    loaded = load_model(tmp_path / "seq.keras")
    assert len(loaded.layers[0]._inbound_nodes) > 1  # the case this test is about
    kept, _note = float_front(loaded, np.load(data)["x_train"])
    assert kept == ["norm"]
