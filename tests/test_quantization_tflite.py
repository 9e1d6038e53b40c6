"""Full-integer, dynamic-range and float16 TFLite quantization, verified in LiteRT."""

import numpy as np
import pytest

from compress.errors import CompressError


def _load(path):
    from compress import io

    return io.load_model(path)


def _tensor_dtypes(content):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    return interp, {t["name"]: t["dtype"] for t in interp.get_tensor_details()}


def test_int8_cnn_keeps_accuracy_and_shrinks(cnn_file):
    from compress.quantization import quantize

    path, ds = cnn_file
    model = _load(path)
    before = [w.copy() for w in model.get_weights()]
    content, info = quantize(model, ds, mode="int8", latency=False)
    assert info["format"] == "tflite" and "path" not in info
    assert info["bytes"] == len(content)
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    assert info["bytes"] < 0.6 * info["float_bytes"]
    assert info["top1_agreement"] >= 0.95
    interp, dtypes = _tensor_dtypes(content)
    ops = {op["op_name"] for op in interp._get_ops_details()}
    assert "CONV_2D" in ops and "QUANTIZE" in ops  # float interface around an int8 body
    assert sum(d == np.int8 for d in dtypes.values()) >= 4
    # BatchNorm is folded: no float multiply/add left around the convolution
    assert not ops & {"MUL", "ADD"}
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)  # the input model is untouched


def test_quantize_writes_nothing_and_returns_bytes_litert_runs(mlp_file, tmp_path,
                                                               monkeypatch):
    from ai_edge_litert.interpreter import Interpreter

    from compress.quantization import quantize

    path, ds = mlp_file
    monkeypatch.chdir(tmp_path)
    content, info = quantize(_load(path), ds, mode="int8", latency=False)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    assert content[4:8] == b"TFL3" and info["bytes"] == len(content)
    interp = Interpreter(model_content=content)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [len(ds.x_test), 8, 8, 1])
    interp.allocate_tensors()
    interp.set_tensor(inp["index"], ds.x_test.astype(np.float32))
    interp.invoke()
    accuracy = float(np.mean(np.argmax(interp.get_tensor(out["index"]), -1) == ds.y_test))
    assert accuracy == pytest.approx(info["accuracy"])


def test_int8_interface_for_integer_devices(mlp_file):
    from ai_edge_litert.interpreter import Interpreter

    from compress.quantization import quantize

    path, ds = mlp_file
    content, info = quantize(_load(path), ds, interface="int8", latency=False)
    interp = Interpreter(model_content=content)
    assert interp.get_input_details()[0]["dtype"] == np.int8
    assert interp.get_output_details()[0]["dtype"] == np.int8
    assert info["interface"] == "int8"
    assert info["accuracy"] >= info["float_accuracy"] - 0.03


def test_dynamic_and_float16_need_no_data(mlp_file):
    from compress.quantization import quantize

    path, _ = mlp_file
    model = _load(path)
    _, dyn = quantize(model, None, mode="dynamic", latency=False)
    half_content, half = quantize(model, mode="float16", latency=False)
    assert "accuracy" not in dyn and dyn["top1_agreement"] >= 0.95
    assert dyn["bytes"] < 0.6 * dyn["float_bytes"]
    assert half["top1_agreement"] >= 0.95  # float16 rounding may flip near-tie random inputs
    _, dtypes = _tensor_dtypes(half_content)
    assert np.float16 in set(dtypes.values())


def test_latency_is_measured_in_litert_for_both(mlp_file):
    from compress.quantization import quantize

    path, ds = mlp_file
    _, info = quantize(_load(path), ds, threads=2)
    assert set(info["latency_ms"]) == {"1", "2"} == set(info["float_latency_ms"])
    assert all(v > 0 for v in info["latency_ms"].values())
    assert info["latency_ratio"]["1"] == pytest.approx(
        info["latency_ms"]["1"] / info["float_latency_ms"]["1"])
    # An int8 file that is not faster says why (this CPU's int8 instructions); one that is
    # faster says nothing.
    assert (info["latency_note"] is None) == (info["latency_ratio"]["1"] < 0.9)


def test_pruned_zeros_survive_int8(mlp_file):
    from compress.quantization import quantize
    from compress.quantization.tflite import weight_arrays

    path, ds = mlp_file
    model = _load(path)
    for layer in model.layers:
        if layer.weights:
            kernel, bias = layer.get_weights()
            cut = np.quantile(np.abs(kernel), 0.9)
            layer.set_weights([np.where(np.abs(kernel) > cut, kernel, 0.0), bias])
    content, info = quantize(model, ds, latency=False)
    assert info["weight_zeros"]["model"] >= 0.89
    assert info["weight_zeros"]["artifact"] >= info["weight_zeros"]["model"]
    # each int8 kernel is zero exactly where the pruned float kernel is
    kernels = {a.shape: a for a in weight_arrays(content) if a.dtype == np.int8}
    fc1 = model.get_layer("fc1").get_weights()[0]
    q = kernels[fc1.T.shape]
    assert np.all(q[fc1.T == 0] == 0)
    assert info["zipped_bytes"] < 0.5 * info["bytes"]  # the zeros compress


