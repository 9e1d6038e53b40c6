"""ONNX int8: static QDQ (MinMax, entropy, percentile) and dynamic, run in onnxruntime."""

import numpy as np
import pytest

from compress.errors import CompressError


def _ops(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("calibration", ["minmax", "entropy"])
def test_static_int8_qdq_keeps_accuracy(cnn_file, tmp_path, calibration):
    from compress import io
    from compress.quantization import quantize

    path, ds = cnn_file
    out = tmp_path / "cnn.onnx"
    info = quantize(io.load_model(path), out, ds, calibration=calibration, latency=False)
    ops = _ops(out)
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    assert info["calibration"] == calibration
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    assert info["zipped_bytes"] < 0.6 * info["float_zipped_bytes"]
    # weights are stored as int8 initializers
    from compress.quantization.onnx import weight_arrays

    assert any(a.dtype == np.int8 for a in weight_arrays(out))


def test_dynamic_int8_needs_no_data(mlp_file, tmp_path):
    from compress import io
    from compress.quantization import quantize

    path, _ = mlp_file
    info = quantize(io.load_model(path), tmp_path / "m.onnx", None, mode="dynamic",
                    threads=2)
    assert _ops(tmp_path / "m.onnx") & {"DynamicQuantizeLinear", "MatMulInteger"}
    assert info["top1_agreement"] >= 0.8  # on random inputs: many near-ties
    assert set(info["latency_ms"]) == {"1", "2"}


def test_float16_onnx_is_refused(mlp_file, tmp_path):
    from compress import io
    from compress.quantization import quantize

    path, ds = mlp_file
    with pytest.raises(CompressError, match="float16 is TFLite only"):
        quantize(io.load_model(path), tmp_path / "m.onnx", ds, mode="float16")
    assert not list(tmp_path.iterdir())
