"""ONNX int8: static QDQ (MinMax, entropy, percentile) and dynamic, run in onnxruntime."""

import numpy as np
import pytest

from compress.errors import CompressError


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


def test_dynamic_int8_needs_no_data(mlp_file):
    from compress import io
    from compress.quantization import quantize

    path, _ = mlp_file
    content, info = quantize(io.load_model(path), None, mode="dynamic", format="onnx",
                             threads=2)
    assert _ops(content) & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert info["top1_agreement"] >= 0.8  # on random inputs: many near-ties
    assert set(info["latency_ms"]) == {"1", "2"}


def test_float16_onnx_is_refused(mlp_file):
    from compress import io
    from compress.quantization import quantize

    path, ds = mlp_file
    with pytest.raises(CompressError, match="float16 is TFLite only"):
        quantize(io.load_model(path), ds, mode="float16", format="onnx")
