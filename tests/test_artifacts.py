"""``compress inspect`` of a .tflite/.onnx artifact, and the quantize warning when a
converter stored nothing in 8 bits."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

WEIGHTS = 64 * 32 + 32 * 16 + 16 * 10  # the conftest MLP's three kernels
BIASES = 32 + 16 + 10


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index("{"):])


@pytest.fixture(scope="module")
def artifacts(mlp_file, tmp_path_factory):
    from click.testing import CliRunner

    from compress.cli import main

    path, _ = mlp_file
    d = tmp_path_factory.mktemp("artifacts")
    run = CliRunner()
    for args in (["quantize", path, "-o", d / "int8.tflite", "--data", "digits"],
                 ["quantize", path, "-o", d / "int8.onnx", "--data", "digits"],
                 ["export", path, "-o", d / "fp16.onnx", "--precision", "fp16", "--data",
                  "digits"]):
        result = run.invoke(main, [str(a) for a in args] + ["-q", "--no-latency"]
                            if args[0] == "quantize" else [str(a) for a in args] + ["-q"])
        assert result.exit_code == 0, result.output
    return d


def test_inspect_an_int8_tflite_file(artifacts, cli):
    r = _json(cli("inspect", artifacts / "int8.tflite", "--json"))
    assert r["format"] == "tflite" and r["file_bytes"] == (artifacts / "int8.tflite").stat().st_size
    assert r["weights"]["int8"]["values"] == WEIGHTS  # every kernel in int8, per channel
    assert r["weights"]["int8"]["per_channel"] == 3 and "float32" not in r["weights"]
    assert r["weights"]["int32"]["values"] >= BIASES  # biases in int32, as TFLite stores them
    assert r["ops"]["FULLY_CONNECTED"] == 3 and r["ops"]["QUANTIZE"] == 1
    assert r["inputs"][0]["shape"] == [None, 8, 8, 1] and r["inputs"][0]["dtype"] == "float32"
    assert r["outputs"][0]["shape"] == [None, 10]
    assert r["latency_ms"] > 0 and r["runtime"] == "LiteRT"
    text = cli("inspect", artifacts / "int8.tflite", "--no-latency")
    assert text.exit_code == 0 and "int8" in text.output and "FULLY_CONNECTED 3" in text.output
    assert "latency" not in text.output


def test_inspect_onnx_files_int8_qdq_and_float16(artifacts, cli):
    q = _json(cli("inspect", artifacts / "int8.onnx", "--json", "--no-latency"))
    assert q["format"] == "onnx" and q["ops"].get("Gemm", 0) + q["ops"].get("MatMul", 0) == 3
    assert q["ops"]["DequantizeLinear"] >= 3 and q["weights"]["int8"]["per_channel"] == 3
    assert q["weights"]["int8"]["values"] >= WEIGHTS and q["opset"] >= 13
    h = _json(cli("inspect", artifacts / "fp16.onnx", "--json"))
    assert h["weights"]["float16"]["values"] == WEIGHTS + BIASES
    assert "float32" not in h["weights"]
    assert h["inputs"][0]["dtype"] == "float32"  # float32 I/O around float16 compute
    assert h["latency_ms"] > 0 and h["runtime"].startswith("onnxruntime")


def test_inspect_refuses_a_damaged_artifact_and_data_in_one_line(artifacts, cli, tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes((artifacts / "int8.tflite").read_bytes()[:40])
    for path in (bad, tmp_path / "empty.onnx"):
        path.touch()
        r = cli("inspect", path)
        assert r.exit_code == 1 and r.output.startswith("error:")
        assert len(r.output.strip().splitlines()) == 1, r.output
    r = cli("inspect", artifacts / "int8.tflite", "--data", "digits")
    assert r.exit_code == 1 and "an artifact alone has none" in r.output


def test_dynamic_mode_that_quantizes_nothing_says_so(cli, tmp_path):
    # TFLite's dynamic-range mode keeps tensors under 1,024 values in float: the "int8"
    # artifact of a small model was the float model, reported as written and verified
    keras.utils.set_random_seed(0)
    small = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    small.save(tmp_path / "small.keras")
    r = _json(cli("quantize", tmp_path / "small.keras", "-o", tmp_path / "d.tflite", "--mode",
                  "dynamic", "--json", "-q", "--no-latency"))
    assert r["int8_weight_share"] == 0 and "dynamic-range mode keeps" in r["nothing_quantized"]
    text = cli("quantize", tmp_path / "small.keras", "-o", tmp_path / "d.tflite", "--mode",
               "dynamic", "--force")
    assert "warning: no weight is stored in 8 bits" in " ".join(text.output.split())
    assert "int8 is" not in text.output  # no int8 latency to explain in a float file
    wide = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32)])  # 2,048 values
    wide.save(tmp_path / "wide.keras")
    r = _json(cli("quantize", tmp_path / "wide.keras", "-o", tmp_path / "w.tflite", "--mode",
                  "dynamic", "--json", "-q", "--no-latency"))
    assert r["int8_weight_share"] == pytest.approx(2048 / 2048, abs=0.02)
    assert "nothing_quantized" not in r
    assert np.isfinite(r["sqnr_db"])


def test_an_onnx_file_with_external_data_is_described_not_run(artifacts, cli, tmp_path):
    # a user's ONNX file may point its weights at other files: inspect reads the structure
    # and does not hand the file to onnxruntime, which would open them
    import onnx

    model = onnx.load(str(artifacts / "fp16.onnx"))
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
    r = _json(cli("inspect", tmp_path / "ext.onnx", "--json"))
    assert r["external_data"] >= 3 and "external data" in r["latency_not_measured"]
    assert "latency_ms" not in r and r["weights"]["float16"]["values"] == WEIGHTS + BIASES


def test_a_tflite_file_its_runtime_refuses_is_still_described(artifacts, cli, tmp_path,
                                                              monkeypatch):
    from compress import runtime

    def refuse(*args, **kwargs):
        raise RuntimeError("Encountered unresolved custom op: MyOp.\n Node number 0")

    monkeypatch.setattr(runtime, "runtime_latency_ms", refuse)
    r = cli("inspect", artifacts / "int8.tflite")
    assert r.exit_code == 0 and "FULLY_CONNECTED 3" in r.output
    assert "latency not measured: the runtime refused it (RuntimeError: Encountered " \
           "unresolved custom op: MyOp. Node number 0)" in " ".join(r.output.split())


def test_an_artifact_of_unknown_image_size_is_timed_at_the_size_keras_models_get(cli,
                                                                                tmp_path):
    # a fully convolutional model's file was timed on 1x1 images
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(4, 3, padding="same")(inp))
    model.save(tmp_path / "fcn.keras")
    r = cli("export", tmp_path / "fcn.keras", "-o", tmp_path / "fcn.tflite", "-q")
    assert r.exit_code == 0, r.output
    s = _json(cli("inspect", tmp_path / "fcn.tflite", "--json"))
    assert s["latency_input"] == [32, 32, 3] and s["latency_ms"] > 0
