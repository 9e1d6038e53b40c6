"""GPTQ rounding onto the converter's grid (compress/quantization/gptq.py) and the
quantize pass's ``--rounding gptq`` / ``--mode int4``."""

import json

import numpy as np
import pytest

from compress.errors import CompressError
from compress.quantization.gptq import (
    channel_scales,
    gptq_round,
    nearest,
    quantizable_kernels,
    round_model,
)


def _output_error(w, codes, scale, x):
    return float(np.sum(((codes * scale - w) @ x.T) ** 2))


@pytest.mark.parametrize("qmax", [7, 127])
def test_gptq_has_lower_layer_output_error_than_nearest(qmax):
    rng = np.random.default_rng(0)
    # Correlated inputs, as real activations are: where compensation matters.
    x = rng.normal(size=(512, 24)) @ rng.normal(size=(24, 24))
    w = rng.normal(size=(6, 24))
    scale = channel_scales(w.T, qmax).T  # one scale per output unit (row)
    codes, predicted = gptq_round(w, 2 * x.T @ x / len(x), scale, qmax, block=8, damp=0.0)
    rtn = np.clip(np.rint(w / scale), -qmax, qmax)
    assert codes.dtype == np.int32 and np.abs(codes).max() <= qmax
    ours, theirs = _output_error(w, codes, scale, x), _output_error(w, rtn, scale, x)
    assert ours < 0.9 * theirs
    # The predicted error is the quadratic's own: N * predicted == measured (no damping).
    assert ours == pytest.approx(len(x) * predicted, rel=1e-6)


def _lite_int8_weights(content):
    """name -> (int8 codes, scales, quantized axis) of the constant int8 kernels."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=content)
    out = {}
    for d in interp.get_tensor_details():
        if d["dtype"] != np.int8 or len(d["shape"]) < 2:
            continue
        try:
            value = interp.get_tensor(d["index"])
        except ValueError:
            continue
        qp = d["quantization_parameters"]
        out[tuple(value.shape)] = (value.astype(np.int32), qp["scales"], qp["quantized_dimension"])
    return out


def _as_lite(kernel):
    """A Keras Dense/Conv2D kernel laid out as TFLite stores it (output channel first)."""
    k = np.asarray(kernel)
    return k.T if k.ndim == 2 else np.transpose(k, (3, 0, 1, 2))


def test_tflite_int8_weights_are_exactly_the_gptq_codes(cnn_file):
    """Conv2D + BatchNorm (folded by the converter) + Dense: the artifact's int8 weights
    and per-channel scales are the GPTQ codes and grid, BatchNorm's sign included."""
    import keras

    from compress.quantization.tflite import convert

    path, ds = cnn_file
    model = keras.models.load_model(path)
    x = ds.x_train[:128].astype("float32")
    snapped, info = round_model(model, x, qmax=127)
    assert [r["weight"].split("/")[0] for r in info["layers"]] == ["conv1", "conv2",
                                                                   "predictions"]
    lite = _lite_int8_weights(convert(snapped, "int8", representative=x[:64]))
    bn = snapped.get_layer("bn1")
    for layer, var in quantizable_kernels(snapped):
        codes, scale = nearest(var, 127)
        assert np.abs(np.asarray(var) - codes * scale).max() < 1e-6  # on the grid
        assert (np.abs(codes).reshape(-1, codes.shape[-1]).max(axis=0) == 127).all()
        got, lite_scale, axis = lite[_as_lite(codes).shape]
        assert axis == 0 and len(lite_scale) == codes.shape[-1]  # per output channel
        want = _as_lite(codes)
        if layer.name == "conv1":  # folded BatchNorm: a per-channel factor, sign kept
            sign = np.sign(np.asarray(bn.gamma)).astype(np.int32)
            want = want * sign[:, None, None, None]
        else:
            np.testing.assert_allclose(lite_scale, scale.reshape(-1), rtol=1e-5)
        np.testing.assert_array_equal(got, want)


def test_int4_grid_is_symmetric_4bit_and_gptq_tracks_the_model_better(cnn_file):
    import keras

    from compress.training import predict

    path, ds = cnn_file
    model = keras.models.load_model(path)
    x = ds.x_train[:256].astype("float32")
    errors = {}
    for rounding in ("nearest", "gptq"):
        snapped, _ = round_model(model, x, qmax=7, rounding=rounding)
        for _, var in quantizable_kernels(snapped):
            codes, scale = nearest(var, 7)
            assert codes.min() >= -7 and codes.max() <= 7
            assert np.abs(np.asarray(var) - codes * scale).max() < 1e-6
            per_channel = np.abs(codes).reshape(-1, codes.shape[-1]).max(axis=0)
            assert (per_channel == 7).all()  # every channel's scale is max|w| / 7
        x_test = ds.x_test[:300].astype("float32")
        errors[rounding] = float(np.mean((predict(snapped, x_test)
                                          - predict(model, x_test)) ** 2))
    assert errors["gptq"] < errors["nearest"]


