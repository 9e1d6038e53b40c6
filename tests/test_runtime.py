"""compress.runtime: artifacts run from a file or from bytes, compared with Keras, timed."""

import numpy as np
import pytest

from compress import export, io, runtime
from compress.errors import CompressError


@pytest.fixture(scope="module")
def mlp(mlp_file):
    return io.load_model(mlp_file[0]), mlp_file[1]


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_run_artifact_from_bytes_equals_from_path(mlp, tmp_path, fmt):
    model, ds = mlp
    path = tmp_path / f"m.{fmt}"
    export.export(model, path)
    content = path.read_bytes()
    x = ds.x_test[:300]  # more than one LiteRT batch of 256
    from_path = runtime.run_artifact(path, x)
    from_bytes = runtime.run_artifact(content, x)  # format sniffed from the content
    np.testing.assert_array_equal(from_bytes, from_path)
    np.testing.assert_array_equal(runtime.run_artifact(content, x, fmt=fmt), from_path)
    assert from_path.shape == (300, 10)
    assert runtime.artifact_accuracy(content, ds.x_test, ds.y_test) == \
        runtime.artifact_accuracy(path, ds.x_test, ds.y_test) > 0.5


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_verify_detects_a_disagreeing_artifact(mlp, fmt):
    from compress import training

    model, ds = mlp
    content, _ = export.export_artifact(model, ds, format=fmt)
    x = ds.x_test[:128]
    same = runtime.verify(model, content, x, fmt=fmt)
    assert same["samples"] == 128 and same["max_abs_diff"] <= 1e-4
    assert same["top1_agreement"] == 1.0
    other = training.copy_model(model)
    kernel, bias = other.get_layer("predictions").get_weights()
    other.get_layer("predictions").set_weights([kernel[:, ::-1], bias[::-1]])  # swap classes
    check = runtime.verify(other, content, x, fmt=fmt)
    assert check["max_abs_diff"] > 0.1
    assert check["top1_agreement"] < 0.5


def test_format_is_sniffed_from_bytes_or_refused(mlp, tmp_path):
    model, _ = mlp
    tflite, _ = export.export_artifact(model, format="tflite", samples=4)
    onnx, _ = export.export_artifact(model, format="onnx", samples=4)
    assert tflite[4:8] == b"TFL3"
    assert runtime.artifact_format(tflite) == "tflite"
    assert runtime.artifact_format(onnx) == "onnx"
    assert runtime.artifact_format(tmp_path / "m.TFLITE") == "tflite"
    with pytest.raises(CompressError, match="not a TFLite or ONNX model"):
        runtime.artifact_format(b"PK\x03\x04 a zip file")
    with pytest.raises(CompressError, match="not an .onnx or .tflite file"):
        runtime.run_artifact(tmp_path / "m.keras", np.zeros((1, 8, 8, 1), np.float32))


def test_tflite_runner_reallocates_when_the_batch_changes(mlp):
    model, ds = mlp
    content, _ = export.export_artifact(model, format="tflite", samples=4)
    runner = runtime.TFLiteRunner(content)
    x = ds.x_test[:8].astype(np.float32)
    first = runner(x[:3])
    whole = runner(x)  # a new shape: resized and allocated again
    again = runner(x[:3])
    np.testing.assert_allclose(whole[:3], first, atol=1e-6)
    np.testing.assert_array_equal(again, first)


def test_latency_from_bytes_and_sparse_check(mlp):
    model, _ = mlp
    content, _ = export.export_artifact(model, format="tflite", samples=4)
    ms = runtime.runtime_latency_ms(content, (8, 8, 1), batch=2, threads=1, runs=10)
    assert 0.0 < ms < 1000.0
    assert runtime.has_sparse_tensors(content) is False
    assert runtime.sparse_tensor_count(content) == 0


def test_a_keras_quantized_model_is_refused(mlp):
    from compress import training

    model, _ = mlp
    runtime.refuse_keras_quantized(model)  # float: accepted
    quantized = training.copy_model(model)
    quantized.quantize("int8")
    with pytest.raises(CompressError, match="already quantized by Keras .layer 'fc1'"):
        runtime.refuse_keras_quantized(quantized)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_nan_outputs_never_pass_a_comparison(mlp, fmt):
    """NaN inputs give NaN outputs on both sides: that is no agreement (it read 100%)."""
    model, ds = mlp
    content, _ = export.export_artifact(model, ds, format=fmt)
    x = ds.x_test[:8].copy()
    x[:4] = np.nan
    check = runtime.verify(model, content, x, fmt=fmt)
    assert check["max_abs_diff"] == float("inf") and not check["max_abs_diff"] <= 1e-4
    assert check["top1_agreement"] == 0.5
    y = np.zeros(8, int)
    assert runtime.artifact_accuracy(content, x[:4], y[:4], fmt=fmt) == 0.0
