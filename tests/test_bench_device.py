"""The device check's pieces that run without a GPU: the float16 graph's node order, and
the BENCHMARKS.md section rendered from a committed device run."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from compress.errors import CompressError
from compress.quantization.onnx import topological_sort as _topological_sort


def test_float16_graph_nodes_are_reordered_so_onnx_accepts_them():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    # "relu" reads "c", which the cast produces after it: the converter's order
    relu = helper.make_node("Relu", ["c"], ["y"])
    cast = helper.make_node("Cast", ["x"], ["c"], to=TensorProto.FLOAT)
    model = helper.make_model(helper.make_graph([relu, cast], "g", [x], [y]))
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(model)
    _topological_sort(model.graph)
    onnx.checker.check_model(model)
    assert [n.op_type for n in model.graph.node] == ["Cast", "Relu"]
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"x": np.array([[-1, 2, -3, 4]], np.float32)})[0]
    np.testing.assert_array_equal(out, [[0, 2, 0, 4]])


def test_a_cycle_is_refused_not_looped_on():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    a = helper.make_node("Relu", ["b"], ["a"])
    b = helper.make_node("Relu", ["a"], ["b"])
    model = helper.make_model(helper.make_graph([a, b], "g", [x], []))
    with pytest.raises(CompressError, match="cycle"):
        _topological_sort(model.graph)


def test_the_device_section_reads_the_latest_committed_run(tmp_path, monkeypatch):
    from bench.cases import device
    from bench.harness import Context

    latest = max(p for p in device.RESULTS.glob("*.json")
                    if not p.name.endswith(".manifest.json"))
    result = json.loads(latest.read_text())
    sec = device.case_device(Context(quick=True, seed=0, plot_dir=tmp_path, work_dir=tmp_path))
    text = "\n".join(sec.parts)
    assert result["machine"]["gpu"].split(",")[0] in text
    # every LiteRT row of the run is in the table, and the targets read its numbers
    assert text.count("| lenet300 |") >= len([r for r in result["litert"]
                                              if r["model"] == "lenet300"])
    small = next(r for r in result["litert"]
                 if (r["model"], r["batch"], r["threads"]) == ("small-cnn", 1, 1))
    target = next(t for t in sec.targets if "LiteRT batch-1" in t.description)
    assert target.measured.startswith(f"{small['ratio']:.2f}x")
    assert target.met == (small["ratio"] <= 0.4)
    # without any recorded run the section says so and claims nothing
    monkeypatch.setattr(device, "RESULTS", tmp_path)
    empty = device.case_device(Context(quick=True, seed=0, plot_dir=tmp_path, work_dir=tmp_path))
    assert not empty.targets and "No device run" in empty.parts[0]
