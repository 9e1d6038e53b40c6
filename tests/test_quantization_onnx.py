"""ONNX int8: static QDQ (MinMax, entropy, percentile) and dynamic, run in onnxruntime."""

import numpy as np
import pytest


def _ops(content):
    import onnx

    return {node.op_type for node in onnx.load_from_string(content).graph.node}


@pytest.mark.parametrize("calibration", ["minmax", "entropy"])
def test_static_int8_qdq_keeps_accuracy(cnn_file, tmp_path, calibration):
    from compress import io
    from compress.quantization import quantize

    path, ds = cnn_file
    content, info = quantize(io.load_model(path), ds, format="onnx", calibration=calibration,
                             latency=False)
    assert info["format"] == "onnx" and info["bytes"] == len(content)
    ops = _ops(content)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert info["calibration"] == calibration
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    assert info["zipped_bytes"] < 0.6 * info["float_zipped_bytes"]
    # weights are stored as int8 initializers
    from compress.quantization.onnx import weight_arrays

    assert any(a.dtype == np.int8 for a in weight_arrays(content))
    out = io.write_bytes(tmp_path / "cnn.onnx", content)  # a file reads the same
    assert [a.shape for a in weight_arrays(out)] == [a.shape for a in weight_arrays(content)]


def test_names_the_quantizer_added_are_short_and_the_model_s_own_kept(mlp_file, tmp_path,
                                                                      monkeypatch):
    # Each int8 tensor, scale, zero point and Q/DQ output repeated tf2onnx's long path: a
    # small transformer's int8 file came out 1.17x its float file (0.55x now)
    import shutil

    import onnx
    import onnxruntime as ort

    from compress import io
    from compress.export import export_artifact
    from compress.quantization import onnx as qonnx

    path, ds = mlp_file
    float_bytes, _ = export_artifact(io.load_model(path), None, format="onnx")
    (tmp_path / "f.onnx").write_bytes(float_bytes)
    monkeypatch.setattr(qonnx, "compact_names", lambda path: None)  # the quantizer's file
    qonnx.quantize_onnx(tmp_path / "f.onnx", tmp_path / "raw.onnx", "int8", ds.x_train[:64])
    monkeypatch.undo()
    shutil.copy(tmp_path / "raw.onnx", tmp_path / "q.onnx")
    qonnx.compact_names(tmp_path / "q.onnx")
    raw, compact = (tmp_path / "raw.onnx").read_bytes(), (tmp_path / "q.onnx").read_bytes()
    assert len(compact) < 0.8 * len(raw)
    graph = onnx.load_from_string(compact).graph
    names = [n for node in graph.node for n in [*node.input, *node.output]]
    assert not [n for n in names if n.endswith(qonnx.QUANTIZER_SUFFIXES)]
    assert any(n.startswith("q") and n[1:].isdigit() for n in names)
    own = {n for node in onnx.load_from_string(float_bytes).graph.node for n in node.output}
    assert own & set(names)  # the float graph's tensor names are still there
    assert not [node.name for node in graph.node
                if node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.name]
    onnx.checker.check_model(onnx.load_from_string(compact))
    qonnx.compact_names(tmp_path / "q.onnx")  # a second time changes nothing
    assert (tmp_path / "q.onnx").read_bytes() == compact
    x = ds.x_test[:32].astype("float32")
    outputs = []
    for content in (raw, compact):
        session = ort.InferenceSession(content)
        outputs.append(session.run(None, {session.get_inputs()[0].name: x})[0])
    np.testing.assert_array_equal(outputs[0], outputs[1])  # the same computation
    # a model tensor already named like a short name ("q0") is not reused
    clash = onnx.load_from_string(raw)
    outs = {o.name for o in clash.graph.output}
    old = next(n for node in clash.graph.node for n in node.output
               if n not in outs and not n.endswith(qonnx.QUANTIZER_SUFFIXES))
    for node in clash.graph.node:
        node.input[:] = ["q0" if n == old else n for n in node.input]
        node.output[:] = ["q0" if n == old else n for n in node.output]
    onnx.save(clash, str(tmp_path / "clash.onnx"))
    qonnx.compact_names(tmp_path / "clash.onnx")
    fixed = onnx.load(str(tmp_path / "clash.onnx"))
    onnx.checker.check_model(fixed)
    assert sum(n == "q0" for node in fixed.graph.node for n in node.output) == 1
    session = ort.InferenceSession(str(tmp_path / "clash.onnx"))
    np.testing.assert_array_equal(
        session.run(None, {session.get_inputs()[0].name: x})[0], outputs[0])