def test_cli_quantize_rounding_gptq_round_trip(cli, mlp_file, tmp_path):
    import keras

    path, ds = mlp_file
    out = tmp_path / "m.tflite"
    result = cli("quantize", path, "-o", out, "--data", "digits", "--rounding", "gptq",
                 "--calibration-samples", 128, "--json", "--no-latency")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rounding"]["rounding"] == "gptq" and info["rounding"]["qmax"] == 127
    assert len(info["rounding"]["layers"]) == 3
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    # The written artifact holds exactly the codes GPTQ chose on the same samples.
    snapped, _ = round_model(keras.models.load_model(path),
                             ds.x_train[:128].astype("float32"), qmax=127)
    lite = _lite_int8_weights(out.read_bytes())
    for _, var in quantizable_kernels(snapped):
        codes, _ = nearest(var, 127)
        np.testing.assert_array_equal(lite[_as_lite(codes).shape][0], _as_lite(codes))
    # ONNX static int8: onnxruntime's symmetric 7-bit weights ([-64, 64], reduce_range).
    out8 = tmp_path / "m.onnx"
    result = cli("quantize", path, "-o", out8, "--data", "digits", "--rounding", "gptq",
                 "--calibration-samples", 128, "--json", "--no-latency")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rounding"]["qmax"] == 64
    import onnx
    from onnx import numpy_helper

    stored = {tuple(t.dims): numpy_helper.to_array(t) for t in onnx.load(out8).graph.initializer
              if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2}
    snapped, _ = round_model(keras.models.load_model(path),
                             ds.x_train[:128].astype("float32"), qmax=64)
    for _, var in quantizable_kernels(snapped):
        codes, _ = nearest(var, 64)
        np.testing.assert_array_equal(stored[codes.shape], codes)  # MatMul: (in, out)
    # int4 weight-only, GPTQ-rounded, as a float ONNX file holding the 4-bit grid.
    out4 = tmp_path / "m4.onnx"
    result = cli("quantize", path, "-o", out4, "--data", "digits", "--mode", "int4",
                 "--rounding", "gptq", "--calibration-samples", 128, "--json",
                 "--no-latency")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["rounding"]["qmax"] == 7 and "int4 grid" in info["storage"]
    from compress.quantization.onnx import weight_arrays

    for w in weight_arrays(out4):
        if w.ndim == 2:
            levels = np.unique(np.rint(w / channel_scales(w, 7)).astype(int))
            assert set(levels.tolist()) <= set(range(-7, 8))


@pytest.mark.parametrize("args, words", [
    (("--mode", "dynamic", "--rounding", "gptq"), "use --mode int8 or --mode int4"),
    (("--mode", "float16", "--rounding", "gptq"), "use --mode int8 or --mode int4"),
    (("--mode", "gptq"), "output must end with .keras"),  # Keras's GPTQ writes .keras
    (("--rounding", "gptq", "--no-per-channel"), "per-channel"),
])
def test_cli_rounding_bad_input_is_one_line(cli, mlp_file, tmp_path, args, words):
    path, _ = mlp_file
    result = cli("quantize", path, "-o", tmp_path / "m.tflite", "--data", "digits", *args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and words in result.output
    assert not list(tmp_path.iterdir())


def test_gptq_needs_calibration_samples(mlp_file):
    import keras

    model = keras.models.load_model(mlp_file[0])
    with pytest.raises(CompressError, match="--rounding nearest"):
        round_model(model, None, qmax=7)


def test_gptq_warns_of_far_too_few_calibration_samples(mlp_file):
    import keras

    model = keras.models.load_model(mlp_file[0])
    x = mlp_file[1].x_train
    _, info = round_model(model, x[:4], qmax=7)  # 4 vectors for fc1's 64 inputs
    assert info["thin_hessians"].startswith("fc1/kernel had 4 calibration input vectors "
                                            "for 64 inputs per unit")
    assert info["thin_hessians"].endswith("(--calibration-samples)")
    assert "thin_hessians" not in round_model(model, x[:256], qmax=7)[1]
