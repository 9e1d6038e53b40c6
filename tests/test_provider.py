"""--provider (the onnxruntime execution provider of verification and latency) and the GPU
int8 ONNX layout (--layout gpu: symmetric activations, symmetric per-channel weights)."""

from __future__ import annotations

import numpy as np
import pytest


def _tiny_onnx(path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 2, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_sessions_run_on_the_chosen_provider(tmp_path):
    from compress import runtime
    from compress.errors import CompressError

    path = _tiny_onnx(tmp_path / "tiny.onnx")
    assert runtime.set_provider("cpu") == "cpu" and runtime.provider() == "cpu"
    session = runtime.onnx_session(path)
    assert session.get_providers() == ["CPUExecutionProvider"]
    np.testing.assert_allclose(runtime.run_onnx(path, np.ones((2, 3), np.float32)),
                               np.full((2, 3), 2.0))
    with pytest.raises(CompressError, match="provider 'rocm': must be cpu, cuda, tensorrt"):
        runtime.set_provider("rocm")
    assert runtime.provider() == "cpu"


@pytest.mark.parametrize("argv", [
    ["export", "{model}", "-o", "{out}.onnx", "--provider", "cuda"],
    ["quantize", "{model}", "-o", "{out}.onnx", "--data", "digits", "--provider", "tensorrt"],
    ["inspect", "{model}", "--provider", "cuda"],
])
def test_a_provider_that_is_not_installed_is_refused_before_any_work(cli, tmp_path, argv):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    model = tmp_path / "m.keras"
    model.write_bytes(b"never read")
    args = [a.format(model=model, out=tmp_path / "out") for a in argv]
    result = cli(*args)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    wanted = "TensorrtExecutionProvider" if "tensorrt" in argv else "CUDAExecutionProvider"
    assert lines[0].startswith(f"error: --provider {argv[-1]}: onnxruntime here has no "
                               f"{wanted} (available: ")
    assert "keras-compress[gpu]" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    from compress import runtime

    assert runtime.provider() == "cpu"


@pytest.mark.parametrize("argv, message", [
    (["-o", "{out}.tflite", "--layout", "gpu"], "--layout gpu is the static int8 ONNX layout"),
    (["-o", "{out}.onnx", "--mode", "dynamic", "--layout", "gpu"],
     "--layout gpu is the static int8 ONNX layout"),
    (["-o", "{out}.onnx", "--layout", "gpu", "--per-tensor"],
     "--layout gpu quantizes weights per channel"),
])
def test_gpu_layout_outside_static_int8_onnx_is_refused(cli, tmp_path, argv, message):
    model = tmp_path / "m.keras"
    model.write_bytes(b"never read")
    result = cli("quantize", model, "--data", "digits",
                 *[a.format(out=tmp_path / "out") for a in argv])
    assert result.exit_code == 1
    assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def _zero_points(content):
    """(activation zero points, weight zero points, weight scale sizes) of a QDQ model."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(content).graph
    init = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    activations, weights, scales = [], [], []
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in init:
            activations.append(init[node.input[2]])
        if node.op_type == "DequantizeLinear" and node.input[0] in init \
                and init[node.input[0]].ndim >= 2:
            weights.append(init[node.input[2]])
            scales.append(init[node.input[1]].size)
    return activations, weights, scales


def test_gpu_layout_int8_onnx_has_zero_points_of_zero_and_runs(mlp_file):
    import onnx

    from compress import io, runtime
    from compress.quantization import quantize

    path, ds = mlp_file
    model = io.load_model(path)
    gpu, info = quantize(model, ds, format="onnx", layout="gpu", latency=False)
    cpu, cpu_info = quantize(model, ds, format="onnx", latency=False)
    onnx.checker.check_model(onnx.load_from_string(gpu))
    activations, weights, scales = _zero_points(gpu)
    assert activations and weights
    assert all(np.all(z == 0) for z in activations)  # symmetric activations
    assert all(z.dtype == np.int8 for z in activations)
    assert all(np.all(z == 0) for z in weights)  # symmetric weights
    assert scales == [w.shape[-1] for w in [np.asarray(v) for v in model.get_weights()]
                      if w.ndim == 2]  # one scale per output channel
    # the CPU layout's activations are asymmetric: the check above can fail
    assert any(np.any(z != 0) for z in _zero_points(cpu)[0])
    y = runtime.run_onnx(gpu, ds.x_test[:64])  # runs in onnxruntime (CPU)
    assert y.shape == (64, 10)
    assert info["accuracy"] >= cpu_info["float_accuracy"] - 0.03