def test_dynamic_int8_needs_no_data(mlp_file):
    from compress import io
    from compress.quantization import quantize

    path, _ = mlp_file
    content, info = quantize(io.load_model(path), None, mode="dynamic", format="onnx",
                             threads=2)
    assert _ops(content) & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert info["top1_agreement"] >= 0.8  # on random inputs: many near-ties
    assert set(info["latency_ms"]) == {"1", "2"}


def test_float16_onnx_halves_the_file_and_stays_close_to_float(mlp_file, tmp_path):
    """float16 ONNX (the GPU form): half weights and compute, float32 inputs and outputs,
    accepted by onnx.checker and run in onnxruntime next to the float32 export."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from compress import io
    from compress.export import export_artifact
    from compress.quantization import quantize

    path, ds = mlp_file
    model = io.load_model(path)
    content, info = quantize(model, ds, mode="float16", format="onnx", latency=False)
    float_content, _ = export_artifact(model, ds, format="onnx")
    half = onnx.load_from_string(content)
    onnx.checker.check_model(half)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {t.data_type for t in half.graph.initializer if len(t.dims) >= 2} == {
        onnx.TensorProto.FLOAT16}
    # the weights are half the bytes (this tiny MLP's file is mostly graph; the device
    # benchmark measures whole files of real models: 0.50-0.52x)
    def weight_bytes(c):
        return sum(numpy_helper.to_array(t).nbytes
                   for t in onnx.load_from_string(c).graph.initializer if len(t.dims) >= 2)
    assert weight_bytes(content) == weight_bytes(float_content) // 2
    assert len(content) < len(float_content)
    x = np.asarray(ds.x_test[:64], np.float32)
    run = [ort.InferenceSession(c, providers=["CPUExecutionProvider"]) for c in
           (float_content, content)]
    ref, out = (s.run(None, {s.get_inputs()[0].name: x})[0] for s in run)
    assert np.abs(out - ref).max() <= 1e-2 * np.abs(ref).max()
    assert info["format"] == "onnx" and info["top1_agreement"] >= 0.98


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_a_single_int32_token_input_calibrates_as_int32(fmt):
    """Token ids of a one-input text model: the calibration samples keep the input's
    int32 (onnxruntime: "Unexpected input data type. Actual: (tensor(float)), expected:
    (tensor(int32))"; LiteRT refused them the same way)."""
    import keras

    from compress import runtime, training
    from compress.data import Dataset
    from compress.quantization import quantize

    training.set_seed(0)
    model = keras.Sequential([keras.Input((10,), dtype="int32"), keras.layers.Embedding(50, 8),
                              keras.layers.GlobalAveragePooling1D(),
                              keras.layers.Dense(3, activation="softmax")], name="text")
    dense = model.layers[-1]  # logits far apart: top-1 is not decided by rounding
    dense.set_weights([w * 30 for w in dense.get_weights()])
    x = np.random.default_rng(0).integers(0, 50, size=(120, 10)).astype("int32")
    y = np.random.default_rng(1).integers(0, 3, size=120)
    ds = Dataset("tokens", x[:80], y[:80], x[80:100], y[80:100], x[100:], y[100:],
                 num_classes=3)
    content, info = quantize(model, ds, format=fmt, latency=False)
    assert info["verified"] and info["sqnr_db"] >= 20, info
    assert runtime.verify(model, content, x[100:], fmt=fmt)["top1_agreement"] >= 0.9
