"""compress distill: teacher vs student alone vs distilled, and bad input refused early."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tests.conftest import file_digest


def test_distill_width_student_json_report(cli, mlp_file, tmp_path):
    path, ds = mlp_file
    digest = file_digest(path)
    out = tmp_path / "student.keras"
    result = cli("distill", path, "-o", out, "--data", "digits", "--width", "0.5",
                 "--epochs", "2", "--learning-rate", "0.005", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [r["name"] for r in report["reports"]]
    assert names == ["teacher", "student alone", "distilled"]
    teacher, alone, distilled = report["reports"]
    assert distilled["params"] == alone["params"] < 0.5 * teacher["params"]
    for r in report["reports"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["latency_ms"] > 0 and r["zipped_bytes"] > 0
    info = report["pass"]
    assert info["temperature"] == 4.0 and info["alpha"] == 0.9 and info["epochs_run"] == 2
    assert info["student_source"] == "width x0.5" and "gap_closed" in info
    assert file_digest(path) == digest
    model = keras.models.load_model(out)
    assert model.get_layer("fc1").units == 16
    assert model.layers[-1].activation.__name__ == "softmax"
    acc = float(np.mean(np.argmax(model.predict(ds.x_test, verbose=0), 1) == ds.y_test))
    assert acc == pytest.approx(distilled["accuracy"])


def test_distill_with_a_student_file_and_no_baseline(cli, mlp_file, tmp_path):
    path, _ds = mlp_file
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(12, activation="relu", name="hidden"),
                                keras.layers.Dense(10, activation="softmax")], name="tiny")
    student_path = tmp_path / "tiny.keras"
    student.save(student_path)
    out = tmp_path / "tiny_distilled.h5"
    result = cli("distill", path, "-o", out, "--data", "digits", "--student", student_path,
                 "--epochs", "1", "--temperature", "2", "--alpha", "0.5", "--no-baseline")
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stdout and "student alone" not in result.stdout
    loaded = keras.models.load_model(out)
    assert loaded.get_layer("hidden").units == 12


def test_distill_with_consistent_shifts(cli, mlp_file, tmp_path):
    path, ds = mlp_file
    out = tmp_path / "shifted.keras"
    result = cli("distill", path, "-o", out, "--data", "digits", "--width", "0.5",
                 "--epochs", "4", "--learning-rate", "0.01", "--augment", "shift",
                 "--shift", "1", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    info = report["pass"]
    assert info["augment"] == "shift" and info["shift"] == 1 and info["epochs_run"] == 4
    assert [r["name"] for r in report["reports"]] == ["teacher", "student alone", "distilled"]
    model = keras.models.load_model(out)
    acc = float(np.mean(np.argmax(model.predict(ds.x_test, verbose=0), 1) == ds.y_test))
    assert acc == pytest.approx(report["reports"][2]["accuracy"])
    assert acc > 0.3, report["reports"]  # chance is 0.1
    unknown = cli("distill", path, "-o", tmp_path / "u.keras", "--data", "digits",
                  "--augment", "mixup")
    assert unknown.exit_code == 2 and not (tmp_path / "u.keras").exists()


def _bad_models(tmp_path):
    five = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(5, activation="softmax")])
    five.save(tmp_path / "five.keras")
    # Per-row scores of an 8x8 input: output (batch, 8, 10), not a class vector.
    reg = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Reshape((8, 8)),
                            keras.layers.Dense(4), keras.layers.Dense(10)], name="per_row")
    reg.save(tmp_path / "reg.keras")
    multi = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(10, activation="sigmoid")], name="multilabel")
    multi.save(tmp_path / "multi.keras")


@pytest.mark.parametrize("args, message", [
    (["--temperature", "0"], "--temperature: must be > 0.0"),
    (["--temperature", "-2"], "--temperature"),
    (["--alpha", "1.5"], "--alpha: must be in [0.0, 1.0]"),
    (["--alpha", "-0.5"], "--alpha"),
    (["--student", "{tmp}/five.keras"], "differ"),
    (["--width", "0.5", "--depth", "1"], "not width and depth"),
    (["--feature-pairs", "fc1:nope"], "no layer 'nope'"),
    (["--teacher", "{tmp}/reg.keras"], "not a classifier"),
    (["--teacher", "{tmp}/multi.keras"], "a multilabel output needs targets in [0, 1]"),
    (["--augment", "shift", "--shift", "8"], "too small"),
    (["--augment", "shift", "--shift", "0"], "--shift"),
])
def test_bad_input_is_one_line_exit_1_nothing_written(cli, mlp_file, tmp_path, args, message):
    path, _ = mlp_file
    _bad_models(tmp_path)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "--teacher":
        path, args = args[1], ["--width", "1.0"]
    out = tmp_path / "out.keras"
    result = cli("distill", path, "-o", out, "--data", "digits", "--epochs", "1", *args)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_existing_output_refused_before_any_work(cli, mlp_file, tmp_path):
    path, _ = mlp_file
    out = tmp_path / "exists.keras"
    out.write_bytes(b"keep me")
    result = cli("distill", path, "-o", out, "--data", "digits")
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert out.read_bytes() == b"keep me"
    missing = cli("distill", path, "-o", tmp_path / "x.keras")
    assert missing.exit_code == 1 and "needs --data" in missing.stderr


def test_command_module_does_not_import_keras():
    """`compress --help` lists every command: building the flags must not load TensorFlow."""
    import subprocess
    import sys

    code = "import sys, compress.cli.distill; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
