"""``compress quantize`` and ``compress export --quantize`` end to end."""

import json

import pytest
from conftest import file_digest


def test_quantize_tflite_json(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    digest = file_digest(path)
    out = tmp_path / "m.tflite"
    result = cli("quantize", path, "-o", out, "--data", "digits", "--json",
                 "--calibration-samples", 64, "--no-latency")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["mode"] == "int8" and info["format"] == "tflite"
    assert info["calibration_samples"] == 64
    assert info["bytes"] == out.stat().st_size
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    assert file_digest(path) == digest


def test_quantize_table_output(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    result = cli("quantize", path, "-o", tmp_path / "m.onnx", "--data", "digits",
                 "--calibration", "percentile", "--calibration-samples", 5000)
    assert result.exit_code == 0, result.output
    assert "onnxruntime" in result.output and "latency b=1, 2 thread(s)" in result.output
    assert "wrote" in result.output
    # digits' training split holds 1,293 samples: the run says it calibrated on fewer
    assert "note: calibrated on 1293 samples, all the training split holds (5000 asked)" \
        in " ".join(result.output.split())


def test_quantize_without_data_explains(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    result = cli("quantize", path, "-o", tmp_path / "m.tflite")
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "--data" in result.output and "use mode dynamic" in result.output
    assert not list(tmp_path.iterdir())
    # export --quantize says the same: one message, owned by the pass
    again = cli("export", path, "-o", tmp_path / "m.tflite", "--quantize", "int8")
    assert again.exit_code == 1 and again.output == result.output
    assert not list(tmp_path.iterdir())


def test_quantize_refuses_existing_output_and_bad_mode(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    out = tmp_path / "m.tflite"
    out.write_bytes(b"old")
    result = cli("quantize", path, "-o", out, "--mode", "dynamic")
    assert result.exit_code == 1 and "already exists" in result.output
    assert out.read_bytes() == b"old"
    result = cli("quantize", path, "-o", tmp_path / "x.tflite", "--mode", "int3")
    assert result.exit_code == 2


def test_export_quantize_dynamic(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    out = tmp_path / "m.onnx"
    result = cli("export", path, "-o", out, "--quantize", "dynamic", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["mode"] == "dynamic" and info["format"] == "onnx" and out.exists()
    assert info["path"] == str(out) and info["bytes"] == out.stat().st_size
    again = cli("export", path, "-o", out, "--quantize", "dynamic")
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    assert cli("export", path, "-o", out, "--quantize", "dynamic", "--force").exit_code == 0


def test_quantize_sparse_flag(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    out = tmp_path / "m.tflite"
    result = cli("quantize", path, "-o", out, "--data", "digits", "--json", "--sparse",
                 "--calibration-samples", 32, "--no-latency")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["bytes"] == out.stat().st_size
    assert info["accuracy"] >= info["float_accuracy"] - 0.03
    bad = cli("quantize", path, "-o", tmp_path / "m.onnx", "--data", "digits", "--sparse")
    assert bad.exit_code == 1 and "--sparse" in bad.output
    assert not (tmp_path / "m.onnx").exists()


def test_export_quantize_sparse_stores_pruned_weights_sparse(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    pruned = tmp_path / "pruned.keras"
    assert cli("prune", path, "-o", pruned, "--sparsity", "0.9").exit_code == 0
    bad = cli("export", pruned, "-o", tmp_path / "plain.tflite", "--sparse")
    assert bad.exit_code == 1 and "--quantize" in bad.output
    assert not (tmp_path / "plain.tflite").exists()
    dense, sparse = tmp_path / "dense.tflite", tmp_path / "sparse.tflite"
    for out, extra in ((dense, ()), (sparse, ("--sparse",))):
        result = cli("export", pruned, "-o", out, "--quantize", "dynamic", "--json", *extra)
        assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["sparse_tensors"] > 0
    # a default LiteRT Interpreter fails on it (XNNPACK): the report says how to load it
    assert "sparse weight tensor" in info["xnnpack_refused"]
    assert cli("export", pruned, "-o", tmp_path / "s2.tflite", "--quantize", "dynamic",
               "--sparse").output.count("BUILTIN_WITHOUT_DEFAULT_DELEGATES") == 1
    assert sparse.stat().st_size < 0.8 * dense.stat().st_size  # a tiny model: overhead stays
    # inspect counts what a sparse tensor stores: its kept values (not its dense shape's
    # count) and the index arrays that place them, which were left out of the table
    seen = {f: json.loads(cli("inspect", f, "--json").output)["weights"] for f in (dense, sparse)}
    assert "index" not in seen[dense] and seen[sparse]["index"]["bytes"] > 0
    assert seen[sparse]["int8"]["values"] < 0.2 * seen[dense]["int8"]["values"]
    stored = sum(w["bytes"] for w in seen[sparse].values())
    assert stored < sparse.stat().st_size


@pytest.mark.parametrize("out, flags, message", [
    ("m.onnx", ["--interface", "int8"], "--interface int8 gives a full-integer TFLite model"),
    ("m.tflite", ["--mode", "float16", "--interface", "int8"], "--interface int8 gives"),
    ("m.tflite", ["--calibration", "entropy"],
     "--calibration entropy is onnxruntime's static int8 calibration; TFLite calibrates"),
])
def test_flags_the_format_would_ignore_are_refused(cli, mlp_file, tmp_path, out, flags,
                                                   message):
    """They ran and wrote a float-interface ONNX file, or a min/max TFLite file, and the
    report said interface float / calibration minmax, while --sparse and --layout gpu to
    the wrong format were refused."""
    path, _ = mlp_file
    result = cli("quantize", path, "-o", tmp_path / out, "--data", "digits", *flags)
    assert result.exit_code == 1
    assert message in " ".join(result.output.split()), result.output
    assert not (tmp_path / out).exists()
