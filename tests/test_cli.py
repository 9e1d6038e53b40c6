"""The CLI skeleton: fast help, version, inspect and export, one-line errors."""

import json
import subprocess
import sys

from conftest import file_digest


def test_help_does_not_import_tensorflow():
    code = ("import sys; from compress.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TF False False" in out.stdout
    assert "inspect" in out.stdout and "export" in out.stdout


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0 and "compress, version" in result.output


def test_inspect_json(cli, mlp_file):
    path, _ = mlp_file
    result = cli("inspect", path, "--data", "digits", "--json", "--no-latency")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["params"] == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert 0.5 < data["accuracy"] <= 1.0
    assert {r["layer"] for r in data["layers"]} == {"fc1", "fc2", "predictions"}


def test_inspect_h5_table(cli, cnn_file):
    result = cli("inspect", cnn_file[0], "--no-latency")
    assert result.exit_code == 0
    assert "zipped size" in result.output and "conv1" in result.output


def test_inspect_bad_inputs_are_one_line_exit_1(cli, tmp_path, mlp_file):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    cut = tmp_path / "cut.keras"
    cut.write_bytes(mlp_file[0].read_bytes()[:500])
    for path, words in ((tmp_path / "missing.keras", "no such file"),
                        (text, "not an HDF5 file"), (cut, "corrupt")):
        result = cli("inspect", path)
        assert result.exit_code == 1
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0]
        assert "Traceback" not in result.output


def test_export_onnx_and_refuse_overwrite(cli, tmp_path, cnn_file):
    path, _ = cnn_file
    digest = file_digest(path)
    out = tmp_path / "cnn.onnx"
    result = cli("export", path, "-o", out, "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["max_abs_diff"] <= 1e-4 and data["top1_agreement"] == 1.0
    again = cli("export", path, "-o", out, "--data", "digits")
    assert again.exit_code == 1 and "already exists; pass --force" in again.stderr
    assert file_digest(path) == digest


def test_export_usage_error_is_exit_2(cli, cnn_file, tmp_path):
    result = cli("export", cnn_file[0], "--format", "coreml", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2


def test_output_equal_to_input_refused(cli, cnn_file):
    path, _ = cnn_file
    result = cli("export", path, "-o", path, "--format", "onnx", "--force")
    assert result.exit_code == 1
