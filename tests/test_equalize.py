"""Cross-layer equalization, bias correction, per-tensor int8 and per-layer SQNR
(compress/quantization/equalize.py, compress/quantization/debug.py)."""

import json

import numpy as np
import pytest
from conftest import file_digest


def _separable(relu6: bool = False):
    """conv -> BN -> ReLU -> depthwise -> BN -> ReLU -> 1x1 conv -> BN -> ReLU -> Dense,
    with BatchNorm statistics that spread the channel ranges over decades."""
    import keras
    from keras import layers

    from compress import training

    training.set_seed(0)
    act = (lambda: layers.ReLU(6.0)) if relu6 else layers.ReLU
    inp = keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = act()(layers.BatchNormalization()(x))
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = act()(layers.BatchNormalization()(x))
    x = layers.Conv2D(16, 1)(x)
    x = act()(layers.BatchNormalization()(x))
    out = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(np.exp(rng.normal(0, 1.5, n)).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.3, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_variance.assign(np.exp(rng.normal(0, 0.5, n)).astype("float32"))
    return model


@pytest.fixture(scope="module")
def separable_file(tmp_path_factory, digits):
    """The separable model saved to a file; loaded back with the digits inputs."""
    path = tmp_path_factory.mktemp("equalize") / "separable.keras"
    _separable().save(path)
    return path


def _loaded(path):
    import keras

    return keras.models.load_model(path, compile=False)


def _ratios(model, names):
    from compress.quantization.equalize import output_view

    out = []
    for name in names:
        r = np.max(np.abs(output_view(model.get_layer(name))), axis=0)
        out.append(r.max() / r.min())
    return np.array(out)


def test_equalization_keeps_function_and_evens_ranges(separable_file, digits):
    from compress.quantization.equalize import equalize_model
    from compress.training import predict

    model = _loaded(separable_file)
    before = [w.copy() for w in model.get_weights()]
    x = digits.x_test[:128].astype("float32")
    folded, _ = equalize_model(model, x, equalize=False)
    equalized, info = equalize_model(model, x)
    reference = predict(model, x)
    diff = np.max(np.abs(predict(equalized, x) - reference))
    assert diff <= 1e-5 * max(1.0, np.max(np.abs(reference))), diff
    assert info["folded_batchnorms"] == 3 and info["pairs"] == 3
    assert info["relu6_replaced"] == 0 and info["float_max_abs_diff"] == pytest.approx(diff)
    convs = [layer.name for layer in model.layers
             if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    spread, even = _ratios(folded, convs), _ratios(equalized, convs)
    assert np.median(even) < 0.5 * np.median(spread), (spread, even)
    assert info["channel_range_ratio"]["after"] < info["channel_range_ratio"]["before"]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


def test_relu6_is_made_relu_and_the_difference_reported(digits):
    from compress.quantization.equalize import equalize_model

    model = _separable(relu6=True)
    x = digits.x_test[:64].astype("float32")
    new, info = equalize_model(model, x)
    assert info["relu6_replaced"] == 3
    assert [layer.max_value for layer in new.layers if type(layer).__name__ == "ReLU"] \
        == [None] * 3
    assert [layer.max_value for layer in model.layers if type(layer).__name__ == "ReLU"] \
        == [6.0] * 3
    assert info["float_max_abs_diff"] >= 0 and 0 <= info["float_top1_agreement"] <= 1


def test_bias_correction_reduces_mean_error_of_per_tensor_weights(separable_file, digits):
    from compress.quantization.equalize import equalize_model, fake_quantize, output_view
    from compress.training import predict

    model = _loaded(separable_file)
    x_cal = digits.x_train[:256].astype("float32")
    x = digits.x_test[:256].astype("float32")  # held out: the correction must generalize
    reference = predict(model, x)

    def mean_error(copy):
        for layer in copy.layers:
            if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D", "Dense"):
                k = np.asarray(layer.kernel)
                layer.kernel.assign(fake_quantize(k, output_view(layer, k), False))
        return np.mean(np.abs(np.mean(predict(copy, x) - reference, axis=0)))

    plain, _ = equalize_model(model, x_cal, equalize=False)
    corrected, info = equalize_model(model, x_cal, equalize=False, bias_correction=True,
                                     per_channel=False)
    assert info["bias_corrected"] == 4 and info["bias_correction_mean_abs"] > 0
    before, after = mean_error(plain), mean_error(corrected)
    assert after < 0.5 * before, (before, after)


def _weight_scale_counts(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    counts = []
    for d in interp.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) == 4:
            try:
                interp.get_tensor(d["index"])  # constants only: activations have no data
            except ValueError:
                continue
            counts.append(len(d["quantization_parameters"]["scales"]))
    return counts


def test_cli_per_tensor_equalize_bias_correction_debug_layers(cli, separable_file, tmp_path):
    digest = file_digest(separable_file)
    out = tmp_path / "m.tflite"
    result = cli("quantize", separable_file, "-o", out, "--data", "digits", "--json",
                 "--per-tensor", "--equalize", "--bias-correction", "--debug-layers",
                 "--calibration-samples", 64, "--no-latency")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    counts = _weight_scale_counts(out)
    assert counts and all(c == 1 for c in counts), counts  # one scale per weight tensor
    eq = info["equalization"]
    assert eq["pairs"] == 3 and eq["bias_corrected"] == 4 and "copy" in eq["note"]
    assert eq["float_max_abs_diff"] < 1e-4
    layers = info["layer_sqnr"]["layers"]
    kinds = {type(layer).__name__: layer.name for layer in _loaded(separable_file).layers}
    names = {r["layer"] for r in layers}
    # Keras layer names (the last 1x1 conv, the depthwise one, the output Dense)
    assert {kinds["Conv2D"], kinds["DepthwiseConv2D"], kinds["Dense"]} <= names, names
    assert all(isinstance(r["sqnr_db"], float) for r in layers)
    assert [r["sqnr_db"] for r in layers] == sorted(r["sqnr_db"] for r in layers)
    assert info["layer_sqnr"]["worst"][0] == layers[0]["layer"]
    assert file_digest(separable_file) == digest
    # per-channel (the default) keeps one scale per output channel
    default = tmp_path / "d.tflite"
    result = cli("quantize", separable_file, "-o", default, "--data", "digits",
                 "--calibration-samples", 32, "--no-latency")
    assert result.exit_code == 0, result.output
    assert max(_weight_scale_counts(default)) > 1


@pytest.mark.parametrize("args, words", [
    (("--mode", "dynamic", "--equalize"), "--equalize prepares weights"),
    (("--bias-correction", "--qat"), "post-training"),
    (("--debug-layers", "--format", "onnx"), "TFLite"),
])
def test_bad_options_are_one_line(cli, separable_file, tmp_path, args, words):
    out = tmp_path / ("m.onnx" if "onnx" in args else "m.tflite")
    result = cli("quantize", separable_file, "-o", out, "--data", "digits", *args)
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and words in result.output, result.output
    assert not list(tmp_path.iterdir())


def test_debug_layers_name_each_op_by_its_kernel_when_scope_names_collide():
    """Keras's default names ``dense`` and ``dense_1``: TensorFlow scopes the first layer
    as ``dense_1/``, so its op's name reads as the second layer; each row still names
    its own layer."""
    import keras

    from compress.quantization.debug import layer_sqnr

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(32, "relu", name="dense"),
                              keras.layers.Dense(3, name="dense_1")])
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    rows = layer_sqnr(model, x, samples=8)["layers"]
    assert sorted(r["layer"] for r in rows) == ["dense", "dense_1"], rows


