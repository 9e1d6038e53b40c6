"""Keras's own int4, GPTQ and AWQ (compress/quantization/keras_modes.py) through the
quantize pass and the CLI: .keras files that load back in safe mode, close to float,
with the layers Keras quantized, the ones that stayed float, and what exports."""

import json

import numpy as np
import pytest

#: 4-bit weights on the tiny digits MLP (32-16-10 units): accuracy within 5 points of float.
BOUND = 0.05


def _reloaded_accuracy(path, ds):
    import keras

    reloaded = keras.models.load_model(path, safe_mode=True)
    return float(np.mean(np.argmax(reloaded.predict(ds.x_test, verbose=0), -1)
                         == ds.y_test)), reloaded


def _packed(layer) -> bool:
    """Whether the layer holds its 64x32 kernel as 4-bit codes, two to a byte."""
    return any("int" in str(w.dtype) and int(np.prod(w.shape)) == 64 * 32 // 2
               for w in layer.weights)


def test_keras_int4_reloads_in_safe_mode_close_to_float(mlp_file, tmp_path):
    from compress import io
    from compress.quantization import quantize

    path, ds = mlp_file
    model = io.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    content, info = quantize(model, ds, mode="keras-int4", latency=False)
    out = io.write_bytes(tmp_path / "int4.keras", content)
    accuracy, reloaded = _reloaded_accuracy(out, ds)
    assert accuracy == pytest.approx(info["accuracy"])
    assert accuracy >= info["float_accuracy"] - BOUND
    assert info["float_layers"] == []
    assert sorted(info["quantized_layers"]) == ["fc1", "fc2", "predictions"]
    assert all(p.startswith("int4") for p in info["quantized_layers"].values())
    assert reloaded.get_layer("fc1").quantization_mode == "int4"
    assert _packed(reloaded.get_layer("fc1"))
    assert info["size_ratio"] < 1.0  # no optimizer slots in the file
    assert info["exports"]["onnx"].startswith("works"), info["exports"]
    assert info["exports"]["tflite"].startswith("refused: model"), info["exports"]
    for a, b in zip(before, model.get_weights()):  # the input model is untouched
        np.testing.assert_array_equal(a, b)


def test_keras_awq_on_a_cnn_quantizes_its_dense_head_and_loads_back(cnn_file, tmp_path):
    """The convolutions run inside Keras's AWQ blocks and stay float. Keras 3.15 alone
    writes an AWQ file it cannot load (no kernel_zero): complete_save makes it whole."""
    from compress import io
    from compress.quantization.keras_modes import complete_save, keras_quantize

    path, ds = cnn_file
    model = io.load_model(path)
    float_accuracy = float(np.mean(np.argmax(model.predict(ds.x_test, verbose=0), -1)
                                   == ds.y_test))
    quantized, layers = keras_quantize(model, "awq", ds.x_train[:96])
    assert layers["float"] == ["conv1", "bn1", "conv2"]
    assert list(layers["quantized"]) == ["predictions"]
    out = tmp_path / "awq.keras"
    with complete_save(quantized):
        quantized.save(out)
    accuracy, reloaded = _reloaded_accuracy(out, ds)
    assert reloaded.get_layer("predictions").quantization_mode == "awq"
    np.testing.assert_allclose(reloaded.predict(ds.x_test[:64], verbose=0),
                               quantized.predict(ds.x_test[:64], verbose=0), atol=1e-5)
    assert accuracy >= float_accuracy - BOUND


def _codes(layer):
    """A 4-bit GPTQ/AWQ Dense's codes (units, inputs), and its per-input scale and zero."""
    from keras import ops
    from keras.src import quantizers

    codes = ops.convert_to_numpy(quantizers.unpack_int4(
        layer.quantized_kernel, orig_len=layer.units, axis=0, dtype="uint8")).astype(float)
    group = ops.convert_to_numpy(layer.g_idx).astype(int)
    return (codes, ops.convert_to_numpy(layer.kernel_scale)[:, group],
            ops.convert_to_numpy(layer.kernel_zero).astype(float)[:, group])


