"""Full-integer, dynamic-range and float16 TFLite quantization, verified in LiteRT."""

import numpy as np
import pytest

from compress.errors import CompressError


def _load(path):
    from compress import io

    return io.load_model(path)


def _tensor_dtypes(path):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    return interp, {t["name"]: t["dtype"] for t in interp.get_tensor_details()}


def test_int8_cnn_keeps_accuracy_and_shrinks(cnn_file, tmp_path):
    from compress.quantization import quantize

    path, ds = cnn_file
    model = _load(path)
    before = [w.copy() for w in model.get_weights()]
    info = quantize(model, tmp_path / "cnn.tflite", ds, mode="int8", latency=False)
    assert (tmp_path / "cnn.tflite").exists()
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    assert info["bytes"] < 0.6 * info["float_bytes"]
    assert info["top1_agreement"] >= 0.95
    interp, dtypes = _tensor_dtypes(tmp_path / "cnn.tflite")
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert "CONV_2D" in ops and "QUANTIZE" in ops  # float interface around an int8 body
    assert sum(d == np.int8 for d in dtypes.values()) >= 4
    # BatchNorm is folded: no float multiply/add left around the convolution
    assert not ops & {"MUL", "ADD"}
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is untouched


def test_int8_interface_for_integer_devices(mlp_file, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from compress.quantization import quantize

    path, ds = mlp_file
    info = quantize(_load(path), tmp_path / "m.tflite", ds, interface="int8", latency=False)
    interp = Interpreter(model_path=str(tmp_path / "m.tflite"))
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    assert info["interface"] == "int8"
    assert info["accuracy"] >= info["float_accuracy"] - 0.03


def test_dynamic_and_float16_need_no_data(mlp_file, tmp_path):
    from compress.quantization import quantize

    path, _ = mlp_file
    model = _load(path)
    dyn = quantize(model, tmp_path / "d.tflite", None, mode="dynamic", latency=False)
    half = quantize(model, tmp_path / "h.tflite", None, mode="float16", latency=False)
    assert "accuracy" not in dyn and dyn["top1_agreement"] >= 0.95
    assert dyn["bytes"] < 0.6 * dyn["float_bytes"]
    assert half["top1_agreement"] >= 0.95  # float16 rounding may flip near-tie random inputs
    _, dtypes = _tensor_dtypes(tmp_path / "h.tflite")
    assert np.float16 in set(dtypes.values())


def test_latency_is_measured_in_litert_for_both(mlp_file, tmp_path):
    from compress.quantization import quantize

    path, ds = mlp_file
    info = quantize(_load(path), tmp_path / "m.tflite", ds, threads=2)
    assert set(info["latency_ms"]) == {"1", "2"} == set(info["float_latency_ms"])
    assert all(v > 0 for v in info["latency_ms"].values())
    assert info["latency_ratio"]["1"] == pytest.approx(
        info["latency_ms"]["1"] / info["float_latency_ms"]["1"])
    # An int8 file that is not faster says why (this CPU's int8 instructions); one that is
    # faster says nothing.
    assert (info["latency_note"] is None) == (info["latency_ratio"]["1"] < 0.9)


def test_pruned_zeros_survive_int8(mlp_file, tmp_path):
    from compress.quantization import quantize
    from compress.quantization.tflite import weight_arrays

    path, ds = mlp_file
    model = _load(path)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            cut = np.quantile(np.abs(kernel), 0.9)
            layer.set_weights([np.where(np.abs(kernel) > cut, kernel, 0.0), bias])
    info = quantize(model, tmp_path / "p.tflite", ds, latency=False)
    assert info["weight_zeros"]["model"] >= 0.89
    assert info["weight_zeros"]["artifact"] >= info["weight_zeros"]["model"]
    # each int8 kernel is zero exactly where the pruned float kernel is
    kernels = {a.shape: a for a in weight_arrays(tmp_path / "p.tflite") if a.dtype == np.int8}
    fc1 = model.get_layer("fc1").get_weights()[0]
    q = kernels[fc1.T.shape]
    assert np.all(q[fc1.T == 0] == 0)
    assert info["zipped_bytes"] < 0.5 * info["bytes"]  # the zeros compress


def test_sparse_storage_of_pruned_int8(digits, tmp_path):
    import keras

    from compress import export, training
    from compress.data import prepare
    from compress.quantization import quantize
    from compress.quantization.tflite import weight_arrays

    training.set_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(512, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")])
    ds = prepare(model, digits)
    training.compile_classifier(model, learning_rate=3e-3)
    training.fit(model, ds, epochs=2, verbose=0, batch_size=64)
    for layer in model.layers:
        kernel, bias = layer.get_weights()
        cut = np.quantile(np.abs(kernel), 0.9)
        layer.set_weights([np.where(np.abs(kernel) > cut, kernel, 0.0), bias])
    dense = quantize(model, tmp_path / "d.tflite", ds, latency=False)
    sparse = quantize(model, tmp_path / "s.tflite", ds, sparse=True, latency=False)
    assert dense["sparse_tensors"] == 0 and sparse["sparse_tensors"] >= 2
    assert export.has_sparse_tensors(tmp_path / "s.tflite")
    assert not export.has_sparse_tensors(tmp_path / "d.tflite")
    # 90% of the int8 kernels' bytes become values + (uint8/uint16) column indices
    kernel_bytes = sum(a.size for a in weight_arrays(tmp_path / "d.tflite") if a.ndim == 2)
    assert dense["bytes"] - sparse["bytes"] >= 0.4 * kernel_bytes
    # it runs in LiteRT (builtin kernels) and computes what the dense int8 file computes
    x = ds.x_test[:200].astype(np.float32)
    got, ref = export.run_artifact(tmp_path / "s.tflite", x), export.run_artifact(
        tmp_path / "d.tflite", x)
    assert np.mean(np.argmax(got, -1) == np.argmax(ref, -1)) >= 0.99
    assert abs(sparse["accuracy"] - dense["accuracy"]) <= 0.01
    # densified, the stored int8 weights are the dense file's, zeros in the same places
    by_shape = {a.shape: a for a in weight_arrays(tmp_path / "d.tflite") if a.ndim == 2}
    for a in weight_arrays(tmp_path / "s.tflite"):
        if a.ndim == 2:
            np.testing.assert_array_equal(a, by_shape[a.shape])
    assert sparse["weight_zeros"]["artifact"] >= sparse["weight_zeros"]["model"] - 1e-9


def test_sparse_needs_tflite(mlp_file, tmp_path):
    from compress.quantization import quantize

    path, ds = mlp_file
    with pytest.raises(CompressError, match="--sparse"):
        quantize(_load(path), tmp_path / "m.onnx", ds, sparse=True, latency=False)
    with pytest.raises(CompressError, match="--sparse"):
        quantize(_load(path), tmp_path / "m.tflite", ds, sparse=True, qat=True)
    assert not list(tmp_path.iterdir())


def test_int8_without_data_is_refused(mlp_file, tmp_path):
    from compress.quantization import quantize

    path, _ = mlp_file
    with pytest.raises(CompressError, match="--data.*--mode dynamic"):
        quantize(_load(path), tmp_path / "m.tflite", None, mode="int8")
    assert not list(tmp_path.iterdir())


def test_wrong_shape_calibration_data_is_refused(mlp_file, tmp_path):
    import dataclasses

    from compress.quantization import quantize

    path, ds = mlp_file
    bad = dataclasses.replace(ds, x_train=np.zeros((50, 5, 5, 1), np.float32))
    with pytest.raises(CompressError, match="calibration data: samples of shape"):
        quantize(_load(path), tmp_path / "m.tflite", bad)
    assert not list(tmp_path.iterdir())


def test_unsupported_op_names_the_layer(tmp_path, rng):
    import keras

    from compress.data import Dataset
    from compress.quantization import quantize

    model = keras.Sequential([
        keras.Input((4,)), keras.layers.Dense(8, name="fc"),
        keras.layers.Activation(keras.ops.erf, name="erf_act"),
        keras.layers.Dense(3, activation="softmax", name="out")])
    x = rng.random((30, 4), dtype=np.float32)
    y = np.arange(30) % 3
    ds = Dataset("toy", x, y, x[:5], y[:5], x[:10], y[:10], 3)
    with pytest.raises(CompressError, match="layer 'erf_act'.*--format onnx"):
        quantize(model, tmp_path / "m.tflite", ds, latency=False)
    assert not list(tmp_path.iterdir())


def test_bad_options_and_existing_output(mlp_file, tmp_path):
    from compress.quantization import quantize

    path, ds = mlp_file
    model = _load(path)
    with pytest.raises(CompressError, match="quantize.mode: must be one of"):
        quantize(model, tmp_path / "m.tflite", ds, mode="int4")
    with pytest.raises(CompressError, match="cannot tell the format"):
        quantize(model, tmp_path / "m.bin", ds)
    (tmp_path / "m.tflite").write_bytes(b"keep")
    with pytest.raises(CompressError, match="already exists"):
        quantize(model, tmp_path / "m.tflite", ds)
    assert (tmp_path / "m.tflite").read_bytes() == b"keep"


def test_suffix_for_options():
    from compress.quantization import suffix_for

    assert suffix_for({"mode": "keras-int8"}) == ".keras"
    assert suffix_for({"mode": "int8", "format": "onnx"}) == ".onnx"
    assert suffix_for({"mode": "dynamic", "format": None}) == ".tflite"