def test_bias_correction_runs_causal_conv1d_layers():
    """A causal, dilated Conv1D (a TCN, an IMU classifier): bias correction called the
    layer's convolution with padding "causal", which keras.ops.conv refuses, and
    `quantize --per-tensor --bias-correction` crashed with an unexpected ValueError. The
    layer's linear map is now computed as the layer computes it (padded on the left)."""
    import keras

    from compress.quantization.equalize import _apply_kernel, equalize_model

    keras.utils.set_random_seed(0)
    inp = keras.Input((20, 2))
    h = keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2, use_bias=True,
                            name="tcn")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    x = np.random.default_rng(0).normal(size=(8, 20, 2)).astype("float32")
    layer = model.get_layer("tcn")
    np.testing.assert_allclose(np.asarray(_apply_kernel(layer, x, layer.kernel)),
                               np.asarray(layer(x)) - np.asarray(layer.bias), atol=1e-6)
    _, info = equalize_model(model, x, equalize=False, bias_correction=True,
                             per_channel=False)
    assert info["bias_corrected"] == 2  # the Conv1D and the Dense


def test_bias_correction_reaches_a_base_model_used_as_a_layer(separable_file, digits):
    """A transfer model (the separable model's body called as one layer, then its head):
    bias correction covered the top-level layers only, so the body, where the rounding
    error is, went uncorrected. It is corrected inside as in the flat model: the same
    layers, the same corrections."""
    import keras

    from compress.quantization.equalize import equalize_model
    from compress.training import copy_model, predict

    flat = _loaded(separable_file)
    pool = next(la for la in flat.layers if isinstance(la, keras.layers.GlobalAveragePooling2D))
    body = keras.Model(flat.inputs, pool.input, name="body")
    inp = keras.Input((8, 8, 1))
    head = keras.layers.Dense(10, name="head")
    out = head(keras.layers.GlobalAveragePooling2D()(body(inp, training=False)))
    nested = copy_model(keras.Model(inp, out))
    nested.get_layer("head").set_weights(flat.layers[-1].get_weights())
    x_cal = digits.x_train[:128].astype("float32")
    results = [equalize_model(m, x_cal, equalize=False, bias_correction=True,
                              per_channel=False) for m in (flat, nested)]
    (a, fi), (b, ni) = results
    assert ni["bias_corrected"] == fi["bias_corrected"] == 4, (fi, ni)
    assert ni["bias_correction_mean_abs"] == pytest.approx(fi["bias_correction_mean_abs"],
                                                           rel=1e-4)
    x = digits.x_test[:64].astype("float32")
    np.testing.assert_allclose(predict(b, x), predict(a, x), atol=1e-4)