def test_keras_gptq_and_awq_calibrate_on_the_samples(cnn_file):
    """Keras 3.15 hooks ``layer.call`` to gather GPTQ's Hessians and AWQ's activation
    statistics, but a quantized layer runs ``quantized_call``: both stayed zero, GPTQ gave
    exactly the nearest codes of its grid and AWQ scales of 1 (the bug this guards).

    On a CNN whose Dense head reads the convolutions' outputs: GPTQ's codes are not the
    nearest ones, and its head reproduces the float head's outputs on the calibration
    samples better than the nearest codes on the same grid; AWQ scales some input
    channels."""
    import keras

    from compress import io
    from compress.quantization.keras_modes import keras_quantize

    path, ds = cnn_file
    model = io.load_model(path)
    x = ds.x_train[:256]
    head = model.get_layer("predictions")
    features = keras.Model(model.inputs, head.input).predict(x, verbose=0)
    w, b = (v.numpy() for v in head.weights[:2])
    float_logits = features @ w + b

    gptq = keras_quantize(model, "gptq", x)[0].get_layer("predictions")
    codes, scale, zero = _codes(gptq)
    nearest = np.clip(np.round(w.T / scale + zero), 0, 15)
    assert np.mean(codes != nearest) > 0.05

    def error(c):
        return np.mean((features @ ((c - zero) * scale).T + b - float_logits) ** 2)
    assert error(codes) < 0.9 * error(nearest), (error(codes), error(nearest))

    scales = keras_quantize(model, "awq", x)[0].get_layer("predictions").awq_scales.numpy()
    assert np.ptp(scales) > 0, "every AWQ scale is the same: no activation statistics"


def test_cli_gptq_writes_a_keras_model_reports_layers_and_exports(cli, mlp_file, tmp_path):
    from compress.quantization.keras_modes import chain_layers

    path, ds = mlp_file
    out = tmp_path / "mlp-gptq.keras"
    result = cli("quantize", path, "-o", out, "--mode", "gptq", "--data", "digits",
                 "--calibration-samples", "96", "--no-latency", "--no-exports", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "keras" and info["float_layers"] == []
    assert sorted(info["quantized_layers"]) == ["fc1", "fc2", "predictions"]
    assert all(p.startswith("gptq/4/128") for p in info["quantized_layers"].values())
    assert info["accuracy"] >= info["float_accuracy"] - BOUND
    assert "exports" not in info  # --no-exports: the int4 test checks them
    accuracy, reloaded = _reloaded_accuracy(out, ds)
    assert accuracy == pytest.approx(info["accuracy"])
    assert _packed(reloaded.get_layer("fc1"))
    assert [layer.name for layer in chain_layers(reloaded, "gptq")] == [
        "flatten", "fc1", "fc2", "predictions"]


def _branched(tmp_path):
    import keras

    x = keras.Input((8, 8, 1))
    f = keras.layers.Flatten()(x)
    y = keras.layers.Add(name="join")([keras.layers.Dense(10, name="a")(f),
                                       keras.layers.Dense(10, name="b")(f)])
    path = tmp_path / "branched.keras"
    keras.Model(x, keras.layers.Softmax()(y)).save(path)
    return path


def _conv_only(tmp_path):
    import keras

    path = tmp_path / "conv.keras"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(10, 8),
                      keras.layers.Flatten(), keras.layers.Softmax()]).save(path)
    return path


@pytest.mark.parametrize("make, args, message", [
    (None, ["--mode", "gptq", "-o", "{tmp}/x.tflite", "--data", "digits"],
     "x.tflite: output must end with .keras"),
    (None, ["--mode", "awq", "-o", "{tmp}/x.keras"], "mode awq calibrates Keras's AWQ"),
    (None, ["--mode", "keras-int4", "-o", "{tmp}/x.keras", "--rounding", "gptq"],
     "mode keras-int4 is Keras's own quantizer"),
    (_branched, ["--mode", "gptq", "-o", "{tmp}/x.keras", "--data", "digits"],
     "feeds a model's blocks one after the other.*branches at '[ab]', '[ab]'"),
    (_conv_only, ["--mode", "awq", "-o", "{tmp}/x.keras", "--data", "digits"],
     "quantizes Dense and EinsumDense layers only and model .* has none"),
])
def test_refusals_are_one_line_and_write_nothing(make, args, message, cli, mlp_file,
                                                 tmp_path):
    import re

    work = tmp_path / "work"
    work.mkdir()
    path = make(work) if make else mlp_file[0]
    result = cli("quantize", path, *[a.format(tmp=work) for a in args])
    assert result.exit_code == 1, result.output
    assert re.search(message, " ".join(result.output.split())), result.output
    assert "Traceback" not in result.output
    assert not list(work.glob("x.*"))
