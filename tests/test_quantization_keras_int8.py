"""Keras-native int8 (model.quantize) on a copy, saved as .keras, float layers listed."""

import numpy as np


def test_keras_int8_lists_float_layers_and_reloads(cnn_file, tmp_path):
    import keras

    from compress import io
    from compress.quantization import quantize

    path, ds = cnn_file
    model = io.load_model(path)
    before = [w.copy() for w in model.get_weights()]
    content, info = quantize(model, ds, mode="keras-int8", latency=False)
    assert info["format"] == "keras" and info["bytes"] == len(content)
    out = io.write_bytes(tmp_path / "cnn-int8.keras", content)
    assert info["float_layers"] == ["conv1", "bn1", "conv2"]
    reloaded = keras.models.load_model(out)
    kernel_dtypes = {w.path.split("/")[-1]: str(w.dtype)
                     for w in reloaded.get_layer("predictions").weights}
    assert any("int8" in d for d in kernel_dtypes.values())
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the input model is still a float model
    assert all("int8" not in str(w.dtype) for w in model.weights)


def test_keras_int8_mlp_quantizes_every_layer(mlp_file):
    from compress import io
    from compress.quantization import quantize

    path, ds = mlp_file
    _, info = quantize(io.load_model(path), ds, mode="keras-int8")
    assert info["float_layers"] == []
    assert info["top1_agreement"] >= 0.95
    assert info["latency_ms"]["1"] > 0


def test_a_keras_int8_model_is_refused_by_the_tflite_and_quantize_paths(mlp_file, tmp_path):
    import pytest

    from compress import export, io
    from compress.errors import CompressError
    from compress.quantization import quantize

    path, ds = mlp_file
    content, _ = quantize(io.load_model(path), ds, mode="keras-int8", latency=False)
    kint8 = io.load_model(io.write_bytes(tmp_path / "k.keras", content))
    calls = [lambda: quantize(kint8, ds, mode="int8", latency=False),
             lambda: quantize(kint8, ds, mode="keras-int8"),
             lambda: export.export_tflite(kint8, tmp_path / "e.tflite"),
             lambda: export.export_artifact(kint8, ds, format="tflite")]
    for call in calls:
        with pytest.raises(CompressError, match="already quantized by Keras .layer 'fc1'"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.keras"]