def test_sparse_storage_of_pruned_int8(digits, tmp_path):
    import keras

    from compress import io, runtime, training
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
    dense_content, dense = quantize(model, ds, latency=False)
    sparse_content, sparse = quantize(model, ds, sparse=True, latency=False)
    io.write_bytes(tmp_path / "s.tflite", sparse_content)
    io.write_bytes(tmp_path / "d.tflite", dense_content)
    assert dense["sparse_tensors"] == 0 and sparse["sparse_tensors"] >= 2
    assert runtime.has_sparse_tensors(tmp_path / "s.tflite")
    assert runtime.has_sparse_tensors(sparse_content)
    assert not runtime.has_sparse_tensors(tmp_path / "d.tflite")
    # 90% of the int8 kernels' bytes become values + (uint8/uint16) column indices
    kernel_bytes = sum(a.size for a in weight_arrays(tmp_path / "d.tflite") if a.ndim == 2)
    assert dense["bytes"] - sparse["bytes"] >= 0.4 * kernel_bytes
    # it runs in LiteRT (builtin kernels) and computes what the dense int8 file computes
    x = ds.x_test[:200].astype(np.float32)
    got, ref = runtime.run_artifact(sparse_content, x), runtime.run_artifact(
        tmp_path / "d.tflite", x)
    assert np.mean(np.argmax(got, -1) == np.argmax(ref, -1)) >= 0.99
    assert abs(sparse["accuracy"] - dense["accuracy"]) <= 0.01
    # densified, the stored int8 weights are the dense file's, zeros in the same places
    by_shape = {a.shape: a for a in weight_arrays(tmp_path / "d.tflite") if a.ndim == 2}
    for a in weight_arrays(sparse_content):
        if a.ndim == 2:
            np.testing.assert_array_equal(a, by_shape[a.shape])
    assert sparse["weight_zeros"]["artifact"] >= sparse["weight_zeros"]["model"] - 1e-9


def test_sparse_needs_tflite(mlp_file):
    from compress.quantization import quantize

    path, ds = mlp_file
    with pytest.raises(CompressError, match="quantize: --sparse is TFLite's"):
        quantize(_load(path), ds, format="onnx", sparse=True, latency=False)
    with pytest.raises(CompressError, match="--sparse"):
        quantize(_load(path), ds, sparse=True, qat=True)


def test_int8_without_data_is_refused(mlp_file):
    from compress.quantization import quantize, require_data

    path, _ = mlp_file
    for options in ({"mode": "int8"}, {"mode": "int8", "qat": True}):
        with pytest.raises(CompressError, match="--data NAME.*or use mode dynamic"):
            quantize(_load(path), None, **options)
        with pytest.raises(CompressError, match="--data NAME.*or use mode dynamic"):
            require_data(options, None)  # front-ends: the same message, before loading
    require_data({"mode": "dynamic"}, None)


def test_wrong_shape_calibration_data_is_refused(mlp_file):
    import dataclasses

    from compress.quantization import quantize

    path, ds = mlp_file
    bad = dataclasses.replace(ds, x_train=np.zeros((50, 5, 5, 1), np.float32))
    with pytest.raises(CompressError,
                       match=r"digits: samples of shape \(5, 5, 1\).*do not fit model input"):
        quantize(_load(path), bad)


def test_unsupported_op_names_the_layer(rng):
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
        quantize(model, ds, latency=False)


def test_bad_options_are_refused(mlp_file):
    from compress.quantization import quantize

    path, ds = mlp_file
    model = _load(path)
    with pytest.raises(CompressError, match="quantize.mode: must be one of"):
        quantize(model, ds, mode="int3")
    for options in ({"path": "m.tflite"}, {"force": True}, {"inputs": ()}):
        with pytest.raises(CompressError, match="unknown option"):
            quantize(model, ds, **options)  # a pass neither names nor writes files


def test_format_from_options_or_output_suffix():
    from compress.quantization import artifact_format, format_for

    assert artifact_format({"mode": "int8"}) == "tflite"
    assert artifact_format({"mode": "keras-int8"}) == "keras"
    assert format_for("m.ONNX", {"mode": "dynamic", "format": None}) == "onnx"
    assert format_for("m.tflite", {"mode": "keras-int8"}) == "keras"  # io refuses the suffix
    with pytest.raises(CompressError, match="m.bin: cannot tell the format"):
        format_for("m.bin", {"mode": "int8"})
    with pytest.raises(CompressError, match="m.keras: a .keras output needs one of "
                       "Keras.s own modes: keras-int8, keras-int4, gptq, awq"):
        format_for("m.keras", {"mode": "int8"})
    assert artifact_format({"mode": "float16", "format": "onnx"}) == "onnx"
    with pytest.raises(CompressError, match=r"keras-int8 writes a .keras model \(Keras.s "
                       r"own quantized layers\), not onnx"):
        artifact_format({"mode": "keras-int8", "format": "onnx"})
    with pytest.raises(CompressError, match="--qat trains for full-integer int8"):
        artifact_format({"mode": "dynamic", "qat": True})


def test_suffix_for_options():
    from compress.quantization import suffix_for

    assert suffix_for({"mode": "keras-int8"}) == ".keras"
    assert suffix_for({"mode": "int8", "format": "onnx"}) == ".onnx"
    assert suffix_for({"mode": "dynamic", "format": None}) == ".tflite"
